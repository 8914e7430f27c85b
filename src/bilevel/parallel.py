"""Several processes, one outer loop: task-parallel meta-batches and data-parallel objective sums.

A layer on top of :class:`bilevel.OuterLoop`, which only offers the ``reduce_grads`` hook and
:meth:`~bilevel.OuterLoop.synchronize`; like the rest of the core it imports torch, numpy and the standard
library only (``torch.distributed`` on demand), and ``import bilevel`` does not load it. Processes are started by
``torchrun`` (or ``bilevel run ... --nproc N``, which calls it); :func:`init` reads the torchrun environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and is a no-op returning a
single-process context when ``WORLD_SIZE`` is unset or 1.

Two ways of splitting an objective that is a sum over shards (see docs/distributed.md):

* **task parallel** (few-shot meta-batches, any problem whose lower level is a set of independent blocks):
  every rank holds the *whole* x and y, its objectives only touch its own blocks of y (its tasks), e.g.
  ``upper_r = sum_{j in shard r} F_j / B``. The per-rank hypergradients are partial sums with disjoint
  supports in y, and :func:`grad_reducer` sums them (``OuterLoop(..., reduce_grads=grad_reducer())``) before
  every rank applies the same optimizer step. Exact for methods whose estimator is additive over the
  blocks; see :data:`TASK_PARALLEL_EXACT`.
* **data parallel** (a lower variable shared by all shards, e.g. hyper-cleaning's follower): wrap each rank's
  partial objective with :func:`data_parallel`. Values and gradients are summed across ranks *inside* the
  objective (differentiably, to any order), so every rank computes the single-process trajectory; the loop
  needs no ``reduce_grads``. Exact for every method (fhg included; checked in tests/app/distributed for all but
  metasgd), at the price of one all-reduce per objective or gradient evaluation.

A method that is not exact in the chosen mode is refused (ValueError), never run as a different algorithm.
Costs: one all-reduce of ``(grad_x, grad_y0)`` and one of the record per task-parallel step; one all-reduce
per objective or gradient evaluation in data-parallel mode.

Running a task on several processes (:class:`bilevel.app.launch.DistributedTaskRunner`, ``--nproc``, resuming
on as many processes) is the launcher half, :mod:`bilevel.app.launch`.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from bilevel.api import OuterLoop

Objective = Callable[[Any, Any], torch.Tensor]

#: methods whose task-parallel hypergradient equals the single-process one (checked in tests/app/distributed).
#: ``cg`` is included because its converged solution is the same; its iterates are not (global step sizes), so
#: agreement is to the solver tolerance only. Not exact in task-parallel mode, hence refused by
#: :class:`DistributedOuterLoop`: ``iaptt`` (k_bar = argmax over k of the *whole* upper objective), ``bvfim``
#: (log barrier of the whole value-function gap), ``metasgd`` (not checked: its x mirrors y) and any method
#: registered later; use :func:`data_parallel` for those.
TASK_PARALLEL_EXACT: Tuple[str, ...] = ("rhg", "trhg", "fhg", "cg", "neumann", "bda", "bigsam", "iagm", "iagm-a",
                                        "maml", "fomaml", "reptile")

#: environment variable: seconds before a collective gives up (default 1800)
TIMEOUT_ENV = "BILEVEL_DIST_TIMEOUT"


# ------------------------------------------------------------------------------------------ context
@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes
    ----------
    rank : int
        Global rank, 0 .. world_size - 1.
    world_size : int
        Number of processes (1: single process, no process group).
    local_rank : int
        Rank on this machine (selects the GPU with nccl).
    backend : str or None
        ``"gloo"`` or ``"nccl"``; None when single-process.
    device : torch.device
        Where collectives run (``cuda:local_rank`` with nccl, else cpu).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files, logs and progress bars."""
        return self.rank == 0


_CURRENT = DistContext()
_OWNED = False  # whether init() created the process group (then shutdown() destroys it)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init(backend: Optional[str] = None, timeout_seconds: Optional[float] = None) -> DistContext:
    """Join the process group described by the torchrun environment variables.

    Parameters
    ----------
    backend : str, optional
        ``"gloo"`` or ``"nccl"``; default nccl when CUDA is available, else gloo.
    timeout_seconds : float, optional
        Collective timeout; default ``$BILEVEL_DIST_TIMEOUT`` or 1800.

    Returns
    -------
    DistContext
        Single-process context (no process group) when ``WORLD_SIZE`` is unset or 1.
    """
    global _CURRENT, _OWNED
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        _CURRENT = DistContext()
        return _CURRENT
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        seconds = timeout_seconds if timeout_seconds is not None else float(os.environ.get(TIMEOUT_ENV, 1800))
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=seconds))
        _OWNED = True
        import atexit

        atexit.register(shutdown)
    _CURRENT = DistContext(rank, world, local_rank, backend, device)
    return _CURRENT


