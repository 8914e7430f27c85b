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

The module itself is never modified; its buffers (e.g. batch-norm statistics) are read as they are.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
from torch import nn

from ._validate import check_bool


def _check_module(module: Any) -> nn.Module:
    """``module`` itself if it is an ``nn.Module``; a ValueError naming its type otherwise."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected an nn.Module, got {type(module).__name__}")
    return module


def parameters(module: nn.Module, *, requires_grad_only: bool = True) -> Dict[str, torch.Tensor]:
    """Detached copies of the module's parameters as a dict ``name -> tensor`` (a valid ``y0`` or ``x0``)."""
    _check_module(module)
    everything = not check_bool("requires_grad_only", requires_grad_only)
    params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad or everything}
    if not params:
        raise ValueError("the module has no trainable parameters")
    return params


def functional(module: nn.Module) -> Callable[..., Any]:
    """``f(params, *args, **kwargs)`` calling ``module`` with ``params`` substituted for its parameters."""
    _check_module(module)

    def call(params: Dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(module, params, args, kwargs)

    return call


def load(module: nn.Module, params: Dict[str, torch.Tensor]) -> nn.Module:
    """Copy ``params`` (e.g. ``res.y``) into the module's parameters in place and return the module."""
    state = dict(_check_module(module).named_parameters())
    missing = sorted(set(params) - set(state))
    if missing:
        raise ValueError(f"the module has no parameters named {missing}; it has {sorted(state)}")
    with torch.no_grad():
        for name, value in params.items():
            state[name].copy_(value)
    return module
