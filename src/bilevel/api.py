"""The public functional API: :func:`hypergrad`, :func:`solve` and :func:`check_hypergrad`."""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Type, Union

import torch

from . import methods as _methods
from .models import Buffers
from ._tree import Tree, as_box, flatten
from .dynamics.base import nonfinite_kind
from .errors import NonFiniteError
from ._validate import check_bool, check_float, check_int
from .callbacks import as_callback
from .methods import Method, Plan
from .problem import Problem
from .stochastic.sampler import MiniBatches, derive_seed

Objective = Callable[[Tree, Tree], torch.Tensor]


@dataclass
class HypergradResult:
    """Result of :func:`hypergrad`.

    Attributes
    ----------
    grad : Tensor or dict
        The method's estimate of d phi/dx, phi(x) = F(x, y*(x)); same structure as ``x``.
    y : Tensor or dict
        The lower-level iterate the estimate was taken at (y_K, or y_kbar for PTT).
    grad_y0 : Tensor or dict or None
        Gradient w.r.t. the initialization ``y0`` for methods that learn it, else None.
    info : dict
        Diagnostics: ``upper`` (F at ``y``), ``lower`` (f at ``y``), ``lower_grad_norm_first`` /
        ``lower_grad_norm_last`` (||grad_y f|| at the first and last inner step), method-specific entries
        (``k_bar``, ``solver_residual``, ...), ``inner_diverged`` (methods whose inner dynamics descend on f
        alone, ``Method.descends_lower``: True when the inner loop diverged or oscillated,
        ``lower_grad_norm_last`` above ``DIVERGENCE_RATIO`` times ``lower_grad_norm_first`` and f larger than at
        y0; a ``RuntimeWarning`` says so) and, for the implicit methods, ``solver_converged``,
        ``solver_residual`` and ``solver_nonconverged`` (1 when the linear solve stopped above its tolerance).
    buffers : dict or None
        With ``buffers=``: the module buffers ``y`` was reached with (copies), else None.
    """

    grad: Tree
    y: Tree
    grad_y0: Optional[Tree]
    info: Dict[str, Any] = field(default_factory=dict)
    buffers: Optional[Dict[str, torch.Tensor]] = None


@dataclass
class SolveResult:
    """Result of :func:`solve`.

    Attributes
    ----------
    x : Tensor or dict
        Final upper-level variable (projected onto ``x_bounds``).
    y : Tensor or dict
        Lower-level iterate of the method at the final ``x``.
    history : list of dict
        One record per outer step: ``step``, ``upper``, ``lower``, ``grad_norm`` and method diagnostics,
        taken at the x of that step (before its update).
    y0 : Tensor or dict
        The initialization the last inner loop started from (the learned one for IA methods).
    info : dict
        ``upper_final``: F at the final (x, y).
    buffers : dict or None
        With ``buffers=``: the module buffers the final ``y`` was reached with (copies), else None.
    """

    x: Tree
    y: Tree
    history: List[Dict[str, Any]]
    y0: Tree
    info: Dict[str, Any] = field(default_factory=dict)
    buffers: Optional[Dict[str, torch.Tensor]] = None


# ------------------------------------------------------------------------------------------ helpers
def _check_common(inner_steps: Any, inner_lr: Any) -> tuple:
    return check_int("inner_steps", inner_steps, 1), check_float("inner_lr", inner_lr, positive=True)


def _method(method: Any) -> Method:
    """A :class:`bilevel.Method` object as given, or the registered method of that name."""
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise ValueError(f"method must be the name of a registered method ({', '.join(sorted(_methods.METHODS))}) "
                         f"or a bilevel.Method object, got {method!r}")
    return _methods.get(method)


def _flatten_input(value: Tree, name: str) -> tuple:
    flat, spec = flatten(value, name)
    kind = nonfinite_kind(flat)
    if kind is not None:
        raise NonFiniteError(f"{kind} in the input {name}")
    return flat, spec


