"""The bilevel problem on flat vectors, and the derivative helpers every piece shares.

``min_x F(x, y*(x))`` with ``y*(x) = argmin_y f(x, y)``. :class:`Problem` holds ``F`` (``upper``) and ``f``
(``lower``) as functions of the flat vectors of :mod:`bilevel._tree`, plus the projection onto the lower
level's constraint set. The derivative helpers use ``torch.autograd`` directly: it is the cheapest tape on
CPU, and it composes with forward-mode dual tensors (``torch.autograd.forward_ad``), so one step function
serves reverse mode, forward mode and graph-free runs.

:class:`Factored` is an optional way to write an objective ``f(x, y) = head(features(x), y)`` whose x-only part
is expensive (e.g. a backbone applied to a fixed data set): within one hypergradient computation the core then
evaluates ``features`` once per x instead of at every inner step (see :class:`Factored` for the rules).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import torch
import torch.autograd.forward_ad as fwAD

from ._tree import Spec, Tree

FlatFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _scalar(out: object, name: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the {name} objective must return a scalar tensor, got {type(out).__name__}")
    if out.dim() == 0:
        return out
    if out.numel() != 1:
        raise ValueError(f"the {name} objective must return a scalar tensor, got shape {tuple(out.shape)}")
    return out.reshape(())


class Factored:
    """An objective ``f(x, y) = head(features(x), y)`` whose x-only part the core evaluates once per x.

    Calling it, ``obj(x, y)``, computes ``head(features(x), y)``: it is an ordinary objective for any code
    that calls it directly. Passed as ``upper`` or ``lower`` to :func:`bilevel.hypergrad`, :func:`bilevel.solve`,
    :class:`bilevel.OuterLoop` or :func:`bilevel.check_hypergrad`, the core keeps the last ``features(x)`` it
    computed (one entry per objective, for the duration of one hypergradient / one outer step) and reuses it
    while it is called with

    * the *same* flat x tensor object (every estimator passes one x through its whole inner loop) -- or, when
      no tape is being recorded (``torch.no_grad``), any alias of it with the same memory and version,
    * whose version counter has not moved (an in-place change of x invalidates the entry),
    * with the same need for a tape (``torch.is_grad_enabled() and x.requires_grad``), so features computed
      without a graph are never reused where the hypergradient has to flow through them, and vice versa,
    * and, where a tape is recorded, no backward pass has reached the features since they were computed (it
      may have freed their graph).

    Any other call recomputes ``features``. With a tape the reused features are one node of the graph shared by
    all inner steps, so reverse mode accumulates their cotangents and back-propagates through ``features``
    once: the hypergradient is the same as without the factoring (to round-off), for every method.

    Parameters
    ----------
    features : callable
        ``features(x) -> h``: anything (tensor, tuple, dict) computed from x alone. It must not read state that
        changes between calls other than x itself.
    head : callable
        ``head(h, y) -> scalar tensor``.
    """

    __slots__ = ("features", "head")

    def __init__(self, features: Callable[[Tree], Any], head: Callable[[Any, Tree], torch.Tensor]):
        if not callable(features) or not callable(head):
            raise ValueError("Factored(features, head) needs two callables: features(x) and head(h, y)")
        self.features = features
        self.head = head

    def __call__(self, x: Tree, y: Tree) -> torch.Tensor:
        return self.head(self.features(x), y)

    def __repr__(self) -> str:
        return f"Factored({self.features!r}, {self.head!r})"


def _tensors(value: Any):
    """The tensors of a (nested) tuple / list / dict, or of a tensor."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)


