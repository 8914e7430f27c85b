"""Few-shot learning as hyper-representation learning (BDA Sec. 5.3, IAPTT-GM Sec. 4.2.1, BVFIM B.3).

* upper variable ``x``: a conv-4 backbone, a dict of tensors ``conv{i}.weight`` (+ ``bn{i}.weight`` /
  ``bn{i}.bias`` with batch norm, ``conv{i}.bias`` without), i = 0..3. Block = conv3x3(width, padding 1) ->
  batch norm -> ReLU -> 2x2 max-pool. Batch norm uses **no running statistics**: every call normalizes with the
  statistics of the images of *one task's* set (support or query) -- transductive, as MAML does -- so tasks
  never see each other's images. The features of 28x28 inputs are ``width`` numbers (``width * (S//16)^2`` for
  S x S inputs).
* lower variable ``y``: one linear head per task of the meta-batch, a single tensor
  ``(meta_batch, ways, feat + 1)`` (last column = bias), ``y0 = 0``.
* lower ``f(x, y) = sum_j [ CE_mean(head_j(phi_x(S_j)), labels) + lq * sum_i (w_ji^2 + eps^2)^(q/2) ]``: the
  **sum** over tasks, so the gradient w.r.t. head j involves task j only and one inner step updates every head
  as if it were alone; CE is the mean over the task's support set; the smoothed l_q term (IAPTT-GM Eq. 11,
  footnote 3, read as the usual element-wise smoothing) covers the head weights (not the biases), off when
  ``lq = 0``.
* upper ``F(x, y) = 1/B sum_j CE_mean(head_j(phi_x(Q_j)), labels)``: the **mean** over tasks of the mean query CE
  (the papers write sums; a mean keeps the outer step size independent of ``meta_batch`` -- Adam is invariant
  to the scale anyway).

Parallelism: the backbone runs once on all ``B * n`` images of a set stacked along the batch axis (batch-norm
statistics are taken per task by reshaping to ``(B, n, C, H, W)``), and the heads are applied with
``torch.func.vmap`` over the task axis. Each outer step ``t`` draws its meta-batch from a sampler seeded with
``(seed, t)``, so ``objectives(t)`` is a pure function of (seed, t) and a resumed run needs no task state.

Devices: the images of each meta split go to the run's device once, when the task is built (:class:`DeviceImages`,
in their stored ``uint8``); a step draws its meta-batch as indices (:meth:`FewShotTask.train_index`, on the CPU:
the draws are the same on every device), copies only those indices and labels to the device and gathers the images
there.

Features computed once: both objectives are :class:`bilevel.Factored` -- ``features(x) = phi_x(set)`` and a
head part ``(feats, y) -> loss`` -- so within one hypergradient the core runs the backbone on the support set
once per x (not at every inner step, x being fixed during the inner loop) and on the query set once per x;
with a tape the K inner steps share that one feature node, and the hypergradient is unchanged. Called
directly, ``lower(x, y)`` / ``upper(x, y)`` still compute everything.

Meta-test: ``test_episodes`` episodes from the meta-test classes (for rotated Fashion-MNIST, original classes
6-9 with all rotations: no class and no rotation of a class seen in meta-training), in chunks of
``test_chunk`` episodes; fresh heads start at the mean over the meta-batch axis of the loop's initialization
(zeros, or the learned initialization of iaptt / iagm / iagm-a) and take ``test_inner_steps`` (default
``inner_steps``) plain gradient steps of size ``inner_lr`` on the lower objective at the final x (the method's
upper-level terms, e.g. BDA's aggregation, would need the query labels, so they are not used at test time).
Reported: mean query accuracy and the 95% half-width ``1.96 * std / sqrt(n)`` over episodes.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from bilevel import methods as _methods
from bilevel.api import OuterLoop
from bilevel.problem import Factored
from bilevel.app.data import (Episode, EpisodeIndex, EpisodeSampler, load_image_folder, load_omniglot,
                              rotated_fashion_mnist)
from bilevel.app.data.images import FewShotData
from bilevel.app.data.rotated import DEFAULT_META_TRAIN_CLASSES
from bilevel.app.tasks import metrics
from bilevel.app.tasks.base import TaskRun, full_config, task_device

DATASETS = ("rotated-fashion-mnist", "omniglot", "image-folder")
BN_EPS = 1e-5
#: CPU cache blocking of :func:`backbone`: at most this many bytes of first-layer activations per chunk of tasks
#: (about 80 images of 28x28 at width 32). Measured on a 2-core EPYC: a 16-task query set of 25 images per task
#: runs ~1.4x faster forward + backward in chunks of this size than in one call.
CPU_CHUNK_BYTES = 8 * 2 ** 20

#: Task options: name -> (default, type, help).
OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "dataset": ("rotated-fashion-mnist", str,
                "rotated-fashion-mnist | omniglot (data_root with images_background / images_evaluation) | "
                "image-folder (data_root/train/<class>/*, data_root/test/<class>/*)"),
    "ways": (5, int, "classes per task (N)"),
    "shots": (1, int, "support images per class (K)"),
    "queries": (15, int, "query images per class"),
    "meta_batch": (4, int, "tasks per outer step"),
    "width": (64, int, "conv-4 filters per layer"),
    "batch_norm": (True, bool, "per-task batch norm (no running statistics) after every conv"),
    "image_size": (28, int, "images are resized to image_size x image_size"),
    "max_per_class": (None, int, "rotated-fashion-mnist: keep at most this many images per original class"),
    "test_episodes": (500, int, "meta-test episodes for the final accuracy and its 95% interval"),
    "val_episodes": (0, int, "meta-validation episodes scored at every evaluation (meta_val_accuracy, for "
                             "select_metric); 0 = no meta-validation split. rotated-fashion-mnist: original classes "
                             "4 and 5 leave meta-train for it; omniglot: the last sixth of the background "
                             "characters; image-folder: data_root/val"),
    "test_chunk": (25, int, "meta-test episodes adapted in parallel (vmap) at a time"),
    "test_inner_steps": (None, int, "gradient steps on the fresh heads at meta-test (default inner_steps)"),
    "lq": (0.0, float, "weight of the smoothed l_q regularizer of the heads (IAPTT-GM Eq. 11); 0 = off"),
    "q": (0.5, float, "exponent of the smoothed l_q regularizer, 0 < q < 1"),
    "lq_eps": (0.01, float, "smoothing epsilon of the l_q regularizer: sum (w^2 + eps^2)^(q/2)"),
    "data_root": (None, str, "data directory (required for omniglot and image-folder)"),
}

#: This task's defaults for the runner-owned keys.
COMMON_DEFAULTS: Dict[str, Any] = {
    "method": "rhg",
    "inner_steps": 10,
    "inner_lr": 0.5,
    "outer_steps": 500,
    "outer_lr": 0.001,
    "outer_optimizer": "adam",
    "log_every": 50,
    "method_options": {},
}

_RUNNER_KEYS = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr", "outer_optimizer", "seed",
                "dtype", "method_options", "log_every")

# seed streams: (seed, stream, ...) -> numpy SeedSequence
_TRAIN, _EVAL, _TEST, _INIT, _VAL = 1, 2, 3, 4, 5

#: rotated-fashion-mnist: the original classes of the meta-validation split (``val_episodes > 0``); they are
#: taken out of the default meta-train classes 0-5, the meta-test classes 6-9 stay as they are
META_VAL_CLASSES = (4, 5)


def _derive(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


# ------------------------------------------------------------------------------------------ model
def feature_dim(width: int, image_size: int) -> int:
    """Length of the conv-4 feature vector for ``image_size`` x ``image_size`` inputs."""
    s = image_size
    for _ in range(4):
        s //= 2
    return width * s * s


def init_backbone(width: int, in_channels: int, batch_norm: bool, dtype: torch.dtype,
                  generator: torch.Generator, device: Any = None) -> Dict[str, torch.Tensor]:
    """``x0``: conv weights Kaiming-normal (fan-in, ReLU gain); batch-norm scale 1, shift 0 (or conv bias 0).

    The weights are drawn from ``generator`` (a CPU generator) and then moved to ``device`` (default: the CPU), so
    that every device starts from the same numbers.

    Parameters
    ----------
    width : int
        Filters per layer.
    in_channels : int
        Image channels (1 for grayscale).
    batch_norm : bool
        With batch norm (``bn{i}.weight``, ``bn{i}.bias``) or with conv biases (``conv{i}.bias``).
    dtype : torch.dtype
    generator : torch.Generator
    device : torch.device or str, optional

    Returns
    -------
    dict of Tensor
    """
    params: Dict[str, torch.Tensor] = {}
    cin = in_channels
    for i in range(4):
        std = math.sqrt(2.0 / (cin * 9))
        params[f"conv{i}.weight"] = (torch.randn(width, cin, 3, 3, generator=generator, dtype=torch.float64)
                                     * std).to(device=device, dtype=dtype)
        if batch_norm:
            params[f"bn{i}.weight"] = torch.ones(width, dtype=dtype, device=device)
            params[f"bn{i}.bias"] = torch.zeros(width, dtype=dtype, device=device)
        else:
            params[f"conv{i}.bias"] = torch.zeros(width, dtype=dtype, device=device)
        cin = width
    return params


def backbone(x: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """Conv-4 features of a stack of task sets, batched over the tasks.

    On CPU the tasks are processed in chunks of whole tasks whose first-layer activations take at most
    :data:`CPU_CHUNK_BYTES` (cache blocking: one call on a few hundred images runs out of cache and is slower per
    image than several calls on a few dozen); elsewhere, and when everything fits, in one call. Batch-norm
    statistics are per task either way, so chunking changes nothing but the speed.

    Parameters
    ----------
    x : dict of Tensor
        Backbone parameters (:func:`init_backbone`); batch norm is used iff ``"bn0.weight"`` is present.
    images : Tensor
        ``(B, n, C, H, W)``: ``n`` images of each of ``B`` tasks. Batch-norm statistics are per task.

    Returns
    -------
    Tensor
        ``(B, n, feat)``.
    """
    B, n = images.shape[:2]
    if B > 1 and images.device.type == "cpu":
        width = x["conv0.weight"].shape[0]
        per_task = n * width * images.shape[-2] * images.shape[-1] * images.element_size()
        tasks = max(1, CPU_CHUNK_BYTES // max(1, per_task))
        if tasks < B:
            return torch.cat([_backbone(x, images[i:i + tasks]) for i in range(0, B, tasks)])
    return _backbone(x, images)


def _backbone(x: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """:func:`backbone` in one call over all ``B * n`` images."""
    B, n = images.shape[:2]
    # Images ordered (n, B): the conv output (n*B, c, h, w) is then, as a free view, (n, B*c, h, w), whose
    # channels are the (task, channel) pairs, so one fused F.batch_norm call (training mode, no running
    # statistics) normalizes each task's channel with that task's statistics over (n, h, w) -- the same as
    # normalizing each task separately, without strided reductions over a 5-D view.
    h = images.transpose(0, 1).reshape(n * B, *images.shape[2:])
    bn = "bn0.weight" in x
    for i in range(4):
        h = F.conv2d(h, x[f"conv{i}.weight"], None if bn else x[f"conv{i}.bias"], padding=1)
        if bn:
            c, hh, ww = h.shape[1:]
            weight, bias = x[f"bn{i}.weight"], x[f"bn{i}.bias"]
            if B > 1:
                weight, bias = weight.repeat(B), bias.repeat(B)
            h = F.batch_norm(h.view(n, B * c, hh, ww), None, None, weight, bias, training=True,
                             eps=BN_EPS).view(n * B, c, hh, ww)
        # ReLU after the pooling: max-pool and ReLU commute (both monotone), on a 4x smaller tensor
        h = torch.relu(F.max_pool2d(h, 2))
    return h.reshape(n, B, -1).transpose(0, 1).contiguous()


def head_logits(head: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Logits of one task's linear head: ``head (ways, feat+1)``, ``feats (n, feat)`` -> ``(n, ways)``."""
    return feats @ head[:, :-1].t() + head[:, -1]


