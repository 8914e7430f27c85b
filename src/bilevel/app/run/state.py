"""The checkpointable state of a run: taking it between two steps, restoring it, saving it, resuming from it.

A run's state (:func:`capture`) is plain data -- the step counter, the :class:`bilevel.OuterLoop` and task
states, the random streams, the length of metrics.jsonl, the loop and evaluation seconds, the configuration,
the guards' state and the run options -- so that the checkpoints of :mod:`bilevel.app.run.checkpoint` are read
with ``weights_only=True``. These functions act on a :class:`bilevel.app.run.runner.TaskRunner`: they are its
methods ``state_dict``, ``load_state_dict``, ``save_checkpoint`` and ``restore_latest``. Costs: a deep copy of
the loop, task and guard state per capture; a checkpoint write (fsync-ed) per save.

Devices: checkpoints are read onto the CPU (``map_location="cpu"``, :func:`bilevel.app.run.checkpoint.decode`) and
:func:`restore` puts the loop, task and selection state on the run's device (:func:`on_device`), so a checkpoint
written on a GPU resumes on the CPU and the other way round. A state records the device it was taken on
(``device``); a resume on another one is logged.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from bilevel.app.run import checkpoint as ckpt
from bilevel.app.run import rundir
from bilevel.app.run.rundir import CONFIG_FILE, METRICS_FILE

logger = logging.getLogger(rundir.LOGGER)


#: subtrees :func:`on_device` leaves where they are: an optimizer's state is placed by
#: ``torch.optim.Optimizer.load_state_dict`` itself (on its parameters' device; Adam's step counter stays on the CPU)
KEEP_PLACE = ("optimizer",)


def on_device(value: Any, device: Any) -> Any:
    """``value`` (plain data: dicts, lists, tuples, tensors, scalars) with every tensor on ``device``, except under
    the keys of :data:`KEEP_PLACE`. Tensors already there are returned as they are (no copy)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: (v if k in KEEP_PLACE else on_device(v, device)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_device(v, device) for v in value)
    return value


def capture(runner: Any) -> Dict[str, Any]:
    """Everything needed to continue the run exactly (after set-up, between steps), as plain data.

    Returns
    -------
    dict
        ``t``, ``loop`` (OuterLoop state), ``task`` (TaskRun state or None), ``rng``
        (:func:`~bilevel.app.run.checkpoint.rng_state`), ``metrics_bytes`` (length of metrics.jsonl to keep),
        ``loop_seconds``, ``eval_seconds``, ``config``, ``metrics_lines`` (its lines), ``guards``
        (:class:`~bilevel.app.run.guards.Guards` state), ``run_options``, ``device`` (where the run computes,
        ``cpu`` or ``cuda:N``) and ``selection``
        (:class:`~bilevel.app.run.selection.Selection` state, the kept best state included). Plain data only (tensors, lists,
        tuples, dicts, numbers, strs, None): checkpoints are read with ``weights_only=True``.
    """
    assert runner.run is not None and runner.loop is not None
    runner.metrics.flush()
    extra = {"metrics_lines": len(runner.records), "guards": copy.deepcopy(runner.guards.state_dict()),
             "run_options": runner.run_options(), "selection": runner.selection.state_dict(),
             "device": str(runner.device)}
    # deep copies: OuterLoop.state_dict() shares the optimizer's state tensors, which later steps mutate
    return {"t": runner.t, "loop": copy.deepcopy(runner.loop.state_dict()),
            "task": copy.deepcopy(runner.run.state_dict()) if runner.run.state_dict else None,
            "rng": ckpt.rng_state(), "metrics_bytes": runner.metrics.size(),
            "loop_seconds": runner.clock.loop_seconds(), "eval_seconds": runner.clock.eval_seconds,
            "config": dict(runner.config), **extra}


