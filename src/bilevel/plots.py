"""Figures of ``bilevel run`` and ``bilevel compare``: metric curves against the outer step (matplotlib Agg).

The input is a list of metrics records (the lines of ``metrics.jsonl``: ``step``, ``upper``, ``lower``,
``grad_norm``, ``time`` and the task's ``evaluate()`` metrics). One panel per metric, the upper objective
first, as in the curves of the BDA / IAPTT-GM / BVFIM papers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: keys every metrics line has; the others (besides ``info``) are the task's metrics
BASE_KEYS: Tuple[str, ...] = ("step", "upper", "lower", "grad_norm", "time")

_LABELS = {"upper": "upper objective F", "lower": "lower objective f", "grad_norm": "||hypergradient||",
           "time": "wall time (s)"}


def read_metrics(path: Any) -> List[Dict[str, Any]]:
    """Read a ``metrics.jsonl`` file.

    Parameters
    ----------
    path : str or Path
        The file (one JSON object per line; blank lines and a truncated last line are skipped).

    Returns
    -------
    list of dict

    Raises
    ------
    ValueError
        The file is missing or a line before the last is not JSON.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a run killed while writing its last line
                break
            raise ValueError(f"{str(path)!r} line {i + 1} is not JSON") from None
    return records


def task_metrics(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """Names of the task metrics (numbers outside :data:`BASE_KEYS`) in order of appearance.

    Parameters
    ----------
    records : sequence of dict

    Returns
    -------
    list of str
    """
    names: List[str] = []
    for rec in records:
        for k, v in rec.items():
            if k not in BASE_KEYS and k != "info" and k not in names and _is_number(v):
                names.append(k)
    return names


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for rec in records:
        v = rec.get(key)
        if _is_number(v) and math.isfinite(v) and _is_number(rec.get("step")):
            xs.append(rec["step"])
            ys.append(v)
    return xs, ys


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return plt, fig, flat[:n]


def _style(ax, key: str, ys_all: Sequence[float]) -> None:
    ax.set_xlabel("outer step")
    ax.set_ylabel(_LABELS.get(key, key.replace("_", " ")))
    ax.set_title(_LABELS.get(key, key))
    ax.grid(True, alpha=0.3)
    if key in ("upper", "lower", "grad_norm") and ys_all and min(ys_all) > 0 and max(ys_all) > 20 * min(ys_all):
        ax.set_yscale("log")


def plot_curves(records: Sequence[Mapping[str, Any]], path: Any, *, title: str = "",
                metrics: Optional[Sequence[str]] = None) -> Path:
    """Plot one run: the upper objective and the task's metrics against the outer step.

    Parameters
    ----------
    records : sequence of dict
        Metrics lines of the run.
    path : str or Path
        Output PNG.
    title : str
        Figure title.
    metrics : sequence of str, optional
        Panels; default ``["upper", *task_metrics(records)]``.

    Returns
    -------
    Path
        The written file.
    """
    keys = list(metrics) if metrics else ["upper", *task_metrics(records)]
    plt, fig, axes = _figure(len(keys))
    try:
        for ax, key in zip(axes, keys):
            xs, ys = _series(records, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, color="C0")
            _style(ax, key, ys)
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def plot_compare(runs: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]], path: Any,
                 metrics: Sequence[str], *, title: str = "") -> Path:
    """Overlay several runs: one panel per metric, one line per run.

    Parameters
    ----------
    runs : sequence of (label, records)
        Runs to overlay.
    path : str or Path
        Output PNG.
    metrics : sequence of str
        Panels (a run without a metric is skipped in that panel).
    title : str
        Figure title.

    Returns
    -------
    Path
    """
    plt, fig, axes = _figure(len(metrics))
    try:
        for ax, key in zip(axes, metrics):
            ys_all: List[float] = []
            for i, (label, records) in enumerate(runs):
                xs, ys = _series(records, key)
                if xs:
                    ax.plot(xs, ys, label=label, color=f"C{i % 10}")
                    ys_all.extend(ys)
            _style(ax, key, ys_all)
        handles, labels = axes[0].get_legend_handles_labels() if axes else ([], [])
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False)
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


__all__ = ["BASE_KEYS", "read_metrics", "task_metrics", "plot_curves", "plot_compare"]
