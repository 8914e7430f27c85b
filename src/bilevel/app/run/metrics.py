"""The metrics of a run: ``metrics.jsonl`` lines, the run's clock, the progress bar, and Markdown tables.

``metrics.jsonl`` holds one JSON object per logged step: ``step`` (outer steps done), ``upper``, ``lower``,
``grad_norm`` (of that step, at the x before its update), ``time`` (seconds since the loop started), ``eval_time``
(the part of ``time`` spent in the task's evaluations), the task's ``evaluate()`` metrics (a name clashing with
one of those keys gets an ``eval_`` prefix), ``info`` (the method's numeric diagnostics) and ``warnings`` (of the
guards, when any). The first line (:func:`start_line`, ``step`` 0) holds the task's metrics at x0. Every line is
flushed when written (one ``write`` + ``flush`` per logged step).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch

from bilevel.app.run import plots
from bilevel.app.run.rundir import writing


# ------------------------------------------------------------------------------------------ values
def _plain(value: Any) -> Any:
    """A JSON-safe scalar: tensors and numpy numbers become floats/ints, nan/inf become None."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _metrics_dict(values: Any, who: str) -> Dict[str, Any]:
    """``values`` (a task's ``evaluate()`` / ``summarize()`` result) as a dict of JSON-safe values.

    Raises
    ------
    TypeError
        ``values`` is neither None nor a mapping (``who`` names the function that returned it).
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{who} must return a dict of metrics, got {type(values).__name__}")
    return {str(k): _plain(v) for k, v in values.items()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``; 0.0 where unavailable)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def _fmt(value: Any) -> str:
    """A table cell: ``-`` for None, ints as they are, floats to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` (missing entries shown as ``-``, floats to 4 significant digits).

    Parameters
    ----------
    rows : sequence of mapping
    columns : sequence of str

    Returns
    -------
    str
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ lines
def _add_times_and_metrics(line: Dict[str, Any], clock: "RunClock", metrics: Mapping[str, Any]) -> None:
    line["time"] = round(clock.loop_seconds(), 4)
    line["eval_time"] = round(clock.eval_seconds, 4)
    line.update({(k if k not in line else "eval_" + k): v for k, v in metrics.items()})


def start_line(metrics: Mapping[str, Any], clock: "RunClock") -> Dict[str, Any]:
    """The step-0 line: the task's metrics at x0 (``upper`` when ``evaluate()`` gives a float one; no ``lower``,
    ``grad_norm`` or ``info``: no step was taken)."""
    line: Dict[str, Any] = {"step": 0}
    if isinstance(metrics.get("upper"), float):
        line["upper"] = metrics["upper"]
    _add_times_and_metrics(line, clock, metrics)
    return line


def step_line(step: int, record: Mapping[str, Any], metrics: Mapping[str, Any], clock: "RunClock",
              warnings: Sequence[str]) -> Dict[str, Any]:
    """The line of a logged step from its record (:meth:`bilevel.OuterLoop.step`), the task's metrics after it
    and the guards' warnings since the previous line."""
    line: Dict[str, Any] = {"step": step, "upper": _plain(record["upper"]), "lower": _plain(record["lower"]),
                            "grad_norm": _plain(record["grad_norm"])}
    _add_times_and_metrics(line, clock, metrics)
    info = {k: _plain(v) for k, v in record.items()
            if k not in ("step", "upper", "lower", "grad_norm") and isinstance(v, (int, float))}
    if info:
        line["info"] = info
    if warnings:
        line["warnings"] = list(warnings)
    return line


def run_summary(summary: Dict[str, Any], config: Mapping[str, Any], task: str, steps: int, loop_seconds: float,
                clock: "RunClock", warnings: Mapping[str, int], device: Optional[str] = None) -> Dict[str, Any]:
    """``summary`` (the task's ``summarize()`` with ``upper_final``) completed in place with ``method``, ``task``,
    ``outer_steps``, ``inner_steps``, ``seed``, ``loop_seconds``, ``wall_seconds``, ``peak_rss_mb``, ``device``
    (where the run ran, resolved: ``cpu`` or ``cuda:N``; when given) and, when any, the guards' ``warnings``
    counts; returned."""
    summary.update(method=config["method"], task=task, outer_steps=steps, inner_steps=config["inner_steps"],
                   seed=config["seed"], loop_seconds=round(loop_seconds, 3),
                   wall_seconds=round(clock.wall_seconds(), 3), peak_rss_mb=round(peak_rss_mb(), 1))
    if device is not None:
        summary["device"] = str(device)
    if warnings:
        summary["warnings"] = warnings
    return summary


class MetricsFile:
    """``DIR/metrics.jsonl`` while a run writes it (append mode; every line flushed).

    Attributes
    ----------
    path : Path or None
        The file (after :meth:`open`).
    records : list of dict
        The lines written so far (or read back after :meth:`truncate`).
    """

    def __init__(self) -> None:
        self.path: Optional[Path] = None
        self.records: List[Dict[str, Any]] = []
        self._file: Optional[IO[str]] = None

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self, path: Path) -> None:
        """Open ``path`` for appending."""
        self.path = Path(path)
        self._file = open(self.path, "a")

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one line and flush it."""
        assert self._file is not None and self.path is not None, "open the metrics file first"
        with writing(self.path):
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        self.records.append(dict(line))

    def flush(self, sync: bool = False) -> None:
        """Flush the file (``sync``: and ``os.fsync`` it, so that a checkpoint never points past durable lines)."""
        if self._file is None:
            return
        if not sync:
            self._file.flush()
            return
        with writing(self.path):
            self._file.flush()
            os.fsync(self._file.fileno())

    def size(self) -> int:
        """Bytes in the file."""
        assert self.path is not None
        return self.path.stat().st_size

    def truncate(self, nbytes: int) -> None:
        """Cut the file to its first ``nbytes`` bytes, read the remaining lines back into :attr:`records`, reopen."""
        assert self._file is not None and self.path is not None
        self._file.close()
        with open(self.path, "r+b") as fh:
            fh.truncate(int(nbytes))
        self.records = plots.read_metrics(self.path) if nbytes else []
        self._file = open(self.path, "a")

    def close(self) -> None:
        """Close the file (idempotent; closing flushes, so it may fail too: disk full)."""
        if self._file is not None:
            file, self._file = self._file, None
            with writing(self.path):
                file.close()


# ------------------------------------------------------------------------------------------ time
class RunClock:
    """The seconds of a run: wall time since set-up, outer-loop time over all sessions, and the part of it spent in
    the task's evaluations.

    Attributes
    ----------
    elapsed : float
        Loop seconds of the sessions before this one (non-zero after a resume).
    eval_seconds : float
        Of the loop seconds, those spent in ``evaluate()`` (all sessions).
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.elapsed = 0.0
        self.eval_seconds = 0.0
        self._t0 = 0.0

    def restart(self) -> None:
        """Start the wall clock again (at set-up)."""
        self.started = time.perf_counter()

    def start_loop(self) -> None:
        """Start the loop clock of this session (at its first step; no-op afterwards)."""
        if not self._t0:
            self._t0 = time.perf_counter()

    def loop_seconds(self) -> float:
        """Seconds spent in the outer loop so far (all sessions)."""
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 else 0.0)

    def wall_seconds(self) -> float:
        """Seconds since set-up, plus the loop seconds of earlier sessions."""
        return time.perf_counter() - self.started + self.elapsed

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Count the block as evaluation time."""
        t_eval = time.perf_counter()
        yield
        self.eval_seconds += time.perf_counter() - t_eval

    def restore(self, loop_seconds: float, eval_seconds: float) -> None:
        """Continue from a checkpoint's times (the loop clock restarts at the next step)."""
        self.elapsed, self._t0 = float(loop_seconds), 0.0
        self.eval_seconds = float(eval_seconds)


# ------------------------------------------------------------------------------------------ progress
class Progress:
    """The progress bar of a run (tqdm on stderr): the outer step, the upper objective and up to four task metrics
    of the last logged line."""

    def __init__(self, total: int, initial: int, desc: str, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=quiet, desc=desc, unit="step", dynamic_ncols=True,
                        file=sys.stderr)
        self.postfix: Dict[str, str] = {}

    def update(self, record: Mapping[str, Any]) -> None:
        """One outer step done, with its record (``logged``: the metrics line, on a logged step)."""
        self.postfix["upper"] = _fmt(_plain(record["upper"]))
        line = record.get("logged")
        if line:
            self.postfix.update({k: _fmt(line[k]) for k in plots.task_metrics([line])[:4]})
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


__all__ = ["markdown_table", "peak_rss_mb", "start_line", "step_line", "run_summary", "MetricsFile", "RunClock",
           "Progress"]
