"""Run a task end to end: configuration, outer loop, progress, metrics files, summary and curves.

:func:`run_task` is what ``bilevel run`` calls::

    from bilevel.app.run.runner import run_task
    summary = run_task("hyperclean", {"method": "bda", "dataset": "digits", "outer_steps": 50}, "out/bda")

It writes into the output directory (:mod:`bilevel.app.run.rundir`)

* ``config.yaml`` -- the resolved configuration (loadable again with ``bilevel run TASK --config``);
* ``run_options.yaml`` -- the run-control settings (checkpoints, precision, guards, task module, world size);
* ``metrics.jsonl`` -- one JSON object per logged step (:mod:`bilevel.app.run.metrics`): ``step`` (outer steps
  done), ``upper``, ``lower``, ``grad_norm`` (of that step, at the x before its update), ``time`` (seconds since
  the loop started), ``eval_time`` (the part of ``time`` spent in the task's evaluations, so ``time - eval_time``
  is optimization), the task's ``evaluate()`` metrics (at the x after the update) and ``info`` (the method's
  numeric diagnostics); the first line (``step`` 0, :meth:`TaskRunner.log_start`) holds the task's metrics at x0;
* ``summary.json`` -- the task's ``summarize()`` plus ``upper_final``, ``wall_seconds``, ``peak_rss_mb``,
  ``method``, ``task``, ``outer_steps``, ``inner_steps``, ``seed`` and ``device`` (where the run ran: ``cpu`` or
  ``cuda:N``; config.yaml keeps the ``device`` setting as given, e.g. ``auto``; on cuda also ``peak_gpu_mb``);
* ``curves.png`` -- the upper objective, the hypergradient norm, the inner loop's stationarity and the task's
  metrics against the outer step (:mod:`bilevel.app.run.plots`);
* ``.lock`` / ``.lock.pid`` -- the directory's lock and its holder's PID while a run writes it (one writer at a
  time, :class:`bilevel.app.run.checkpoint.RunLock`; docs/long_runs.md).

The whole state of a run lives in one :class:`TaskRunner` (:mod:`bilevel.app.run.task_runner`; loop, task, step
counter, RNG, metrics file position; see :meth:`TaskRunner.state_dict`) so that checkpoints can be written
between steps: ``DIR/checkpoints/step-NNNNNN.pt`` every ``checkpoint_every`` steps and at the end
(:mod:`bilevel.app.run.checkpoint`), and :func:`resume_run` continues an interrupted run exactly.
:mod:`bilevel.app.run.guards` stops diverging runs (:class:`bilevel.app.run.guards.DivergenceError`) and turns
method diagnostics into warnings (docs/long_runs.md); :mod:`bilevel.app.run.session` drives a run's steps and
saves its state when it stops early. :func:`compare_runs` (:mod:`bilevel.app.run.compare`) backs
``bilevel compare`` and :func:`demo_table` the hyper-cleaning demo. Every name listed in ``__all__`` (and the
file-name constants) stays importable from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from bilevel import parallel
from bilevel.app import config as cfg
from bilevel.app import launch
from bilevel.app.device import check_device
from bilevel.app.run.checkpoint import CHECKPOINTS_KEPT, DEFAULT_CHECKPOINT_EVERY
from bilevel.app.run.compare import META_KEYS, compare_runs, summary_columns
from bilevel.app.run.guards import GuardOptions
from bilevel.app.run.metrics import markdown_table, peak_rss_mb
from bilevel.app.run.rundir import (CONFIG_FILE, CURVES_FILE, METRICS_FILE, RUN_OPTIONS_FILE, SUMMARY_FILE,
                                    finished_summary, is_writer, load_run, read_settings, write_missing_curves)
from bilevel.app.run.task_runner import TaskRunner

#: settings of :func:`demo_table` on top of the hyper-cleaning task's defaults
DEMO_DEFAULTS: Dict[str, Any] = {"dataset": "digits", "outer_steps": 60, "inner_steps": 30, "inner_lr": 1.0,
                                 "log_every": 10, "threads": 1}


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


def resume_run(out_dir: Any, quiet: bool = False, device: Optional[str] = None) -> Dict[str, Any]:
    """Continue an interrupted run from its newest good checkpoint (``bilevel run --resume DIR``).

    Reads ``DIR/config.yaml`` and ``DIR/run_options.yaml``, rebuilds the task, loads the newest checkpoint
    that verifies (older ones when the newest is corrupt; step 0 when none is usable), truncates
    metrics.jsonl to the checkpoint's length and runs the remaining steps. A finished run (summary.json
    present) is not run again; a missing curves.png is drawn again from metrics.jsonl. A run whose steps are
    all done but whose summary.json is missing (stopped while writing it) gets it from its final checkpoint,
    without running any step again.

    The run continues on the ``device`` of its config.yaml, resolved again on this machine (``auto``: cuda when
    available, else cpu), or on ``device`` when given; checkpoints load onto any device (a run may stop on a GPU
    and continue on the CPU, or the other way round; the summary records where it finished).

    Parameters
    ----------
    out_dir : str or Path
        The run directory.
    quiet : bool
        No progress bar.
    device : str, optional
        ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``: continue there instead of on config.yaml's ``device`` (which is
        left as it is).

    Returns
    -------
    dict
        The summary.

    Raises
    ------
    ValueError
        Not a run directory, an unreadable config.yaml / run_options.yaml, a run made with another
        number of processes (``world_size`` of run_options.yaml; under torchrun the resume runs on every rank), or
        a device that is not available (``cuda`` without CUDA).
    bilevel.app.run.checkpoint.RunLockedError
        The run is still going (another process holds ``DIR/.lock``; the message names its PID).
    """
    d = Path(out_dir)
    if not (d / CONFIG_FILE).is_file() or not (d / METRICS_FILE).is_file():
        raise ValueError(f"cannot resume {str(d)!r}: no {CONFIG_FILE} and {METRICS_FILE} (not a `bilevel run` "
                         "directory)")
    summary = finished_summary(d)
    if summary is not None:
        write_missing_curves(d, summary, lock=True)
        return summary
    guard_keys = set(GuardOptions().as_dict())
    config, options = read_settings(d, [*guard_keys, "checkpoint_every", "precision", "task_module", "world_size"])
    if device is not None:
        config["device"] = check_device(device)
    launch.check_resume_world_size(d, parallel.init(launch.backend_for(config)).world_size, options)
    runner = launch.task_runner(config["task"], config, d, quiet=quiet, task_module=options.get("task_module"),
                                checkpoint_every=options.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY),
                                precision=options.get("precision", "fp32"),
                                guards=GuardOptions(**{k: options[k] for k in guard_keys if k in options}))
    runner.setup(resume=True)  # locks DIR (RunLockedError while the run is still going)
    try:
        summary = finished_summary(d)  # again, under the lock: the run may have finished meanwhile
        if summary is not None:
            write_missing_curves(d, summary, lock=False)
            runner.close()
            return summary
        for name in (SUMMARY_FILE, CURVES_FILE):
            if is_writer() and (d / name).exists():
                (d / name).unlink()
        runner.restore_latest()
    except BaseException:
        runner.close()
        raise
    return runner.execute()


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
           "summary_columns", "peak_rss_mb", "DEMO_DEFAULTS", "META_KEYS", "CONFIG_FILE", "METRICS_FILE",
           "SUMMARY_FILE", "CURVES_FILE", "RUN_OPTIONS_FILE", "DEFAULT_CHECKPOINT_EVERY", "CHECKPOINTS_KEPT"]