def _alias(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same memory, shape, strides, dtype and device."""
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype and a.device == b.device)


class _LastFeatures:
    """Memo of ``features(x)`` for the last flat ``x`` seen (see :class:`Factored`).

    Holds x strongly, so that its ``id`` cannot be reused by another tensor while the entry lives. Features
    with a graph carry a gradient hook that marks the entry *spent* as soon as a backward pass reaches them:
    that pass may have freed their part of the graph (``retain_graph=False``), so they are no longer reused
    where a tape is recorded (their values still serve graph-free calls).
    """

    __slots__ = ("x", "key", "value", "spent", "generation", "__weakref__")

    def __init__(self):
        self.x: Optional[torch.Tensor] = None
        self.key: Optional[tuple] = None
        self.value: Any = None
        self.spent = False
        self.generation = 0

    def _spend(self, generation: int) -> None:
        if generation == self.generation:
            self.spent = True

    def get(self, x: torch.Tensor, compute: Callable[[], Any]) -> Any:
        if x.is_inference() or torch.is_inference_mode_enabled():
            return compute()  # inference tensors have no version counter: never cache
        key = (x._version, bool(torch.is_grad_enabled() and x.requires_grad))
        cached = self.x
        if cached is not None:
            if cached is x and self.key == key and not (key[1] and self.spent):
                return self.value
            if not torch.is_grad_enabled() and self.key[0] == cached._version == x._version and _alias(cached, x):
                # without a tape, the cached x or an alias of it (x.detach(), the flat x the API passes to its
                # own diagnostics) with unchanged values: reuse, recording nothing
                return self.value
        self.x = self.key = self.value = None  # drop the old entry before computing the new one
        value = compute()
        self.generation += 1
        self.spent = False
        if key[1]:
            # a weak reference: the hook lives in the graph, which must not keep the memo (and x) alive
            ref, gen = weakref.ref(self), self.generation

            def spend(grad: torch.Tensor) -> None:
                memo = ref()
                if memo is not None:
                    memo._spend(gen)

            for t in _tensors(value):
                if t.requires_grad:
                    t.register_hook(spend)
        self.x, self.key, self.value = x, key, value
        return value


def _flat_objective(fn: Callable[[Tree, Tree], torch.Tensor], x_spec: Spec, y_spec: Spec, name: str) -> FlatFn:
    if isinstance(fn, Factored):
        features, head = fn.features, fn.head
        memo = _LastFeatures()

        def factored(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            h = memo.get(x, lambda: features(x_spec.unflatten(x)))
            return _scalar(head(h, y_spec.unflatten(y)), name)

        return factored

    def plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _scalar(fn(x_spec.unflatten(x), y_spec.unflatten(y)), name)

    return plain


def _finite_sum(fn: Callable[..., torch.Tensor], x_spec: Spec, y_spec: Spec, name: str,
                idx: Callable[[], Optional[torch.Tensor]]) -> FlatFn:
    def batch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _scalar(fn(x_spec.unflatten(x), y_spec.unflatten(y), idx()), name)

    return batch


@dataclass(frozen=True)
class Problem:
    """A bilevel problem on flat vectors.

    Attributes
    ----------
    upper, lower : callable
        ``F(x_flat, y_flat)`` and ``f(x_flat, y_flat)``, scalar tensors.
    x_spec, y_spec : Spec
        Structures of the user's variables.
    project_y : callable or None
        Projection of a flat ``y`` onto the lower-level constraint set (None: unconstrained).
    buffers : bilevel.models.Buffers or None
        Module buffers the inner dynamics carry from step to step (:func:`bilevel.dynamics.base.with_buffers`).
    batches : bilevel.stochastic.MiniBatches or None
        The mini-batch draws of a finite-sum lower objective ``lower(x, y, idx)``: ``lower`` here evaluates the
        batch of the current inner step, ``upper`` all samples (``idx=None``).
    """

    upper: FlatFn
    lower: FlatFn
    x_spec: Spec
    y_spec: Spec
    project_y: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    buffers: Any = None
    batches: Any = None

    @staticmethod
    def from_user(upper: Callable[[Tree, Tree], torch.Tensor], lower: Callable[[Tree, Tree], torch.Tensor],
                  x_spec: Spec, y_spec: Spec,
                  project_y: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, buffers: Any = None,
                  batches: Any = None) -> "Problem":
        """Wrap user objectives on tensors/dicts into flat-vector objectives with scalar checks.

        A :class:`Factored` objective gets its own one-entry memo of ``features(x)``, living as long as the
        returned problem (the API builds one problem per hypergradient / outer step). With ``batches`` the
        objectives are finite sums ``fn(x, y, idx)`` (see the class docstring).
        """
        if batches is not None:
            if isinstance(upper, Factored) or isinstance(lower, Factored):
                raise ValueError("Factored objectives cannot be mini-batched (n_lower/batch_size): write "
                                 "lower(x, y, idx) and upper(x, y, idx) as plain functions")
            return Problem(_finite_sum(upper, x_spec, y_spec, "upper", lambda: None),
                           _finite_sum(lower, x_spec, y_spec, "lower", batches.current), x_spec, y_spec, project_y,
                           buffers, batches)
        return Problem(_flat_objective(upper, x_spec, y_spec, "upper"),
                       _flat_objective(lower, x_spec, y_spec, "lower"), x_spec, y_spec, project_y, buffers)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.project_y is None else self.project_y(y)


def requires_grad_leaf(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if it is on the tape, else a leaf copy that requires grad (keeping a forward tangent)."""
    if t.requires_grad:
        return t
    primal, tangent = fwAD.unpack_dual(t)
    leaf = primal.detach().requires_grad_()
    return leaf if tangent is None else fwAD.make_dual(leaf, tangent)


def grad_y(fn: FlatFn, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``d fn(x, y) / dy``.

    With ``create_graph=True`` the result is differentiable in ``x`` and in whatever ``y`` came from (reverse
    mode through an unroll). With ``create_graph=False`` it is a constant for the tape but still carries
    forward-mode tangents. Cost: one evaluation of ``fn`` and one backward pass.
    """
    with torch.enable_grad():
        y = requires_grad_leaf(y)
        (g,) = torch.autograd.grad(fn(x, y), y, create_graph=create_graph)
    return g


def value_and_grads(fn: FlatFn, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fn(x, y), d/dx, d/dy)`` at constants ``x, y``; one forward and one backward pass."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        y = y.detach().requires_grad_()
        val = fn(x, y)
        gx, gy = torch.autograd.grad(val, (x, y), allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy
    return val.detach(), gx, gy


def grads_or_zeros(out: torch.Tensor, inputs: Sequence[torch.Tensor], **kw) -> Tuple[torch.Tensor, ...]:
    """``torch.autograd.grad`` with zeros for inputs ``out`` does not depend on."""
    gs = torch.autograd.grad(out, inputs, allow_unused=True, **kw)
    return tuple(torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs))
