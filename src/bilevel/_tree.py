"""Flat views of tensor-or-dict variables.

The core works on one flat 1-D tensor per variable: dynamics, Hessian-vector products, linear solvers and
optimizers then touch a single tensor instead of looping over parameters. :class:`Spec` remembers the
user's structure (a tensor, or a dict of tensors) and rebuilds it as *views* of the flat vector, so
gradients flow from the user's functions back to the flat tensor at no copy cost.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch

Tree = Union[torch.Tensor, Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Spec:
    """Structure of a variable: ``keys`` is None for a plain tensor, else the dict keys (in order).

    Attributes
    ----------
    keys : tuple of str or None
        Dict keys, or None for a single tensor.
    shapes : tuple of torch.Size
        Shape of each leaf.
    dtype : torch.dtype
        The common floating dtype.
    device : torch.device
        The common device.
    """

    keys: Optional[Tuple[str, ...]]
    shapes: Tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device

    @property
    def sizes(self) -> Tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unflatten(self, flat: torch.Tensor) -> Tree:
        """Rebuild the user's structure as views of ``flat`` (differentiable, no copy)."""
        if self.keys is None:
            shape = self.shapes[0]
            return flat if flat.shape == shape else flat.view(shape)
        parts = torch.split(flat, self.sizes)
        return {k: p.view(s) for k, p, s in zip(self.keys, parts, self.shapes)}

    def flatten(self, tree: Tree, name: str = "value", detach: bool = True) -> torch.Tensor:
        """Flatten a tree of this structure (checks that keys and shapes match)."""
        flat, spec = flatten(tree, name, detach)
        if spec.keys != self.keys or spec.shapes != self.shapes:
            raise ValueError(
                f"{name} does not match the structure of the variable: expected "
                f"{self.describe()}, got {spec.describe()}"
            )
        return flat

    def describe(self) -> str:
        if self.keys is None:
            return f"a tensor of shape {tuple(self.shapes[0])}"
        inner = ", ".join(f"{k!r}: {tuple(s)}" for k, s in zip(self.keys, self.shapes))
        return "a dict {" + inner + "}"


def _check_leaf(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or a dict of tensors, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def flatten(tree: Tree, name: str = "value", detach: bool = True) -> Tuple[torch.Tensor, Spec]:
    """Return ``(flat, spec)``: a 1-D tensor holding every entry of ``tree`` and its structure.

    The flat tensor is detached unless ``detach=False`` (used where the tree is an intermediate result that
    gradients must flow through, e.g. the output of a projection inside an unroll). Callers that need a
    writable copy clone it.
    """
    cut = (lambda t: t.detach()) if detach else (lambda t: t)
    if isinstance(tree, Mapping):
        if len(tree) == 0:
            raise ValueError(f"{name} is an empty dict; it must hold at least one tensor")
        keys = tuple(tree.keys())
        for k in keys:
            if not isinstance(k, str):
                raise ValueError(f"{name} dict keys must be strings, got {k!r}")
        leaves = [_check_leaf(tree[k], f"{name}[{k!r}]") for k in keys]
        dtypes = {t.dtype for t in leaves}
        devices = {t.device for t in leaves}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                f"all tensors of {name} must share one dtype and device, got dtypes {sorted(map(str, dtypes))} "
                f"and devices {sorted(map(str, devices))}"
            )
        flat = torch.cat([cut(t).reshape(-1) for t in leaves])
        return flat, Spec(keys, tuple(t.shape for t in leaves), leaves[0].dtype, leaves[0].device)
    t = _check_leaf(tree, name)
    return cut(t).reshape(-1), Spec(None, (t.shape,), t.dtype, t.device)


