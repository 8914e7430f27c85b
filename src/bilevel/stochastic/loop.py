"""The stochastic outer loop: :class:`StochasticLoop` (one solver's state, resumable) and :func:`solve`.

The loop owns what makes a run reproducible: the solver's state (a dict of tensors), the two batch samplers (their
generators, epoch orders and positions), the solver's own generator, the iteration count, the oracle counts and the
elapsed time. :meth:`StochasticLoop.state_dict` holds all of them, so a run resumed from it continues bitwise.
:func:`solve` runs the loop, logs a history record every ``log_every`` iterations and, with ``checkpoint=PATH``,
saves its state there atomically (write, flush, rename) every ``checkpoint_every`` iterations and resumes from it
when the file exists: a killed run loses at most ``checkpoint_every`` iterations and then ends bitwise as if never
stopped.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch

from .._tree import Tree, flatten
from .._validate import check_callable, check_float, check_int
from ..errors import NonFiniteError
from .base import Context
from .compiled import CompiledBlocks
from .oracles import Oracles
from .registry import StochasticMethod, get
from .sampler import BatchSampler, derive_seed, generator

__all__ = ["StochasticLoop", "StochasticResult", "solve"]

FORMAT = 1
#: the values of ``batches``: how the samples form the fixed batches
BATCHES = ("shuffled", "contiguous")


@dataclass
class StochasticResult:
    """``x``, ``y``: the final iterates (the structures of x0, y0); ``history``: one record per logged iteration
    (``step``, ``time`` -- seconds spent in the solver's steps --, ``upper`` -- F on all samples --, ``inner_oracles``,
    ``outer_oracles``, and the keys of ``metrics``); ``state``: the loop's :meth:`~StochasticLoop.state_dict`."""

    x: Tree
    y: Tree
    history: List[Dict[str, float]]
    state: Dict[str, Any] = field(repr=False, default_factory=dict)


def _data_parallel(dist: Any, batch_size: int):
    """(split, reduce) for a ``bilevel.parallel.DistContext`` with several processes; (None, None) otherwise.

    Each process evaluates its contiguous share of every batch; the shares, weighted by their sizes, are summed by one
    ``all_reduce`` per oracle call (through ``dist.device``: the GPU of the rank with nccl).
    """
    if dist is None or getattr(dist, "world_size", 1) == 1:
        return None, None
    import torch.distributed

    rank, world, device = dist.rank, dist.world_size, dist.device
    if batch_size < world:
        raise ValueError(f"data_parallel splits each batch over {world} processes: batch_size must be >= {world}, "
                         f"got {batch_size}")

    def split(idx, n):
        full = torch.arange(n) if idx is None else idx
        local = torch.tensor_split(full, world)[rank]
        return local, local.numel() / full.numel()

    def reduce(t):
        buf = t if t.device == device else t.to(device)
        torch.distributed.all_reduce(buf)
        return buf.to(t.device)

    return split, reduce


