"""Frozen-feature extraction: one pass of a backbone over chosen samples, in eval mode, batched."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fewlabel.models.backbones import Backbone, InputAdapter


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    samples: torch.Tensor,
    indices: np.ndarray,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Embeddings ``(len(indices), embed_dim)`` of ``samples[indices]`` (uint8 images), float32 on the CPU."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    adapter = InputAdapter(samples.shape[1], backbone.input_spec).to(device)
    model = nn.Sequential(adapter, backbone).to(device, memory_format=torch.channels_last)
    was_training = backbone.training
    model.eval()
    chunks = []
    index_tensor = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    for start in range(0, len(index_tensor), batch_size):
        batch = samples[index_tensor[start : start + batch_size]].to(device, non_blocking=True)
        chunks.append(model(batch).float().cpu())
    backbone.train(was_training)
    if not chunks:
        return torch.zeros(0, backbone.embed_dim)
    return torch.cat(chunks)
