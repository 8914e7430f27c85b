"""Mini-batch draws for finite-sum objectives, seeded and resumable.

:class:`BatchSampler` is the sampler of the stochastic solvers. The samples are split once into fixed batches
(a seeded permutation of ``range(n)`` cut into ``ceil(n / batch_size)`` pieces, each sorted; the last one holds the
``n mod batch_size`` remaining samples when ``batch_size`` does not divide ``n``), and every epoch visits all batches
once, in a fresh random order. Fixed batches make the variance-reduced memories of SABA exact: a memory row always
holds the last value seen for its own batch. Its state (generator, order, position) is a dict of tensors, so a
resumed run draws the same batches bitwise. With ``contiguous=True`` the fixed batches are the ranges
``[b * batch_size, (b + 1) * batch_size)`` of the samples in their given order (as benchmark_bilevel slices its
data; for data whose order is already random); the order of the batches is drawn as before.

:class:`StepBatches` is the draw of the mini-batched unrolled and implicit methods: inner step ``k`` gets batch
``k mod m`` of epoch ``k // m`` (``m = n // batch_size``; a remainder is left out of that epoch), a pure function of
``(seed, k)``, so a recomputed step (checkpointing, a second pass, finite differences) draws the same samples.

Cost: one ``randperm(n)`` per sampler (and per epoch for :class:`StepBatches`, cached), one ``randperm`` of the
number of batches per epoch, and a slice per draw (one gather for a block of draws, :meth:`BatchSampler.draw_many`).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ["BatchSampler", "MiniBatches", "derive_seed", "generator", "StepBatches"]


def derive_seed(*key: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: independent streams for distinct keys)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in key]).generate_state(1, np.uint64)[0]
               >> np.uint64(1))


def generator(*key: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``key``."""
    return torch.Generator().manual_seed(derive_seed(*key))


class BatchSampler:
    """Fixed batches of a seeded permutation, in a new random order every epoch.

    Parameters
    ----------
    n : int
        Number of samples.
    batch_size : int
        Samples per batch (``1 <= batch_size <= n``).
    seed : int
        The stream's seed (see :func:`derive_seed`).
    device : torch.device, optional
        Where the index tensors live (the device of the data the objectives index).
    contiguous : bool
        Batch ``b`` is the range ``[b * batch_size, (b + 1) * batch_size)`` (clipped to ``n``) instead of a piece of
        a seeded permutation.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: Optional[torch.device] = None,
                 contiguous: bool = False):
        self.n, self.batch_size = int(n), int(batch_size)
        self.n_batches = math.ceil(self.n / self.batch_size)
        self.contiguous = bool(contiguous)
        self._gen = torch.Generator().manual_seed(int(seed))
        if self.contiguous:
            self.perm = torch.arange(self.n, device=device)
        else:
            perm = torch.randperm(self.n, generator=self._gen)
            full = (self.n // self.batch_size) * self.batch_size
            head = perm[:full].view(-1, self.batch_size).sort(dim=1).values.reshape(-1)
            self.perm = torch.cat([head, perm[full:].sort().values]).to(device)
        self.order = torch.randperm(self.n_batches, generator=self._gen)
        self.pos = 0
        self.draws = 0  # draws made by this object (not part of the state: a counter for the compiled engine)

    def batch(self, b: int) -> torch.Tensor:
        """The sorted sample indices of batch ``b``."""
        start = b * self.batch_size
        return self.perm[start:min(start + self.batch_size, self.n)]

    def weight(self, b: int) -> float:
        """``|batch b| / n``."""
        return (min((b + 1) * self.batch_size, self.n) - b * self.batch_size) / self.n

    def draw(self) -> Tuple[torch.Tensor, int]:
        """``(indices, batch id)`` of the next batch."""
        if self.pos == self.n_batches:
            self.order = torch.randperm(self.n_batches, generator=self._gen)
            self.pos = 0
        b = int(self.order[self.pos])
        self.pos += 1
        self.draws += 1
        return self.batch(b), b

    @property
    def partial(self) -> Optional[int]:
        """The id of the smaller last batch, or None when ``batch_size`` divides ``n``."""
        return self.n_batches - 1 if self.n % self.batch_size else None

    def draw_ids(self, k: int) -> torch.Tensor:
        """The batch ids of the next ``k`` draws, as one tensor: the same ids, and the same generator state
        afterwards, as ``k`` calls of :meth:`draw`."""
        ids = []
        left = int(k)
        while left > 0:
            if self.pos == self.n_batches:
                self.order = torch.randperm(self.n_batches, generator=self._gen)
                self.pos = 0
            take = min(left, self.n_batches - self.pos)
            ids.append(self.order[self.pos:self.pos + take])
            self.pos += take
            left -= take
        self.draws += int(k)
        return torch.cat(ids) if ids else self.order[:0]

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The indices of the full batches ``ids`` as one ``(len(ids), batch_size)`` tensor, in one gather."""
        full = self.n // self.batch_size
        return self.perm[:full * self.batch_size].view(full, self.batch_size)[ids.to(self.perm.device)]

    def draw_many(self, k: int) -> torch.Tensor:
        """The indices of the next ``k`` batches as one ``(k, batch_size)`` tensor: the same batches, and the same
        generator state afterwards, as ``k`` calls of :meth:`draw`, in one gather (for the compiled engine). Needs
        batches of one size (``batch_size`` divides ``n``)."""
        if self.n % self.batch_size:
            raise ValueError(f"draw_many needs batches of one size: batch_size {self.batch_size} must divide n = "
                             f"{self.n}")
        return self.rows(self.draw_ids(k))

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self._gen.get_state(), "order": self.order.clone(), "pos": torch.tensor(self.pos)}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        order = state["order"]
        if order.shape != (self.n_batches,):
            raise ValueError(f"sampler state has {order.numel()} batches, this sampler has {self.n_batches} "
                             "(n or batch_size differ from the saved run)")
        self._gen.set_state(state["generator"])
        self.order = order.clone()
        self.pos = int(state["pos"])


