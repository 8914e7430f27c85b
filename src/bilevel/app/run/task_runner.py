"""The coordinator of one run of a task: set-up, steps, checkpointable state, summary.

:class:`TaskRunner` holds the whole state of a run (loop, task, step counter, RNG, metrics file position) and
ties the parts together: the run directory (:mod:`bilevel.app.run.rundir`), the metrics file and clock
(:mod:`bilevel.app.run.metrics`), the guards (:mod:`bilevel.app.run.guards`), the state in checkpoints
(:mod:`bilevel.app.run.state`) and the session loop of :meth:`TaskRunner.execute`
(:mod:`bilevel.app.run.session`). Import it from :mod:`bilevel.app.run.runner`.

Devices: the ``device`` of the configuration (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) is resolved when the
runner is made (:attr:`TaskRunner.device`; ``cuda`` without CUDA is a ValueError) and handed to the task's
``build`` resolved, which puts the data and the starting points there once; the runner checks that x0 and y0 are
there (:func:`build_run`). config.yaml keeps the setting as given (a resume resolves it again, on the machine it
runs on); summary.json records the resolved device (``device``).
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from bilevel import schedules
from bilevel.api import OuterLoop
from bilevel.app import config as cfg
from bilevel.app.device import resolve_device
from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run import rundir
from bilevel.app.run import state as run_state
from bilevel.app.run.guards import GuardOptions, Guards, autocast_objectives, check_precision, guarded_step
from bilevel.app.run.metrics import MetricsFile, RunClock, _metrics_dict, _plain, run_summary, start_line, step_line
from bilevel.app.run.rundir import METRICS_FILE
from bilevel.app.run.selection import Selection
from bilevel.app.run.session import run_session
from bilevel.app.run.tensorboard import TensorBoardLog
from bilevel.app.run.wandb_log import WandbLog
from bilevel.app.tasks.base import TaskRun


def _task_and_config(task: str, config: Optional[Mapping[str, Any]], task_module: Optional[str],
                     module: Optional[ModuleType]) -> Tuple[ModuleType, Dict[str, Any]]:
    """The task's module (imported, or checked when given) and the configuration resolved over its defaults."""
    if module is None:
        module = cfg.load_task(task, task_module)
    else:
        cfg.check_task_module(module)
    return module, cfg.resolve_config(task, module, dict(config or {}), names=("config",))


def _devices(tree: Any) -> set:
    """The devices of the tensors of a tensor or a dict of tensors."""
    if isinstance(tree, torch.Tensor):
        return {tree.device}
    if isinstance(tree, Mapping):
        return set().union(*(_devices(v) for v in tree.values())) if tree else set()
    return set()


def build_run(module: ModuleType, config: Mapping[str, Any], device: Optional[torch.device] = None) -> TaskRun:
    """The task's run (``module.build``) for a resolved configuration, on ``device``.

    Parameters
    ----------
    module : module
    config : mapping
        A resolved configuration.
    device : torch.device, optional
        Where the run computes: ``build`` gets it as ``device`` (``cpu`` or ``cuda:N``). Default: the
        configuration's ``device`` resolved (:func:`bilevel.app.device.resolve_device`).

    Raises
    ------
    TypeError
        ``module.build`` did not return a :class:`bilevel.app.tasks.TaskRun`.
    ValueError
        The run's x0 or y0 lies on another device than ``device`` (a task that ignores ``device``).
    """
    device = resolve_device(config["device"]) if device is None else device
    run = module.build(dict(cfg.build_config(config, module), device=str(device)))
    if not isinstance(run, TaskRun):
        raise TypeError(f"{module.__name__}.build must return a bilevel.app.tasks.TaskRun, got {type(run).__name__}")
    elsewhere = sorted(str(d) for d in _devices(run.x0) | _devices(run.y0) if d != device)
    if elsewhere:
        hint = "; a task that only runs on the CPU: --device cpu" if elsewhere == ["cpu"] else ""
        raise ValueError(f"task {module.__name__} was asked to build on device {device} but its x0 / y0 lie on "
                         f"{', '.join(elsewhere)}: a task's build must put its data and starting points on "
                         f"config['device'] (bilevel.app.tasks.base.task_device){hint}")
    return run