def _to_float(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return v


def _check_buffers(buffers: Any) -> Optional[Buffers]:
    if buffers is not None and not isinstance(buffers, Buffers):
        raise ValueError(f"buffers must be a bilevel.models.Buffers object (the module buffers to carry through the "
                         f"inner loop) or None, got {type(buffers).__name__}")
    return buffers


def _minibatches(n_lower: Any, batch_size: Any, batch_seed: Any, device: torch.device, t: Optional[int] = None):
    """The mini-batch draws of a finite-sum lower objective (None without ``n_lower``); ``t``: the outer step, whose
    draws are seeded from ``(batch_seed, t)``."""
    if n_lower is None and batch_size is None:
        return None
    if n_lower is None or batch_size is None:
        raise ValueError("mini-batching needs both n_lower (the number of lower-level samples) and batch_size, got "
                         f"n_lower={n_lower!r}, batch_size={batch_size!r}")
    n = check_int("n_lower", n_lower, 1)
    bs = check_int("batch_size", batch_size, 1, n, who=f"n_lower={n}")
    seed = check_int("batch_seed", batch_seed, 0)
    return MiniBatches(n, bs, seed if t is None else derive_seed(seed, t), device)


def _setup(upper: Objective, lower: Objective, x: Tree, y0: Tree, method: Union[str, Method], inner_steps: Any,
           inner_lr: Any, y_bounds: Any, buffers: Any = None, n_lower: Any = None, batch_size: Any = None,
           batch_seed: Any = 0):
    meth = _method(method)
    steps, lr = _check_common(inner_steps, inner_lr)
    if not callable(upper) or not callable(lower):
        raise ValueError("upper and lower must be callables f(x, y) returning scalar tensors")
    xf, xs = _flatten_input(x, "x")
    yf, ys = _flatten_input(y0, "y0")
    batches = _minibatches(n_lower, batch_size, batch_seed, xf.device)
    problem = Problem.from_user(upper, lower, xs, ys, as_box(y_bounds, ys, "y_bounds"), _check_buffers(buffers),
                                batches)
    return meth, steps, lr, problem, xf, yf


def _estimate(meth: Method, plan: Plan, problem: Problem, x: torch.Tensor, y0: torch.Tensor, steps: int,
              wrt_init: bool, **carry: Any):
    """``plan.estimate`` plus, with module buffers, the check that the method ran its inner loop through them.
    ``carry``: the state of a ``carries_y`` method, passed on."""
    buffers, batches = problem.buffers, problem.batches
    loops = 0 if buffers is None else buffers.loops
    batch_loops = 0 if batches is None else batches.loops
    est = plan.estimate(x, y0, steps, wrt_init=wrt_init, **carry)
    if buffers is not None and buffers.loops == loops:
        raise ValueError(f"method {meth.name!r} does not carry module buffers through its inner loop (its dynamics "
                         "are not a gradient-type unroll of the lower objective); drop buffers=, or use another method "
                         "(every built-in method but bvfim carries them)")
    if batches is not None and batches.loops == batch_loops:
        raise ValueError(f"method {meth.name!r} does not run its inner loop through the mini-batch draws (n_lower/"
                         "batch_size); use an unrolled or implicit method (rhg, fhg, trhg, cg, neumann, ...) or "
                         "bilevel.stochastic.solve")
    return est


#: the inner loop counts as diverging when ||grad_y f|| ends this many times above where it started and f grew
DIVERGENCE_RATIO = 10.0


def _check_inner_divergence(problem: Problem, x: torch.Tensor, y0: Optional[torch.Tensor], info: Dict[str, Any],
                            stacklevel: int) -> None:
    """Set ``info["inner_diverged"]`` and warn when the inner loop diverged or oscillated without reaching inf.

    The signal: ``lower_grad_norm_last > DIVERGENCE_RATIO * lower_grad_norm_first`` *and* f larger at the end
    than at y0 (by more than sqrt(eps) relative). Gradient descent with a step below 2/L decreases f at every
    step, so both together mean the step is too large. f at y0 costs one evaluation, only when the norms grew.
    """
    first, last = info.get("lower_grad_norm_first"), info.get("lower_grad_norm_last")
    if not isinstance(first, float) or not isinstance(last, float) or y0 is None:
        return
    diverged = False
    if last > DIVERGENCE_RATIO * first:
        with torch.no_grad():
            f0 = float(problem.lower(x, y0))
        f_end = info["lower"]
        tol = math.sqrt(torch.finfo(y0.dtype).eps) * max(abs(f0), abs(f_end))
        diverged = not math.isfinite(f0) or f_end - f0 > tol
        if diverged:
            warnings.warn(
                f"the inner loop diverges: ||grad_y f|| grew from {first:.3g} to {last:.3g} and f from {f0:.6g} to "
                f"{f_end:.6g}, so the hypergradient is meaningless; lower inner_lr (gradient descent needs "
                "inner_lr < 2/L, L the Lipschitz constant of grad_y f)", RuntimeWarning, stacklevel=stacklevel)
    info["inner_diverged"] = diverged


def _finish(problem: Problem, est, x: torch.Tensor, wrt_init: bool, y0: Optional[torch.Tensor] = None,
            stacklevel: int = 4) -> HypergradResult:
    """The public result of an estimate; ``y0`` (the inner loop's start, for methods whose dynamics descend on f
    alone, else None) enables the divergence check."""
    info = {k: _to_float(v) for k, v in est.info.items()}
    kind = nonfinite_kind(est.grad_x)
    if kind is not None:
        raise NonFiniteError(f"{kind} in the hypergradient (upper objective {info.get('upper')})")
    with torch.no_grad():
        info["lower"] = float(problem.lower(x, est.y))
    _check_inner_divergence(problem, x, y0, info, stacklevel)
    if "solver_converged" in info:
        info["solver_nonconverged"] = int(not info["solver_converged"])
    xs, ys = problem.x_spec, problem.y_spec
    gy0 = ys.unflatten(est.grad_y0) if (wrt_init and est.grad_y0 is not None) else None
    buffers = None
    if problem.buffers is not None:  # the buffers of the returned iterate: y_kbar for PTT, else the last step's
        buffers = problem.buffers.after(int(info["k_bar"]) if "k_bar" in info else None)
    return HypergradResult(xs.unflatten(est.grad_x), ys.unflatten(est.y), gy0, info, buffers)


def _check_keywords(fn: Callable[..., Any], meth: Any, options: Dict[str, Any]) -> None:
    """A keyword that is neither a parameter of ``fn`` nor an option of the method: say both, suggest a name."""
    unknown = [k for k in options if k not in meth.options]
    if not unknown:
        return
    meth.refuse_inner_optimizer(options)
    where = "OuterLoop" if fn is OuterLoop.__init__ else fn.__name__
    own = [p for p in inspect.signature(fn).parameters if p not in ("self", "options")]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, own + list(meth.options), n=1, cutoff=0.6)
        if close:
            hints.append(f"{key!r} -> {close[0]!r}")
    allowed = ", ".join(meth.options) or "none"
    names = ", ".join(map(repr, unknown))
    raise ValueError(f"unknown option(s) {names} for method {meth.name!r}; its options are: {allowed}. "
                     f"{'It is' if len(unknown) == 1 else 'They are'} not a parameter of {where}() either (its "
                     f"parameters: {', '.join(own)})" + (f"; did you mean {', '.join(hints)}?" if hints else ""))


