"""Running a task on several processes: one rank's runner, ``--nproc`` (torchrun) and resuming on as many.

The launcher half of multi-process runs, on top of the core's :mod:`bilevel.parallel` (process group,
collectives, :class:`bilevel.parallel.DistributedOuterLoop`, :func:`bilevel.parallel.data_parallel`):

* :func:`task_runner` gives ``bilevel run`` a :class:`DistributedTaskRunner` under torchrun (``WORLD_SIZE`` > 1)
  and a plain :class:`bilevel.app.run.runner.TaskRunner` otherwise;
* :class:`DistributedTaskRunner` runs rank r's shard of every step (:func:`shard_objectives`); rank 0 alone
  writes the run directory;
* :func:`launch` re-executes ``bilevel ...`` through ``python -m torch.distributed.run`` (``--nproc N``,
  :func:`strip_nproc`, :func:`torchrun_command`);
* a multi-process run records its world size in ``run_options.yaml`` and ``--resume`` needs as many processes
  (:func:`recorded_world_size`, :func:`check_resume_world_size`).

Devices: the process group's backend follows the run's device (:func:`backend_for`: nccl for cuda, gloo for
cpu), and on cuda rank r computes on ``cuda:LOCAL_RANK`` (:meth:`DistributedTaskRunner.resolve_device`).

See docs/distributed.md.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from bilevel.app import config as cfg
from bilevel.app.device import DEFAULT_DEVICE, resolve_device
from bilevel.app.run import rundir
from bilevel.app.run import state as run_state
from bilevel.app.run.rundir import RUN_OPTIONS_FILE
from bilevel.app.run.task_runner import TaskRunner
from bilevel.parallel import (DistContext, DistributedOuterLoop, Objective, all_reduce_, context, data_parallel, init,
                              seed_rank)


# ------------------------------------------------------------------------------------------ task sharding
def shard_objectives(run: Any, ctx: DistContext) -> Callable[[int], Tuple[Objective, Objective]]:
    """This rank's ``objectives(t)`` for a task run.

    Uses ``run.shard_objectives(t, rank, world_size)`` (see :class:`bilevel.app.tasks.TaskRun`).

    Raises
    ------
    ValueError
        The task cannot be split (e.g. hyperclean, toy).
    """
    own = getattr(run, "shard_objectives", None)
    if not callable(own):
        raise ValueError("this task cannot be split over processes (supported: fewshot, hyperclean); run it "
                         "with one process, see docs/distributed.md")
    if getattr(run, "shard_kind", "tasks") == "data":
        def objectives(t: int) -> Tuple[Objective, Objective]:
            upper, lower = own(t, ctx.rank, ctx.world_size)
            return data_parallel(upper, ctx), data_parallel(lower, ctx)

        return objectives
    return lambda t: own(t, ctx.rank, ctx.world_size)


class DistributedTaskRunner(TaskRunner):
    """:class:`bilevel.app.run.runner.TaskRunner` for one rank of a multi-process run.

    The task is built with the configured seed on every rank (same x0, y0, data; x0 and y0 are also
    broadcast from rank 0), then each rank is re-seeded with :func:`bilevel.parallel.rank_seed`; the ranks other
    than 0 are re-seeded again before every outer step t (:func:`step_seed`), so their random state is a function
    of (seed, rank, t) and a resume needs only rank 0's, which the checkpoint holds. Rank r runs its shard of
    every meta-batch (:func:`shard_objectives`) in a :class:`bilevel.parallel.DistributedOuterLoop`. Rank 0 alone
    locks and writes the run directory, evaluates, shows the progress bar and summarizes; the other ranks write into a
    private scratch directory that is deleted at the end and return an empty summary. ``run_options.yaml``
    records the world size. On a resume (:func:`bilevel.app.run.runner.resume_run` under torchrun) rank 0 picks the
    checkpoint and broadcasts its state to the other ranks (:meth:`restore_latest`).

    Parameters
    ----------
    task, config, out_dir
        As for :class:`TaskRunner`.
    ctx : DistContext, optional
        Default: current context.
    **kwargs
        ``quiet``, ``overwrite``, ``task_module``, ``module``.
    """

    def __init__(self, task: str, config: Optional[Mapping[str, Any]], out_dir: Any, *,
                 ctx: Optional[DistContext] = None, **kwargs: Any):
        self.ctx = ctx or context()
        if not self.ctx.is_main:
            kwargs["quiet"] = True
        super().__init__(task, config, out_dir, **kwargs)
        self.real_out = self.out
        self._scratch: Optional[str] = None
        if not self.ctx.is_main:
            self._scratch = tempfile.mkdtemp(prefix=f"bilevel-rank{self.ctx.rank}-")
            self.out = Path(self._scratch)
            self.tensorboard = None  # rank 0 alone writes the run's files, the TensorBoard events included
            self.wandb = None  # and logs to W&B
        self.loop_factory = self._make_loop  # used by TaskRunner.setup
        self._full_run: Any = None

    def resolve_device(self) -> torch.device:
        """The device of this rank: ``cpu``, or ``cuda:LOCAL_RANK`` when the configuration's device resolves to
        cuda (``auto`` with CUDA available, or ``cuda``): one GPU per rank, the one nccl uses.

        Raises
        ------
        ValueError
            ``cuda:N`` (every rank would share GPU N; give ``cuda`` or ``auto``), or what
            :func:`bilevel.app.device.resolve_device` refuses.
        """
        requested = self.config["device"]
        device = resolve_device(requested)
        if device.type != "cuda":
            return device
        if requested.startswith("cuda:"):
            raise ValueError(f"device {requested!r} with {self.ctx.world_size} processes: every rank would compute "
                             "on that one GPU; give device cuda (or auto): rank r then uses cuda:LOCAL_RANK")
        return resolve_device(f"cuda:{self.ctx.local_rank}")

    def _make_loop(self, x0: Any, y0: Any, **kwargs: Any) -> DistributedOuterLoop:
        kind = getattr(self.run, "shard_kind", "tasks")
        return DistributedOuterLoop(x0, y0, ctx=self.ctx, data_parallel=kind == "data", **kwargs)

    def setup(self, resume: bool = False) -> None:
        """Build on every rank (files on rank 0 only), shard the objectives, re-seed per rank.

        An error on any rank (e.g. rank 0's output directory in use) is raised on every rank.
        """
        error: Optional[BaseException] = None
        try:
            if not self.ctx.is_main and not resume:
                rundir.check_out_dir(self.real_out, self.overwrite)
            super().setup(resume)
            assert self.run is not None
            objectives = shard_objectives(self.run, self.ctx)
        except (ValueError, OSError) as err:
            error = err
        flag = torch.tensor([0.0 if error is None else 1.0])
        all_reduce_(flag, "sum", self.ctx)
        if error is not None:
            self._cleanup()
            raise error
        if float(flag[0]) > 0:
            self._cleanup()
            raise ValueError("set-up failed on another process (see its message)")
        self._full_run = self.run
        evaluate = self.run.evaluate if self.ctx.is_main else (lambda loop: {})
        self.run = replace(self.run, objectives=objectives, evaluate=evaluate)
        seed_rank(self.config["seed"], self.ctx)

    def run_options(self) -> Dict[str, Any]:
        """:meth:`TaskRunner.run_options` with this job's ``world_size``."""
        return {**super().run_options(), "world_size": self.ctx.world_size}

    def step(self) -> Dict[str, Any]:
        """Re-seed the ranks other than 0 for outer step ``t`` (:func:`step_seed`), then take the step."""
        if not self.ctx.is_main:
            seed_rank(step_seed(self.config["seed"], self.t), self.ctx)
        return super().step()

    def restore_latest(self) -> Optional[Path]:
        """After ``setup(resume=True)``: rank 0 loads the newest good checkpoint (as :class:`TaskRunner`) and
        broadcasts the loop, task and guard state to the other ranks, which load it too.

        Returns
        -------
        Path or None
            The checkpoint loaded (on every rank), or None when the run starts over from step 0.
        """
        if not self.ctx.enabled:
            return super().restore_latest()
        import torch.distributed as dist

        error: Optional[BaseException] = None
        payload: Dict[str, Any] = {}
        if self.ctx.is_main:
            try:
                path = super().restore_latest()
                assert self.run is not None and self.loop is not None
                payload = {"path": None if path is None else str(path), "t": self.t,
                           "loop": self.loop.state_dict(), "guards": self.guards.state_dict(),
                           "task": self.run.state_dict() if self.run.state_dict else None}
                # pickled CUDA tensors would unpickle on rank 0's GPU: send CPU tensors, each rank moves them
                payload = run_state.on_device(payload, torch.device("cpu"))
            except (ValueError, OSError) as err:
                error = err
                payload = {"error": f"{type(err).__name__}: {err}"}
        box = [payload]
        dist.broadcast_object_list(box, src=0, device=self.ctx.device if self.ctx.backend == "nccl" else None)
        payload = box[0]
        if error is not None:
            raise error
        if "error" in payload:
            raise ValueError(f"resuming failed on rank 0: {payload['error']}")
        if not self.ctx.is_main and payload["path"] is not None:
            assert self.run is not None and self.loop is not None
            self.loop.load_state_dict(run_state.on_device(payload["loop"], self.device))
            if payload["task"] is not None and self.run.load_state_dict is not None:
                self.run.load_state_dict(run_state.on_device(payload["task"], self.device))
            self.guards.load_state_dict(payload["guards"])
            self.t = int(payload["t"])
        path = None if payload["path"] is None else Path(payload["path"])
        self.last_checkpoint = path if self.ctx.is_main else None
        return path

    def finish(self) -> Dict[str, Any]:
        """Rank 0: summarize on the full objectives and write the files; other ranks: ``{}``."""
        if self._full_run is not None:
            self.run = self._full_run
        if not self.ctx.is_main:
            self.close()
            self._cleanup()
            return {}
        return super().finish()

    def _cleanup(self) -> None:
        if self._scratch is not None:
            self.close()
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def step_seed(seed: int, t: int) -> int:
    """Seed of outer step ``t`` for :func:`seed_rank` on the ranks other than 0 (a function of seed and t; the
    rank is mixed in by :func:`rank_seed`)."""
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, 0x57E9, int(t)]).generate_state(1)[0])


