"""Run a task end to end: configuration, outer loop, progress, metrics files, summary and curves.

:func:`run_task` is what ``bilevel run`` calls::

    from bilevel.app.run.runner import run_task
    summary = run_task("hyperclean", {"method": "bda", "dataset": "digits", "outer_steps": 50}, "out/bda")

It writes into the output directory

* ``config.yaml`` -- the resolved configuration (loadable again with ``bilevel run TASK --config``);
* ``metrics.jsonl`` -- one JSON object per logged step: ``step`` (outer steps done), ``upper``, ``lower``,
  ``grad_norm`` (of that step, at the x before its update), ``time`` (seconds since the loop started),
  ``eval_time`` (the part of ``time`` spent in the task's evaluations, so ``time - eval_time`` is optimization), the
  task's ``evaluate()`` metrics (at the x after the update) and ``info`` (the method's numeric diagnostics); the
  first line (``step`` 0, :meth:`TaskRunner.log_start`) holds the task's metrics at x0;
* ``summary.json`` -- the task's ``summarize()`` plus ``upper_final``, ``wall_seconds``, ``peak_rss_mb``,
  ``method``, ``task``, ``outer_steps``, ``inner_steps``, ``seed``;
* ``curves.png`` -- the upper objective, the hypergradient norm, the inner loop's stationarity and the task's
  metrics against the outer step (:mod:`bilevel.app.run.plots`);
* ``.lock`` / ``.lock.pid`` -- the directory's lock and its holder's PID while a run writes it (one writer at a
  time, :class:`bilevel.app.run.checkpoint.RunLock`; docs/long_runs.md).

The whole state of a run lives in one :class:`TaskRunner` (loop, task, step counter, RNG, metrics file
position; see :meth:`TaskRunner.state_dict`) so that checkpoints can be written between steps:
``DIR/checkpoints/step-NNNNNN.pt`` every ``checkpoint_every`` steps and at the end (:mod:`bilevel.app.run.checkpoint`),
and :func:`resume_run` continues an interrupted run exactly. :mod:`bilevel.app.run.guards` stops diverging runs
(:class:`bilevel.app.run.guards.DivergenceError`) and turns method diagnostics into warnings (docs/long_runs.md).
:func:`compare_runs` backs ``bilevel compare`` and :func:`demo_table` the hyper-cleaning demo.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from bilevel.app.run import checkpoint as ckpt
from bilevel.app import config as cfg
from bilevel.app.run import plots
from bilevel import schedules
from bilevel.api import OuterLoop
from bilevel.errors import NonFiniteError
from bilevel.app.run.guards import (PRECISIONS, DivergenceError, GuardOptions, Guards, RunInterrupted, StopSignals,
                     autocast_objectives)
from bilevel.app.tasks.base import TaskRun

#: files of a run directory
CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, CURVES_FILE = "config.yaml", "metrics.jsonl", "summary.json", "curves.png"

#: run-control settings of a run directory (not part of config.yaml; read back by :func:`resume_run`)
RUN_OPTIONS_FILE = "run_options.yaml"

#: default checkpoint interval in outer steps (0 = no checkpoints)
DEFAULT_CHECKPOINT_EVERY = 50

#: checkpoints kept in DIR/checkpoints (the newest ones)
CHECKPOINTS_KEPT = 2

logger = logging.getLogger("bilevel.app.run.runner")

#: summary keys that describe the run rather than measure it (left out of the metric columns of tables)
META_KEYS: Tuple[str, ...] = ("method", "task", "outer_steps", "inner_steps", "seed", "wall_seconds",
                              "loop_seconds", "peak_rss_mb")

#: settings of :func:`demo_table` on top of the hyper-cleaning task's defaults
DEMO_DEFAULTS: Dict[str, Any] = {"dataset": "digits", "outer_steps": 60, "inner_steps": 30, "inner_lr": 1.0,
                                 "log_every": 10, "threads": 1}


# ------------------------------------------------------------------------------------------ helpers
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


@contextlib.contextmanager
def _writing(path: Any) -> Iterator[None]:
    """Name ``path`` in an OSError raised without a file name inside the block.

    ``write`` / ``flush`` / ``fsync`` on an open file (e.g. ENOSPC, "No space left on device") raise OSErrors
    that do not say which file; ``bilevel run`` prints the path it gets here.
    """
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    """Run the block without consuming the python, numpy or torch (CPU) random streams."""
    states = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])


def _curves_title(task: str, config: Mapping[str, Any], steps: Any) -> str:
    """Title of curves.png."""
    return f"{task}: {config['method']} (K={config['inner_steps']}, T={steps})"


def _is_writer() -> bool:
    """True unless torch.distributed is initialized and this process is not rank 0."""
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


# ------------------------------------------------------------------------------------------ the run
class TaskRunner:
    """One run of a task: everything between the configuration and the files.

    Parameters
    ----------
    task : str
        Task name (``hyperclean``, ``fewshot``, ``toy``; any name with ``task_module``).
    config : mapping
        Options (partial or complete; resolved over the defaults with :func:`bilevel.app.config.resolve_config`).
    out_dir : str or Path
        Output directory (created).
    quiet : bool
        No progress bar.
    overwrite : bool
        Allow writing into a directory that already holds a run.
    task_module : str, optional
        Module implementing the task instead of ``bilevel.app.tasks.<task>``.
    module : module, optional
        An already imported task module (takes precedence over ``task_module``).
    checkpoint_every : int
        Write ``DIR/checkpoints/step-NNNNNN.pt`` every N outer steps and after the last one (0: never);
        the newest :data:`CHECKPOINTS_KEPT` are kept.
    precision : {"fp32", "bf16"}
        ``bf16`` runs the objectives under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (float32 results,
        float32 hypergradient); needs ``dtype`` float32.
    guards : GuardOptions, optional
        Divergence and warning thresholds (default :class:`bilevel.app.run.guards.GuardOptions()`).

    Attributes
    ----------
    config : dict
        The resolved configuration.
    run : TaskRun or None
        The task's run (after :meth:`setup`).
    loop : OuterLoop or None
        The outer loop (after :meth:`setup`).
    t : int
        Outer steps done.
    records : list of dict
        Metrics lines written so far.
    """

    #: builds the outer loop in :meth:`setup` (bilevel.parallel.DistributedTaskRunner swaps it)
    loop_factory: Any = OuterLoop

    def __init__(self, task: str, config: Optional[Mapping[str, Any]], out_dir: Any, *, quiet: bool = False,
                 overwrite: bool = False, task_module: Optional[str] = None,
                 module: Optional[ModuleType] = None, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                 precision: str = "fp32", guards: Optional[GuardOptions] = None):
        if module is None:
            module = cfg.load_task(task, task_module)
        else:
            cfg.check_task_module(module)
        self.task = task
        self.module = module
        self.config = cfg.resolve_config(task, module, dict(config or {}), names=("config",))
        self.out = Path(out_dir)
        self.quiet = quiet
        self.overwrite = overwrite
        self.run: Optional[TaskRun] = None
        self.loop: Optional[OuterLoop] = None
        self.t = 0
        self.records: List[Dict[str, Any]] = []
        self.elapsed = 0.0  # loop seconds before the current session (non-zero after a resume)
        self.eval_seconds = 0.0  # of the loop seconds, those spent in the task's evaluate() (all sessions)
        self._file: Optional[IO[str]] = None
        self._t0 = 0.0
        self._started = time.perf_counter()
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
            raise ValueError(f"bad value {checkpoint_every!r} for checkpoint_every: expected an integer >= 0 "
                             "(0 = no checkpoints)")
        if precision not in PRECISIONS:
            raise ValueError(f"bad value {precision!r} for precision; choose from: {', '.join(PRECISIONS)}")
        if precision == "bf16" and self.config["dtype"] != "float32":
            raise ValueError(f"precision bf16 needs dtype float32 (autocast with float32 hypergradients), got "
                             f"dtype {self.config['dtype']}")
        self.checkpoint_every = checkpoint_every
        self.precision = precision
        self.guard_options = guards if guards is not None else GuardOptions()
        self.guards = Guards(self.config["method"], self.guard_options, log=self._warn)
        self.task_module = task_module
        self.last_checkpoint: Optional[Path] = None
        self._lock: Optional[ckpt.RunLock] = None  # DIR/.lock, held from setup() to the end of the run

    def _warn(self, message: str) -> None:
        if _is_writer():
            logger.warning(message)

    def run_options(self) -> Dict[str, Any]:
        """The run-control settings written to ``run_options.yaml`` (not part of ``config.yaml``).

        Returns
        -------
        dict
            ``checkpoint_every``, ``precision``, the :class:`~bilevel.app.run.guards.GuardOptions` fields,
            ``task_module`` (None for the built-in tasks) and ``world_size`` (processes; a resume needs as many).
        """
        return {"checkpoint_every": self.checkpoint_every, "precision": self.precision,
                **self.guard_options.as_dict(), "task_module": self.task_module or None, "world_size": 1}

    # -- set-up ----------------------------------------------------------------------------------------
    def _check_out_dir(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"output path {str(self.out)!r} exists and is not a directory")
        existing = [n for n in (METRICS_FILE, SUMMARY_FILE) if (self.out / n).exists()]
        if existing and not self.overwrite:
            raise ValueError(f"output directory {str(self.out)!r} already holds a run ({', '.join(existing)}); "
                             "choose another --out or pass --overwrite")

    def seed(self) -> None:
        """Seed ``random``, numpy and torch with the configured seed."""
        seed = self.config["seed"]
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    def setup(self, resume: bool = False) -> None:
        """Seed, set threads, build the task and the loop, then create the directory and write ``config.yaml``.

        Every option is checked first, the method options' values included (the method is bound once, as the
        first step will); then the directory is locked (:meth:`hold_lock`), and only then are an older run's
        files deleted (``overwrite``) and the new ones written.

        Parameters
        ----------
        resume : bool
            Keep the directory's files as they are (the caller then restores a :meth:`state_dict` with
            :meth:`load_state_dict`, which truncates metrics.jsonl to the checkpoint).

        Raises
        ------
        ValueError
            A bad option or an output directory that holds a run (without ``overwrite``); nothing was written.
        bilevel.app.run.checkpoint.RunLockedError
            Another process holds the directory's lock (a run in progress); nothing was written.
        """
        self._started = time.perf_counter()
        if not resume:
            self._check_out_dir()
        if self.config["threads"] is not None:
            torch.set_num_threads(self.config["threads"])
        self.seed()
        run = self.module.build(cfg.build_config(self.config, self.module))
        if not isinstance(run, TaskRun):
            raise TypeError(f"{self.module.__name__}.build must return a bilevel.app.tasks.TaskRun, got "
                            f"{type(run).__name__}")
        self.run = run
        c = self.config
        self.loop = self.loop_factory(run.x0, run.y0, method=c["method"], outer_lr=c["outer_lr"],
                                      outer_optimizer=c["outer_optimizer"], inner_steps=c["inner_steps"],
                                      inner_lr=c["inner_lr"], init_lr=c["init_lr"], **dict(run.loop_options or {}),
                                      **{k: schedules.from_config(v) for k, v in c["method_options"].items()})
        # nothing is written before the task, the loop and the method accepted the configuration; nothing is
        # deleted or overwritten before this process holds the directory's lock
        if not resume:
            self.out.mkdir(parents=True, exist_ok=True)
        self.hold_lock()
        try:
            if not resume:
                self._check_out_dir()  # again, under the lock: another run may have finished here meanwhile
                for name in (METRICS_FILE, SUMMARY_FILE, CURVES_FILE):  # leave no stale files of an older run
                    if (self.out / name).exists():
                        (self.out / name).unlink()
                for old in ckpt.list_checkpoints(self.out):  # nor checkpoints of an older run
                    old.unlink()
                cfg.dump_yaml(self.config, self.out / CONFIG_FILE)
                cfg.dump_yaml(self.run_options(), self.out / RUN_OPTIONS_FILE)
            if _is_writer():  # temporary files of atomic writes that a killed process left (safe: we hold the lock)
                for directory in (self.out, self.out / ckpt.CHECKPOINT_DIR):
                    for stale in ckpt.remove_stale_temp_files(directory):
                        logger.info("removed the stale temporary file %s (left by a killed process)", stale)
            self._file = open(self.out / METRICS_FILE, "a")
        except BaseException:
            self.release_lock()
            raise

    def hold_lock(self) -> None:
        """Take the run directory's lock (``DIR/.lock``, :class:`bilevel.app.run.checkpoint.RunLock`) unless held already.

        Only the writing process (rank 0) locks; the lock lasts until :meth:`close` / :meth:`release_lock`, or
        until the process dies (the OS releases it, also on ``kill -9``).

        Raises
        ------
        bilevel.app.run.checkpoint.RunLockedError
            Another process holds it (the message names its PID).
        """
        if self._lock is None and _is_writer():
            self._lock = ckpt.RunLock(self.out).acquire()

    def release_lock(self) -> None:
        """Release the run directory's lock (idempotent)."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    # -- steps -----------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True when all outer steps are taken."""
        return self.t >= self.config["outer_steps"]

    def loop_seconds(self) -> float:
        """Seconds spent in the outer loop so far (all sessions)."""
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 else 0.0)

    def should_log(self, steps_done: int) -> bool:
        """Whether the state after ``steps_done`` outer steps is evaluated and written."""
        return steps_done % self.config["log_every"] == 0 or steps_done == self.config["outer_steps"]

    def step(self) -> Dict[str, Any]:
        """Take outer step ``t``; evaluate and write a metrics line when it is a logged step.

        Returns
        -------
        dict
            The step's record (from :meth:`bilevel.OuterLoop.step`), plus the evaluation when logged.
        """
        assert self.run is not None and self.loop is not None, "call setup() first"
        if not self._t0:
            self._t0 = time.perf_counter()
        if self.t == 0 and not self.records:  # a fresh run (or one restarted from step 0): log x0 first
            self.log_start()
        upper, lower = autocast_objectives(self.run.objectives(self.t), self.precision)
        total = self.config["outer_steps"]
        x_start, y_start = self.loop.x, self.loop.y0  # where this step's inner loop starts (copies)
        if self.t == 0 and self.guards.reference is None:  # F_0, f_0 at (x0, y0): the guards' references
            ref = self._objective_values({"upper": upper, "lower": lower}, x_start, y_start)
            self.guards.set_reference(ref["upper"], ref["lower"])

        def lower_start() -> float:  # f(x, y_start), asked for by the guards when the step looks suspicious
            return self._objective_values({"lower": lower}, x_start, y_start)["lower"]

        with warnings.catch_warnings(record=True) as caught:  # the core's RuntimeWarnings go to the guards
            warnings.simplefilter("always", RuntimeWarning)
            try:
                record = self.loop.step(upper, lower)
            except NonFiniteError as err:
                raise self.guards.nonfinite(self.t + 1, total, err) from err
        core: List[str] = []
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                core.append(str(w.message))
            else:  # not ours to judge: pass it on
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self.guards.check(self.t + 1, total, record, lower_start=lower_start)
        self.t += 1
        self.guards.diagnose(self.t, record, core)
        if self.should_log(self.t):
            line: Dict[str, Any] = {"step": self.t, "upper": _plain(record["upper"]),
                                    "lower": _plain(record["lower"]), "grad_norm": _plain(record["grad_norm"])}
            t_eval = time.perf_counter()
            metrics = _metrics_dict(self.run.evaluate(self.loop), "evaluate()")
            self.eval_seconds += time.perf_counter() - t_eval
            line["time"] = round(self.loop_seconds(), 4)
            line["eval_time"] = round(self.eval_seconds, 4)
            line.update({(k if k not in line else "eval_" + k): v for k, v in metrics.items()})
            info = {k: _plain(v) for k, v in record.items()
                    if k not in ("step", "upper", "lower", "grad_norm") and isinstance(v, (int, float))}
            if info:
                line["info"] = info
            pending = self.guards.flush()
            if pending:
                line["warnings"] = pending
            self.write(line)
            record = dict(record, logged=line)
        return record

    def log_start(self) -> Dict[str, Any]:
        """Write the step-0 metrics line: the task's ``evaluate()`` at x0, before the first step.

        ``upper`` is the task's upper objective when ``evaluate()`` returns one (kept as ``eval_upper`` too, as in
        the other lines); there is no ``lower``, ``grad_norm`` or ``info`` (no step was taken). The random
        streams are left as they were: the run's trajectory does not depend on this line.

        Returns
        -------
        dict
            The line.
        """
        assert self.run is not None and self.loop is not None
        t_eval = time.perf_counter()
        with _rng_untouched():
            metrics = _metrics_dict(self.run.evaluate(self.loop), "evaluate()")
        self.eval_seconds += time.perf_counter() - t_eval
        line: Dict[str, Any] = {"step": 0}
        if isinstance(metrics.get("upper"), float):
            line["upper"] = metrics["upper"]
        line["time"] = round(self.loop_seconds(), 4)
        line["eval_time"] = round(self.eval_seconds, 4)
        line.update({(k if k not in line else "eval_" + k): v for k, v in metrics.items()})
        self.write(line)
        return line

    def _objective_values(self, objectives: Mapping[str, Any], x: Any, y: Any) -> Dict[str, float]:
        """``{name: float(fn(x, y))}`` without gradients, leaving the random streams as they were.

        In a task-parallel distributed run (a loop with ``data_parallel`` False) the values are summed over
        the ranks, like the ``upper`` / ``lower`` of the step records (every rank must call this together).
        """
        with torch.no_grad(), _rng_untouched():
            values = {name: float(fn(x, y)) for name, fn in objectives.items()}
        ctx = getattr(self.loop, "ctx", None)
        if ctx is not None and getattr(self.loop, "data_parallel", True) is False:
            from bilevel.parallel import reduce_record  # sums "upper" and "lower" over the ranks

            values = reduce_record(values, ctx)
        return values

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one metrics line and flush it."""
        assert self._file is not None
        with _writing(self.out / METRICS_FILE):
            self._file.write(json.dumps(line) + "\n")
            self._file.flush()
        self.records.append(dict(line))

    # -- end -------------------------------------------------------------------------------------------
    def finish(self) -> Dict[str, Any]:
        """Summarize, write ``curves.png`` and then ``summary.json`` (atomically: it marks a finished run).

        ``wall_seconds`` counts from :meth:`setup` (data loading and model building included) to the end of
        ``summarize``.

        Returns
        -------
        dict
            The summary.
        """
        assert self.run is not None and self.loop is not None
        loop_seconds = self.loop_seconds()
        self._close_metrics()  # the directory stays locked until the summary is written (execute releases it)
        summary = _metrics_dict(self.run.summarize(self.loop), "summarize()")
        if "upper_final" not in summary:
            upper, lower = self.run.objectives(max(self.t - 1, 0))
            summary["upper_final"] = _plain(self.loop.evaluate(upper, lower)[0])
        c = self.config
        summary.update(method=c["method"], task=self.task, outer_steps=self.t, inner_steps=c["inner_steps"],
                       seed=c["seed"], loop_seconds=round(loop_seconds, 3),
                       wall_seconds=round(time.perf_counter() - self._started + self.elapsed, 3), peak_rss_mb=round(peak_rss_mb(), 1))
        if self.guards.summary():
            summary["warnings"] = self.guards.summary()
        with _writing(self.out / CURVES_FILE):
            plots.plot_curves(self.records, self.out / CURVES_FILE, title=_curves_title(self.task, c, self.t))
        with _writing(self.out / SUMMARY_FILE):
            ckpt.atomic_write_bytes(self.out / SUMMARY_FILE, (json.dumps(summary, indent=1) + "\n").encode())
        return summary

    def close(self) -> None:
        """Close the metrics file and release the run directory's lock (idempotent)."""
        self._close_metrics()
        self.release_lock()

    def _close_metrics(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with _writing(self.out / METRICS_FILE):  # closing flushes: it may fail too (disk full)
                file.close()

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue this run exactly (taken between steps).

        Returns
        -------
        dict
            ``t``, ``loop`` (OuterLoop state), ``task`` (TaskRun state or None), ``rng`` (random, numpy,
            torch), ``metrics_bytes`` (length of metrics.jsonl to keep), ``metrics_lines`` (its lines),
            ``loop_seconds``, ``config``, ``guards`` (:class:`~bilevel.app.run.guards.Guards` state) and
            ``run_options``. Plain data only (tensors, lists, tuples, dicts, numbers, strs, None: checkpoints
            are read with ``weights_only=True``); the RNG states come from :func:`bilevel.app.run.checkpoint.rng_state`.
        """
        assert self.run is not None and self.loop is not None
        if self._file is not None:
            self._file.flush()
        extra = {"metrics_lines": len(self.records), "guards": copy.deepcopy(self.guards.state_dict()),
                 "run_options": self.run_options()}
        # deep copies: OuterLoop.state_dict() shares the optimizer's state tensors, which later steps mutate
        return {"t": self.t, "loop": copy.deepcopy(self.loop.state_dict()),
                "task": copy.deepcopy(self.run.state_dict()) if self.run.state_dict else None,
                "rng": ckpt.rng_state(),
                "metrics_bytes": (self.out / METRICS_FILE).stat().st_size, "loop_seconds": self.loop_seconds(),
                "eval_seconds": self.eval_seconds,
                "config": dict(self.config), **extra}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` after :meth:`setup` (truncates metrics.jsonl to the saved length).

        Parameters
        ----------
        state : mapping
        """
        assert self.run is not None and self.loop is not None and self._file is not None
        self.loop.load_state_dict(state["loop"])
        if state.get("task") is not None:
            if self.run.load_state_dict is None:
                raise ValueError("the checkpoint holds task state but the task has no load_state_dict")
            self.run.load_state_dict(state["task"])
        ckpt.set_rng_state(state["rng"])
        if state.get("guards") is not None:
            self.guards.load_state_dict(state["guards"])
        self.t = int(state["t"])
        self.elapsed, self._t0 = float(state["loop_seconds"]), 0.0
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
        self._file.close()
        path = self.out / METRICS_FILE
        with open(path, "r+b") as fh:
            fh.truncate(int(state["metrics_bytes"]))
        self.records = plots.read_metrics(path)
        self._file = open(path, "a")
        if "metrics_lines" in state and len(self.records) != int(state["metrics_lines"]):
            raise ValueError(f"{path} holds {len(self.records)} lines up to the checkpoint's offset, the checkpoint "
                             f"recorded {state['metrics_lines']}: the metrics file was changed")

    def save_checkpoint(self, state: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
        """Write a checkpoint atomically (rank 0 only) after fsync-ing metrics.jsonl; keep the newest two.

        Parameters
        ----------
        state : mapping, optional
            A :meth:`state_dict` taken earlier (default: the current state).

        Returns
        -------
        Path or None
            The file written (None on other ranks).
        """
        if not _is_writer():
            return None
        if state is None:
            state = self.state_dict()
        if self._file is not None:  # the checkpoint never points past durable metrics
            with _writing(self.out / METRICS_FILE):
                self._file.flush()
                os.fsync(self._file.fileno())
        with _writing(self.out / ckpt.CHECKPOINT_DIR / ckpt.checkpoint_name(int(state["t"]))):
            self.last_checkpoint = ckpt.save(state, self.out, int(state["t"]), keep=CHECKPOINTS_KEPT)
        return self.last_checkpoint

    def restore_latest(self) -> Optional[Path]:
        """After ``setup(resume=True)``: load the newest good checkpoint (falling back past bad ones).

        Checkpoints that fail their checksum, belong to another configuration or point past the end of
        metrics.jsonl are skipped with a warning naming the file. Without a usable checkpoint the run starts
        over from step 0 (metrics.jsonl emptied).

        Returns
        -------
        Path or None
            The checkpoint loaded, or None when starting over.
        """
        assert self._file is not None, "call setup(resume=True) first"
        size = (self.out / METRICS_FILE).stat().st_size

        def accept(state: Dict[str, Any]) -> Optional[str]:
            saved = {k: v for k, v in dict(state.get("config") or {}).items() if k != "threads"}
            if saved != {k: v for k, v in self.config.items() if k != "threads"}:
                return f"its configuration differs from {self.out / CONFIG_FILE}"
            if int(state.get("metrics_bytes", 0)) > size:
                return (f"it records {state['metrics_bytes']} bytes of {METRICS_FILE} but the file has only "
                        f"{size}")
            return None

        state, path = ckpt.load_latest(self.out, accept=accept, report=self._warn)
        if state is None:
            if ckpt.list_checkpoints(self.out):
                self._warn(f"no usable checkpoint in {self.out / ckpt.CHECKPOINT_DIR}: starting over from step 0")
            else:
                logger.info("no checkpoint in %s: starting over from step 0", self.out)
            self._file.close()
            with open(self.out / METRICS_FILE, "r+b") as fh:
                fh.truncate(0)
            self.records = []
            self._file = open(self.out / METRICS_FILE, "a")
            return None
        self.load_state_dict(state)
        logger.info("resumed %s from %s (outer step %d)", self.out, path, self.t)
        self.last_checkpoint = path
        return path

    def _checkpoint_due(self) -> bool:
        return self.checkpoint_every > 0 and (self.t % self.checkpoint_every == 0 or self.done)

    # -- everything ------------------------------------------------------------------------------------
    def execute(self, handle_signals: bool = True) -> Dict[str, Any]:
        """Set up (unless done already), run the remaining steps with a progress bar, finish.

        Parameters
        ----------
        handle_signals : bool
            Turn SIGINT / SIGTERM into :class:`bilevel.app.run.guards.RunInterrupted` (a ``KeyboardInterrupt``) raised
            after the state of the last completed outer step was saved as a checkpoint (when checkpoints are
            on); its message names the checkpoint and the resume command. Only in the main thread; the
            previous handlers are restored on return.

        Returns
        -------
        dict
            The summary.
        """
        with StopSignals(handle_signals) as stop:
            return self._execute(stop)

    def _interrupted(self, err: RunInterrupted, good: Optional[Mapping[str, Any]], finishing: bool) -> None:
        """Save ``good`` (the state after the last completed step) unless it is saved already; word ``err``."""
        path = self.last_checkpoint
        if good is not None and (path is None or path.name != ckpt.checkpoint_name(good["t"])):
            path = self.save_checkpoint(good)
        import shlex

        resume = f"bilevel run --resume {shlex.quote(str(getattr(self, 'real_out', self.out)))}"
        total = self.config["outer_steps"]
        if finishing:
            what = f"interrupted by {err.signame} while writing the final files (all {total} outer steps done)"
            saved = f"checkpoint {path}" if path is not None else "no checkpoint (checkpoints are off)"
            err.args = (f"{what}; {saved}; `{resume}` writes the missing files"
                        + ("" if path is not None else " after running the steps again"),)
        else:
            done = int(good["t"]) if good is not None else self.t
            what = f"interrupted by {err.signame} after {done} of {total} outer steps"
            if path is not None and good is not None:
                saved = f"saved the last completed step (outer step {done}) to {path}"
            elif path is not None:
                saved = f"last checkpoint: {path}"
            elif self.checkpoint_every == 0:
                saved = "no checkpoint (checkpoints are off: --checkpoint-every 0), a resume starts over"
            else:
                saved = "no step completed yet, a resume starts over"
            err.args = (f"{what}; {saved}; resume with: {resume}",)
        err.checkpoint = path

    def _execute(self, stop: StopSignals) -> Dict[str, Any]:
        from tqdm import tqdm

        if self.loop is None:
            self.setup()
        total = self.config["outer_steps"]
        bar = tqdm(total=total, initial=self.t, disable=self.quiet, desc=f"{self.task}/{self.config['method']}",
                   unit="step", dynamic_ncols=True, file=sys.stderr)
        postfix: Dict[str, str] = {}
        looped = False  # True when the loop ended normally: finish() then writes the summary under the lock
        good: Optional[Dict[str, Any]] = None
        try:
            while not self.done:
                with stop.deferred():  # a signal here waits for the snapshot (then stop.check raises)
                    good = self.state_dict() if self.checkpoint_every > 0 and self.t > 0 else None
                stop.check()
                try:  # a signal during the step abandons it: `good` is the state to save
                    record = self.step()
                except DivergenceError as err:  # keep the state before the failed step as the last checkpoint
                    if good is not None and (self.last_checkpoint is None
                                             or self.last_checkpoint.name != ckpt.checkpoint_name(good["t"])):
                        path = self.save_checkpoint(good)
                        err.args = (f"{err.args[0]}; saved the last good state (outer step {good['t']}) to "
                                    f"{path}",)
                    elif self.last_checkpoint is not None:
                        err.args = (f"{err.args[0]}; last good checkpoint: {self.last_checkpoint}",)
                    raise
                with stop.deferred():  # a signal here is raised at the next step's stop.check
                    good = None
                    if self._checkpoint_due():
                        self.save_checkpoint()
                    postfix["upper"] = _fmt(_plain(record["upper"]))
                    line = record.get("logged")
                    if line:
                        postfix.update({k: _fmt(line[k]) for k in plots.task_metrics([line])[:4]})
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(1)
            looped = True
        except RunInterrupted as err:
            if good is None and stop.received is not None and self.checkpoint_every > 0 and self.t > 0:
                good = self.state_dict()  # interrupted between two steps (a second signal): save this state
            self._interrupted(err, good, finishing=False)
            raise
        finally:
            bar.close()
            if looped:
                self._close_metrics()
            else:
                self.close()  # also releases the run directory's lock
        try:
            return self.finish()
        except RunInterrupted as err:
            self._interrupted(err, None, finishing=True)
            raise
        finally:
            self.release_lock()


def run_task(task: str, config: Optional[Mapping[str, Any]], out_dir: Any, quiet: bool = False, *,
             overwrite: bool = False, task_module: Optional[str] = None, **run_options: Any) -> Dict[str, Any]:
    """Run a task and write ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``curves.png``.

    Parameters
    ----------
    task : str
        ``hyperclean``, ``fewshot`` or ``toy`` (any name together with ``task_module``).
    config : mapping or None
        Options overriding the defaults (runner keys, ``method_options``, task options; a complete
        ``config.yaml`` works too). Unknown keys and bad values raise ValueError.
    out_dir : str or Path
        Output directory.
    quiet : bool
        No progress bar.
    overwrite : bool
        Allow writing into a directory that already holds a run.
    task_module : str, optional
        Import the task from this module instead of ``bilevel.app.tasks.<task>``.
    **run_options
        ``checkpoint_every``, ``precision``, ``guards`` of :class:`TaskRunner`.

    Returns
    -------
    dict
        The summary (also written to ``summary.json``).
    """
    runner = TaskRunner(task, config, out_dir, quiet=quiet, overwrite=overwrite, task_module=task_module,
                        **run_options)
    return runner.execute()


def resume_run(out_dir: Any, quiet: bool = False) -> Dict[str, Any]:
    """Continue an interrupted run from its newest good checkpoint (``bilevel run --resume DIR``).

    Reads ``DIR/config.yaml`` and ``DIR/run_options.yaml``, rebuilds the task, loads the newest checkpoint
    that verifies (older ones when the newest is corrupt; step 0 when none is usable), truncates
    metrics.jsonl to the checkpoint's length and runs the remaining steps. A finished run (summary.json
    present) is not run again; a missing curves.png is drawn again from metrics.jsonl. A run whose steps are
    all done but whose summary.json is missing (stopped while writing it) gets it from its final checkpoint,
    without running any step again.

    Parameters
    ----------
    out_dir : str or Path
        The run directory.
    quiet : bool
        No progress bar.

    Returns
    -------
    dict
        The summary.

    Raises
    ------
    ValueError
        Not a run directory, an unreadable config.yaml / run_options.yaml, or a run made with another
        number of processes (``world_size`` of run_options.yaml; under torchrun the resume runs on every rank).
    bilevel.app.run.checkpoint.RunLockedError
        The run is still going (another process holds ``DIR/.lock``; the message names its PID).
    """
    from bilevel import parallel as dist_

    d = Path(out_dir)
    if not (d / CONFIG_FILE).is_file() or not (d / METRICS_FILE).is_file():
        raise ValueError(f"cannot resume {str(d)!r}: no {CONFIG_FILE} and {METRICS_FILE} (not a `bilevel run` "
                         "directory)")
    summary = _finished_summary(d)
    if summary is not None:
        _write_missing_curves(d, summary, lock=True)
        return summary
    config = cfg.load_yaml(d / CONFIG_FILE)
    options = cfg.load_yaml(d / RUN_OPTIONS_FILE) if (d / RUN_OPTIONS_FILE).exists() else {}
    task = config.get("task")
    if not isinstance(task, str):
        raise ValueError(f"{d / CONFIG_FILE} names no task (key 'task')")
    guard_keys = set(GuardOptions().as_dict())
    unknown = sorted(set(options) - guard_keys - {"checkpoint_every", "precision", "task_module", "world_size"})
    if unknown:
        raise ValueError(f"{d / RUN_OPTIONS_FILE}: unknown key(s) {', '.join(unknown)}")
    dist_.check_resume_world_size(d, dist_.init().world_size, options)
    runner = dist_.task_runner(task, config, d, quiet=quiet, task_module=options.get("task_module"),
                               checkpoint_every=options.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY),
                               precision=options.get("precision", "fp32"),
                               guards=GuardOptions(**{k: options[k] for k in guard_keys if k in options}))
    runner.setup(resume=True)  # locks DIR (RunLockedError while the run is still going)
    try:
        summary = _finished_summary(d)  # again, under the lock: the run may have finished meanwhile
        if summary is not None:
            _write_missing_curves(d, summary, lock=False)
            runner.close()
            return summary
        for name in (SUMMARY_FILE, CURVES_FILE):
            if _is_writer() and (d / name).exists():
                (d / name).unlink()
        runner.restore_latest()
    except BaseException:
        runner.close()
        raise
    return runner.execute()


def _write_missing_curves(d: Path, summary: Mapping[str, Any], lock: bool) -> None:
    """Draw ``d/curves.png`` from metrics.jsonl when a finished run lacks it (rank 0; ``lock``: take DIR's lock)."""
    if (d / CURVES_FILE).exists() or not _is_writer():
        return
    with (ckpt.RunLock(d) if lock else contextlib.nullcontext()):
        if (d / CURVES_FILE).exists():
            return
        config = cfg.load_yaml(d / CONFIG_FILE)
        title = _curves_title(str(summary.get("task", config.get("task"))), config,
                              summary.get("outer_steps", config.get("outer_steps")))
        with _writing(d / CURVES_FILE):
            plots.plot_curves(plots.read_metrics(d / METRICS_FILE), d / CURVES_FILE, title=title)
        logger.info("%s: wrote the missing %s", d, CURVES_FILE)


def _finished_summary(d: Path) -> Optional[Dict[str, Any]]:
    """The summary of a finished run in ``d`` (None when summary.json is absent or unreadable)."""
    if not (d / SUMMARY_FILE).exists():
        return None
    try:
        summary = json.loads((d / SUMMARY_FILE).read_text())
    except (json.JSONDecodeError, OSError):
        return None
    if not isinstance(summary, dict):
        return None
    logger.info("%s already finished (%s exists): nothing to resume", d, SUMMARY_FILE)
    return summary


# ------------------------------------------------------------------------------------------ compare
def load_run(run_dir: Any) -> Dict[str, Any]:
    """Read a run directory.

    Parameters
    ----------
    run_dir : str or Path

    Returns
    -------
    dict
        ``dir`` (Path), ``summary`` (dict, empty if the run did not finish), ``records`` (list of dict).

    Raises
    ------
    ValueError
        Not a directory, or no metrics.jsonl.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"{str(d)!r} is not a run directory")
    if not (d / METRICS_FILE).exists():
        raise ValueError(f"{str(d)!r} has no {METRICS_FILE}: not a run directory of `bilevel run`")
    summary: Dict[str, Any] = {}
    if (d / SUMMARY_FILE).exists():
        try:
            summary = json.loads((d / SUMMARY_FILE).read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{str(d / SUMMARY_FILE)!r} is not valid JSON") from None
    return {"dir": d, "summary": summary, "records": plots.read_metrics(d / METRICS_FILE)}


def _labels(dirs: Sequence[Path]) -> List[str]:
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
        Run directories written by :func:`run_task`.
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


# ------------------------------------------------------------------------------------------ demo
def demo_table(out_root: Any, methods: Sequence[str] = ("rhg", "bda", "iaptt"), **overrides: Any) -> str:
    """A short data hyper-cleaning comparison on the embedded digits data, as a Markdown table.

    Each method runs through :func:`run_task` into ``out_root/<method>`` (overwriting) with
    :data:`DEMO_DEFAULTS` over the task's defaults, then ``overrides``.

    Parameters
    ----------
    out_root : str or Path
        Parent directory of the runs.
    methods : sequence of str
        Methods to compare.
    **overrides
        Options for every run (e.g. ``outer_steps=20``, ``quiet=False`` shows progress bars).

    Returns
    -------
    str
        Markdown table with columns method, test_accuracy, f1, wall_seconds.
    """
    quiet = bool(overrides.pop("quiet", True))
    task_module = overrides.pop("task_module", None)
    if "method" in overrides:
        raise ValueError("pass the methods as methods=(...), not method=")
    module = cfg.load_task("hyperclean", task_module)
    known = set(cfg.option_table(module))
    base = {k: v for k, v in DEMO_DEFAULTS.items() if k in known}
    rows = []
    for method in methods:
        summary = run_task("hyperclean", {**base, **overrides, "method": method},
                           Path(out_root) / method, quiet=quiet, overwrite=True, task_module=task_module)
        rows.append(summary)
    return markdown_table(rows, ["method", "test_accuracy", "f1", "wall_seconds"])


__all__ = ["TaskRunner", "run_task", "resume_run", "load_run", "compare_runs", "demo_table", "markdown_table",
           "summary_columns", "peak_rss_mb", "DEMO_DEFAULTS"]
