"""The comparison report: ``report.md`` and a self-contained ``report.html`` (embedded PNG figures)."""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from pathlib import Path
from typing import Any

from fewlabel.compare.grid import ROW_NAMES, row_name
from fewlabel.compare.stats import Recommendation, Summary, recommend, summarize
from fewlabel.engine.run import atomic_write

DATA_USED = {
    "data augmentation": ("yes", "labelled subset only"),
    "transfer learning": ("yes", "labelled subset + a model pretrained elsewhere"),
    "self-supervised": ("yes (probe only)", "unlabelled pool for pretraining + labelled subset"),
    "semi-supervised": ("yes", "labelled subset + unlabelled pool together (+ the backbone's features)"),
}


def _row_family(label: str) -> str:
    return label.split(":", 1)[0]


def collect(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Group stored job results into rows (approach variant, named as :func:`row_name` names it) x label
    fractions; ``by_seed`` keeps each score's seed for the paired comparisons."""
    accuracy: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_seed: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    seconds: dict[str, list[float]] = defaultdict(list)
    labelled: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    pretrain_seconds: dict[tuple[str, int], float] = {}
    warnings: list[str] = []
    for r in results:
        job = r["job"]
        if job["approach"] == "pretrain":
            pretrain_seconds[(r["key"], job["seed"])] = r["seconds"]
            warnings += [f"{job['variant']} seed {job['seed']}: {w}" for w in r.get("warnings", [])]
    for r in results:
        job = r["job"]
        if job["approach"] == "pretrain" or r.get("test_accuracy") is None:
            continue
        row = row_name(job["approach"], job["variant"])
        accuracy[row][job["labels"]].append(float(r["test_accuracy"]))
        by_seed[row][job["labels"]][int(job["seed"])] = float(r["test_accuracy"])
        extra = pretrain_seconds.get((job.get("depends_on"), job["seed"]), 0.0) if job["approach"] == "probe" else 0
        seconds[row].append(float(r["seconds"]) + extra)
        if r.get("labelled") is not None:
            labelled[row][job["labels"]].append(int(r["labelled"]))
    fractions = sorted({f for row in accuracy.values() for f in row}, key=_fraction_order)
    return {"accuracy": accuracy, "by_seed": by_seed, "seconds": seconds, "labelled": labelled,
            "fractions": fractions, "warnings": warnings}


def _fraction_order(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float(text.split("/")[0]) / 1e6  # N/class sorts before fractions


def recommendations(table: dict[str, Any]) -> list[Recommendation]:
    seeds = table.get("by_seed") or {row: {f: dict(enumerate(v)) for f, v in per.items()}
                                     for row, per in table["accuracy"].items()}
    return [recommend(f, {row: seeds[row].get(f, {}) for row in seeds}) for f in table["fractions"]]


def paired_rows(recs: list[Recommendation]) -> tuple[list[str], list[list[str]]]:
    """The recommended approach at each label budget against every other one, paired over seeds."""
    header = ["labels", "recommended", "against", "recommended - against", "verdict"]
    rows = []
    for rec in recs:
        for other, diff in rec.against.items():
            verdict = {"better": "recommended is better", "worse": "recommended is worse"}.get(
                diff.verdict, f"not distinguishable with {diff.n} seed{'s' if diff.n != 1 else ''}")
            rows.append([rec.labels, rec.best, other, diff.format(), verdict])
    return header, rows


def failure_rows(failures: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per failed job (cell x seed): what failed, the error line and where its log is."""
    header = ["approach", "labels", "seed", "error", "log"]
    rows = []
    for record in sorted(failures, key=lambda r: (r["job"]["approach"], r["job"]["variant"],
                                                  str(r["job"].get("labels")), r["job"]["seed"])):
        job = record["job"]
        rows.append([row_name(job["approach"], job["variant"]), str(job.get("labels") or "-"), str(job["seed"]),
                     str(record.get("error", "")), str(record.get("log_path") or record.get("traceback_path") or "-")])
    return header, rows


def retention_notes(table: dict[str, Any], recs: list[Recommendation]) -> list[str]:
    """How much of the best full-label accuracy the best approach keeps at each smaller budget."""
    by_fraction = {r.labels: r for r in recs}
    full = by_fraction.get("1.0") or by_fraction.get("1")
    if full is None:
        return []
    notes = []
    for rec in recs:
        if rec is full:
            continue
        ratio = rec.best_summary.mean / full.best_summary.mean
        verdict = "holds" if ratio >= 0.95 else "does not hold"
        share = f"{float(rec.labels):.0%}" if "/" not in rec.labels else rec.labels
        notes.append(f"With {share} of labels the best approach ({rec.best}) keeps {ratio:.1%} of "
                     f"the best full-label accuracy: the 95% claim {verdict} here.")
    return notes


def domain_notes(table: dict[str, Any]) -> list[str]:
    notes = []
    acc = table["accuracy"]
    for fraction in table["fractions"]:
        scratch = [summarize(acc[r][fraction]).mean for r in acc
                   if _row_family(r) == ROW_NAMES["supervised"] and acc[r].get(fraction)]
        for row in acc:
            if _row_family(row) == ROW_NAMES["transfer"] and acc[row].get(fraction) and scratch:
                gap = summarize(acc[row][fraction]).mean - max(scratch)
                if gap < 0:
                    notes.append(f"{row} trails training from scratch by {-gap * 100:.1f} points at {fraction} labels: "
                                 "a sign of a domain gap between the pretraining data and this data.")
    return notes


def _plots(table: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colours = {"data augmentation": "tab:blue", "transfer learning": "tab:orange", "self-supervised": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, per_fraction in sorted(table["accuracy"].items()):
        xs, means, lows, highs = [], [], [], []
        for fraction in table["fractions"]:
            values = per_fraction.get(fraction)
            counts = table["labelled"][row].get(fraction)
            if not values or not counts:
                continue
            s = summarize(values)
            xs.append(sum(counts) / len(counts))
            means.append(s.mean * 100)
            lows.append(max(0.0, s.low * 100))  # accuracy is bounded; t intervals of 2 seeds are not
            highs.append(min(100.0, s.high * 100))
        if not xs:
            continue
        colour = colours.get(_row_family(row))
        style = "-" if "feature" not in row and "linear" not in row else "--"
        ax.plot(xs, means, style, marker="o", label=row, color=colour)
        ax.fill_between(xs, lows, highs, alpha=0.15, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Label efficiency (mean and 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    efficiency = folder / "label_efficiency.png"
    fig.savefig(efficiency, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row, per_fraction in sorted(table["accuracy"].items()):
        secs = table["seconds"][row]
        if not secs:
            continue
        mean_seconds = sum(secs) / len(secs)
        for fraction in table["fractions"]:
            if per_fraction.get(fraction):
                acc = summarize(per_fraction[fraction]).mean * 100
                ax.scatter(mean_seconds, acc, color=colours.get(_row_family(row)))
                ax.annotate(f"{row.split(': ')[1]} @{fraction}", (mean_seconds, acc), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("compute per run, seconds (log; self-supervised includes pretraining)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Compute vs accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    compute = folder / "compute_vs_accuracy.png"
    fig.savefig(compute, dpi=110)
    plt.close(fig)
    return [efficiency, compute]


def _failed_cells(failures: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    cells: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for record in failures:
        job = record["job"]
        if job["approach"] != "pretrain":  # a failed pretraining shows in its probes (recorded as failed too)
            cells[row_name(job["approach"], job["variant"])][job["labels"]] += 1
    return cells


def _table_rows(table: dict[str, Any], failures: list[dict[str, Any]] | None = None
                ) -> tuple[list[str], list[list[str]]]:
    failed = _failed_cells(failures or [])
    fractions = sorted(set(table["fractions"]) | {f for per in failed.values() for f in per}, key=_fraction_order)
    header = ["approach", "needs labels?", "data used", *[f"acc @ {f} labels (%)" for f in fractions],
              "compute s/run"]
    rows = []
    for row in sorted(set(table["accuracy"]) | set(failed)):
        needs, used = DATA_USED.get(_row_family(row), ("yes", ""))
        cells = []
        for fraction in fractions:
            values = table["accuracy"].get(row, {}).get(fraction)
            lost = failed.get(row, {}).get(fraction, 0)
            if values:
                cells.append(summarize(values).format() + f" (n={len(values)}" + (f", {lost} failed)" if lost else ")"))
            else:
                cells.append(f"failed (x{lost})" if lost else "-")
        secs = table["seconds"].get(row)
        rows.append([row, needs, used, *cells, f"{sum(secs) / len(secs):.0f}" if secs else "-"])
    return header, rows


def time_cap_notes(results: list[dict[str, Any]]) -> list[str]:
    """Runs the per-run time cap stopped before their planned epochs: their accuracy understates the approach."""
    cut: dict[str, list[str]] = {}
    for record in results:
        job, metrics = record.get("job") or {}, record.get("metrics") or {}
        settings = job.get("settings") or {}
        cap = settings.get("max_minutes")
        if job.get("approach") == "pretrain":
            planned, ran = settings.get("epochs"), metrics.get("epochs")
            name = f"{job.get('variant')} pretraining"
        else:
            planned, ran = metrics.get("epochs_planned"), metrics.get("epochs_run")
            name = f"{row_name(str(job.get('approach')), str(job.get('variant')))} at {job.get('labels')} labels"
            if not cap or record.get("seconds", 0.0) < 0.95 * cap * 60:  # stopped early by validation, not the cap
                continue
        if planned and ran is not None and ran < planned:
            cut.setdefault(name, []).append(f"{ran}/{planned}")
    return [f"The time cap stopped {name} after {', '.join(epochs)} epochs (one per seed); its accuracy "
            "understates what it reaches with the planned budget." for name, epochs in sorted(cut.items())]


PAIRED_TEXT = ("Every approach is scored on the same split per seed, so each difference is paired over seeds: "
               "mean of (recommended - other) in accuracy points, its 95% CI and a two-sided paired t-test; "
               "'not distinguishable' means p >= 0.05 (or fewer than 2 seeds): run more seeds.")
FAILED_TEXT = ("These runs raised an error; the grid went on without them. Rerun the same command with "
               "`--retry-failed` to run them again.")


def _html_table(title: str, text: str, header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p><table><tr>{head}</tr>{body}</table>"


def write_report(results: list[dict[str, Any]], out: str | Path, title: str, setup: dict[str, Any],
                 extra_notes: list[str] | None = None, failures: list[dict[str, Any]] | None = None) -> Path:
    """Write report.md, report.html and figures/ under ``out``; returns the HTML path. ``failures`` (failed-job
    records) are marked in their cells and listed with their error and log."""
    out = Path(out)
    failures = list(failures or [])
    table = collect(results)
    recs = recommendations(table) if table["fractions"] else []
    figures = _plots(table, out / "figures") if table["fractions"] else []
    header, rows = _table_rows(table, failures)
    paired_header, paired = paired_rows(recs)
    failed_header, failed = failure_rows(failures)
    notes = (retention_notes(table, recs) + domain_notes(table) + time_cap_notes(results)
             + [f"collapse warning: {w}" for w in table["warnings"]] + list(extra_notes or []))

    md = [f"# {title}", "", "## Set-up", ""]
    md += [f"- **{k}**: {v}" for k, v in setup.items()]
    md += ["", "## Results", "", "Test accuracy, mean ± 95% CI over seeds (t distribution), n = seeds.", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "## Recommendation", ""]
    md += [f"- **{r.labels} labels**: {r.sentence()}" for r in recs]
    if paired:
        md += ["", "## Paired differences against the recommended approach", "", PAIRED_TEXT, "",
               "| " + " | ".join(paired_header) + " |", "|" + "---|" * len(paired_header)]
        md += ["| " + " | ".join(r) + " |" for r in paired]
    if failed:
        md += ["", "## Failed runs", "", FAILED_TEXT, "",
               "| " + " | ".join(failed_header) + " |", "|" + "---|" * len(failed_header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in failed]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    md += [""] + [f"![{p.stem}](figures/{p.name})" for p in figures] + [""]
    atomic_write(out / "report.md", "\n".join(md))

    def cell(text: str) -> str:
        return f"<td>{html.escape(text)}</td>"

    images = "".join(f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}"></figure>' for p in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f3f3f3}}.rec{{background:#eef7ee;padding:.6em 1em;border-left:4px solid #3a3}}img{{max-width:100%}}
</style></head><body><h1>{html.escape(title)}</h1>
<h2>Recommendation</h2><div class="rec"><ul>{"".join(f"<li><b>{html.escape(r.labels)} labels</b>: "
                                                     f"{html.escape(r.sentence())}</li>" for r in recs)}</ul></div>
<h2>Results</h2><p>Test accuracy, mean ± 95% CI over seeds (t distribution), n = seeds.</p>
<table><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in header)}</tr>
{"".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)}</table>
{_html_table("Paired differences against the recommended approach", PAIRED_TEXT, paired_header, paired)}
{_html_table("Failed runs", FAILED_TEXT, failed_header, failed)}
{"<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>" if notes else ""}
<h2>Figures</h2>{images}
<h2>Set-up</h2><ul>{"".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                            for k, v in setup.items())}</ul></body></html>"""
    atomic_write(out / "report.html", page)
    return out / "report.html"


__all__ = ["Summary", "collect", "failure_rows", "paired_rows", "recommendations", "write_report"]
