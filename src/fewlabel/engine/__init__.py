"""Training engine: Lightning modules, the shared fit recipe, trainers and run folders."""

from fewlabel.engine.classification import ClassificationModule, OptimConfig
from fewlabel.engine.fit import Budget, fit_classifier
from fewlabel.engine.run import RunFolder

__all__ = ["Budget", "ClassificationModule", "OptimConfig", "RunFolder", "fit_classifier"]