def recorded_world_size(run_dir: Any, options: Optional[Mapping[str, Any]] = None) -> int:
    """The number of processes the run in ``run_dir`` was made with (``world_size`` of run_options.yaml; 1 when
    absent, as in runs of bilevel before it was recorded).

    Parameters
    ----------
    run_dir : str or Path
    options : mapping, optional
        The contents of run_options.yaml, when already read.
    """
    if options is None:
        path = Path(run_dir) / RUN_OPTIONS_FILE
        options = cfg.load_yaml(path) if path.is_file() else {}
    value = options.get("world_size", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{Path(run_dir)}/run_options.yaml: bad world_size {value!r} (expected an integer >= 1)")
    return value


def check_resume_world_size(run_dir: Any, world_size: int, options: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse to resume a run with another number of processes than it was made with.

    Parameters
    ----------
    run_dir : str or Path
    world_size : int
        Processes of the resume (``WORLD_SIZE`` under torchrun, the ``--nproc`` value, else 1).
    options : mapping, optional
        The contents of run_options.yaml, when already read.

    Raises
    ------
    ValueError
        Saying how to resume it (``bilevel run --resume DIR --nproc N``).
    """
    recorded = recorded_world_size(run_dir, options)
    if recorded != int(world_size):
        if recorded > 1:
            how = (f"`bilevel run --resume {run_dir} --nproc {recorded}` (or torchrun --nproc_per_node={recorded} "
                   f"... -m bilevel run --resume {run_dir})")
        else:
            how = f"`bilevel run --resume {run_dir}` (one process: no --nproc, no torchrun)"
        raise ValueError(f"cannot resume {str(run_dir)!r} on {world_size} process(es): the run was made on "
                         f"{recorded} (world_size in run_options.yaml) and its checkpoints, sharding and per-rank "
                         f"seeds belong to that number; resume it with {how}")


def backend_for(config: Optional[Mapping[str, Any]]) -> str:
    """The process-group backend of a run's device: ``nccl`` when its ``device`` (default ``auto``) resolves to
    cuda, else ``gloo`` (a CPU run on a machine with GPUs keeps its collectives on the CPU).

    Raises
    ------
    ValueError
        What :func:`bilevel.app.device.resolve_device` refuses.
    """
    device = (config or {}).get("device") or DEFAULT_DEVICE
    return "nccl" if resolve_device(cfg.coerce("device", device, str, DEFAULT_DEVICE)).type == "cuda" else "gloo"


def task_runner(task: str, config: Optional[Mapping[str, Any]], out_dir: Any, **kwargs: Any) -> TaskRunner:
    """A :class:`DistributedTaskRunner` under torchrun (``WORLD_SIZE`` > 1, after :func:`init` with the backend
    of the run's device, :func:`backend_for`), else a plain :class:`TaskRunner` (what ``bilevel run`` uses).

    Parameters
    ----------
    task, config, out_dir, **kwargs
        As for :class:`TaskRunner`.

    Returns
    -------
    TaskRunner
    """
    ctx = init(backend_for(config))  # single process: no group, the backend is not used
    if ctx.enabled:
        return DistributedTaskRunner(task, config, out_dir, ctx=ctx, **kwargs)
    return TaskRunner(task, config, out_dir, **kwargs)


# ------------------------------------------------------------------------------------------ launcher
def strip_nproc(argv: Sequence[str]) -> Tuple[List[str], Optional[int]]:
    """Remove ``--nproc N`` / ``--nproc=N`` from a command line.

    Returns
    -------
    (list of str, int or None)
        The remaining arguments and N (None when absent).
    """
    out: List[str] = []
    n: Optional[str] = None
    i = 0
    args = list(argv)
    while i < len(args):
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        if a == "--nproc":
            if i + 1 >= len(args):
                raise ValueError("--nproc needs a value")
            n, i = args[i + 1], i + 2
            continue
        if a.startswith("--nproc="):
            n, i = a.split("=", 1)[1], i + 1
            continue
        out.append(a)
        i += 1
    if n is None:
        return out, None
    try:
        return out, int(n)
    except ValueError:
        raise ValueError(f"--nproc must be an integer, got {n!r}") from None


def torchrun_command(argv: Sequence[str], nproc: int) -> List[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m bilevel ARGV``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
            "-m", "bilevel", *argv]


def launch(argv: Sequence[str], nproc: int, env: Optional[Mapping[str, str]] = None) -> int:
    """Run ``bilevel ARGV`` on ``nproc`` local processes through torchrun (standalone rendezvous on loopback).

    Parameters
    ----------
    argv : sequence of str
        The ``bilevel`` arguments without ``--nproc``.
    nproc : int
        Processes (>= 1).
    env : mapping, optional
        Environment (default: this process's).

    Returns
    -------
    int
        torchrun's exit status.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return subprocess.call(torchrun_command(argv, nproc), env=dict(env) if env is not None else None)


__all__ = ["shard_objectives", "DistributedTaskRunner", "task_runner", "backend_for", "strip_nproc", "torchrun_command",
           "launch", "step_seed", "recorded_world_size", "check_resume_world_size"]
