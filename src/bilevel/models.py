"""Use ``nn.Module``s with the functional core.

The core optimizes tensors or dicts of tensors. A model enters as a dict of its parameters, and the
objectives call it through :func:`torch.func.functional_call`::

    net = torch.nn.Linear(784, 10)
    y0 = bilevel.models.parameters(net)          # {'weight': ..., 'bias': ...}, detached copies
    model = bilevel.models.functional(net)        # model(params, inputs) -> outputs

    def lower(x, y):                              # x: log weight decay, y: the network's parameters
        loss = F.cross_entropy(model(y, X_train), t_train)
        return loss + x.exp() * sum((p ** 2).sum() for p in y.values())

    res = bilevel.hypergrad(upper, lower, torch.tensor(-3.0), y0, method="rhg", inner_steps=50, inner_lr=0.1)

The module itself is never modified.

**Buffers** (BatchNorm's running statistics, ...) are state, not variables: they are never differentiated.
Without a :class:`Buffers` object the module's own buffers are read and never written (each call works on
copies). To carry them through the inner loop as a torch training loop of the module would, hold them in a
:class:`Buffers` object and give it to both the model and the API call::

    stats = bilevel.models.Buffers(net)                        # copies of net's buffers: where inner loops start
    model = bilevel.models.functional(net, buffers=stats)
    res = bilevel.hypergrad(upper, lower, x, y0, method="rhg", inner_steps=K, inner_lr=0.1, buffers=stats)
    res.buffers                                                # the buffers y_K was trained with

The policy:

* **Inside an inner step** every forward pass of the module in training mode updates the running statistics,
  exactly as ``loss.backward(); opt.step()`` of a torch training loop does; step k + 1 starts from the buffers
  step k ended with. The buffers before every step are recorded, so a step recomputed later (``checkpoint=S``,
  PTT's second pass, the finite differences of :func:`bilevel.check_hypergrad`) starts from the same buffers
  and gives the same result.
* **Outside the inner steps** (the upper objective at y_K, the Hessian-vector products of the implicit
  methods, diagnostics) the model uses copies of the buffers after the last step run: a training-mode forward
  there changes nothing, an evaluation-mode forward uses the final statistics.
* **Never differentiated.** The hypergradient treats the buffers as constants, as torch's autograd does for
  running statistics. In training mode BatchNorm normalizes with batch statistics, so F(x, y_K(x)) does not
  depend on the buffers and the hypergradient is exact; an evaluation-mode upper objective depends on the final
  running statistics, whose dependence on x is not differentiated (finite differences would include it).
* **Where a loop starts.** Every inner loop starts from ``stats.start`` (the module's buffers when the object
  was made; assign to change it). :class:`bilevel.OuterLoop` with ``warm_start=True`` continues each loop from
  the buffers the previous one ended with, as it does for y.

``training=True`` / ``False`` in :func:`functional` runs the module in that mode whatever its own flag (e.g. the
lower objective in training mode and the upper in evaluation mode); the default uses ``module.training``.
Memory: one copy of the buffers per inner step (BatchNorm: two vectors per layer).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ._validate import check_bool


def _check_module(module: Any) -> nn.Module:
    """``module`` itself if it is an ``nn.Module``; a ValueError naming its type otherwise."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected an nn.Module, got {type(module).__name__}")
    return module


def _copy(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in tensors.items()}


