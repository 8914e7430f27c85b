"""Data hyper-cleaning: learn one weight per training sample so that a model trained on the noisy training
set does well on a clean validation set.

* upper variable ``x`` in R^n (n = ``train_size``), sample weight ``sigmoid(x_i)``, ``x0 = 0`` (weights 0.5);
* lower variable ``y``: the parameters of the follower, a dict of tensors --
  ``model="linear"`` (softmax regression, convex follower): ``{"weight": (C, D), "bias": (C,)}``, ``y0 = 0``;
  ``model="mlp"`` (one hidden ReLU layer, i.e. two fully connected layers: the non-convex follower of IAPTT-GM
  Table 3): ``{"w1": (H, D), "b1": (H,), "w2": (C, H), "b2": (C,)}``, ``y0`` seeded uniform
  ``+-1/sqrt(fan_in)`` (PyTorch's ``nn.Linear`` default) weights and zero biases;
* lower ``f(x, y) = 1/n sum_i sigmoid(x_i) CE(model(y, u_i), v_i) + l2 * sum ||W||^2`` (weight matrices only);
* upper ``F(x, y) = 1/m sum_j CE(model(y, u_j), v_j)`` over the clean validation set;
* ``warm_start``: every inner loop starts from the previous outer step's ``y_K`` (the hypergradient treats
  that start as a constant), so the follower keeps training across outer steps;
* ``activation``: the MLP's hidden activation, ``relu`` or ``none`` (two stacked linear layers, the follower of
  the IAPTT-GM authors' hyper-cleaning script);
* ``holdout_size``: clean held-out samples, never seen by either objective, whose loss and accuracy
  (``holdout_loss``, ``holdout_accuracy``) serve model selection (``select_metric``: early stopping, tuning).

The papers write both losses as *sums*; ours are *means*, so a paper step size ``s_sum`` corresponds to
``inner_lr = s_sum * n`` here (docs/tasks.md). Metrics: test accuracy of the method's ``y`` at the final x
(:meth:`bilevel.OuterLoop.evaluate`) and precision / recall / F1 of flagging corrupted samples, a sample
being flagged iff ``x_i <= 0`` (sigmoid weight <= 0.5; BVFIM's rule); ``f1_clean`` scores the same decision
with the clean samples as positives.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from bilevel import methods as _methods
from bilevel.api import OuterLoop
from bilevel.app.data import hyperclean_split
from bilevel.app.data.hyperclean import DEFAULT_SIZES
from bilevel.app.tasks import metrics
from bilevel.app.tasks.base import TaskRun, full_config, task_device

MODELS = ("linear", "mlp")
DATASETS = ("digits", "fashion-mnist", "mnist")

#: Task options: name -> (default, type, help).
OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "dataset": ("digits", str, "digits | fashion-mnist | mnist"),
    "model": ("linear", str, "follower: linear (softmax regression) | mlp (two fully connected layers)"),
    "train_size": (None, int, "training samples (default: 500 for digits, 5000 otherwise)"),
    "val_size": (None, int, "clean validation samples (default: 500 for digits, 5000 otherwise)"),
    "test_size": (None, int, "test samples (default: 797 for digits, 10000 otherwise)"),
    "noise": (0.5, float, "fraction rho of corrupted training labels, in [0, 1]"),
    "l2": (0.0, float, "weight of the l2 penalty on the follower's weight matrices in the lower objective"),
    "hidden": (100, int, "hidden width of the mlp follower"),
    "data_root": (None, str, "directory searched first for the MNIST / Fashion-MNIST IDX files"),
    "warm_start": (False, bool, "start each inner loop from the previous outer step's y_K instead of y0 "
                                "(not for methods that learn y0: iaptt, iagm, iagm-a)"),
    "holdout_size": (0, int, "clean held-out samples for model selection (early stopping, tuning), disjoint from "
                             "train / val / test; adds holdout_loss and holdout_accuracy to the metrics"),
    "activation": ("relu", str, "hidden activation of the mlp follower: relu | none (two stacked linear layers)"),
}
ACTIVATIONS = ("relu", "none")

#: This task's defaults for the runner-owned keys.
COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg",
    "inner_steps": 100,
    "inner_lr": 0.3,
    "outer_steps": 100,
    "outer_lr": 0.3,
    "outer_optimizer": "adam",
    "log_every": 10,
    "method_options": {},
}

_RUNNER_KEYS = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr", "outer_optimizer", "seed",
                "dtype", "method_options", "log_every")


# ------------------------------------------------------------------------------------------ model
def forward_t(model: str, y: Mapping[str, torch.Tensor], inputs: torch.Tensor, activation: str = "relu"
              ) -> torch.Tensor:
    """Logits of the follower, class-major: ``(C, n)``, the transpose of :func:`forward`.

    The objectives use this layout. Measured on a 2-core EPYC (Fashion-MNIST, 5000 x 784, 10 classes, float32):
    softmax over the 10 classes of each sample takes 455 us as the rows of an ``(n, C)`` tensor against 28 us as
    the columns of a ``(C, n)`` one, and a weighted cross-entropy's forward + backward 813 against 295 us; a
    linear follower's RHG hypergradient at K = 100 ran 0.89x the time of the ``(n, C)`` layout, CG 0.94x.

    Parameters
    ----------
    model : {"linear", "mlp"}
    y : dict of Tensor
        Parameters (see the module docstring).
    inputs : Tensor
        ``(n, D)`` inputs.
    activation : {"relu", "none"}
        The MLP's hidden activation (``"none"``: two stacked linear layers, a non-convex parametrization of a
        linear classifier).

    Returns
    -------
    Tensor
        ``(C, n)`` logits: ``W @ inputs^T + b`` (the MLP's hidden layer is ``(H, n)`` likewise).
    """
    if model == "linear":
        return torch.addmm(y["bias"][:, None], y["weight"], inputs.t())
    hidden = torch.addmm(y["b1"][:, None], y["w1"], inputs.t())
    if activation == "relu":
        hidden = torch.relu(hidden)
    return torch.addmm(y["b2"][:, None], y["w2"], hidden)


def forward(model: str, y: Mapping[str, torch.Tensor], inputs: torch.Tensor, activation: str = "relu"
            ) -> torch.Tensor:
    """Logits of the follower, ``(n, C)``: the transposed view of :func:`forward_t` (same arguments)."""
    return forward_t(model, y, inputs, activation).t()


def cross_entropy_t(logits_t: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``F.cross_entropy`` of class-major logits ``(C, n)`` (:func:`forward_t`): the classes along dim 0, taken as
    one ``(1, C, n)`` input, so the reductions over classes run along contiguous samples."""
    ce = F.cross_entropy(logits_t[None], labels[None], reduction=reduction)
    return ce[0] if reduction == "none" else ce


def weighted_loss(x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1/n sum_i sigmoid(x_i) CE(logits_i, labels_i)`` (mean over samples, not over the weights), from
    ``(n, C)`` logits."""
    return weighted_loss_t(x, logits.t(), labels)


def weighted_loss_t(x: torch.Tensor, logits_t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`weighted_loss` from class-major ``(C, n)`` logits (:func:`forward_t`)."""
    return (torch.sigmoid(x) * cross_entropy_t(logits_t, labels, "none")).mean()


def init_params(model: str, dim: int, classes: int, hidden: int, dtype: torch.dtype,
                generator: torch.Generator, device: Any = None) -> Dict[str, torch.Tensor]:
    """``y0``: zeros for the linear model; for the MLP, weights uniform in ``+-1/sqrt(fan_in)``, zero biases.

    The weights are drawn from ``generator`` (a CPU generator) and then moved to ``device`` (default: the CPU), so
    that every device starts from the same numbers.
    """
    if model == "linear":
        return {"weight": torch.zeros(classes, dim, dtype=dtype, device=device),
                "bias": torch.zeros(classes, dtype=dtype, device=device)}

    def uniform(rows: int, cols: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(cols)
        w = torch.rand(rows, cols, generator=generator, dtype=torch.float64) * 2 - 1
        return (w * bound).to(device=device, dtype=dtype)

    return {"w1": uniform(hidden, dim), "b1": torch.zeros(hidden, dtype=dtype, device=device),
            "w2": uniform(classes, hidden), "b2": torch.zeros(classes, dtype=dtype, device=device)}


def flag_corrupted(x: torch.Tensor) -> torch.Tensor:
    """The cleaning decision: sample i is flagged as corrupted iff ``x_i <= 0`` (weight ``<= 0.5``)."""
    return x.detach() <= 0


# ------------------------------------------------------------------------------------------ build
def _options(config: Mapping[str, Any]) -> Dict[str, Any]:
    metrics.require(config, tuple(OPTIONS) + _RUNNER_KEYS, "hyperclean")
    o: Dict[str, Any] = {}
    o["dataset"] = metrics.check_choice("dataset", config["dataset"], DATASETS)
    o["model"] = metrics.check_choice("model", config["model"], MODELS)
    defaults = DEFAULT_SIZES[o["dataset"]]
    for key, d in zip(("train_size", "val_size", "test_size"), defaults):
        v = metrics.check_int(key, config[key], 1, allow_none=True)
        o[key] = d if v is None else v
    o["noise"] = metrics.check_real("noise", config["noise"], 0.0, 1.0)
    o["l2"] = metrics.check_real("l2", config["l2"], 0.0)
    o["hidden"] = metrics.check_int("hidden", config["hidden"], 1)
    o["holdout_size"] = metrics.check_int("holdout_size", config["holdout_size"], 0)
    o["activation"] = metrics.check_choice("activation", config["activation"], ACTIVATIONS)
    root = config["data_root"]
    if root is not None and not isinstance(root, str):
        raise ValueError(f"data_root must be a directory path (str) or None, got {root!r}")
    o["data_root"] = root
    o["seed"] = metrics.check_seed(config["seed"])
    o["dtype"] = metrics.check_dtype(config["dtype"])
    o["device"] = task_device(config)
    method = _methods.get(config["method"])  # unknown method -> ValueError listing the valid ones
    if not isinstance(config["warm_start"], bool):
        raise ValueError(f"warm_start must be true or false, got {config['warm_start']!r}")
    if config["warm_start"] and method.learns_init:
        raise ValueError(f"warm_start cannot be combined with {method.name!r}, which learns the inner "
                         "initialization y0; use warm_start: false")
    o["warm_start"] = config["warm_start"]
    return o


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build a hyper-cleaning run from a configuration.

    Parameters
    ----------
    config : mapping
        Every key of :data:`OPTIONS` plus the runner keys (``method``, ``inner_steps``, ``inner_lr``,
        ``outer_steps``, ``outer_lr``, ``outer_optimizer``, ``seed``, ``dtype``, ``method_options``,
        ``log_every``), and optionally ``device`` (default cpu; :func:`bilevel.app.tasks.base.task_device`): the
        data sets, x0 and y0 are put there once, here.

    Returns
    -------
    TaskRun
        ``x0`` zeros (n,), ``y0`` the follower's parameters, fixed objectives, and the metrics.

    Raises
    ------
    ValueError
        Unknown dataset / model / method, sizes that do not fit the dataset, out-of-range values.
    """
    o = _options(config)
    split = hyperclean_split(o["dataset"], o["train_size"], o["val_size"], o["test_size"], noise=o["noise"],
                             seed=o["seed"], root=o["data_root"], holdout_size=o["holdout_size"])
    dtype, device = o["dtype"], o["device"]

    def on_device(a: np.ndarray, float_dtype: Any = None) -> torch.Tensor:  # once, here: never in a step
        return torch.as_tensor(a).to(device=device, dtype=float_dtype)

    X_tr, X_val, X_te, X_ho = (on_device(a, dtype) for a in (split.X_train, split.X_val, split.X_test,
                                                             split.X_holdout))
    y_tr, y_val, y_te, y_ho, y_tr_clean, corrupted = (
        on_device(a) for a in (split.y_train, split.y_val, split.y_test, split.y_holdout, split.y_train_clean,
                               split.corrupted))
    model, l2, act = o["model"], o["l2"], o["activation"]
    weights = ("weight",) if model == "linear" else ("w1", "w2")

    def net(y: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return forward(model, y, inputs, act)

    def net_t(y: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return forward_t(model, y, inputs, act)

    def holdout(y: Mapping[str, torch.Tensor]) -> Dict[str, float]:
        if not len(y_ho):
            return {}
        with torch.no_grad():
            logits = net(y, X_ho)
            return {"holdout_loss": float(F.cross_entropy(logits, y_ho)),
                    "holdout_accuracy": metrics.accuracy(logits, y_ho)}

    def lower(x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = weighted_loss_t(x, net_t(y, X_tr), y_tr)
        if l2:
            loss = loss + l2 * sum((y[k] ** 2).sum() for k in weights)
        return loss

    def upper(x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return cross_entropy_t(net_t(y, X_val), y_val)

    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([o["seed"], 1]).generate_state(1)[0]))
    y0 = init_params(model, X_tr.shape[1], split.num_classes, o["hidden"], dtype, gen, device)
    x0 = torch.zeros(X_tr.shape[0], dtype=dtype, device=device)

    def cleaning(loop: OuterLoop) -> Dict[str, float]:
        x = loop.x
        out = metrics.precision_recall_f1(flag_corrupted(x), corrupted)
        # the same decision scored as detecting the *clean* samples (the F1 of the IAPTT-GM authors' code)
        out["f1_clean"] = metrics.precision_recall_f1(~flag_corrupted(x), ~corrupted)["f1"]
        w = torch.sigmoid(x)
        out["weight_mean_clean"] = float(w[~corrupted].mean()) if bool((~corrupted).any()) else float("nan")
        out["weight_mean_corrupted"] = float(w[corrupted].mean()) if bool(corrupted.any()) else float("nan")
        return out

    def evaluate(loop: OuterLoop) -> Dict[str, float]:
        value, y = loop.evaluate(upper, lower)
        with torch.no_grad():
            val_acc = metrics.accuracy(net(y, X_val), y_val)
        c = cleaning(loop)
        return {"upper": value, "val_accuracy": val_acc, "f1": c["f1"], "precision": c["precision"],
                "recall": c["recall"], **holdout(y)}

    def summarize(loop: OuterLoop) -> Dict[str, float]:
        value, y = loop.evaluate(upper, lower)
        with torch.no_grad():
            out = {"test_accuracy": metrics.accuracy(net(y, X_te), y_te),
                   "val_accuracy": metrics.accuracy(net(y, X_val), y_val),
                   "train_accuracy_clean_labels": metrics.accuracy(net(y, X_tr), y_tr_clean),
                   "upper": value}
        c = cleaning(loop)
        out.update({k: c[k] for k in ("f1", "precision", "recall", "weight_mean_clean", "weight_mean_corrupted")})
        out["f1_clean"] = c["f1_clean"]
        out.update(holdout(y))
        out["n_flagged"] = c["tp"] + c["fp"]
        out["n_corrupted"] = float(split.n_corrupted)
        return out

    n_tr, n_val = X_tr.shape[0], X_val.shape[0]

    def shard_objectives(t: int, rank: int, world_size: int):
        """Rank ``rank``'s mini-batch share: its contiguous block of training and validation samples.

        lower_r = sum_{i in train block} sigmoid(x_i) CE_i / n_train (+ the l2 term on rank 0),
        upper_r = sum_{j in val block} CE_j / n_val; summed over ranks they are ``lower`` and ``upper``.
        """
        if not 1 <= world_size <= min(n_tr, n_val):
            raise ValueError(f"cannot split {n_tr} training / {n_val} validation samples over {world_size} "
                             "processes")
        a, b = _block(n_tr, rank, world_size)
        c, d = _block(n_val, rank, world_size)
        Xa, ya, Xc, yc = X_tr[a:b], y_tr[a:b], X_val[c:d], y_val[c:d]

        def lower_r(x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
            ce = cross_entropy_t(net_t(y, Xa), ya, "none")
            loss = (torch.sigmoid(x[a:b]) * ce).sum() / n_tr
            if l2 and rank == 0:
                loss = loss + l2 * sum((y[k] ** 2).sum() for k in weights)
            return loss

        def upper_r(x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return cross_entropy_t(net_t(y, Xc), yc, "sum") / n_val

        return upper_r, lower_r

    return TaskRun(x0=x0, y0=y0, objectives=lambda t: (upper, lower), evaluate=evaluate, summarize=summarize,
                   shard_objectives=shard_objectives, shard_kind="data",
                   loop_options={"warm_start": True} if o["warm_start"] else {})


def _block(n: int, rank: int, world_size: int) -> tuple:
    """Contiguous balanced block ``[lo, hi)`` of ``n`` items (the first ``n % world_size`` ranks get one more)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def config_with_defaults(**overrides: Any) -> Dict[str, Any]:
    """A full config: :data:`OPTIONS` and :data:`COMMON_DEFAULTS` defaults, ``seed=0``, ``dtype="float32"``,
    updated with ``overrides`` (convenience for scripts and tests; the runner builds its own)."""
    return full_config("hyperclean", OPTIONS, COMMON_DEFAULTS, overrides, dtype="float32")
