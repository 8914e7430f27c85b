"""Few-shot learning with the whole network adapted per task (MAML form), task ``fewshot-init``.

The meta-learners of :mod:`bilevel.methods.meta` (``maml``, ``fomaml``, ``reptile``, ``metasgd``) on the few-shot
benchmark of :mod:`bilevel.app.tasks.fewshot`, whose data, samplers, conv-4 backbone and heads this module imports:

* lower variable ``y``: per-task copies of **all** weights -- the conv-4 backbone (``conv{i}.weight`` and
  ``bn{i}.weight`` / ``bn{i}.bias``, or ``conv{i}.bias`` without batch norm) and the linear head ``head``
  ``(ways, feat + 1)`` (last column = bias) -- each tensor with a leading task axis of length ``meta_batch``.
  ``y0`` repeats the learned initialization theta once per task; the methods run with ``shared_init=True``
  (fixed by the task), so one theta is learned for all tasks (``loop.y0[k][0]``).
* upper variable ``x``: the per-parameter inner step multipliers for ``metasgd`` (a dict with theta's keys and
  shapes, no task axis, started at 1: the inner step is ``inner_lr * x`` entry-wise); an empty tensor for the
  other three methods (nothing else is learned).
* lower ``f(x, y) = sum_j CE_mean(net_{y_j}(S_j), labels)`` (the sum over tasks: one inner step updates every
  task's weights as if it were alone), upper ``F(x, y) = 1/B sum_j CE_mean(net_{y_j}(Q_j), labels)``.

The network of one task is the conv-4 backbone of :func:`bilevel.app.tasks.fewshot.backbone` (batch norm with the
statistics of that task's set, no running statistics) followed by its head; the tasks of a meta-batch are
evaluated in one call with ``torch.func.vmap`` over the task axis of y and of the images (:func:`batched_loss`).
Each outer step draws its meta-batch from :meth:`bilevel.app.tasks.fewshot.FewShotTask.train_batch`, a pure
function of ``(seed, t)``.

Meta-test: ``test_episodes`` episodes from the meta-test classes in chunks of ``test_chunk``; every episode's
weights start at theta and take ``test_inner_steps`` (default ``inner_steps``) steps of the method's inner loop
(plain gradient descent with ``inner_lr``, entry-wise ``inner_lr * x`` for ``metasgd``) on its support loss;
reported: mean query accuracy and its 95% half-width.

Run it as ``bilevel run fewshot-init --opt ...`` (or ``run_task("fewshot-init", ...)``).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F

from bilevel.api import OuterLoop
from bilevel.app.tasks import fewshot as _fs
from bilevel.app.tasks import metrics
from bilevel.app.tasks.base import TaskRun, full_config
from bilevel.app.tasks.fewshot import backbone, head_logits

#: The methods this task runs: the meta-learners that learn a shared initialization.
META_METHODS = ("maml", "fomaml", "reptile", "metasgd")

_SHARED = ("dataset", "ways", "shots", "queries", "meta_batch", "batch_norm", "image_size", "max_per_class",
           "test_chunk", "test_inner_steps", "data_root")

#: Task options: name -> (default, type, help); the data and episode options are those of ``fewshot``.
OPTIONS: Dict[str, Tuple[Any, type, str]] = {k: _fs.OPTIONS[k] for k in _SHARED}
OPTIONS["width"] = (32, int, "conv-4 filters per layer")
OPTIONS["test_episodes"] = (100, int, "meta-test episodes for the final accuracy and its 95% interval")
OPTIONS["test_inner_steps"] = (None, int, "inner steps of the fresh task weights at meta-test (default inner_steps)")

#: This task's defaults for the runner-owned keys (small: second-order MAML through a whole conv-4 on CPU).
COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "maml",
    "inner_steps": 3,
    "inner_lr": 0.2,
    "outer_steps": 300,
    "outer_lr": 0.001,
    "outer_optimizer": "adam",
    "log_every": 50,
    "method_options": {},
}

_RUNNER_KEYS = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr", "outer_optimizer", "seed",
                "dtype", "method_options", "log_every")
HEAD = "head"


# ------------------------------------------------------------------------------------------ model
def task_logits(params: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Logits of one task's network.

    Parameters
    ----------
    params : dict of Tensor
        One task's weights: the backbone tensors of :func:`bilevel.app.tasks.fewshot.init_backbone` and ``head``
        ``(ways, feat + 1)``.
    images : Tensor
        ``(n, C, H, W)``, one set of the task (batch-norm statistics are taken over it).

    Returns
    -------
    Tensor
        ``(n, ways)``.
    """
    return head_logits(params[HEAD], backbone(params, images.unsqueeze(0))[0])