class Buffers:
    """The buffers of a module (running statistics, counters) carried through inner loops (module docstring).

    Parameters
    ----------
    source : nn.Module or dict of Tensor
        The module whose buffers to carry (they are copied; the module is never written), or a dict
        ``name -> tensor`` of such buffers (e.g. a ``res.buffers`` to continue from).

    Attributes
    ----------
    start : dict of Tensor
        The buffers every inner loop starts from (assignable: same names, shapes and dtypes).
    """

    def __init__(self, source: Union[nn.Module, Mapping[str, torch.Tensor]]):
        if isinstance(source, nn.Module):
            tensors = dict(source.named_buffers())
            if not tensors:
                raise ValueError(f"the module ({type(source).__name__}) has no buffers; Buffers carries running "
                                 "statistics (e.g. of BatchNorm), a module without them needs none")
        elif isinstance(source, Mapping) and source and all(isinstance(t, torch.Tensor) for t in source.values()):
            tensors = dict(source)
        else:
            raise ValueError(f"Buffers needs an nn.Module with buffers or a non-empty dict name -> tensor, got "
                             f"{type(source).__name__}")
        self._start = _copy(tensors)
        self._trace: List[Dict[str, torch.Tensor]] = []   # _trace[k]: the buffers before inner step k
        self._live: Optional[Dict[str, torch.Tensor]] = None
        self.loops = 0  # inner loops begun (the API checks that a method ran its loop through these buffers)

    @property
    def names(self) -> List[str]:
        return list(self._start)

    @property
    def start(self) -> Dict[str, torch.Tensor]:
        return _copy(self._start)

    @start.setter
    def start(self, value: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(value, Mapping) or set(value) != set(self._start):
            got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"Buffers.start must be a dict with the buffers {sorted(self._start)}, got {got}")
        for n, t in value.items():
            ref = self._start[n]
            if not isinstance(t, torch.Tensor) or t.shape != ref.shape or t.dtype != ref.dtype:
                raise ValueError(f"buffer {n!r} must be a tensor of shape {tuple(ref.shape)} and dtype {ref.dtype}, "
                                 f"got {t!r:.80}")
        self._start = _copy(value)

    def after(self, steps: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Copies of the buffers after ``steps`` inner steps of the last inner loop (default: after the last step
        it ran); ``start`` when no loop ran."""
        if not self._trace:
            return self.start
        k = len(self._trace) - 1 if steps is None else steps
        if not 0 <= k < len(self._trace):
            raise ValueError(f"the last inner loop recorded buffers after 0..{len(self._trace) - 1} steps, not {k}")
        return _copy(self._trace[k])

    def current(self) -> Dict[str, torch.Tensor]:
        """The buffers a model call uses: inside an inner step the step's own (updated in place by a training-mode
        forward), outside one a copy of the buffers after the last step run."""
        if self._live is not None:
            return self._live
        return self.after()

    # --- hooks called by the core's dynamics wrapper (bilevel.dynamics.base.with_buffers) ---------------------
    def begin_loop(self) -> None:
        """A new inner loop starts from :attr:`start`."""
        self._trace = [_copy(self._start)]
        self._live = None
        self.loops += 1

    def begin_step(self, k: int) -> None:
        """Inner step ``k`` starts: its forward passes update a copy of the buffers before it."""
        if not 0 <= k < len(self._trace):
            raise RuntimeError(f"inner step {k} has no recorded buffers (the loop recorded {len(self._trace)} states)")
        self._live = _copy(self._trace[k])

    def end_step(self, k: int) -> None:
        """Inner step ``k`` ended: record its buffers as those before step ``k + 1`` (a recomputed step overwrites
        its record with the same values)."""
        live, self._live = self._live, None
        if live is None:
            return
        live = {n: t.detach() for n, t in live.items()}
        if k + 1 < len(self._trace):
            self._trace[k + 1] = live
        else:
            self._trace.append(live)

    def __repr__(self) -> str:
        return f"Buffers({', '.join(self._start)})"


def parameters(module: nn.Module, *, requires_grad_only: bool = True) -> Dict[str, torch.Tensor]:
    """Detached copies of the module's parameters as a dict ``name -> tensor`` (a valid ``y0`` or ``x0``)."""
    _check_module(module)
    everything = not check_bool("requires_grad_only", requires_grad_only)
    params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad or everything}
    if not params:
        raise ValueError("the module has no trainable parameters")
    return params


def _check_buffers(module: nn.Module, buffers: Any) -> Optional[Buffers]:
    if buffers is None:
        return None
    if not isinstance(buffers, Buffers):
        raise ValueError(f"buffers must be a bilevel.models.Buffers object, got {type(buffers).__name__}")
    own = dict(module.named_buffers())
    if set(buffers.names) != set(own):
        raise ValueError(f"the Buffers hold {sorted(buffers.names)} but the module's buffers are {sorted(own)}")
    return buffers


def functional(module: nn.Module, *, buffers: Optional[Buffers] = None,
               training: Optional[bool] = None) -> Callable[..., Any]:
    """``f(params, *args, **kwargs)`` calling ``module`` with ``params`` substituted for its parameters.

    Parameters
    ----------
    buffers : Buffers, optional
        Carry the module's buffers through inner loops (module docstring). Without it the module's own buffers
        are read and never written.
    training : bool, optional
        Run the module in training (True) or evaluation (False) mode, whatever its own flags (they are restored
        after each call); default: the module's current mode.
    """
    _check_module(module)
    stats = _check_buffers(module, buffers)
    mode = None if training is None else check_bool("training", training)
    has_buffers = any(True for _ in module.buffers())

    def tensors(params: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if stats is not None:
            return {**params, **stats.current()}
        if has_buffers:  # copies: a training-mode forward must not write the module's buffers
            return {**params, **_copy(dict(module.named_buffers()))}
        return params

    def call(params: Dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        if mode is None or all(m.training == mode for m in module.modules()):
            return torch.func.functional_call(module, tensors(params), args, kwargs)
        flags = [(m, m.training) for m in module.modules()]
        module.train(mode)
        try:
            return torch.func.functional_call(module, tensors(params), args, kwargs)
        finally:
            for m, flag in flags:
                m.training = flag

    return call


def load(module: nn.Module, params: Dict[str, torch.Tensor],
         buffers: Optional[Mapping[str, torch.Tensor]] = None) -> nn.Module:
    """Copy ``params`` (e.g. ``res.y``) and optionally ``buffers`` (e.g. ``res.buffers``) into the module in place
    and return the module."""
    state = dict(_check_module(module).named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"the module has no parameters named {missing}; it has {sorted(state)}")
    own = dict(module.named_buffers())
    if buffers is not None:
        unknown = sorted(set(buffers) - set(own))
        if unknown:
            raise ValueError(f"the module has no buffers named {unknown}; it has {sorted(own)}")
    with torch.no_grad():
        for name, value in params.items():
            state[name].copy_(value)
        for name, value in (buffers or {}).items():
            own[name].copy_(value)
    return module
