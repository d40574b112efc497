"""fewlabel: learn well when labels are scarce.

The package is organised as one modality-agnostic core:

* ``data``     - datasets (samples, optional labels and groups) and nested label-fraction splits;
* ``modalities`` - what differs between images and text (one module each): the core asks, never branches;
* ``models``   - ``create_backbone``: every backbone knows its embedding size, stages and input spec;
* ``augment``  - supervised augmentation policies and self-supervised view generators;
* ``methods``  - self-supervised methods, losses and heads (one file per method);
* ``engine``   - the Lightning modules that train any method / any classifier, and run folders;
* ``evaluate`` - probes and metrics for any backbone.
"""

from fewlabel.errors import FewlabelError

__version__ = "0.1.0"

__all__ = ["FewlabelError", "__version__"]