def build_loop(run: TaskRun, config: Mapping[str, Any], loop_factory: Callable[..., Any]) -> Any:
    """The outer loop of a run: ``loop_factory(x0, y0, ...)`` with the configured method, steps, step sizes,
    the task's ``loop_options`` and the method options; it binds the method once, so every option value is checked
    here."""
    c = config
    return loop_factory(run.x0, run.y0, method=c["method"], outer_lr=c["outer_lr"],
                        outer_optimizer=c["outer_optimizer"], inner_steps=c["inner_steps"], inner_lr=c["inner_lr"],
                        init_lr=c["init_lr"], **dict(run.loop_options or {}),
                        **{k: v if k == "inner_optimizer_options" else schedules.from_config(v)
                           for k, v in c["method_options"].items()})


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
    quiet, overwrite : bool
        No progress bar; allow writing into a directory that already holds a run.
    task_module, module : str or module, optional
        Module implementing the task instead of ``bilevel.app.tasks.<task>``: its name, or the module already
        imported (which takes precedence).
    checkpoint_every : int
        Write ``DIR/checkpoints/step-NNNNNN.pt`` every N outer steps and after the last one (0: never).
    precision : {"fp32", "bf16"}
        ``bf16``: the objectives under bfloat16 autocast (on the run's device type), float32 hypergradient (needs
        ``dtype`` float32).
    guards : GuardOptions, optional
        Divergence and warning thresholds (default :class:`bilevel.app.run.guards.GuardOptions()`).

    Attributes
    ----------
    config : dict
        The resolved configuration.
    device : torch.device
        Where the run computes: the configuration's ``device`` resolved (:meth:`resolve_device`).
    run : TaskRun or None
        The task's run (after :meth:`setup`).
    loop : OuterLoop or None
        The outer loop (after :meth:`setup`).
    t : int
        Outer steps done.
    """

    #: builds the outer loop in :meth:`setup` (bilevel.app.launch.DistributedTaskRunner swaps it)
    loop_factory: Any = OuterLoop

    def __init__(self, task: str, config: Optional[Mapping[str, Any]], out_dir: Any, *, quiet: bool = False,
                 overwrite: bool = False, task_module: Optional[str] = None,
                 module: Optional[ModuleType] = None, checkpoint_every: int = ckpt.DEFAULT_CHECKPOINT_EVERY,
                 precision: str = "fp32", guards: Optional[GuardOptions] = None):
        self.task, self.task_module = task, task_module
        self.module, self.config = _task_and_config(task, config, task_module, module)
        self.device = self.resolve_device()  # ValueError for cuda without CUDA: before anything is written
        self.out, self.quiet, self.overwrite = Path(out_dir), quiet, overwrite
        self.run: Optional[TaskRun] = None
        self.loop: Optional[OuterLoop] = None
        self.t = 0
        self.metrics = MetricsFile()  # DIR/metrics.jsonl, open from setup() to the end of the run
        self.tensorboard = TensorBoardLog(self.config["tensorboard"]) if self.config.get("tensorboard") else None
        self.wandb = WandbLog(self.config["wandb"], self.out, self.config) if self.config.get("wandb") else None
        self.clock = RunClock()
        self.checkpoint_every = ckpt.check_checkpoint_every(checkpoint_every)
        self.precision = check_precision(precision, self.config["dtype"])
        self.guard_options = guards if guards is not None else GuardOptions()
        self.guards = Guards(self.config["method"], self.guard_options, log=rundir.warn)
        self.selection = Selection(self.config.get("select_metric"), self.config.get("select_mode", "min"),
                                   self.config.get("patience"))
        self.last_checkpoint: Optional[Path] = None
        self._lock = rundir.DirLock()  # DIR/.lock, held from setup() to the end of the run

    def resolve_device(self) -> torch.device:
        """The device of this run: the configuration's ``device`` resolved (``auto``: cuda when available, else
        cpu; :func:`bilevel.app.device.resolve_device`).

        Raises
        ------
        ValueError
            ``cuda`` / ``cuda:N`` while CUDA is not available, or a GPU index this machine does not have.
        """
        return resolve_device(self.config["device"])

    @property
    def records(self) -> List[Dict[str, Any]]:
        """Metrics lines written so far."""
        return self.metrics.records

    def run_options(self) -> Dict[str, Any]:
        """The settings of ``run_options.yaml`` (not of config.yaml; ``world_size``: a resume needs as many)."""
        return {"checkpoint_every": self.checkpoint_every, "precision": self.precision,
                **self.guard_options.as_dict(), "task_module": self.task_module or None, "world_size": 1}

    # -- set-up ----------------------------------------------------------------------------------------
    def seed(self) -> None:
        """Seed ``random``, numpy and torch with the configured seed."""
        ckpt.seed_streams(self.config["seed"])

    def setup(self, resume: bool = False) -> None:
        """Seed, build the task and the loop (every option checked), lock the directory, then (unless ``resume``)
        replace an older run's files by the settings; a ValueError or RunLockedError leaves nothing written."""
        self.clock.restart()
        if not resume:
            rundir.check_out_dir(self.out, self.overwrite)
        if self.config["threads"] is not None:
            torch.set_num_threads(self.config["threads"])
        self.seed()
        self.run = build_run(self.module, self.config, self.device)
        self.loop = build_loop(self.run, self.config, self.loop_factory)  # a loop_factory may read self.run
        if not resume:  # nothing is deleted or written before this process holds the directory's lock
            self.out.mkdir(parents=True, exist_ok=True)
        self.hold_lock()
        try:
            if not resume:
                rundir.check_out_dir(self.out, self.overwrite)  # again, under the lock
                rundir.start_fresh(self.out, self.config, self.run_options())
            rundir.remove_stale_temp_files(self.out)
            self.metrics.open(self.out / METRICS_FILE)
        except BaseException:
            self.release_lock()
            raise

    def hold_lock(self) -> None:
        """Take the directory's lock (rank 0; :class:`~bilevel.app.run.rundir.DirLock`) unless held already."""
        self._lock.hold(self.out)

    def release_lock(self) -> None:
        """Release the run directory's lock (idempotent)."""
        self._lock.release()

    # -- steps -----------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """True when all outer steps are taken or the selection stopped the run early."""
        return self.t >= self.config["outer_steps"] or self.selection.stopped

    def loop_seconds(self) -> float:
        """Seconds spent in the outer loop so far (all sessions)."""
        return self.clock.loop_seconds()

    def should_log(self, steps_done: int) -> bool:
        """Whether the state after ``steps_done`` outer steps is evaluated and written."""
        return steps_done % self.config["log_every"] == 0 or steps_done == self.config["outer_steps"]

    def step(self) -> Dict[str, Any]:
        """Take outer step ``t`` under the guards; its record (with the metrics line as ``logged`` if logged)."""
        assert self.run is not None and self.loop is not None, "call setup() first"
        self.clock.start_loop()
        if self.t == 0 and not self.records:  # a fresh run (or one restarted from step 0): log x0 first
            self.log_start()
        upper, lower = autocast_objectives(self.run.objectives(self.t), self.precision, self.device.type)
        record, core = guarded_step(self.guards, self.loop, upper, lower, self.t + 1, self.config["outer_steps"])
        self.t += 1
        self.guards.diagnose(self.t, record, core)
        if self.should_log(self.t):
            with self.clock.evaluating():
                metrics = _metrics_dict(self.run.evaluate(self.loop), "evaluate()")
            line = step_line(self.t, record, metrics, self.clock, self.guards.flush())
            self.write(line)
            self.selection.update(self.t, metrics, self.selected_state)
            record = dict(record, logged=line)
        return record

    def selected_state(self) -> Dict[str, Any]:
        """The loop and task state that :attr:`selection` keeps at an improvement (shared tensors: it copies)."""
        assert self.run is not None and self.loop is not None
        return {"loop": self.loop.state_dict(), "task": self.run.state_dict() if self.run.state_dict else None}

    def log_start(self) -> Dict[str, Any]:
        """Write and return the step-0 line: ``evaluate()`` at x0, leaving the random streams as they were."""
        assert self.run is not None and self.loop is not None
        with self.clock.evaluating(), ckpt.rng_untouched():
            metrics = _metrics_dict(self.run.evaluate(self.loop), "evaluate()")
        line = start_line(metrics, self.clock)
        self.write(line)
        self.selection.update(0, metrics, self.selected_state)
        return line

    def write(self, line: Mapping[str, Any]) -> None:
        """Append one metrics line and flush it (and mirror it to TensorBoard / W&B when ``tensorboard`` / ``wandb``
        is set)."""
        self.metrics.write(line)
        if self.tensorboard is not None:
            self.tensorboard.write(line)
        if self.wandb is not None:
            self.wandb.write(line)

    # -- end -------------------------------------------------------------------------------------------
    def finish(self) -> Dict[str, Any]:
        """Summarize; write ``curves.png``, then ``summary.json`` (it marks a finished run); return the summary."""
        assert self.run is not None and self.loop is not None
        loop_seconds = self.clock.loop_seconds()
        self.metrics.close()  # the directory stays locked until the summary is written (execute releases it)
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.close()
        best = self.selection.best_state
        if best is not None and self.selection.best_step != self.t:  # summarize at the selected state
            best = run_state.on_device(best, self.device)  # it may come from a checkpoint (read onto the CPU)
            self.loop.load_state_dict(best["loop"])
            if best.get("task") is not None and self.run.load_state_dict is not None:
                self.run.load_state_dict(best["task"])
        summary = _metrics_dict(self.run.summarize(self.loop), "summarize()")
        summary.update(self.selection.summary(self.t))
        if "upper_final" not in summary:
            upper, lower = self.run.objectives(max(self.t - 1, 0))
            summary["upper_final"] = _plain(self.loop.evaluate(upper, lower)[0])
        summary = run_summary(summary, self.config, self.task, self.t, loop_seconds, self.clock,
                              self.guards.summary(), device=str(self.device))
        if self.device.type == "cuda":  # the GPU's own peak (peak_rss_mb is the host's)
            summary["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
        rundir.write_results(self.out, self.records, summary, rundir.curves_title(self.task, self.config, self.t))
        return summary

    def close(self) -> None:
        """Close the metrics file (and the TensorBoard events) and release the run directory's lock (idempotent)."""
        self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.close()
        self.release_lock()

    # -- checkpoints: the state of a run, implemented in bilevel.app.run.state ---------------------------
    state_dict = run_state.capture  # everything needed to continue this run exactly, as plain data
    load_state_dict = run_state.restore  # after setup(): restore a state_dict (metrics.jsonl cut to its length)
    save_checkpoint = run_state.save  # write a state (default: the current one) as DIR/checkpoints/step-N.pt
    restore_latest = run_state.restore_latest  # after setup(resume=True): the newest good checkpoint, or step 0

    def checkpoint_due(self) -> bool:
        """Whether a checkpoint is written after the step just taken (every ``checkpoint_every`` and the last)."""
        return self.checkpoint_every > 0 and (self.t % self.checkpoint_every == 0 or self.done)

    def execute(self, handle_signals: bool = True) -> Dict[str, Any]:
        """Set up (unless done), run the remaining steps, finish: :func:`bilevel.app.run.session.run_session`."""
        return run_session(self, handle_signals)


__all__ = ["TaskRunner", "build_run", "build_loop"]
