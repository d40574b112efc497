"""Statistics over seeds and the recommendation: mean and 95% CI per approach; approaches compared paired over
seeds (the same split per seed for all), with a paired t-test and the mean difference's 95% CI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


Scores = list[float] | dict[int, float]  # per seed: a list is indexed by seed, a dict maps seed -> accuracy
ALPHA = 0.05


def _by_seed(values) -> dict[int, float]:
    return dict(values) if isinstance(values, dict) else dict(enumerate(values))


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` paired over the seeds both ran: every approach is scored on the same split per seed, so the
    seed-to-seed variation of the split cancels out of the difference."""

    mean: float
    half_width: float  # 95% CI half-width of the mean difference (t, n-1 dof); nan with fewer than 2 seeds
    p_value: float  # two-sided paired t-test (scipy.stats.ttest_rel); nan with fewer than 2 seeds
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def verdict(self) -> str:
        """'better' (a beats b), 'worse', or 'not distinguishable' at the 5% level."""
        if self.n < 2 or math.isnan(self.p_value) or self.p_value >= ALPHA or self.mean == 0:
            return "not distinguishable"
        return "better" if self.mean > 0 else "worse"

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+2.0 points (95% CI -0.5 to +4.5, p = 0.074, 3 seeds)``."""
        seeds = f"{self.n} seed{'s' if self.n != 1 else ''}"
        if math.isnan(self.half_width):
            return f"{self.mean * scale:+.{digits}f} points ({seeds}: no interval)"
        p = f"p = {self.p_value:.3f}" if self.p_value >= 0.001 else "p < 0.001"
        return (f"{self.mean * scale:+.{digits}f} points (95% CI {self.low * scale:+.{digits}f} to "
                f"{self.high * scale:+.{digits}f}, paired t-test {p}, {seeds})")


def paired_difference(a: Scores, b: Scores) -> PairedDifference:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, its 95% CI and the paired t-test's p-value.

    With identical differences on every seed (zero spread) the test is degenerate: p is 0 when they are not
    zero (the same gap on every split) and 1 when they are.
    """
    a, b = _by_seed(a), _by_seed(b)
    seeds = sorted(set(a) & set(b))
    n = len(seeds)
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0)
    xa, xb = [a[s] for s in seeds], [b[s] for s in seeds]
    diffs = [x - y for x, y in zip(xa, xb, strict=True)]
    mean = sum(diffs) / n
    if n == 1:
        return PairedDifference(mean, float("nan"), float("nan"), 1)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return PairedDifference(mean, 0.0, 0.0 if abs(mean) > 1e-12 else 1.0, n)
    p_value = float(stats.ttest_rel(xa, xb).pvalue)
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return PairedDifference(mean, half, p_value, n)


@dataclass(frozen=True)
class Recommendation:
    labels: str
    best: str
    best_summary: Summary
    runner_up: str | None
    runner_up_summary: Summary | None
    margin: float | None  # difference of the means, best - runner-up
    within_noise: bool  # the paired comparison with the runner-up does not say "better"
    paired: PairedDifference | None = None  # best - runner-up, paired over seeds
    against: dict[str, PairedDifference] = field(default_factory=dict)  # best - every other approach

    @property
    def verdict(self) -> str:
        """The best approach against the runner-up: 'better', 'worse', 'not distinguishable' (or 'only')."""
        return "only" if self.paired is None else self.paired.verdict

    def sentence(self) -> str:
        if self.runner_up is None or self.paired is None:
            return f"{self.best} ({self.best_summary.format()}%) is the only approach measured."
        best = f"{self.best} ({self.best_summary.format()}%)"
        other = f"{self.runner_up} ({self.runner_up_summary.format()}%)"
        diff = self.paired.format()
        if self.verdict == "better":
            return f"{best} is better than the runner-up {other}: {diff}."
        if self.verdict == "worse":
            return f"{best} has the higher mean but is worse than {other} on the seeds both ran: {diff}."
        return (f"{best} and the runner-up {other} are not distinguishable with {self.paired.n} "
                f"seed{'s' if self.paired.n != 1 else ''} — run more seeds: {diff}.")


def recommend(labels: str, results: dict[str, Scores]) -> Recommendation:
    """Best approach by mean accuracy, compared with every other one paired over seeds (a list of scores is
    indexed by seed; a dict maps seed -> score). The verdict is the paired t-test against the runner-up."""
    summaries = {name: summarize(list(_by_seed(values).values())) for name, values in results.items() if values}
    ranked = sorted(summaries.items(), key=lambda kv: kv[1].mean, reverse=True)
    best, best_s = ranked[0]
    if len(ranked) == 1:
        return Recommendation(labels, best, best_s, None, None, None, True)
    second, second_s = ranked[1]
    against = {name: paired_difference(results[best], results[name]) for name, _ in ranked[1:]}
    paired = against[second]
    return Recommendation(labels, best, best_s, second, second_s, best_s.mean - second_s.mean,
                          paired.verdict != "better", paired, against)