def context() -> DistContext:
    """The context of the last :func:`init` (single-process before)."""
    return _CURRENT


def shutdown(synchronize: bool = False) -> None:
    """Destroy the process group if :func:`init` created it (idempotent).

    With ``synchronize=True`` every rank first waits at a barrier, so that no rank tears its connections down while
    another still works (e.g. rank 0 writing the final files): a gloo rank that exits early can abort at teardown
    ("terminate called without an active exception"). Call it so at the end of a successful run on every rank; the
    exit hook that :func:`init` registers does not wait (after an error on one rank, the others must not block).
    """
    global _CURRENT, _OWNED
    if _OWNED:
        import torch.distributed as dist

        if dist.is_initialized():
            if synchronize:
                dist.barrier()
            dist.destroy_process_group()
        _OWNED = False
    _CURRENT = DistContext()


def barrier(ctx: Optional[DistContext] = None) -> None:
    """Wait for every rank (no-op single-process)."""
    ctx = ctx or _CURRENT
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------ helpers
def shard_range(n: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Contiguous, balanced shard ``[lo, hi)`` of ``n`` items for ``rank`` (the first ``n % world_size`` ranks
    get one more).

    Parameters
    ----------
    n : int
        Items (tasks of the meta-batch, samples).
    rank, world_size : int

    Returns
    -------
    (int, int)

    Raises
    ------
    ValueError
        ``n < world_size`` (a rank would have nothing to compute).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} of world size {world_size}")
    if n < world_size:
        raise ValueError(f"cannot split {n} item(s) over {world_size} processes: use at most {n} processes or a "
                         "larger meta-batch")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def rank_seed(seed: int, rank: int) -> int:
    """Deterministic per-rank seed; ``rank_seed(s, 0) == s`` so rank 0 continues the single-process stream."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, 0x5EED, int(rank)]).generate_state(1)[0])


def seed_rank(seed: int, ctx: Optional[DistContext] = None) -> int:
    """Seed ``random``, numpy and torch with :func:`rank_seed` of this rank; returns that seed."""
    import random

    ctx = ctx or _CURRENT
    s = rank_seed(seed, ctx.rank)
    random.seed(s)
    np.random.seed(s % 2 ** 32)
    torch.manual_seed(s)
    return s


def all_reduce_(tensor: torch.Tensor, op: str = "sum", ctx: Optional[DistContext] = None) -> torch.Tensor:
    """In-place sum (``op="sum"``) or mean (``"mean"``) of ``tensor`` over the ranks; returns it.

    With nccl the data go through ``ctx.device`` and come back to the tensor's device.
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    ctx = ctx or _CURRENT
    if not ctx.enabled:
        return tensor
    import torch.distributed as dist

    buf = tensor if tensor.device == ctx.device else tensor.to(ctx.device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    if op == "mean":
        buf.div_(ctx.world_size)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0, ctx: Optional[DistContext] = None) -> torch.Tensor:
    """In-place broadcast of ``tensor`` from rank ``src``; returns it."""
    ctx = ctx or _CURRENT
    if not ctx.enabled:
        return tensor
    import torch.distributed as dist

    buf = tensor if tensor.device == ctx.device else tensor.to(ctx.device)
    dist.broadcast(buf, src=src)
    if buf is not tensor:
        tensor.copy_(buf)
    return tensor


