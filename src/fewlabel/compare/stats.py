"""Statistics over seeds and the recommendation: mean, 95% confidence interval, best vs runner-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Summary:
    mean: float
    half_width: float  # 95% CI half-width (t distribution); nan with one seed
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width if not math.isnan(self.half_width) else self.mean

    @property
    def high(self) -> float:
        return self.mean + self.half_width if not math.isnan(self.half_width) else self.mean

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        if math.isnan(self.half_width):
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.half_width * scale:.{digits}f}"


def summarize(values: list[float]) -> Summary:
    """Mean and 95% CI half-width ``t_{0.975, n-1} * s / sqrt(n)`` (sample standard deviation s)."""
    n = len(values)
    if n == 0:
        return Summary(float("nan"), float("nan"), 0)
    mean = sum(values) / n
    if n == 1:
        return Summary(mean, float("nan"), 1)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(stats.t.ppf(0.975, n - 1)) * math.sqrt(variance / n)
    return Summary(mean, half, n)


@dataclass(frozen=True)
class Recommendation:
    labels: str
    best: str
    best_summary: Summary
    runner_up: str | None
    runner_up_summary: Summary | None
    margin: float | None
    within_noise: bool

    def sentence(self) -> str:
        if self.runner_up is None:
            return f"{self.best} ({self.best_summary.format()}%) is the only approach measured."
        noise = ("within noise (the 95% intervals overlap or only one seed ran): treat them as tied"
                 if self.within_noise else "outside the noise of the seeds")
        return (f"{self.best} ({self.best_summary.format()}%) beats {self.runner_up} "
                f"({self.runner_up_summary.format()}%) by {self.margin * 100:.1f} points, {noise}.")


def recommend(labels: str, results: dict[str, list[float]]) -> Recommendation:
    """Best approach by mean accuracy; the margin is 'within noise' when the two 95% intervals overlap."""
    summaries = {name: summarize(values) for name, values in results.items() if values}
    ranked = sorted(summaries.items(), key=lambda kv: kv[1].mean, reverse=True)
    best, best_s = ranked[0]
    if len(ranked) == 1:
        return Recommendation(labels, best, best_s, None, None, None, True)
    second, second_s = ranked[1]
    margin = best_s.mean - second_s.mean
    one_seed = best_s.n < 2 or second_s.n < 2
    within = one_seed or best_s.low <= second_s.high
    return Recommendation(labels, best, best_s, second, second_s, margin, within)
