"""Figures of ``bilevel run`` and ``bilevel compare``: metric curves against the outer step (matplotlib Agg).

The input is a list of metrics records (the lines of ``metrics.jsonl``: ``step``, ``upper``, ``lower``,
``grad_norm``, ``time``, ``eval_time``, the task's ``evaluate()`` metrics and ``info``, the method's
diagnostics). One panel per metric: by default the upper objective, the norm of the hypergradient, the inner
loop's stationarity ``info.lower_grad_norm_last / info.lower_grad_norm_first`` (:data:`STATIONARITY`) and the
task's metrics, as in the curves of the BDA / IAPTT-GM / BVFIM papers. Any ``info`` entry can be plotted as
``info.<name>``.

Every multi-panel figure has a title; several lines in a panel get distinct colours, line styles and (hollow,
staggered) markers so that overlapping curves stay visible, and one framed legend below the panels.
:func:`line_style` and :func:`figure_legend` are shared with the figures of :mod:`bilevel.app.experiments`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: keys every metrics line has; the others (besides ``info`` and ``warnings``) are the task's metrics
BASE_KEYS: Tuple[str, ...] = ("step", "upper", "lower", "grad_norm", "time", "eval_time")

#: derived metric: ||grad_y f|| at the last inner step over the first (< 1: the inner loop made progress)
STATIONARITY = "inner_stationarity"

_LABELS = {"upper": "upper objective F", "lower": "lower objective f", "grad_norm": "||hypergradient||",
           "time": "wall time (s)", "eval_time": "evaluation time (s)",
           STATIONARITY: "inner stationarity: ||grad_y f|| last / first"}

#: line styles cycled with the colours (a cycle of 4 against 10 colours: 20 distinct combinations)
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LEGEND_FONTSIZE = 9


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


def info_metrics(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """``info.<name>`` for every numeric entry of the records' ``info``, in order of appearance."""
    names: List[str] = []
    for rec in records:
        info = rec.get("info")
        if isinstance(info, Mapping):
            for k, v in info.items():
                if _is_number(v) and f"info.{k}" not in names:
                    names.append(f"info.{k}")
    return names


