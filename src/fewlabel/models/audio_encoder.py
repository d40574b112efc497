"""A Hugging Face speech encoder (wav2vec 2.0, HuBERT, WavLM, ...) as a fewlabel :class:`Backbone`.

It takes a batch of fixed-length clips, ``(N, samples)`` int16 or float in [-1, 1] at the model's sampling
rate, normalises each clip as the model's feature extractor does, and pools the frames of one hidden layer
(``last``, a layer index, or ``weighted``: a learned softmax-weighted sum of all layers, the SUPERB recipe)
into one embedding per clip. Stages are the convolutional feature encoder, the projection and one per
transformer layer, so ``partial`` and layer-wise decay address layers; ``finetune`` keeps the convolutional
feature encoder frozen, as the wav2vec 2.0 paper does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fewlabel.errors import FewlabelError
from fewlabel.models.backbones import Backbone
from fewlabel.models.text_encoder import transformer_stages

LAYERS_HELP = "last, a layer index (0 = the projected convolutional features) or weighted"


@dataclass(frozen=True)
class AudioInputSpec:
    """What an audio backbone expects: the sampling rate, and whether each clip is normalised first."""

    sample_rate: int = 16000
    normalize: bool = True

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "normalize": self.normalize}


def to_float_audio(x: torch.Tensor) -> torch.Tensor:
    """int16 clips to float in [-1, 1); float input is returned as float32."""
    return x.float() / 32768.0 if x.dtype == torch.int16 else x.float()


class AudioEncoderBackbone(Backbone):
    """A speech encoder (kept as ``self.body``) that maps a clip batch to one embedding per clip."""

    def __init__(self, body: nn.Module, sample_rate: int = 16000, normalize: bool = True, layer: str = "last",
                 name: str | None = None):
        layers = int(getattr(body.config, "num_hidden_layers", 0))
        index_ok = layer.lstrip("-").isdigit() and -layers - 1 <= int(layer) <= layers
        if layer not in ("last", "weighted") and not index_ok:
            raise FewlabelError(f"--audio-layer {layer!r}: choose {LAYERS_HELP} (the model has {layers} layers)")
        super().__init__(body, int(body.config.hidden_size), transformer_stages(body),
                         AudioInputSpec(sample_rate, normalize),  # type: ignore[arg-type]
                         name or str(getattr(body.config, "_name_or_path", "") or type(body).__name__))
        self.layer = layer
        self.layer_weights = nn.Parameter(torch.zeros(layers + 1)) if layer == "weighted" else None
        self.partial_stages = 2  # `partial` by default trains the top two transformer layers
        self.finetune_frozen = ("feature_extractor",)

    @property
    def pooling(self) -> str:
        return f"layer-{self.layer}"

    def forward(self, clips: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = to_float_audio(clips)
        if self.input_spec.normalize:  # zero mean, unit variance per clip (Wav2Vec2FeatureExtractor)
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        if self.layer == "last":
            return self.body(x).last_hidden_state.mean(dim=1)
        states = self.body(x, output_hidden_states=True).hidden_states
        if self.layer_weights is not None:
            weights = torch.softmax(self.layer_weights, dim=0)
            return (torch.stack(states, dim=0) * weights.view(-1, 1, 1, 1)).sum(dim=0).mean(dim=1)
        return states[int(self.layer)].mean(dim=1)


def audio_model_folder(source: str | os.PathLike) -> Path | None:
    """The Hugging Face folder behind ``source``: itself, or a `fewlabel pretrain --method wav2vec2` run's
    ``export/``; None when ``source`` is not a local path."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    for folder in (path, path / "export"):
        if (folder / "config.json").is_file():
            return folder
    raise FewlabelError(f"{path} is not a Hugging Face audio model folder (no config.json), nor a wav2vec2 "
                        "pretraining run; pass a model folder or a `fewlabel pretrain --method wav2vec2` run")


def load_audio_backbone(source: str | os.PathLike | None, layer: str = "last") -> AudioEncoderBackbone:
    """A speech encoder from a local folder (wav2vec 2.0, HuBERT, WavLM, a fewlabel wav2vec2 run) or a hub id
    (needs network; offline it fails with one line naming the alternatives)."""
    from transformers import AutoModel

    if source is None:
        raise FewlabelError("audio transfer needs --backbone: a Hugging Face speech encoder folder (wav2vec 2.0, "
                            "HuBERT, WavLM), a `fewlabel pretrain --method wav2vec2` run folder, or a hub id when "
                            "online")
    key = str(source)
    folder = audio_model_folder(key)
    if folder is None and key.startswith(("/", "./", "../", "~")):
        raise FewlabelError(f"audio backbone folder {key} does not exist")
    where = str(folder) if folder is not None else key
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        body = AutoModel.from_pretrained(where)
    except (OSError, ValueError, KeyError) as exc:
        hint = " (offline or unknown hub id?)" if folder is None else ""
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FewlabelError(f"cannot load audio backbone '{key}'{hint}: {first}; pass a local Hugging Face "
                            "speech encoder folder or a wav2vec2 pretraining run") from None
    if not hasattr(body, "feature_extractor") or not hasattr(body.config, "num_hidden_layers"):
        raise FewlabelError(f"'{key}' is a {type(body).__name__}, not a speech encoder with a convolutional "
                            "feature encoder (wav2vec 2.0, HuBERT, WavLM)")
    sample_rate, normalize = 16000, True
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        try:
            processor = json.loads((folder / "preprocessor_config.json").read_text(encoding="utf-8"))
            sample_rate = int(processor.get("sampling_rate", sample_rate))
            normalize = bool(processor.get("do_normalize", normalize))
        except (OSError, ValueError, TypeError):
            pass  # an unreadable preprocessor config: the wav2vec 2.0 defaults
    name = folder.name if folder is not None else key
    if folder is not None and folder.name == "export":
        name = folder.parent.name
    return AudioEncoderBackbone(body, sample_rate, normalize, layer=layer, name=name)
