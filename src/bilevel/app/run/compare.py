"""``bilevel compare``: overlay the curves of several run directories and tabulate their summaries.

Reads each directory's metrics.jsonl and summary.json (:func:`bilevel.app.run.rundir.load_run`); the cost is that of
reading the files and drawing one figure.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from bilevel.app.run import plots
from bilevel.app.run.metrics import markdown_table
from bilevel.app.run.rundir import load_run

#: summary keys that describe the run rather than measure it (left out of the metric columns of tables)
META_KEYS: Tuple[str, ...] = ("method", "task", "outer_steps", "inner_steps", "seed", "wall_seconds",
                              "loop_seconds", "peak_rss_mb", "peak_gpu_mb", "device")


def _labels(dirs: Sequence[Path]) -> List[str]:
    """The directories' names, or their whole paths when two names coincide."""
    names = [d.name or str(d) for d in dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in dirs]


def summary_columns(summaries: Sequence[Mapping[str, Any]]) -> List[str]:
    """Metric columns of a comparison table: numeric summary keys (not :data:`META_KEYS`), first seen first.

    Parameters
    ----------
    summaries : sequence of dict

    Returns
    -------
    list of str
        Ending with ``upper_final`` when present.
    """
    cols: List[str] = []
    for s in summaries:
        for k, v in s.items():
            if (k not in META_KEYS and k != "upper_final" and k not in cols and isinstance(v, (int, float))
                    and not isinstance(v, bool)):
                cols.append(k)
    if any("upper_final" in s for s in summaries):
        cols.append("upper_final")
    return cols


def compare_runs(run_dirs: Sequence[Any], out: Optional[Any] = None,
                 metrics: Optional[Sequence[str]] = None) -> Tuple[str, Optional[Path]]:
    """Overlay the curves of several runs and tabulate their summaries.

    Parameters
    ----------
    run_dirs : sequence of str or Path
        Run directories written by :func:`bilevel.app.run.runner.run_task`.
    out : str or Path, optional
        PNG to write the overlay to (none when None).
    metrics : sequence of str, optional
        Panels (any key of :func:`bilevel.app.run.plots.available_metrics`, e.g. ``info.k_bar``); default
        :func:`bilevel.app.run.plots.default_panels`: ``upper``, ``grad_norm``, the inner stationarity and every task
        metric that all runs logged.

    Returns
    -------
    (str, Path or None)
        The Markdown table (run, method, task, metrics, wall_seconds) and the figure path.

    Raises
    ------
    ValueError
        No runs, a directory that is not a run, or a metric no run logged.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    labels = _labels([r["dir"] for r in runs])
    available: List[str] = []
    for r in runs:
        for k in plots.available_metrics(r["records"]):
            if k not in available:
                available.append(k)
    if metrics:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; the runs logged: {', '.join(available)}")
        panels = list(metrics)
    else:
        panels = plots.default_panels([r["records"] for r in runs])
    path = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        path = plots.plot_compare([(lab, r["records"]) for lab, r in zip(labels, runs)], out, panels)
    rows = []
    for lab, r in zip(labels, runs):
        row = dict(r["summary"])
        row["run"] = lab
        if not r["summary"]:
            row["method"] = "(unfinished)"
        rows.append(row)
    cols = ["run", "method", "task", *summary_columns([r["summary"] for r in runs]), "wall_seconds"]
    return markdown_table(rows, cols), path


__all__ = ["META_KEYS", "summary_columns", "compare_runs"]