def available_metrics(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """Every plottable key of a run: :data:`BASE_KEYS` (without ``step``), :data:`STATIONARITY` when the
    records have its two ``info`` entries, the task's metrics and ``info.<name>``."""
    out = list(BASE_KEYS[1:])
    if any(value(r, STATIONARITY) is not None for r in records):
        out.append(STATIONARITY)
    return out + task_metrics(records) + info_metrics(records)


def default_panels(runs_records: Sequence[Sequence[Mapping[str, Any]]]) -> List[str]:
    """The default panels for one or several runs.

    ``upper``, ``grad_norm`` and :data:`STATIONARITY` (each when some run logged it), then the task metrics that
    every run logged, without the timings and without ``eval_<key>`` copies of the base keys (the task's own
    value of the upper objective, one step later than ``upper``).

    Parameters
    ----------
    runs_records : sequence of sequence of dict
        The records of each run.

    Returns
    -------
    list of str
    """
    panels = [k for k in ("upper", "grad_norm") if any(_xy(recs, k)[0] for recs in runs_records)]
    if any(_xy(recs, STATIONARITY)[0] for recs in runs_records):
        panels.append(STATIONARITY)
    if not runs_records:
        return panels
    common = [k for k in task_metrics(runs_records[0]) if all(k in task_metrics(r) for r in runs_records[1:])]
    panels += [k for k in common if not (k.startswith("eval_") and k[5:] in BASE_KEYS)]
    return panels or ["upper"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value(record: Mapping[str, Any], key: str) -> Optional[float]:
    """The finite number ``key`` of a record (``info.<name>`` looks into ``info``; :data:`STATIONARITY` is
    derived), or None."""
    if key == STATIONARITY:
        first, last = value(record, "info.lower_grad_norm_first"), value(record, "info.lower_grad_norm_last")
        if first is None or last is None or first <= 0:
            return None
        return last / first
    if key.startswith("info.") and key not in record:
        info = record.get("info")
        v = info.get(key[5:]) if isinstance(info, Mapping) else None
    else:
        v = record.get(key)
    return float(v) if _is_number(v) and math.isfinite(v) else None


def _xy(records: Sequence[Mapping[str, Any]], key: str) -> Tuple[List[float], List[float]]:
    xs, ys = [], []
    for rec in records:
        v = value(rec, key)
        if v is not None and _is_number(rec.get("step")):
            xs.append(rec["step"])
            ys.append(v)
    return xs, ys


def label(key: str) -> str:
    """Human-readable name of a metric key."""
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("info."):
        return "info: " + key[5:].replace("_", " ")
    return key.replace("_", " ")


def line_style(i: int, n_points: int = 0, n_lines: int = 1) -> Dict[str, Any]:
    """Matplotlib keywords of line ``i`` among ``n_lines``: colour, line style and a hollow marker.

    With many points the markers are thinned to about 10 per line and staggered between lines, so that lines
    lying on top of each other still show every line's markers.

    Parameters
    ----------
    i : int
        Index of the line.
    n_points : int
        Points on the line (0: unknown, a marker on every point).
    n_lines : int
        Lines in the panel (for staggering the markers).

    Returns
    -------
    dict
    """
    style: Dict[str, Any] = {"color": f"C{i % 10}", "linestyle": LINESTYLES[i % len(LINESTYLES)],
                             "marker": MARKERS[i % len(MARKERS)], "markersize": 5, "markerfacecolor": "none",
                             "markeredgewidth": 1.1, "linewidth": 1.5}
    if n_points > 15:
        every = max(2, n_points // 10)
        style["markevery"] = ((i * every) // max(n_lines, 1) % every, every)
    return style


def figure_legend(fig: Any, axes: Sequence[Any], ncol: Optional[int] = None, fontsize: int = LEGEND_FONTSIZE,
                  handles: Optional[Sequence[Any]] = None, labels: Optional[Sequence[str]] = None) -> Any:
    """One framed legend for the whole figure, below the panels (outside every axes: it covers no curve).

    The figure must use ``layout="constrained"`` (which makes room for it). Labels are collected from all
    ``axes`` (each once) unless ``handles`` and ``labels`` are given.

    Returns
    -------
    matplotlib.legend.Legend or None
        None when there is nothing to show.
    """
    if handles is None or labels is None:
        seen: Dict[str, Any] = {}
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab and not lab.startswith("_") and lab not in seen:
                    seen[lab] = h
        labels, handles = list(seen), list(seen.values())
    if not handles:
        return None
    if ncol is None:
        longest = max(len(lab) for lab in labels)
        width_chars = fig.get_figwidth() * 72 / (0.62 * fontsize)  # characters that fit on one line
        ncol = max(1, min(len(labels), int(width_chars // (longest + 6))))
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize, frameon=True,
                      framealpha=1.0, edgecolor="0.7")


#: fixed margins of :func:`plot_curves` in inches: left (tick labels and the y label), right, top (the title),
#: bottom (tick labels and the x label), and the gaps between panels (wide: the y label of the next panel; high: the
#: x label below a panel and the title of the one under it). Constrained layout, which measures every text, took
#: 2.0 s for a run's 9 panels against 1.2 s with these (one core); a run's figure has no legend to make room for.
CURVES_MARGINS = dict(left=0.8, right=0.2, top=0.7, bottom=0.55, wide=0.85, high=0.75)


def _figure(n: int, title: str, extra_rows: float = 0.0, constrained: bool = True):
    """``(plt, fig, axes)``: ``n`` panels, 3 a row. ``constrained``: matplotlib's constrained layout (room for a
    figure legend); otherwise the fixed :data:`CURVES_MARGINS`."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    cols = min(max(n, 1), 3)
    rows = math.ceil(max(n, 1) / cols)
    width, height = 4.6 * cols, 3.4 * rows + 0.6 + extra_rows
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                             layout="constrained" if constrained else None)
    if not constrained:
        m = CURVES_MARGINS
        ax_w = (width - m["left"] - m["right"] - (cols - 1) * m["wide"]) / cols
        ax_h = (height - m["top"] - m["bottom"] - (rows - 1) * m["high"]) / rows
        fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width, bottom=m["bottom"] / height,
                            top=1 - m["top"] / height, wspace=m["wide"] / ax_w, hspace=m["high"] / ax_h)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    return plt, fig, flat[:n]


def _style(ax, key: str, ys_all: Sequence[float]) -> None:
    ax.locator_params(nbins=6)  # linear axes: at most 7 ticks (fewer tick artists to lay out and draw)
    ax.set_xlabel("outer step")
    ax.set_title(label(key), fontsize=10)
    ax.grid(True, alpha=0.3)
    positive = bool(ys_all) and min(ys_all) > 0
    if key == STATIONARITY:
        ax.axhline(1.0, color="0.4", linestyle=":", linewidth=1.0)  # above: the inner loop diverges
        ax.set_ylabel("< 1: inner loop converging", fontsize=9)
        if positive and max(max(ys_all), 1.0) > 10 * min(min(ys_all), 1.0):
            ax.set_yscale("log")
    elif key in ("upper", "lower", "grad_norm") and positive and max(ys_all) > 20 * min(ys_all):
        ax.set_yscale("log")


def plot_curves(records: Sequence[Mapping[str, Any]], path: Any, *, title: str = "",
                metrics: Optional[Sequence[str]] = None) -> Path:
    """Plot one run: each metric against the outer step, from step 0 when it was logged.

    Parameters
    ----------
    records : sequence of dict
        Metrics lines of the run.
    path : str or Path
        Output PNG.
    title : str
        Figure title (default "metrics of the run").
    metrics : sequence of str, optional
        Panels; default :func:`default_panels` of the run.

    Returns
    -------
    Path
        The written file.
    """
    plt, fig = curves_figure(records, title=title, metrics=metrics)
    try:
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def curves_figure(records: Sequence[Mapping[str, Any]], *, title: str = "",
                  metrics: Optional[Sequence[str]] = None) -> Tuple[Any, Any]:
    """``(pyplot, figure)`` of :func:`plot_curves`, not yet drawn or saved (the caller closes it)."""
    keys = list(metrics) if metrics else default_panels([records])
    plt, fig, axes = _figure(len(keys), title or "metrics of the run", constrained=False)
    try:
        for ax, key in zip(axes, keys):
            xs, ys = _xy(records, key)
            style = line_style(0, len(xs))
            if len(xs) <= 40:
                style.pop("markevery", None)
            ax.plot(xs, ys, **style)
            _style(ax, key, ys)
    except BaseException:
        plt.close(fig)
        raise
    return plt, fig


def plot_compare(runs: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]], path: Any,
                 metrics: Optional[Sequence[str]] = None, *, title: str = "") -> Path:
    """Overlay several runs: one panel per metric, one line per run, one legend below the panels.

    Parameters
    ----------
    runs : sequence of (label, records)
        Runs to overlay.
    path : str or Path
        Output PNG.
    metrics : sequence of str, optional
        Panels (a run without a metric is skipped in that panel); default :func:`default_panels`.
    title : str
        Figure title (default: the runs' labels).

    Returns
    -------
    Path
    """
    keys = list(metrics) if metrics else default_panels([recs for _, recs in runs])
    if not title:
        title = "compare: " + ", ".join(lab for lab, _ in runs)
        if len(title) > 110:
            title = f"compare: {len(runs)} runs"
    legend_rows = math.ceil(len(runs) / 3)
    plt, fig, axes = _figure(len(keys), title, extra_rows=0.25 * legend_rows)
    try:
        for ax, key in zip(axes, keys):
            ys_all: List[float] = []
            for i, (lab, records) in enumerate(runs):
                xs, ys = _xy(records, key)
                if xs:
                    ax.plot(xs, ys, label=lab, **line_style(i, len(xs), len(runs)))
                    ys_all.extend(ys)
            _style(ax, key, ys_all)
        figure_legend(fig, axes)
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


__all__ = ["BASE_KEYS", "STATIONARITY", "read_metrics", "task_metrics", "info_metrics", "available_metrics",
           "default_panels", "value", "label", "line_style", "figure_legend", "plot_curves", "curves_figure",
           "plot_compare"]