def grad_reducer(ctx: Optional[DistContext] = None, op: str = "sum"
                 ) -> Callable[[torch.Tensor, Optional[torch.Tensor]], Tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The ``reduce_grads`` hook of :class:`bilevel.OuterLoop`: one all-reduce of ``(grad_x, grad_y0)``.

    Parameters
    ----------
    ctx : DistContext, optional
        Default: the current context.
    op : str
        ``"sum"`` when each rank's objectives are its share of the single-process objective (e.g.
        ``sum over its tasks / total meta-batch``); ``"mean"`` when each rank's objectives are the mean over
        its own equally sized shard.

    Returns
    -------
    callable
        ``reduce(grad_x, grad_y0) -> (grad_x, grad_y0)``; new tensors, ``grad_y0`` None stays None.
    """
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")

    def reduce(grad_x: torch.Tensor, grad_y0: Optional[torch.Tensor]):
        c = ctx or _CURRENT
        if not c.enabled:
            return grad_x, grad_y0
        parts = [grad_x.detach().reshape(-1)]
        if grad_y0 is not None:
            parts.append(grad_y0.detach().reshape(-1).to(grad_x.dtype))
        flat = torch.cat(parts)  # one collective for both
        all_reduce_(flat, op, c)
        gx = flat[:grad_x.numel()].view_as(grad_x).clone()
        gy = None if grad_y0 is None else flat[grad_x.numel():].view_as(grad_y0).to(grad_y0.dtype).clone()
        return gx, gy

    return reduce


#: record keys reduced as a sum of the ranks' values (partial objectives)
SUM_KEYS = ("upper", "lower")
#: record keys never reduced (``grad_norm`` is already taken from the reduced gradient)
KEEP_KEYS = ("step", "grad_norm")


def reduce_record(record: Mapping[str, Any], ctx: Optional[DistContext] = None) -> Dict[str, Any]:
    """All-reduce the numeric entries of an :meth:`OuterLoop.step` record for logging.

    ``upper`` and ``lower`` (per-rank partial objectives) are summed; entries whose name contains ``norm``
    (e.g. ``lower_grad_norm_last``, norms of gradients with disjoint supports) are combined as
    ``sqrt(sum of squares)``; every other number (``k_bar``, ``solver_residual``, ...) becomes the mean over
    ranks. ``step``, ``grad_norm``, bools and non-numbers are left as they are. One collective in all.

    Parameters
    ----------
    record : mapping
    ctx : DistContext, optional

    Returns
    -------
    dict
        A new record (the input is not modified).
    """
    ctx = ctx or _CURRENT
    out = dict(record)
    if not ctx.enabled:
        return out
    keys = [k for k, v in record.items() if k not in KEEP_KEYS and isinstance(v, (int, float))
            and not isinstance(v, bool)]
    if not keys:
        return out
    vals = []
    for k in keys:
        v = float(record[k])
        vals.append(v if k in SUM_KEYS else (v * v if "norm" in k else v / ctx.world_size))
    t = torch.tensor(vals, dtype=torch.float64)
    all_reduce_(t, "sum", ctx)
    for k, v in zip(keys, t.tolist()):
        out[k] = math.sqrt(v) if (k not in SUM_KEYS and "norm" in k) else v
    return out


# ------------------------------------------------------------------------------------------ loop
class DistributedOuterLoop(OuterLoop):
    """:class:`bilevel.OuterLoop` whose steps sum the ranks' hypergradients (task-parallel mode).

    Same parameters as :class:`bilevel.OuterLoop`, plus ``ctx`` (default: current context) and ``op``
    (``"sum"`` or ``"mean"``, see :func:`grad_reducer`). At construction x and the inner initialization are
    broadcast from rank 0, so every rank starts from the same point; each rank then applies the same
    reduced step. :meth:`step` returns the record reduced by :func:`reduce_record`. :meth:`evaluate` is
    local (it gives the rank's partial value for sharded objectives; use :meth:`evaluate_reduced`).
    """

    def __init__(self, x0: Any, y0: Any, *, ctx: Optional[DistContext] = None, op: str = "sum",
                 data_parallel: bool = False, **kwargs: Any):
        if "reduce_grads" in kwargs:
            raise ValueError("DistributedOuterLoop sets reduce_grads itself")
        self.ctx = ctx or _CURRENT
        method = kwargs.get("method")
        if self.ctx.enabled and not data_parallel and method not in TASK_PARALLEL_EXACT:
            raise ValueError(f"method {method!r} is not exact when the meta-batch is split over processes (task "
                             f"parallel: each process would apply it to its own tasks, a different algorithm); "
                             f"run it on one process, or split a data-parallel objective instead "
                             f"(bilevel.parallel.data_parallel). Task-parallel methods: "
                             f"{', '.join(TASK_PARALLEL_EXACT)} (docs/distributed.md)")
        # data-parallel objectives (see data_parallel) already give every rank the global hypergradient and
        # global objective values: nothing is reduced at the step
        self.data_parallel = data_parallel
        super().__init__(x0, y0, reduce_grads=None if data_parallel else grad_reducer(self.ctx, op), **kwargs)
        self.synchronize(lambda t: broadcast_(t, 0, self.ctx))  # every rank starts from rank 0's point

    def step(self, upper: Objective, lower: Objective) -> Dict[str, Any]:
        """One outer step on this rank's objectives; the record's objectives are the all-reduced ones."""
        record = super().step(upper, lower)
        return record if self.data_parallel else reduce_record(record, self.ctx)

    def evaluate_reduced(self, upper: Objective, lower: Objective) -> Tuple[float, Any]:
        """``(F, y)`` with F summed over the ranks (sharded objectives); y is this rank's iterate."""
        value, y = self.evaluate(upper, lower)
        t = torch.tensor([value], dtype=torch.float64)
        all_reduce_(t, "sum", self.ctx)
        return float(t[0]), y


# ------------------------------------------------------------------------------------------ data parallel
class _SumAcross(torch.autograd.Function):
    """Forward: sum over ranks (local partial -> replicated). Backward: identity in value, as a
    :class:`_Replicate` node (whose own backward sums again). Forward-mode: sum.

    The two functions are each other's adjoint, at every order: a derivative of a backward pass (e.g. the
    double-vjp of fhg's tangent propagation, third order in the objective) sums across ranks where it must.
    """

    @staticmethod
    def forward(t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return all_reduce_(t.detach().clone(), "sum")

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # the adjoint of a sum over ranks is the replication of the (replicated) cotangent: identity in value,
        # but a _Replicate node, so that a derivative of this backward pass (third-order terms, e.g. fhg's
        # double-vjp) sums across ranks again
        return _Replicate.apply(grad)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return all_reduce_(tangent.clone(), "sum")


class _Replicate(torch.autograd.Function):
    """Forward: identity (a replicated input used in local work). Backward: sum over ranks (a
    :class:`_SumAcross` node, differentiable again). Forward-mode: identity."""

    @staticmethod
    def forward(t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return t.view_as(t)

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return _SumAcross.apply(grad)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return tangent


def _replicate(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return _Replicate.apply(tree) if (tree.requires_grad or _has_tangent(tree)) else tree
    if isinstance(tree, Mapping):
        return {k: _replicate(v) for k, v in tree.items()}
    return tree


def _has_tangent(t: torch.Tensor) -> bool:
    import torch.autograd.forward_ad as fwAD

    try:
        return fwAD.unpack_dual(t).tangent is not None
    except RuntimeError:  # no forward-AD level active
        return False


def data_parallel(local: Objective, ctx: Optional[DistContext] = None) -> Objective:
    """Turn this rank's partial objective into the replicated global sum ``sum_r local_r(x, y)``.

    Every rank calls the returned objective with the same (replicated) x and y; its value, its gradients
    (first and higher order, e.g. the Hessian-vector products of reverse-mode hypergradients) are those of
    the sum over all ranks' shards. All ranks must therefore evaluate and differentiate their objectives in
    the same order (true of every method: the ranks run the same deterministic algorithm). Use with a plain
    :class:`bilevel.OuterLoop` (no ``reduce_grads``): the hypergradient is already global on every rank.

    Parameters
    ----------
    local : callable
        ``local(x, y)``: this rank's share, e.g. the loss summed over its samples divided by the total number
        of samples (for a mean). A term that is not sharded must be added by one rank only (or divided by the
        world size).
    ctx : DistContext, optional
        Default: current context; single-process: ``local`` is returned unchanged.

    Returns
    -------
    callable
        ``objective(x, y) -> Tensor`` (scalar, identical on all ranks).
    """
    c = ctx or _CURRENT
    if not c.enabled:
        return local

    def objective(x: Any, y: Any) -> torch.Tensor:
        return _SumAcross.apply(local(_replicate(x), _replicate(y)))

    return objective


__all__ = ["DistContext", "init", "context", "shutdown", "barrier", "shard_range", "rank_seed", "seed_rank",
           "all_reduce_", "broadcast_", "grad_reducer", "reduce_record", "SUM_KEYS", "DistributedOuterLoop",
           "data_parallel", "TASK_PARALLEL_EXACT"]
