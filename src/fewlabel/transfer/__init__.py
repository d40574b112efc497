"""Transfer learning: strategies (parameter freezing and groups), cached features, LogME transferability."""

from fewlabel.evaluate.feature_cache import cached_features
from fewlabel.transfer.logme import logme_score
from fewlabel.transfer.strategies import STRATEGIES, TransferPlan, apply_strategy

__all__ = ["STRATEGIES", "TransferPlan", "apply_strategy", "cached_features", "logme_score"]