# ------------------------------------------------------------------------------------------ API
def hypergrad(upper: Objective, lower: Objective, x: Tree, y0: Tree, *, method: Union[str, Method], inner_steps: int,
              inner_lr: float, y_bounds: Any = None, buffers: Optional[Buffers] = None, n_lower: Optional[int] = None,
              batch_size: Optional[int] = None, batch_seed: int = 0, **options: Any) -> HypergradResult:
    """Hypergradient of phi(x) = F(x, y*(x)) by the given method.

    Parameters
    ----------
    upper, lower : callable
        ``F(x, y)`` and ``f(x, y)``, returning scalar tensors; ``x`` and ``y`` arrive with the structure
        of the arguments below (tensor or dict of tensors).
    x : Tensor or dict of Tensor
        Upper-level variable (never modified).
    y0 : Tensor or dict of Tensor
        Initialization of the inner loop (never modified).
    method : str or Method
        One of :data:`bilevel.METHODS` (e.g. ``"rhg"``, ``"fhg"``, ``"trhg"``, ``"cg"``, ``"neumann"``), or a
        :class:`bilevel.Method` object: a composition of your own needs no registration (docs/extending.md).
    inner_steps : int
        K >= 1 inner iterations.
    inner_lr : float
        Lower-level step size (> 0).
    y_bounds : (lo, hi) or callable, optional
        Box for the inner iterates (numbers, tensors or dicts), or a projection ``proj(y) -> y``.
    buffers : bilevel.models.Buffers, optional
        Module buffers (BatchNorm statistics) carried through the inner loop as a torch training loop would;
        never differentiated; the final ones are ``res.buffers`` (:mod:`bilevel.models`).
    n_lower, batch_size : int, optional
        Mini-batching (both or neither): ``lower(x, y, idx)`` and ``upper(x, y, idx)`` are then means over the
        samples ``idx`` (a LongTensor; ``None``: all). Inner step k evaluates the lower objective on its own batch of
        ``batch_size`` of the ``n_lower`` samples, a function of ``(batch_seed, k)`` that recomputed steps
        (``checkpoint``, forward mode, finite differences) replay exactly; the upper objective sees all samples, and
        the implicit methods' Hessian-vector products the batch after the last step
        (:class:`bilevel.stochastic.MiniBatches`). ``batch_size = n_lower`` is the full batch.
    batch_seed : int
        Seed of the draws (default 0).
    **options
        Method options (see ``bilevel.METHODS[method].options``); unknown ones raise ValueError.

    Returns
    -------
    HypergradResult
    """
    _check_keywords(hypergrad, _method(method), options)
    meth, steps, lr, problem, xf, yf = _setup(upper, lower, x, y0, method, inner_steps, inner_lr, y_bounds, buffers,
                                              n_lower, batch_size, batch_seed)
    plan = meth.bind(problem, lr, steps, options)
    est = _estimate(meth, plan, problem, xf, yf, steps, meth.learns_init)
    return _finish(problem, est, xf, meth.learns_init, yf if meth.descends_lower else None, stacklevel=4)


