"""Compare approaches across label fractions and seeds: grid, resumable executor, statistics, report."""

from fewlabel.compare.grid import BUDGETS, Job, build_grid
from fewlabel.compare.run import CompareConfig, compare, report_only
from fewlabel.compare.stats import paired_difference, recommend, summarize

__all__ = ["BUDGETS", "CompareConfig", "Job", "build_grid", "compare", "paired_difference", "recommend", "report_only",
           "summarize"]