def task_loss(head: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one task's head on one of its sets."""
    return F.cross_entropy(head_logits(head, feats), labels)


def lq_penalty(heads: torch.Tensor, q: float, eps: float) -> torch.Tensor:
    """Smoothed l_q of the head weights (biases excluded): ``sum (w^2 + eps^2)^(q/2)`` over all heads."""
    return (heads[..., :-1].pow(2) + eps * eps).pow(q / 2).sum()


_batched_loss = torch.func.vmap(task_loss)
_batched_logits = torch.func.vmap(head_logits)


def lower_value(heads: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, lq: float = 0.0,
                q: float = 0.5, eps: float = 0.01) -> torch.Tensor:
    """``sum_j CE_mean(head_j, feats_j, labels_j) + lq * lq_penalty`` with the heads vmapped over tasks.

    Parameters
    ----------
    heads : Tensor
        ``(B, ways, feat+1)``.
    feats : Tensor
        ``(B, n, feat)``.
    labels : Tensor
        ``(B, n)`` integer labels.
    lq, q, eps : float
        Regularizer weight, exponent and smoothing.

    Returns
    -------
    Tensor
        Scalar.
    """
    loss = _batched_loss(heads, feats, labels).sum()
    if lq:
        loss = loss + lq * lq_penalty(heads, q, eps)
    return loss


def upper_value(heads: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``1/B sum_j CE_mean(head_j, feats_j, labels_j)`` (vmapped over tasks)."""
    return _batched_loss(heads, feats, labels).mean()


def make_objectives(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor, lq: float = 0.0,
                    q: float = 0.5, eps: float = 0.01, total_tasks: Optional[int] = None
                    ) -> Tuple[Factored, Factored]:
    """``(upper, lower)`` of one meta-batch of tensors, as :class:`bilevel.Factored` objectives.

    ``lower = Factored(backbone(., sx), (feats, y) -> lower_value(y, feats, sy, lq, q, eps))`` and
    ``upper = Factored(backbone(., qx), (feats, y) -> upper_value(y, feats, qy))``: the core computes each
    set's features once per x within a hypergradient, instead of at every inner step.

    Parameters
    ----------
    sx, qx : Tensor
        ``(B, n, C, H, W)`` support / query images.
    sy, qy : Tensor
        ``(B, n)`` integer labels.
    lq, q, eps : float
        l_q regularizer of the heads (off when ``lq = 0``).
    total_tasks : int, optional
        The upper objective is ``sum_j CE_j / total_tasks`` instead of the mean over these tasks: a rank's share
        of a sharded meta-batch.

    Returns
    -------
    (Factored, Factored)
    """

    def support_features(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return backbone(x, sx)

    def query_features(x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return backbone(x, qx)

    def lower_head(feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lower_value(y, feats, sy, lq, q, eps)

    def upper_head(feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if total_tasks is None:
            return upper_value(y, feats, qy)
        return _batched_loss(y, feats, qy).sum() / total_tasks

    return Factored(query_features, upper_head), Factored(support_features, lower_head)


# ------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=4)
def _load(dataset: str, root: Optional[str], image_size: int, max_per_class: Optional[int], seed: int,
          split: str, with_val: bool = False):
    """The images of a meta split (``train``, ``val`` or ``test``); ``with_val``: a meta-validation split exists
    (for rotated-fashion-mnist it takes :data:`META_VAL_CLASSES` out of meta-train)."""
    if dataset == "rotated-fashion-mnist":
        if split == "test":
            return rotated_fashion_mnist(root, split="test", image_size=image_size, max_per_class=max_per_class,
                                         seed=seed)
        train = tuple(c for c in DEFAULT_META_TRAIN_CLASSES if not with_val or c not in META_VAL_CLASSES)
        return rotated_fashion_mnist(root, split="train", image_size=image_size, max_per_class=max_per_class,
                                     seed=seed, meta_train_classes=META_VAL_CLASSES if split == "val" else train)
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs data_root (the directory holding the images)")
    if dataset == "omniglot":
        if split == "test":
            return load_omniglot(root, split="evaluation", image_size=image_size)
        data = load_omniglot(root, split="background", image_size=image_size)
        return _omniglot_part(data, split) if with_val else data
    import os

    return load_image_folder(os.path.join(root, split), image_size=image_size)


def _omniglot_part(data: FewShotData, split: str) -> FewShotData:
    """Omniglot's meta-validation split: the last sixth of the background characters (with their rotations,
    class ids ``4 c + r``) in class-id order; meta-train keeps the rest."""
    chars = np.unique(data.labels // 4)
    val = chars[len(chars) - max(1, len(chars) // 6):]
    keep = np.isin(data.labels // 4, val) == (split == "val")
    labels = data.labels[keep]
    return FewShotData(data.images[keep], labels, {int(c): data.class_names[int(c)] for c in np.unique(labels)})


def episode_tensors(ep: Episode, dtype: torch.dtype, device: Any = None) -> Tuple[torch.Tensor, ...]:
    """``(support_x, support_y, query_x, query_y)`` as tensors, images ``(B, n, C, H, W)`` in ``dtype``, on
    ``device`` (default: the CPU).

    A copy of the episode's arrays: the runs themselves gather their meta-batches from images that were put on the
    device once (:class:`DeviceImages`, :meth:`FewShotTask.batch_tensors`); this is for episodes drawn elsewhere.
    """

    def images(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(a).to(device=device, dtype=dtype)
        return t.unsqueeze(2) if t.dim() == 4 else t.permute(0, 1, 4, 2, 3)

    return (images(ep.support_x), torch.as_tensor(ep.support_y).to(device), images(ep.query_x),
            torch.as_tensor(ep.query_y).to(device))


class DeviceImages:
    """The images of one meta split on the run's device, put there once; episodes are gathered from them by index.

    A meta-batch then costs the copy of its indices (and labels) to the device, not of its images; the images
    keep their stored type (``uint8`` for the loaders: a quarter of float32) and are converted after the gather
    exactly as :class:`bilevel.app.data.EpisodeSampler` normalizes them (``uint8 / 255`` in float32, then
    ``dtype``), so the tensors equal :func:`episode_tensors` of the same draws. On the CPU the images are shared
    with the numpy array, not copied.

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, H, W)`` or ``(N, H, W, C)`` images (the ``images`` of a :class:`bilevel.app.data.FewShotData`).
    dtype : torch.dtype
    device : torch.device
    """

    def __init__(self, images: np.ndarray, dtype: torch.dtype, device: Any):
        with warnings.catch_warnings():  # a read-only array is shared read-only: nothing here writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            stored = torch.as_tensor(images)
        self.images = stored.to(device)
        self.dtype, self.device = dtype, self.images.device
        # a 0-dim tensor on the device (not a Python number): CUDA would multiply by a rounded 1/255 instead
        self._scale = torch.tensor(255.0, device=self.device) if stored.dtype == torch.uint8 else None

    def gather(self, index: np.ndarray) -> torch.Tensor:
        """Images ``(B, n, C, H, W)`` in ``dtype`` of an index array ``(B, n)`` (an :class:`EpisodeIndex` field)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64)).to(self.device)
        x = self.images[idx].to(torch.float32)
        if self._scale is not None:
            x = x / self._scale
        x = x.to(self.dtype)
        return x.unsqueeze(2) if x.dim() == 4 else x.permute(0, 1, 4, 2, 3)


