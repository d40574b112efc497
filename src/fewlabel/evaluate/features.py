"""Frozen-feature extraction: one pass of a backbone over chosen samples, in eval mode, batched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from fewlabel.models.backbones import Backbone, InputAdapter, to_channels_last


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    samples: torch.Tensor | Sequence[torch.Tensor],
    indices: np.ndarray,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Embeddings ``(len(indices), embed_dim)`` of ``samples[indices]`` (uint8 images: an in-memory tensor or a
    store of files decoded on access), float32 on the CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    adapter = InputAdapter(samples.shape[1], backbone.input_spec).to(device)
    model = to_channels_last(nn.Sequential(adapter, backbone).to(device))
    was_training = backbone.training
    model.eval()
    chunks = []
    index_tensor = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if isinstance(samples, torch.Tensor):
        batches: Iterable[torch.Tensor] = (samples[index_tensor[start : start + batch_size]]
                                           for start in range(0, len(index_tensor), batch_size))
    else:  # files decoded on access: decode in loader workers while the model runs
        from fewlabel.engine.data import IndexedSamples, default_workers, make_loader

        batch_size = min(batch_size, 32)  # full-size inputs (e.g. 224 px): bounded activation memory
        batches = make_loader(IndexedSamples(samples, index_tensor.numpy()), batch_size, shuffle=False,
                              workers=default_workers(True) if len(index_tensor) > batch_size else 0)
    for batch in batches:
        chunks.append(model(batch.to(device, non_blocking=True)).float().cpu())
    backbone.train(was_training)
    if not chunks:
        return torch.zeros(0, backbone.embed_dim)
    return torch.cat(chunks)