class StochasticLoop:
    """One stochastic bilevel run, step by step (see :func:`solve` for the parameters).

    ``step()`` runs one outer iteration; ``x`` / ``y`` are the current iterates in the user's structures; ``t`` is
    the number of iterations done; ``oracle_calls`` the counts of :class:`~bilevel.stochastic.oracles.Oracles`.
    """

    def __init__(self, upper: Callable, lower: Callable, x0: Tree, y0: Tree, *, method: str, n_upper: int,
                 n_lower: int, batch_size: int, seed: int = 0, inner_lr: Optional[float] = None,
                 outer_lr: Optional[float] = None, data_parallel: Any = None, compile_block: Optional[int] = None,
                 batches: str = "shuffled", **options: Any):
        self.method: StochasticMethod = get(method)
        self.method.check_options(options)
        check_callable("upper", upper, "upper(x, y, idx) -> scalar tensor")
        check_callable("lower", lower, "lower(x, y, idx) -> scalar tensor")
        n_upper = check_int("n_upper", n_upper, 1)
        n_lower = check_int("n_lower", n_lower, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        if batch_size > max(n_upper, n_lower):
            raise ValueError(f"batch_size must be <= max(n_upper, n_lower) = {max(n_upper, n_lower)}, got {batch_size}")
        seed = check_int("seed", seed, 0)
        if batches not in BATCHES:
            raise ValueError(f"batches must be one of {', '.join(map(repr, BATCHES))}, got {batches!r}")
        contiguous = batches == "contiguous"
        inner_lr = self.method.inner_lr if inner_lr is None else check_float("inner_lr", inner_lr, positive=True)
        outer_lr = self.method.outer_lr if outer_lr is None else check_float("outer_lr", outer_lr, positive=True)
        x, self.x_spec = flatten(x0, "x0")
        y, self.y_spec = flatten(y0, "y0")
        if x.dtype != y.dtype or x.device != y.device:
            raise ValueError(f"x0 and y0 must share dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
        split, reduce = _data_parallel(data_parallel, batch_size)
        self.oracles = Oracles(upper, lower, self.x_spec, self.y_spec, n_upper, n_lower, split, reduce)
        self.ctx = Context(self.oracles,
                           BatchSampler(n_lower, min(batch_size, n_lower), derive_seed(seed, 0), x.device, contiguous),
                           BatchSampler(n_upper, min(batch_size, n_upper), derive_seed(seed, 1), x.device, contiguous),
                           generator(seed, 2), batch_size)
        self.config = {"format": FORMAT, "method": self.method.name, "n_upper": n_upper, "n_lower": n_lower,
                       "batch_size": batch_size, "batches": batches, "seed": seed, "inner_lr": inner_lr,
                       "outer_lr": outer_lr,
                       "options": {k: options[k] for k in sorted(options)},
                       "compile_block": check_int("compile_block", compile_block, 1, allow_none=True)}
        self.solver = self.method.bind(self.ctx, inner_lr, outer_lr, options)
        self.compiled = None if compile_block is None else CompiledBlocks(self, compile_block, options)
        self.state = self.solver.init(x.clone(), y.clone())
        self.t = 0
        self.elapsed = 0.0

    @property
    def x(self) -> Tree:
        return self.x_spec.unflatten(self.state["x"])

    @property
    def y(self) -> Tree:
        return self.y_spec.unflatten(self.state["y"])

    @property
    def oracle_calls(self) -> Dict[str, int]:
        return dict(self.oracles.calls)

    def step(self) -> None:
        """One outer iteration (its wall time is added to ``elapsed``)."""
        start = time.perf_counter()
        with torch.no_grad():
            self.state = self.solver.step(self.state, self.t + 1)
        self.t += 1
        self.elapsed += time.perf_counter() - start

    def run(self, steps: int) -> None:
        """``steps`` outer iterations: in compiled blocks of ``compile_block`` while they fit, the rest eagerly."""
        target = self.t + steps
        while self.compiled is not None and target - self.t >= self.compiled.block:
            self.elapsed += self.compiled.run_block(self)
            self.t += self.compiled.block
        while self.t < target:
            self.step()

    @property
    def compile_seconds(self) -> Optional[float]:
        """Wall time of the calls that compiled a graph, not in ``elapsed``: the first compiled block, plus, when
        ``batch_size`` does not divide n, the first call of each shorter run; None when not compiled or not yet
        run."""
        return None if self.compiled is None else self.compiled.compile_seconds

    def check_finite(self) -> None:
        """Raise :class:`bilevel.NonFiniteError` when x or y holds nan or inf."""
        for name in ("x", "y"):
            v = self.state[name]
            if not bool(torch.isfinite(v).all()):
                kind = "nan" if bool(torch.isnan(v).any()) else "inf"
                raise NonFiniteError(f"{self.method.name}: {name} became {kind} by iteration {self.t}; lower inner_lr "
                                     f"/ outer_lr (now {self.config['inner_lr']:g} / {self.config['outer_lr']:g})")

    def record(self, metrics: Optional[Callable[[Tree, Tree], Dict[str, Any]]] = None) -> Dict[str, float]:
        """The history record of the current iterate (F on all samples, counts, ``metrics(x, y)``)."""
        self.check_finite()
        rec = {"step": self.t, "time": self.elapsed,
               "upper": float(self.oracles.value_upper(self.state["x"], self.state["y"], None)),
               "inner_oracles": self.oracles.calls["inner"], "outer_oracles": self.oracles.calls["outer"]}
        if self.compile_seconds is not None:
            rec["compile_seconds"] = self.compile_seconds
        if metrics is not None:
            with torch.no_grad():
                extra = metrics(self.x, self.y)
            rec.update({k: float(v) for k, v in extra.items()})
        return rec

    def state_dict(self) -> Dict[str, Any]:
        """Everything a bitwise resume needs (tensors, ints and strings only)."""
        return {"config": dict(self.config), "t": self.t, "elapsed": self.elapsed,
                "state": {k: v.detach().clone() for k, v in self.state.items()},
                "inner": self.ctx.inner.state_dict(), "outer": self.ctx.outer.state_dict(),
                "noise": self.ctx.noise.get_state(), "calls": dict(self.oracles.calls)}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a run with the same configuration (ValueError otherwise)."""
        saved = {"batches": "shuffled", **sd.get("config", {})}  # states saved before ``batches`` existed
        if saved != self.config:
            diff = sorted(k for k in set(self.config) | set(saved) if self.config.get(k) != saved.get(k))
            raise ValueError(f"the saved state belongs to another run: {', '.join(diff)} differ(s) "
                             f"(saved {[saved.get(k) for k in diff]}, now {[self.config.get(k) for k in diff]})")
        if set(sd["state"]) != set(self.state):
            raise ValueError(f"saved state has keys {sorted(sd['state'])}, expected {sorted(self.state)}")
        device = self.state["x"].device
        self.state = {k: v.to(device) for k, v in sd["state"].items()}
        self.ctx.inner.load_state_dict(sd["inner"])
        self.ctx.outer.load_state_dict(sd["outer"])
        self.ctx.noise.set_state(sd["noise"])
        self.oracles.calls.update(sd["calls"])
        self.t, self.elapsed = int(sd["t"]), float(sd["elapsed"])


def _save(obj: Dict[str, Any], path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def solve(upper: Callable, lower: Callable, x0: Tree, y0: Tree, *, method: str, n_upper: int, n_lower: int,
          batch_size: int, outer_steps: int, seed: int = 0, inner_lr: Optional[float] = None,
          outer_lr: Optional[float] = None, log_every: Optional[int] = None,
          metrics: Optional[Callable[[Tree, Tree], Dict[str, Any]]] = None, checkpoint: Optional[str] = None,
          checkpoint_every: int = 100, data_parallel: Any = None, compile_block: Optional[int] = None,
          batches: str = "shuffled", **options: Any) -> StochasticResult:
    """Minimize ``F(x, y*(x))`` over finite-sum objectives with a stochastic bilevel method.

    Parameters
    ----------
    upper, lower : callable
        ``upper(x, y, idx)`` and ``lower(x, y, idx)``: the *mean* of the upper (validation) and lower (training)
        objectives over the samples ``idx``, a LongTensor of indices in ``[0, n_upper)`` / ``[0, n_lower)``;
        ``idx=None`` means all samples. ``x`` and ``y`` arrive with the structures of ``x0`` and ``y0``.
    x0, y0 : Tensor or dict of Tensor
        Starting points (never modified).
    method : str
        One of :data:`bilevel.stochastic.METHODS`: ``"stocbio"``, ``"amigo"``, ``"soba"``, ``"saba"``, ``"srba"``,
        ``"ttsa"``, ``"fsla"``, ``"mrbo"``, ``"vrbo"``, ``"bsa"``, ``"sustain"``, ``"pzobo"``, ``"f2sa"``, ``"bome"``.
    n_upper, n_lower : int
        Numbers of samples.
    batch_size : int
        Samples per mini-batch (of each objective, at most its number of samples); pzobo and bome use full batches.
    outer_steps : int
        Outer iterations to run (in all, counting those of a resumed checkpoint).
    seed : int
        Seeds the batch samplers and the methods' random draws: a run is deterministic given it.
    inner_lr, outer_lr : float, optional
        Steps of y (and of the linear system) and of x; default: the method's (``METHODS[m].inner_lr``, ...).
    log_every : int, optional
        Iterations between history records (default: ``max(1, outer_steps // 100)``); the start and the end are
        always recorded.
    metrics : callable, optional
        ``metrics(x, y) -> dict`` of numbers added to each record (not timed).
    checkpoint : str, optional
        File holding the run's state: resumed from when it exists, written every ``checkpoint_every`` iterations
        and at the end.
    checkpoint_every : int
    data_parallel : bilevel.parallel.DistContext, optional
        Split every batch over the processes and sum the oracles (all ranks run the same trajectory).
    compile_block : int, optional
        Run the iterations in ``torch.compile``-d blocks of this many (:mod:`bilevel.stochastic.compiled`; soba,
        saba, amigo, stocbio): the same trajectory to round-off, several times faster on small batches, after a
        compilation of seconds to a minute (``compile_seconds`` in the history records). Blocks never cross a log or
        checkpoint point.
    batches : str
        How the samples form the fixed batches (:class:`~bilevel.stochastic.BatchSampler`): ``"shuffled"`` (default)
        cuts a seeded permutation of the samples; ``"contiguous"`` takes ranges of consecutive samples, as
        benchmark_bilevel slices its data, for data whose order is already random.
    **options
        The method's options (``METHODS[method].options``); unknown ones raise ValueError.

    Returns
    -------
    StochasticResult
    """
    steps = check_int("outer_steps", outer_steps, 0)
    log_every = max(1, steps // 100) if log_every is None else check_int("log_every", log_every, 1)
    every = check_int("checkpoint_every", checkpoint_every, 1)
    check_callable("metrics", metrics, "metrics(x, y) -> dict", allow_none=True)
    loop = StochasticLoop(upper, lower, x0, y0, method=method, n_upper=n_upper, n_lower=n_lower,
                          batch_size=batch_size, seed=seed, inner_lr=inner_lr, outer_lr=outer_lr,
                          data_parallel=data_parallel, compile_block=compile_block, batches=batches, **options)
    history: List[Dict[str, float]] = []
    if checkpoint is not None and os.path.exists(checkpoint):
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        loop.load_state_dict(saved["loop"])
        history = list(saved["history"])
    if loop.t == 0:
        history = [loop.record(metrics)]
    rank0 = data_parallel is None or getattr(data_parallel, "rank", 0) == 0
    while loop.t < steps:
        nxt = min(steps, (loop.t // log_every + 1) * log_every)
        if checkpoint is not None:
            nxt = min(nxt, (loop.t // every + 1) * every)
        loop.run(nxt - loop.t)
        if loop.t % log_every == 0 or loop.t == steps:
            history.append(loop.record(metrics))
        if checkpoint is not None and rank0 and (loop.t % every == 0 or loop.t == steps):
            _save({"loop": loop.state_dict(), "history": history}, checkpoint)
    loop.check_finite()
    return StochasticResult(loop.x, loop.y, history, loop.state_dict())
