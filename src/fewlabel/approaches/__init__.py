"""The approaches fewlabel compares, each a plain function over typed configs: supervised from scratch, ..."""

from fewlabel.approaches.supervised import SupervisedConfig, train_supervised

__all__ = ["SupervisedConfig", "train_supervised"]
