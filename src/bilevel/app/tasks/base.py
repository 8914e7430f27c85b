"""The interface between applications (``bilevel.app.tasks.*``) and the runner / CLI (``bilevel.app.run.runner``).

A task turns a configuration into a :class:`TaskRun`: starting points, the objectives of each outer step
(fixed for hyper-cleaning, a fresh meta-batch for few-shot learning), and metric functions. The runner owns
the outer loop (:class:`bilevel.OuterLoop`), progress, logging, checkpoints and files; tasks never write
files.

Devices: the runner hands ``build`` a resolved ``device`` (``cpu`` or ``cuda:N``, :func:`task_device`). A task
creates (or moves) its data tensors and its starting points there once, in ``build``; the objectives of a step
then only touch tensors that already live there. Random initializations are drawn on the CPU (seeded
``torch.Generator``) and moved, so a run starts from the same numbers on every device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from bilevel.api import OuterLoop
from bilevel.app.device import resolve_device

Objective = Callable[[Any, Any], torch.Tensor]


@dataclass
class TaskRun:
    """What a task hands to the runner.

    Attributes
    ----------
    x0, y0 : Tensor or dict
        Upper-level start and inner initialization, on the run's device (:func:`task_device`); the runner refuses
        a run whose x0 or y0 lies elsewhere.
    objectives : callable
        ``objectives(t) -> (upper, lower)`` for outer step t (t = 0, 1, ...). Must be deterministic in t
        given the task's seed, so a resumed run sees the same data.
    evaluate : callable
        ``evaluate(loop) -> dict`` of float metrics at the loop's current state (logged every
        ``log_every`` steps; keep it cheap).
    summarize : callable
        ``summarize(loop) -> dict`` of the final metrics (summary.json keys; may be expensive, e.g. 500
        meta-test episodes).
    loop_options : dict
        Extra keyword arguments for :class:`bilevel.OuterLoop` that the task fixes (e.g. ``x_bounds``).
    state_dict, load_state_dict : callable, optional
        Task-side state that must survive a resume beyond ``t`` (e.g. a sampler position), if any. Plain
        data only (tensors, lists, tuples, dicts, ints, floats, bools, strs, None): checkpoints are read with
        ``torch.load(weights_only=True)`` and refuse anything else (:func:`bilevel.app.run.checkpoint.check_plain`).
    shard_objectives : callable, optional
        ``shard_objectives(t, rank, world_size) -> (upper, lower)``: this rank's share of step t's
        objectives for multi-process runs (see :mod:`bilevel.parallel`); the single-process objectives
        are the sums of the shares over ranks. None: the task runs on one process only.
    shard_kind : str
        ``"tasks"``: each rank's share touches only its own part of y (few-shot heads), so the ranks'
        hypergradients are summed once per outer step. ``"data"``: the shares are mini-batches of one
        objective over a shared y (hyper-cleaning), so every objective evaluation and derivative is summed
        across ranks (:func:`bilevel.parallel.data_parallel`) and the hypergradient is global on every rank.
    """

    x0: Any
    y0: Any
    objectives: Callable[[int], Tuple[Objective, Objective]]
    evaluate: Callable[[OuterLoop], Dict[str, float]]
    summarize: Callable[[OuterLoop], Dict[str, float]]
    loop_options: Dict[str, Any] = field(default_factory=dict)
    state_dict: Optional[Callable[[], Dict[str, Any]]] = None
    load_state_dict: Optional[Callable[[Mapping[str, Any]], None]] = None
    shard_objectives: Optional[Callable[[int, int, int], Tuple[Objective, Objective]]] = None
    shard_kind: str = "tasks"


def task_device(config: Mapping[str, Any]) -> torch.device:
    """The device a task builds on: ``config["device"]`` resolved (:func:`bilevel.app.device.resolve_device`).

    The runner always passes ``device`` (resolved: ``cpu`` or ``cuda:N``); a configuration without it -- a script
    calling ``build`` on a configuration of its own -- builds on the CPU, as before devices existed.

    Raises
    ------
    ValueError
        A bad value, or ``cuda`` while CUDA is not available.
    """
    return resolve_device(config.get("device", "cpu"))


def full_config(task: str, options: Mapping[str, Tuple[Any, type, str]], common_defaults: Mapping[str, Any],
                overrides: Mapping[str, Any], dtype: str = "float32") -> Dict[str, Any]:
    """A task's complete configuration: its ``OPTIONS`` and ``COMMON_DEFAULTS`` defaults, ``seed=0``,
    ``dtype`` and ``device="cpu"``, updated with ``overrides`` (what each task's ``config_with_defaults`` returns;
    the runner builds its own through :mod:`bilevel.app.config`, whose ``device`` defaults to ``auto``).

    Raises
    ------
    ValueError
        An override that is not a key of the configuration.
    """
    cfg: Dict[str, Any] = {k: v[0] for k, v in options.items()}
    cfg.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in common_defaults.items()})
    cfg.update(seed=0, dtype=dtype, device="cpu")
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown {task} config key(s) {unknown}; allowed: {sorted(cfg)}")
    cfg.update(overrides)
    return cfg