def restore(runner: Any, state: Mapping[str, Any]) -> None:
    """Load a :func:`capture` into ``runner`` (after set-up) and cut metrics.jsonl to the captured length.

    The loop, task and selection state go to the runner's device first (:func:`on_device`): the state may come
    from a checkpoint (read onto the CPU) or from a run on another device.

    Raises
    ------
    ValueError
        Task state for a task that cannot load it, or a metrics file changed behind the checkpoint's back.
    """
    assert runner.run is not None and runner.loop is not None and runner.metrics.is_open
    device = runner.device
    saved_on = state.get("device")
    if saved_on is not None and str(saved_on) != str(device):
        logger.info("the state was taken on %s; the run continues on %s", saved_on, device)
    runner.loop.load_state_dict(on_device(state["loop"], device))
    if state.get("task") is not None:
        if runner.run.load_state_dict is None:
            raise ValueError("the checkpoint holds task state but the task has no load_state_dict")
        runner.run.load_state_dict(on_device(state["task"], device))
    ckpt.set_rng_state(state["rng"])
    if state.get("guards") is not None:
        runner.guards.load_state_dict(state["guards"])
    if state.get("selection") is not None:
        runner.selection.load_state_dict(on_device(state["selection"], device))
    runner.t = int(state["t"])
    runner.clock.restore(state["loop_seconds"], state.get("eval_seconds", 0.0))
    runner.metrics.truncate(int(state["metrics_bytes"]))
    if getattr(runner, "tensorboard", None) is not None:
        runner.tensorboard.resume_at(runner.t)
    if "metrics_lines" in state and len(runner.records) != int(state["metrics_lines"]):
        raise ValueError(f"{runner.metrics.path} holds {len(runner.records)} lines up to the checkpoint's offset, "
                         f"the checkpoint recorded {state['metrics_lines']}: the metrics file was changed")


def save(runner: Any, state: Optional[Mapping[str, Any]] = None) -> Optional[Path]:
    """Write ``state`` (default: ``runner.state_dict()``) as ``DIR/checkpoints/step-NNNNNN.pt``, atomically, after
    fsync-ing metrics.jsonl; keep the newest :data:`~bilevel.app.run.checkpoint.CHECKPOINTS_KEPT`.

    Returns
    -------
    Path or None
        The file written (also ``runner.last_checkpoint``); None on ranks other than 0.
    """
    if not rundir.is_writer():
        return None
    if state is None:
        state = runner.state_dict()
    runner.metrics.flush(sync=True)  # the checkpoint never points past durable metrics
    with rundir.writing(runner.out / ckpt.CHECKPOINT_DIR / ckpt.checkpoint_name(int(state["t"]))):
        runner.last_checkpoint = ckpt.save(state, runner.out, int(state["t"]), keep=ckpt.CHECKPOINTS_KEPT)
    return runner.last_checkpoint


#: configuration keys a checkpoint may differ in from the run that resumes it
MAY_DIFFER = ("threads", "device")


def latest_checkpoint(out: Path, config: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[Path]]:
    """The newest checkpoint of ``out`` that verifies and belongs to this run (older ones when it does not).

    Checkpoints that fail their checksum, were made with another configuration (``threads`` and ``device`` aside:
    a run may continue with other threads or on another device) or point past the end of metrics.jsonl are skipped
    with a warning naming the file.

    Returns
    -------
    (dict or None, Path or None)
        The state and its file; ``(None, None)`` when none is usable (logged: the run starts over).
    """
    size = (out / METRICS_FILE).stat().st_size

    def accept(state: Dict[str, Any]) -> Optional[str]:
        saved = {k: v for k, v in dict(state.get("config") or {}).items() if k not in MAY_DIFFER}
        if saved != {k: v for k, v in config.items() if k not in MAY_DIFFER}:
            return f"its configuration differs from {out / CONFIG_FILE}"
        if int(state.get("metrics_bytes", 0)) > size:
            return f"it records {state['metrics_bytes']} bytes of {METRICS_FILE} but the file has only {size}"
        return None

    state, path = ckpt.load_latest(out, accept=accept, report=rundir.warn)
    if state is None:
        if ckpt.list_checkpoints(out):
            rundir.warn(f"no usable checkpoint in {out / ckpt.CHECKPOINT_DIR}: starting over from step 0")
        else:
            logger.info("no checkpoint in %s: starting over from step 0", out)
    return state, path


def restore_latest(runner: Any) -> Optional[Path]:
    """After ``runner.setup(resume=True)``: load the newest good checkpoint (:func:`latest_checkpoint`, through
    ``runner.load_state_dict``); without one, empty metrics.jsonl (the run starts over from step 0).

    Returns
    -------
    Path or None
        The checkpoint loaded, or None when starting over.
    """
    assert runner.metrics.is_open, "call setup(resume=True) first"
    state, path = latest_checkpoint(runner.out, runner.config)
    if state is None:
        runner.metrics.truncate(0)
        if getattr(runner, "tensorboard", None) is not None:
            runner.tensorboard.resume_at(-1)  # starting over: every earlier event is dropped
        return None
    runner.load_state_dict(state)
    logger.info("resumed %s from %s (outer step %d)", runner.out, path, runner.t)
    runner.last_checkpoint = path
    return path


__all__ = ["capture", "restore", "save", "latest_checkpoint", "restore_latest", "on_device", "KEEP_PLACE",
           "MAY_DIFFER"]