def as_box(bounds: Any, spec: Spec, name: str) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Turn ``bounds`` into a projection acting on the flat vector.

    ``bounds`` is None, a pair ``(lo, hi)`` whose entries are numbers, tensors or dicts matching the
    variable (None for an open side), or a callable ``proj(value) -> value`` on the user's structure.
    """
    if bounds is None:
        return None
    if callable(bounds):
        user_proj = bounds

        def proj(flat: torch.Tensor) -> torch.Tensor:
            out = user_proj(spec.unflatten(flat))
            if isinstance(out, torch.Tensor):
                return _flat_like(out, spec, name)
            return spec.flatten(out, f"the output of the {name} projection", detach=False)

        return proj
    if isinstance(bounds, Mapping):
        bounds = _per_key_bounds(bounds, spec, name)
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"{name} must be None, a pair (lo, hi), a dict {{key: (lo, hi)}} (dict variables) or a "
                         f"projection callable, got {bounds!r}; e.g. {name}=(0.0, 1.0), {name}=(None, 1.0)"
                         + (f" or {name}={{{spec.keys[0]!r}: (0.0, 1.0)}}" if spec.keys else ""))
    lo, hi = (_bound(b, spec, f"{name}[{i}]") for i, b in enumerate(bounds))
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValueError(f"{name}: lower bound exceeds upper bound")

    def box(flat: torch.Tensor) -> torch.Tensor:
        return torch.clamp(flat, lo, hi)

    return box


def _per_key_bounds(bounds: Mapping, spec: Spec, name: str) -> tuple:
    """``{key: (lo, hi)}`` (keys a subset of the variable's; a missing key or a None side is unbounded) as a pair
    of dicts ``(lo, hi)`` with every key."""
    if spec.keys is None:
        raise ValueError(f"{name} is a dict {sorted(map(str, bounds))} but the variable is {spec.describe()}; use a "
                         f"pair (lo, hi), e.g. {name}=(0.0, 1.0)")
    unknown = sorted(str(k) for k in bounds if k not in spec.keys)
    if unknown:
        raise ValueError(f"{name} has key(s) {unknown} that the variable does not have; it is {spec.describe()}")
    lo: dict = {}
    hi: dict = {}
    for key in spec.keys:
        pair = bounds.get(key)
        if pair is None:
            pair = (None, None)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{name}[{key!r}] must be a pair (lo, hi) (None for an open side), got {pair!r}")
        lo[key] = float("-inf") if pair[0] is None else pair[0]
        hi[key] = float("inf") if pair[1] is None else pair[1]
    return lo, hi


def _flat_like(out: torch.Tensor, spec: Spec, name: str) -> torch.Tensor:
    if spec.keys is not None or out.shape != spec.shapes[0]:
        raise ValueError(f"the {name} projection must return {spec.describe()}, got shape {tuple(out.shape)}")
    return out.reshape(-1)


def _bound(b: Any, spec: Spec, name: str) -> Optional[torch.Tensor]:
    if b is None:
        return None
    if isinstance(b, (int, float)):
        val = float(b)
        if val != val:
            raise ValueError(f"{name} is nan; bounds must be numbers (inf allowed), tensors or dicts")
        return torch.full((spec.numel,), val, dtype=spec.dtype, device=spec.device)
    if isinstance(b, Mapping):
        if spec.keys is None or set(b.keys()) != set(spec.keys):
            raise ValueError(
                f"{name} has keys {sorted(b.keys())} but the variable is {spec.describe()}; "
                "dict bounds must have exactly the variable's keys"
            )
        parts = [torch.as_tensor(b[k], dtype=spec.dtype, device=spec.device).expand(s).reshape(-1)
                 for k, s in zip(spec.keys, spec.shapes)]
        return torch.cat(parts)
    if isinstance(b, torch.Tensor):
        if spec.keys is not None:
            if b.numel() != 1:
                raise ValueError(f"{name}: a tensor bound for a dict variable must be a scalar; use a dict")
            return b.to(dtype=spec.dtype, device=spec.device).reshape(()).expand(spec.numel).clone()
        return b.to(dtype=spec.dtype, device=spec.device).expand(spec.shapes[0]).reshape(-1)
    raise ValueError(f"{name} must be a number, tensor, dict or None, got {type(b).__name__}")