def task_loss(params: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one task's network on one of its sets (``labels`` of shape ``(n,)``)."""
    return F.cross_entropy(task_logits(params, images), labels)


#: ``batched_loss(y, images, labels) -> (B,)``: :func:`task_loss` vmapped over the leading task axis of every
#: tensor of y, of ``images`` ``(B, n, C, H, W)`` and of ``labels`` ``(B, n)``.
batched_loss = torch.func.vmap(task_loss)
#: ``batched_logits(y, images) -> (B, n, ways)``.
batched_logits = torch.func.vmap(task_logits)


def lower_value(y: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum_j CE_mean(net_{y_j}(images_j), labels_j)`` (the support losses, summed over the tasks)."""
    return batched_loss(y, images, labels).sum()


def upper_value(y: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1/B sum_j CE_mean(net_{y_j}(images_j), labels_j)`` (the query losses, averaged over the tasks)."""
    return batched_loss(y, images, labels).mean()


# ------------------------------------------------------------------------------------------ task
class FewShotInitTask:
    """A few-shot problem whose tasks adapt every weight from a learned initialization (see :func:`build`).

    Attributes
    ----------
    options : dict
        Validated options (plus ``seed``, ``dtype``, ``method``, ``inner_steps``, ``inner_lr``).
    base : bilevel.app.tasks.fewshot.FewShotTask
        The hyper-representation task providing data, samplers and the backbone initialization.
    """

    def __init__(self, config: Mapping[str, Any]):
        metrics.require(config, tuple(OPTIONS) + _RUNNER_KEYS, "fewshot-init")
        method = config["method"]
        if method not in META_METHODS:
            raise ValueError(f"fewshot-init adapts the whole network from a learned initialization shared by the "
                             f"tasks; method must be one of {', '.join(META_METHODS)}, got {method!r}")
        mopts = config["method_options"] or {}
        if "shared_init" in mopts:
            raise ValueError("fewshot-init fixes the method option shared_init=True (one initialization for all "
                             "tasks); do not pass it")
        base_cfg: Dict[str, Any] = {k: spec[0] for k, spec in _fs.OPTIONS.items()}
        base_cfg.update({k: config[k] for k in OPTIONS})
        base_cfg.update({k: config[k] for k in _RUNNER_KEYS})
        base_cfg["test_episodes"] = metrics.check_int("test_episodes", config["test_episodes"], 1)
        base_cfg["lq"] = 0.0
        self.base = _fs.FewShotTask(base_cfg)
        self.options = dict(self.base.options)
        self.dtype, self.device = self.base.dtype, self.base.device
        self._eval_index = self.base.train_index(0, stream=_fs._EVAL)

    # -------------------------------------------------------------------------------- variables
    def init(self) -> Dict[str, torch.Tensor]:
        """theta_0: the backbone initialization of ``fewshot`` (seeded) and a zero head."""
        theta = dict(self.base.x0())
        theta[HEAD] = torch.zeros(self.options["ways"], self.base.feat + 1, dtype=self.dtype, device=self.device)
        return theta

    def y0(self) -> Dict[str, torch.Tensor]:
        """theta_0 repeated once per task of the meta-batch."""
        B = self.options["meta_batch"]
        return {k: v.expand(B, *v.shape).clone() for k, v in self.init().items()}

    def x0(self) -> Any:
        """Step multipliers (ones, theta's structure) for ``metasgd``; an empty tensor otherwise."""
        if self.options["method"] == "metasgd":
            return {k: torch.ones_like(v) for k, v in self.init().items()}
        return torch.zeros(0, dtype=self.dtype, device=self.device)

    # -------------------------------------------------------------------------------- objectives
    def objectives_for(self, ep):
        """``(upper, lower)`` of one meta-batch of ``meta_batch`` meta-train tasks (an
        :class:`bilevel.app.data.Episode`, or an :class:`bilevel.app.data.EpisodeIndex` gathered on the device:
        :meth:`bilevel.app.tasks.fewshot.FewShotTask.batch_tensors`)."""
        sx, sy, qx, qy = self.base.batch_tensors(ep)

        def lower(x: Any, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return lower_value(y, sx, sy)

        def upper(x: Any, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return upper_value(y, qx, qy)

        return upper, lower

    def objectives(self, t: int):
        """``(upper, lower)`` of outer step ``t``."""
        return self.objectives_for(self.base.train_index(t))

    # -------------------------------------------------------------------------------- metrics
    def evaluate(self, loop: OuterLoop) -> Dict[str, float]:
        """Query loss / accuracy after the inner loop on a fixed meta-batch of meta-train classes."""
        upper, lower = self.objectives_for(self._eval_index)
        value, y = loop.evaluate(upper, lower)
        _, _, qx, qy = self.base.batch_tensors(self._eval_index)
        with torch.no_grad():
            acc = metrics.accuracy(batched_logits(y, qx), qy)
        return {"upper": value, "train_query_accuracy": acc}

    def adapt(self, theta: Mapping[str, torch.Tensor], steps_x: Optional[Mapping[str, torch.Tensor]],
              images: torch.Tensor, labels: torch.Tensor, steps: int) -> Dict[str, torch.Tensor]:
        """Fresh task weights: ``steps`` inner steps on the support loss of E tasks, all from ``theta``.

        Parameters
        ----------
        theta : dict of Tensor
            The initialization (no task axis).
        steps_x : dict of Tensor or None
            Meta-SGD step multipliers (theta's shapes), or None for plain gradient descent.
        images : Tensor
            ``(E, n, C, H, W)`` support images.
        labels : Tensor
            ``(E, n)``.
        steps : int

        Returns
        -------
        dict of Tensor
            Adapted weights, each with a leading axis E.
        """
        lr = self.options["inner_lr"]
        E = images.shape[0]
        y = {k: v.expand(E, *v.shape).clone() for k, v in theta.items()}
        for _ in range(steps):
            with torch.enable_grad():
                yg = {k: v.detach().requires_grad_() for k, v in y.items()}
                grads = torch.autograd.grad(lower_value(yg, images, labels), list(yg.values()))
            y = {k: (v - lr * (g if steps_x is None else steps_x[k] * g)).detach()
                 for (k, v), g in zip(y.items(), grads)}
        return y

    def meta_test(self, loop: OuterLoop, episodes: Optional[int] = None) -> Dict[str, float]:
        """Accuracy over meta-test episodes adapted from the learned initialization, with its 95% half-width."""
        o = self.options
        n = o["test_episodes"] if episodes is None else episodes
        steps = o["inner_steps"] if o["test_inner_steps"] is None else o["test_inner_steps"]
        theta = {k: v[0] for k, v in loop.y0.items()}
        steps_x = loop.x if o["method"] == "metasgd" else None
        sampler = self.base.test_sampler()
        accs = []
        done = 0
        with torch.no_grad():
            while done < n:
                b = min(o["test_chunk"], n - done)
                sx, sy, qx, qy = self.base.batch_tensors(sampler.sample_indices(b), "test")
                weights = self.adapt(theta, steps_x, sx, sy, steps)
                pred = batched_logits(weights, qx).argmax(-1)
                accs.append((pred == qy).to(torch.float64).mean(dim=1))
                done += b
        mean, ci = metrics.mean_ci95(torch.cat(accs))
        return {"meta_test_accuracy": mean, "meta_test_ci95": ci, "meta_test_episodes": float(n)}

    def summarize(self, loop: OuterLoop) -> Dict[str, float]:
        """Final metrics: meta-test accuracy / CI plus the training-batch metrics of :meth:`evaluate`."""
        out = self.meta_test(loop)
        out.update(self.evaluate(loop))
        return out

    def task_run(self) -> TaskRun:
        """The :class:`TaskRun` handed to the runner (``shared_init=True`` fixed in ``loop_options``)."""
        return TaskRun(x0=self.x0(), y0=self.y0(), objectives=self.objectives, evaluate=self.evaluate,
                       summarize=self.summarize, loop_options={"shared_init": True})


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build a ``fewshot-init`` run from a configuration.

    Parameters
    ----------
    config : mapping
        Every key of :data:`OPTIONS` plus the runner keys (``method``, ``inner_steps``, ``inner_lr``,
        ``outer_steps``, ``outer_lr``, ``outer_optimizer``, ``seed``, ``dtype``, ``method_options``,
        ``log_every``).

    Returns
    -------
    TaskRun

    Raises
    ------
    ValueError
        A method other than :data:`META_METHODS`, ``shared_init`` among the method options, and every
        error of :func:`bilevel.app.tasks.fewshot.build` (dataset, sizes, ...).
    """
    return FewShotInitTask(config).task_run()


def config_with_defaults(**overrides: Any) -> Dict[str, Any]:
    """A full config (:data:`OPTIONS`, :data:`COMMON_DEFAULTS`, ``seed=0``, ``dtype="float32"``) with
    ``overrides`` applied (for scripts and tests)."""
    return full_config("fewshot-init", OPTIONS, COMMON_DEFAULTS, overrides, dtype="float32")