def _optimizer(outer_optimizer: Any, params: Sequence[Any], lr: float,
               kwargs: Optional[Dict[str, Any]]) -> torch.optim.Optimizer:
    kwargs = dict(kwargs or {})
    if isinstance(outer_optimizer, str):
        table: Dict[str, Type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
        if outer_optimizer.lower() not in table:
            raise ValueError(f"unknown outer_optimizer {outer_optimizer!r}; use 'adam', 'sgd' or a "
                             "torch.optim.Optimizer class")
        cls = table[outer_optimizer.lower()]
    elif isinstance(outer_optimizer, type) and issubclass(outer_optimizer, torch.optim.Optimizer):
        cls = outer_optimizer
    else:
        raise ValueError(f"outer_optimizer must be 'adam', 'sgd' or a torch.optim.Optimizer class, got "
                         f"{outer_optimizer!r}")
    return cls(list(params), lr=lr, **kwargs)


class OuterLoop:
    """The outer optimization one step at a time; the objectives may change between steps.

    :func:`solve` is a loop over :meth:`step` with fixed objectives. Use this class directly when each
    outer step sees new data (mini-batches, few-shot meta-batches) or when a run must be checkpointed:
    :meth:`state_dict` / :meth:`load_state_dict` hold x, the inner initialization, the warm-start iterate,
    the step counter and the optimizer state.

    Every option is checked when the loop is built (the method is bound once, as the first step will), so a
    bad option value fails before any step. Parameters are those of :func:`solve` (without the objectives and
    ``outer_steps``), plus

    callback : callable or list of callables, optional
        ``callback(t, record)`` after every :meth:`step` (t = the 0-based index of the step just taken); see
        :mod:`bilevel.callbacks`.
    reduce_grads : callable, optional
        ``reduce_grads(grad_x, grad_y0) -> (grad_x, grad_y0)`` on the flat hypergradient (and the
        flat initialization gradient of methods that learn it, else None) before the finiteness check, the
        record's ``grad_norm`` and the optimizer step; e.g. :func:`bilevel.parallel.grad_reducer`.
    init_lr : float, optional
        Step size of the learned initialization (methods with ``learns_init``: iaptt, iagm, iagm-a, ...),
        default ``outer_lr``; IAPTT-GM's alpha_z, which need not equal the step alpha_x of x.
    buffers : bilevel.models.Buffers, optional
        Module buffers carried through every inner loop (:mod:`bilevel.models`): each loop starts from
        ``buffers.start``, which ``warm_start=True`` moves to the buffers the previous loop ended with (as it
        moves y0). :attr:`buffers` holds those of the last step; :meth:`state_dict` includes them.
    """

    def __init__(self, x0: Tree, y0: Tree, *, method: Union[str, Method], outer_lr: float,
                 outer_optimizer: Union[str, Type[torch.optim.Optimizer]] = "adam", inner_steps: int,
                 inner_lr: float, x_bounds: Any = None, y_bounds: Any = None, warm_start: bool = False,
                 outer_kwargs: Optional[Dict[str, Any]] = None, init_lr: Optional[float] = None,
                 reduce_grads: Optional[Callable[[torch.Tensor, Optional[torch.Tensor]], tuple]] = None,
                 callback: Any = None, buffers: Optional[Buffers] = None, n_lower: Optional[int] = None,
                 batch_size: Optional[int] = None, batch_seed: int = 0, **options: Any):
        self.method = _method(method)
        self._buffers = _check_buffers(buffers)
        self._last_buffers = None if buffers is None else buffers.start
        self.callback = as_callback(callback)
        _check_keywords(OuterLoop.__init__, self.method, options)
        # optional hook on the flat (grad_x, grad_y0) before the step, e.g. an all-reduce across
        # ranks passed in by bilevel.parallel; returns the reduced pair (the core never imports it)
        if reduce_grads is not None and not callable(reduce_grads):
            raise ValueError(f"reduce_grads must be a callable (grad_x, grad_y0) -> (grad_x, grad_y0), got "
                             f"{reduce_grads!r}")
        self.reduce_grads = reduce_grads
        self.inner_steps, self.inner_lr = _check_common(inner_steps, inner_lr)
        self.outer_lr = check_float("outer_lr", outer_lr, positive=True)
        check_bool("warm_start", warm_start)
        if self.method.carries_y:  # the first-order family continues from the y of the previous step
            warm_start = True
        if warm_start and self.method.learns_init:
            raise ValueError(f"warm_start=True cannot be used with method {self.method.name!r}: it learns the inner "
                             "initialization, and every inner loop starts from that learned y0 (warm starting "
                             "would never use it); drop warm_start, or pick a method that does not learn y0")
        self.warm_start = warm_start
        self.method.check_options(options)
        self.options = dict(options)
        xf, self.x_spec = _flatten_input(x0, "x0")
        yf, self.y_spec = _flatten_input(y0, "y0")
        _minibatches(n_lower, batch_size, batch_seed, xf.device)  # checks the arguments now
        self._batching = (n_lower, batch_size, batch_seed)
        self._project_x = as_box(x_bounds, self.x_spec, "x_bounds")
        self._project_y = as_box(y_bounds, self.y_spec, "y_bounds")
        self._x = xf.clone() if self._project_x is None else self._project_x(xf).detach().clone()
        learns = self.method.learns_init
        self._y_init = (self._project(yf) if learns else yf).detach().clone()
        self._start = self._y_init
        self._last_y = self._y_init
        self.init_lr = self.outer_lr if init_lr is None else check_float("init_lr", init_lr, positive=True)
        params: List[Any] = [{"params": [self._x]}]
        if learns:  # the learned initialization is its own parameter group (step init_lr)
            params.append({"params": [self._y_init], "lr": self.init_lr})
        self.optimizer = _optimizer(outer_optimizer, params, self.outer_lr, outer_kwargs)
        self.t = 0
        try:  # bind once, as the first step will: a bad option value fails here, before any work or file
            self._plan(_placeholder, _placeholder, 0)
        except _NotEvaluated:  # a method that evaluates the objectives while binding: nothing more to check
            pass
        self.solver_nonconverged_steps = 0  # outer steps whose linear solve stopped above its tolerance
        self._carry: Optional[Dict[str, torch.Tensor]] = None  # state of a carries_y method across outer steps

    def synchronize(self, fn: Callable[[torch.Tensor], Any]) -> None:
        """Apply ``fn(tensor)`` in place, without a tape, to the state that every process must share.

        That is x, the inner initialization and (with ``warm_start``) the iterate the next inner loop starts
        from; e.g. ``loop.synchronize(lambda t: torch.distributed.broadcast(t, 0))`` makes every rank start from
        rank 0's point (:class:`bilevel.parallel.DistributedOuterLoop` does this when it is built). The
        optimizer state is not touched.
        """
        with torch.no_grad():
            fn(self._x)
            fn(self._y_init)
            if self._start is not self._y_init:
                fn(self._start)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return y if self._project_y is None else self._project_y(y)

    def _plan(self, upper: Objective, lower: Objective, t: int) -> tuple:
        batches = _minibatches(*self._batching, self._x.device, t)
        problem = Problem.from_user(upper, lower, self.x_spec, self.y_spec, self._project_y, self._buffers, batches)
        opts = self.method.schedule(dict(self.options), t) if self.method.schedule else self.options
        return problem, self.method.bind(problem, self.inner_lr, self.inner_steps, opts)

    @property
    def x(self) -> Tree:
        """Current upper-level variable (a copy, in the user's structure)."""
        return self.x_spec.unflatten(self._x.detach().clone())

    @property
    def y0(self) -> Tree:
        """The initialization the next inner loop starts from."""
        return self.y_spec.unflatten(self._start.detach().clone())

    @property
    def y(self) -> Tree:
        """The lower-level iterate of the last step (at the x before that step's update)."""
        return self.y_spec.unflatten(self._last_y.detach().clone())

    @property
    def buffers(self) -> Optional[Dict[str, torch.Tensor]]:
        """The module buffers :attr:`y` was reached with (copies; None without ``buffers=``)."""
        return None if self._last_buffers is None else {k: v.clone() for k, v in self._last_buffers.items()}

    def step(self, upper: Objective, lower: Objective) -> Dict[str, Any]:
        """One outer step on these objectives; returns its record (``step``, ``upper``, ``lower``, ...)."""
        learns = self.method.learns_init
        problem, plan = self._plan(upper, lower, self.t)
        est = _estimate(self.method, plan, problem, self._x, self._start, self.inner_steps, learns,
                        **({"carry": self._carry} if self.method.carries_y else {}))
        if self.reduce_grads is not None:  # reduce before the finiteness check and grad_norm
            est.grad_x, est.grad_y0 = self.reduce_grads(est.grad_x, est.grad_y0 if learns else None)
        res = _finish(problem, est, self._x, learns, self._start if self.method.descends_lower else None)
        record = {"step": self.t, "upper": res.info["upper"], "lower": res.info["lower"],
                  "grad_norm": float(torch.linalg.vector_norm(est.grad_x))}
        record.update({k: v for k, v in res.info.items() if k not in record and _plain(v)})
        if "solver_converged" in res.info:
            self.solver_nonconverged_steps += int(not res.info["solver_converged"])
            record["solver_nonconverged_steps"] = self.solver_nonconverged_steps
        self._x.grad = est.grad_x.detach().clone()
        if learns:
            self._y_init.grad = est.grad_y0.detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            if self._project_x is not None:
                self._x.copy_(self._project_x(self._x))
            if learns:
                self._y_init.copy_(self._project(self._y_init))
        if nonfinite_kind(self._x) is not None:
            raise NonFiniteError(f"nan/inf in x after outer step {self.t + 1} (reduce outer_lr)")
        self._last_y = est.y.detach()
        self._start = self._last_y if self.warm_start else self._y_init
        if self.method.carries_y:
            self._carry = None if est.carry is None else {k: v.detach() for k, v in est.carry.items()}
        if self._buffers is not None:
            self._last_buffers = res.buffers
            if self.warm_start:
                self._buffers.start = res.buffers
        self.t += 1
        if self.callback is not None:
            self.callback(self.t - 1, record)
        return record

    def evaluate(self, upper: Objective, lower: Objective) -> tuple:
        """``(F, y)`` of the method at the current x: the inner loop run from the current initialization."""
        _, plan = self._plan(upper, lower, self.t)
        with torch.no_grad():
            value, y = plan.value(self._x.detach(), self._start, self.inner_steps)
        return float(value), self.y_spec.unflatten(y.detach())

    def evaluate_buffers(self) -> Optional[Dict[str, torch.Tensor]]:
        """The module buffers of the last :meth:`evaluate` (copies; None without ``buffers=``)."""
        return None if self._buffers is None else self._buffers.after()

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue exactly: step counter, x, initialization, warm start, optimizer.

        A snapshot: later steps do not change it (the optimizer state is deep-copied).
        """
        return {"t": self.t, "x": self._x.detach().clone(), "y_init": self._y_init.detach().clone(),
                "start": self._start.detach().clone(), "last_y": self._last_y.detach().clone(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "solver_nonconverged_steps": self.solver_nonconverged_steps,
                "carry": None if self._carry is None else {k: v.clone() for k, v in self._carry.items()},
                **({} if self._buffers is None else {"buffers_start": self._buffers.start,
                                                     "buffers_last": self.buffers})}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        with torch.no_grad():
            for name in ("x", "y_init"):
                cur = getattr(self, "_" + name)
                if state[name].shape != cur.shape:
                    raise ValueError(f"checkpoint {name} has shape {tuple(state[name].shape)}, expected "
                                     f"{tuple(cur.shape)}")
                cur.copy_(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.t = int(state["t"])
        self.solver_nonconverged_steps = int(state.get("solver_nonconverged_steps", 0))
        # a checkpoint may have been read onto the CPU: its iterates go to the loop's device and dtype
        like = {"device": self._y_init.device, "dtype": self._y_init.dtype}
        self._last_y = state["last_y"].to(**like).clone()
        carry = state.get("carry")
        self._carry = None if carry is None else {k: v.to(self._x.device).clone() for k, v in carry.items()}
        self._start = self._y_init if not self.warm_start else state["start"].to(**like).clone()
        if self._buffers is not None:
            if "buffers_start" not in state:
                raise ValueError("the checkpoint holds no module buffers but this OuterLoop carries buffers=")
            at = self._y_init.device
            self._buffers.start = {k: v.to(at) for k, v in state["buffers_start"].items()}
            self._last_buffers = {k: v.to(at).clone() for k, v in state["buffers_last"].items()}


def solve(upper: Objective, lower: Objective, x0: Tree, y0: Tree, *, method: Union[str, Method], outer_steps: int,
          outer_lr: float, outer_optimizer: Union[str, Type[torch.optim.Optimizer]] = "adam",
          inner_steps: int, inner_lr: float, x_bounds: Any = None, y_bounds: Any = None,
          warm_start: bool = False, outer_kwargs: Optional[Dict[str, Any]] = None,
          callback: Any = None, init_lr: Optional[float] = None, buffers: Optional[Buffers] = None,
          n_lower: Optional[int] = None, batch_size: Optional[int] = None, batch_seed: int = 0,
          **options: Any) -> SolveResult:
    """Minimize phi(x) = F(x, y*(x)) with an outer optimizer fed by :func:`hypergrad`.

    Every outer step runs ``inner_steps`` inner iterations from ``y0`` (from the learned initialization
    for methods that learn it; from the previous step's iterate with ``warm_start=True``), takes the
    method's hypergradient, applies one step of ``outer_optimizer`` (``"adam"``, ``"sgd"`` or a
    ``torch.optim.Optimizer`` class, built with ``lr=outer_lr`` and ``outer_kwargs``) and projects x onto
    ``x_bounds`` (and a learned initialization onto ``y_bounds``). A learned initialization steps with
    ``init_lr`` (default ``outer_lr``). Inputs are never modified.

    ``x0`` is clamped onto ``x_bounds`` (projected, for a callable) before the first step, so the first
    hypergradient is taken at the projected point; methods that learn the initialization likewise start from
    ``y0`` projected onto ``y_bounds``. ``x_bounds`` / ``y_bounds`` take ``(lo, hi)`` (numbers, tensors or dicts
    with the variable's keys, None for an open side), ``{key: (lo, hi)}`` for dict variables (keys left out are
    unbounded), or a projection callable.

    ``warm_start=True`` is refused for methods that learn the initialization (their inner loops always start
    from the learned y0). A keyword that is neither a parameter of ``solve`` nor an option of the method raises
    ValueError with the closest valid name.

    ``n_lower`` / ``batch_size`` / ``batch_seed`` mini-batch a finite-sum lower objective as in :func:`hypergrad`;
    outer step t draws its inner batches from the seed ``(batch_seed, t)``, so every step sees new batches and a
    resumed run the same ones.

    ``callback(t, record)`` is called after every outer step with that step's history record (a list of callbacks
    runs them in order; :mod:`bilevel.callbacks` has a progress bar, ``every(n, ...)`` and a history). A record holds
    ``inner_diverged`` (and a ``RuntimeWarning`` is raised) when the inner loop diverged, and, for methods with
    a linear solve, ``solver_nonconverged_steps``: how many outer steps so far had a solve that stopped above
    its tolerance.
    ``buffers`` (a :class:`bilevel.models.Buffers`) carries module buffers through the inner loops
    (:class:`OuterLoop`); ``out.buffers`` are those of the final ``y``.
    Returns a :class:`SolveResult`. For objectives that change between steps, see :class:`OuterLoop`.
    """
    if not callable(upper) or not callable(lower):
        raise ValueError("upper and lower must be callables f(x, y) returning scalar tensors")
    _check_keywords(solve, _method(method), options)
    T = check_int("outer_steps", outer_steps, 0)
    loop = OuterLoop(x0, y0, method=method, outer_lr=outer_lr, outer_optimizer=outer_optimizer,
                     inner_steps=inner_steps, inner_lr=inner_lr, x_bounds=x_bounds, y_bounds=y_bounds,
                     warm_start=warm_start, outer_kwargs=outer_kwargs, init_lr=init_lr, callback=callback,
                     buffers=buffers, n_lower=n_lower, batch_size=batch_size, batch_seed=batch_seed, **options)
    if T == 0:  # validate the objectives once even when no step is taken
        _setup(upper, lower, x0, y0, method, inner_steps, inner_lr, y_bounds, buffers, n_lower, batch_size,
               batch_seed)
    history: List[Dict[str, Any]] = []
    for _ in range(T):
        history.append(loop.step(upper, lower))
    final_upper, y_final = loop.evaluate(upper, lower)
    return SolveResult(loop.x, y_final, history, loop.y0, {"upper_final": final_upper}, loop.evaluate_buffers())


class _NotEvaluated(Exception):
    """Raised by :func:`_placeholder`: the objectives of the option check in ``OuterLoop.__init__``."""


def _placeholder(*args: Any) -> torch.Tensor:
    raise _NotEvaluated


def _plain(v: Any) -> bool:
    return isinstance(v, (int, float, bool, str)) or v is None


# ------------------------------------------------------------------------------------------ checks
@dataclass
class HypergradCheck:
    """Result of :func:`check_hypergrad`: directional derivatives from the method and from finite differences.

    Attributes
    ----------
    method_derivatives, fd_derivatives : Tensor
        ``<grad, d_i>`` and ``(phi(x + eps d_i) - phi(x - eps d_i)) / (2 eps)`` per direction ``d_i``.
    max_abs_error, max_rel_error : float
    ok : bool
        Every direction within ``atol + rtol * |fd|``.
    result : HypergradResult
        The method's result at x.
    """

    method_derivatives: torch.Tensor
    fd_derivatives: torch.Tensor
    max_abs_error: float
    max_rel_error: float
    ok: bool
    result: HypergradResult

    def __repr__(self) -> str:
        n = self.fd_derivatives.numel()
        return (f"HypergradCheck(ok={self.ok}, directions={n}, max_abs_error={self.max_abs_error:.3g}, "
                f"max_rel_error={self.max_rel_error:.3g})")


def check_hypergrad(upper: Objective, lower: Objective, x: Tree, y0: Tree, *, method: Union[str, Method],
                    inner_steps: int, inner_lr: float, y_bounds: Any = None, eps: Optional[float] = None,
                    rtol: float = 1e-5, atol: float = 1e-8, directions: Optional[int] = None, seed: int = 0,
                    buffers: Optional[Buffers] = None, n_lower: Optional[int] = None,
                    batch_size: Optional[int] = None, batch_seed: int = 0, **options: Any) -> HypergradCheck:
    """Compare a method's hypergradient with central finite differences of the unrolled objective.

    The unrolled objective is the function of x the method differentiates: F(x, y_K(x)) for the unrolled
    and implicit methods (for the latter, and for truncation, the comparison measures their bias), and
    F(x, y_kbar(x)) for pessimistic truncation. Runs in the dtype of ``x`` (use float64 for tight checks).

    Parameters
    ----------
    eps : float, optional
        Finite-difference step; default ``eps(dtype) ** (1/3)`` times ``max(1, ||x||_inf)``.
    rtol, atol : float
        Tolerances for ``ok``.
    directions : int, optional
        Number of random unit directions; default: every coordinate when x has at most 64 entries,
        else 8 random directions.
    seed : int
        Seed of the random directions.
    buffers : bilevel.models.Buffers, optional
        Module buffers carried through every inner loop, the finite-difference ones included; the comparison
        is exact when the upper objective does not read the buffers (e.g. BatchNorm in training mode), since they
        are never differentiated (:mod:`bilevel.models`).
    n_lower, batch_size, batch_seed : int, optional
        Mini-batching, as in :func:`hypergrad`: the finite differences replay the same draws.
    """
    _check_keywords(check_hypergrad, _method(method), options)
    joint = _method(method)
    if joint.carries_y and joint.own_dynamics:  # a joint (x, y) step (bilevel.joint): no function of x to compare
        raise ValueError(f"method {joint.name!r} takes a joint (x, y) step and does not differentiate a function of "
                         "x, so there is nothing for finite differences to check; its update is tested against the "
                         "paper's formula instead (docs/methods/)")
    meth, steps, lr, problem, xf, yf = _setup(upper, lower, x, y0, method, inner_steps, inner_lr, y_bounds, buffers,
                                              n_lower, batch_size, batch_seed)
    plan: Plan = meth.bind(problem, lr, steps, options)
    est = _estimate(meth, plan, problem, xf, yf, steps, meth.learns_init)
    res = _finish(problem, est, xf, meth.learns_init, yf if meth.descends_lower else None, stacklevel=4)
    n = xf.numel()
    if directions is None and n <= 64:
        dirs = torch.eye(n, dtype=xf.dtype, device=xf.device)
    else:
        k = 8 if directions is None else check_int("directions", directions, 1)
        gen = torch.Generator().manual_seed(seed)
        dirs = torch.randn(k, n, generator=gen, dtype=torch.float64).to(xf)
        dirs = dirs / torch.linalg.vector_norm(dirs, dim=1, keepdim=True)
    h = eps if eps is not None else torch.finfo(xf.dtype).eps ** (1.0 / 3.0) * max(1.0, float(xf.abs().max()))
    fd = []
    with torch.no_grad():
        for d in dirs:
            plus = plan.value(xf + h * d, yf, steps)[0]
            minus = plan.value(xf - h * d, yf, steps)[0]
            fd.append((plus - minus) / (2 * h))
    fd_t = torch.stack(fd).to(xf.dtype)
    md = dirs @ est.grad_x
    err = (md - fd_t).abs()
    rel = err / torch.clamp(torch.maximum(fd_t.abs(), md.abs()), min=torch.finfo(xf.dtype).tiny)
    ok = bool((err <= atol + rtol * fd_t.abs()).all())
    return HypergradCheck(md, fd_t, float(err.max()), float(rel.max()), ok, res)