class FewShotTask:
    """A few-shot hyper-representation problem built from a configuration (see :func:`build`).

    Attributes
    ----------
    options : dict
        Validated task options (plus ``seed``, ``dtype``, ``inner_steps``, ``inner_lr``).
    train_data, test_data : FewShotData
        Meta-train and meta-test images.
    feat : int
        Feature length of the backbone.
    device : torch.device
        Where the images (:class:`DeviceImages`, one per meta split, put there once), x0, y0 and every step's
        tensors live.
    """

    def __init__(self, config: Mapping[str, Any]):
        o = self.options = self._validate(config)
        self.dtype, self.device = o["dtype"], o["device"]
        with_val = o["val_episodes"] > 0
        self.train_data, self.val_data, self.test_data = (
            _load(o["dataset"], o["data_root"], o["image_size"], o["max_per_class"], o["seed"], split, with_val)
            if split != "val" or with_val else None for split in ("train", "val", "test"))
        for name, data in (("meta-train", self.train_data), ("meta-validation", self.val_data),
                           ("meta-test", self.test_data)):
            if data is not None:
                self._sampler(data, 0, name)  # ValueError when ways / shots + queries do not fit
        shape = self.train_data.images.shape
        self.in_channels = 1 if len(shape) == 3 else shape[3]
        if shape[1] < 16 or shape[2] < 16:
            raise ValueError(f"images must be at least 16x16 for four 2x2 poolings, got {shape[1]}x{shape[2]}")
        self.feat = o["width"] * (shape[1] // 16) * (shape[2] // 16)
        self.images = {split: DeviceImages(data.images, self.dtype, self.device)
                       for split, data in (("train", self.train_data), ("val", self.val_data),
                                           ("test", self.test_data)) if data is not None}
        self._eval_index = self.train_index(0, stream=_EVAL)

    # -------------------------------------------------------------------------------- config
    @staticmethod
    def _validate(config: Mapping[str, Any]) -> Dict[str, Any]:
        metrics.require(config, tuple(OPTIONS) + _RUNNER_KEYS, "fewshot")
        o: Dict[str, Any] = {"dataset": metrics.check_choice("dataset", config["dataset"], DATASETS)}
        for key in ("ways", "shots", "queries", "meta_batch", "width", "test_episodes", "test_chunk"):
            o[key] = metrics.check_int(key, config[key], 2 if key == "ways" else 1)
        o["val_episodes"] = metrics.check_int("val_episodes", config.get("val_episodes", 0), 0)
        o["image_size"] = metrics.check_int("image_size", config["image_size"], 16)
        o["max_per_class"] = metrics.check_int("max_per_class", config["max_per_class"], 1, allow_none=True)
        o["test_inner_steps"] = metrics.check_int("test_inner_steps", config["test_inner_steps"], 0,
                                                  allow_none=True)
        if not isinstance(config["batch_norm"], bool):
            raise ValueError(f"batch_norm must be True or False, got {config['batch_norm']!r}")
        o["batch_norm"] = config["batch_norm"]
        o["lq"] = metrics.check_real("lq", config["lq"], 0.0)
        o["q"] = metrics.check_real("q", config["q"], 0.0, 1.0, low_open=True)
        o["lq_eps"] = metrics.check_real("lq_eps", config["lq_eps"], 0.0, low_open=True)
        root = config["data_root"]
        if root is not None and not isinstance(root, str):
            raise ValueError(f"data_root must be a directory path (str) or None, got {root!r}")
        o["data_root"] = root
        o["seed"] = metrics.check_seed(config["seed"])
        o["dtype"] = metrics.check_dtype(config["dtype"])
        o["device"] = task_device(config)
        _methods.get(config["method"])
        o["method"] = config["method"]
        o["inner_steps"] = metrics.check_int("inner_steps", config["inner_steps"], 1)
        o["inner_lr"] = metrics.check_real("inner_lr", config["inner_lr"], 0.0, low_open=True)
        return o

    # -------------------------------------------------------------------------------- sampling
    def _sampler(self, data, seed: int, name: str = "") -> EpisodeSampler:
        o = self.options
        try:
            return EpisodeSampler(data.images, data.labels, o["ways"], o["shots"], o["queries"], seed=seed)
        except ValueError as err:
            raise ValueError(f"{name or 'episode'} split of {o['dataset']}: {err}") from None

    def train_batch(self, t: int, stream: int = _TRAIN) -> Episode:
        """The meta-batch of outer step ``t`` (a pure function of ``(seed, t)``), from the meta-train classes."""
        sampler = self._sampler(self.train_data, _derive(self.options["seed"], stream, t))
        return sampler.sample(self.options["meta_batch"])

    def train_index(self, t: int, stream: int = _TRAIN) -> EpisodeIndex:
        """:meth:`train_batch` as indices into the meta-train images (the same draws)."""
        sampler = self._sampler(self.train_data, _derive(self.options["seed"], stream, t))
        return sampler.sample_indices(self.options["meta_batch"])

    def batch_tensors(self, batch: Union[Episode, EpisodeIndex], split: str = "train") -> Tuple[torch.Tensor, ...]:
        """``(support_x, support_y, query_x, query_y)`` on :attr:`device`: an :class:`EpisodeIndex` of ``split``
        (``train``, ``val`` or ``test``) gathered from that split's :class:`DeviceImages`; an :class:`Episode`
        copied (:func:`episode_tensors`)."""
        if isinstance(batch, Episode):
            return episode_tensors(batch, self.dtype, self.device)
        images = self.images[split]
        return (images.gather(batch.support), torch.as_tensor(batch.support_y).to(self.device),
                images.gather(batch.query), torch.as_tensor(batch.query_y).to(self.device))

    def test_sampler(self) -> EpisodeSampler:
        """The (seeded) sampler of the meta-test episodes, over the meta-test classes."""
        return self._sampler(self.test_data, _derive(self.options["seed"], _TEST))

    # -------------------------------------------------------------------------------- objectives
    def x0(self) -> Dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(_derive(self.options["seed"], _INIT))  # drawn on the CPU, then moved
        return init_backbone(self.options["width"], self.in_channels, self.options["batch_norm"], self.dtype, gen,
                             self.device)

    def y0(self) -> torch.Tensor:
        o = self.options
        return torch.zeros(o["meta_batch"], o["ways"], self.feat + 1, dtype=self.dtype, device=self.device)

    def objectives_for(self, ep: Union[Episode, EpisodeIndex]):
        """``(upper, lower)`` of one meta-batch of meta-train tasks (:func:`make_objectives`: features computed once
        per x); ``ep`` an :class:`Episode` or an :class:`EpisodeIndex` (:meth:`batch_tensors`)."""
        sx, sy, qx, qy = self.batch_tensors(ep)
        return make_objectives(sx, sy, qx, qy, self.options["lq"], self.options["q"], self.options["lq_eps"])

    def objectives(self, t: int):
        """``(upper, lower)`` of outer step ``t``."""
        return self.objectives_for(self.train_index(t))

    def shard_objectives(self, t: int, rank: int, world_size: int):
        """This rank's share of step ``t``: the tasks ``[lo, hi)`` of the meta-batch (contiguous, balanced blocks).

        Every rank keeps the whole head tensor y (B, ways, feat+1) and touches only its rows; lower = the
        sum of its tasks' support losses (+ l_q of its rows), upper = the sum of its tasks' query losses / B.
        Summed over ranks these are exactly :meth:`objectives` (the upper level is the mean over tasks).
        """
        B = self.options["meta_batch"]
        if not 1 <= world_size <= B:
            raise ValueError(f"cannot split a meta-batch of {B} tasks over {world_size} processes; use at most "
                             f"{B} processes or a larger meta_batch")
        base, extra = divmod(B, world_size)  # the first B % world_size ranks take one task more
        lo = rank * base + min(rank, extra)
        hi = lo + base + (1 if rank < extra else 0)
        sx, sy, qx, qy = (a[lo:hi] for a in self.batch_tensors(self.train_index(t)))
        upper, lower = make_objectives(sx, sy, qx, qy, self.options["lq"], self.options["q"], self.options["lq_eps"],
                                       total_tasks=B)
        # the rank's rows of the replicated head tensor
        return (Factored(upper.features, lambda feats, y: upper.head(feats, y[lo:hi])),
                Factored(lower.features, lambda feats, y: lower.head(feats, y[lo:hi])))

    # -------------------------------------------------------------------------------- metrics
    def evaluate(self, loop: OuterLoop) -> Dict[str, float]:
        """Query loss / accuracy of the method's heads on a fixed meta-batch of meta-train classes."""
        upper, lower = self.objectives_for(self._eval_index)
        value, y = loop.evaluate(upper, lower)
        _, _, qx, qy = self.batch_tensors(self._eval_index)
        with torch.no_grad():
            acc = metrics.accuracy(_batched_logits(y, backbone(loop.x, qx)), qy)
        out = {"upper": value, "train_query_accuracy": acc}
        if self.val_data is not None:  # the same episodes at every evaluation
            sampler = self._sampler(self.val_data, _derive(self.options["seed"], _VAL))
            out["meta_val_accuracy"] = self.episodes_accuracy(loop, sampler, self.options["val_episodes"],
                                                              split="val")[0]
        return out

    def adapt(self, x: Mapping[str, torch.Tensor], init: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
              steps: int) -> torch.Tensor:
        """Fresh heads: ``steps`` gradient steps of size ``inner_lr`` on the lower objective from ``init``.

        Parameters
        ----------
        x : dict of Tensor
            Backbone (only used through ``feats``; kept for symmetry).
        init : Tensor
            ``(ways, feat+1)`` initialization, broadcast to every task.
        feats : Tensor
            ``(E, n, feat)`` support features (computed once, without a graph).
        labels : Tensor
            ``(E, n)`` support labels.
        steps : int

        Returns
        -------
        Tensor
            ``(E, ways, feat+1)`` adapted heads.
        """
        o = self.options
        y = init.expand(feats.shape[0], *init.shape).clone()
        for _ in range(steps):
            with torch.enable_grad():
                yg = y.detach().requires_grad_()
                loss = lower_value(yg, feats, labels, o["lq"], o["q"], o["lq_eps"])
                (g,) = torch.autograd.grad(loss, yg)
            y = y - o["inner_lr"] * g
        return y.detach()

    def meta_test(self, loop: OuterLoop, episodes: Optional[int] = None) -> Dict[str, float]:
        """Accuracy over meta-test episodes at the loop's current x, with its 95% half-width."""
        n = self.options["test_episodes"] if episodes is None else episodes
        mean, ci = self.episodes_accuracy(loop, self.test_sampler(), n, split="test")
        return {"meta_test_accuracy": mean, "meta_test_ci95": ci, "meta_test_episodes": float(n)}

    def episodes_accuracy(self, loop: OuterLoop, sampler: EpisodeSampler, n: int,
                          split: str = "test") -> Tuple[float, float]:
        """Mean query accuracy of fresh heads (:meth:`adapt`) over ``n`` episodes of ``sampler`` (drawn over the
        images of ``split``) at the loop's x, and its 95% half-width."""
        o = self.options
        steps = o["inner_steps"] if o["test_inner_steps"] is None else o["test_inner_steps"]
        x = loop.x
        y0 = loop.y0
        init = y0.mean(dim=0) if y0.dim() == 3 else y0
        accs = []
        done = 0
        with torch.no_grad():
            while done < n:
                b = min(o["test_chunk"], n - done)
                sx, sy, qx, qy = self.batch_tensors(sampler.sample_indices(b), split)
                heads = self.adapt(x, init, backbone(x, sx), sy, steps)
                pred = _batched_logits(heads, backbone(x, qx)).argmax(-1)
                accs.append((pred == qy).to(torch.float64).mean(dim=1))
                done += b
        return metrics.mean_ci95(torch.cat(accs))

    def summarize(self, loop: OuterLoop) -> Dict[str, float]:
        """Final metrics: meta-test accuracy / CI plus the training-batch metrics of :meth:`evaluate`."""
        out = self.meta_test(loop)
        out.update(self.evaluate(loop))
        return out

    def task_run(self) -> TaskRun:
        """The :class:`TaskRun` handed to the runner."""
        return TaskRun(x0=self.x0(), y0=self.y0(), objectives=self.objectives, evaluate=self.evaluate,
                       summarize=self.summarize, shard_objectives=self.shard_objectives)


def build(config: Mapping[str, Any]) -> TaskRun:
    """Build a few-shot run from a configuration.

    Parameters
    ----------
    config : mapping
        Every key of :data:`OPTIONS` plus the runner keys (``method``, ``inner_steps``, ``inner_lr``,
        ``outer_steps``, ``outer_lr``, ``outer_optimizer``, ``seed``, ``dtype``, ``method_options``,
        ``log_every``), and optionally ``device`` (default cpu): the images of the meta splits, x0 and y0 are put
        there once, here.

    Returns
    -------
    TaskRun

    Raises
    ------
    ValueError
        Unknown dataset / method, ``ways`` larger than the number of classes with ``shots + queries`` images,
        out-of-range values, missing ``data_root``.
    """
    return FewShotTask(config).task_run()


def config_with_defaults(**overrides: Any) -> Dict[str, Any]:
    """A full config (:data:`OPTIONS`, :data:`COMMON_DEFAULTS`, ``seed=0``, ``dtype="float32"``) with
    ``overrides`` applied (for scripts and tests)."""
    return full_config("fewshot", OPTIONS, COMMON_DEFAULTS, overrides, dtype="float32")