class StepBatches:
    """The batch of inner step ``k``: a pure function of ``(n, batch_size, seed, k)``, with the current epoch's
    permutation cached.

    Epoch ``e = k // m`` (``m = n // batch_size``) is a permutation drawn from ``generator(seed, e)``; step ``k`` gets
    its piece ``k mod m``, sorted. ``batch_size == n`` gives ``arange(n)`` at every step (the full batch).
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: Optional[torch.device] = None):
        self.n, self.batch_size, self.seed, self.device = int(n), int(batch_size), int(seed), device
        self.m = self.n // self.batch_size
        self._epoch: Optional[int] = None
        self._perm: Optional[torch.Tensor] = None

    def __call__(self, k: int) -> torch.Tensor:
        if self.batch_size == self.n:
            return torch.arange(self.n, device=self.device)
        epoch, j = divmod(int(k), self.m)
        if epoch != self._epoch:
            perm = torch.randperm(self.n, generator=generator(self.seed, epoch))[:self.m * self.batch_size]
            self._perm = perm.view(self.m, self.batch_size).sort(dim=1).values.to(self.device)
            self._epoch = epoch
        return self._perm[j]


class MiniBatches:
    """The mini-batches of an unrolled inner loop, replayed exactly: the hooks of
    :func:`bilevel.dynamics.base.with_buffers` (``begin_loop``, ``begin_step``, ``end_step``) select the batch a
    finite-sum lower objective sees.

    Inner step ``k`` (also when a checkpointed segment, a second pass or a forward-mode run recomputes it) evaluates
    ``lower(x, y, idx_k)`` with ``idx_k = StepBatches(n, batch_size, seed)(k)``. Outside the steps -- the
    Hessian-vector products of the implicit methods (cg, neumann), the values reported in ``res.info`` -- the batch is
    the one after the last step run: ``idx_K`` after a K-step loop, the batch a (K+1)-th step would draw, independent
    of the K batches the loop used.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: Optional[torch.device] = None):
        self.draws = StepBatches(n, batch_size, seed, device)
        self.k = 0
        self.loops = 0

    def current(self) -> torch.Tensor:
        return self.draws(self.k)

    def begin_loop(self) -> None:
        self.k = 0
        self.loops += 1

    def begin_step(self, k: int) -> None:
        self.k = k

    def end_step(self, k: int) -> None:
        self.k = k + 1
