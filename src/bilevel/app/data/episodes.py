"""N-way K-shot episode sampling for few-shot (meta-)learning."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass(eq=False)
class Episode:
    """One task, or a batch of tasks stacked along a leading axis ``B``.

    Support and query sets are ordered class by class:
    ``support_y = [0]*shots + [1]*shots + ... + [ways-1]*shots``.

    Attributes
    ----------
    support_x : numpy.ndarray
        ``([B,] ways*shots, *image_shape)``.
    support_y : numpy.ndarray
        ``int64`` ``([B,] ways*shots)``, values in ``0..ways-1``.
    query_x : numpy.ndarray
        ``([B,] ways*queries, *image_shape)``.
    query_y : numpy.ndarray
        ``int64`` ``([B,] ways*queries)``, values in ``0..ways-1``.
    classes : numpy.ndarray
        ``int64`` ``([B,] ways)``: the original label behind each episode label.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray

    def as_tensors(self, device: Any = None) -> "Episode":
        """Return a copy whose arrays are torch tensors (torch is imported only here).

        Parameters
        ----------
        device : torch.device or str, optional
            Device for the tensors.

        Returns
        -------
        Episode
        """
        import torch

        return Episode(**{f.name: torch.as_tensor(getattr(self, f.name), device=device) for f in fields(self)})


def _positive(label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{label} must be a positive integer, got {value!r}")
    return int(value)


class EpisodeSampler:
    """Draw N-way K-shot classification tasks with a query set.

    Each task picks ``ways`` distinct classes uniformly at random, relabels them
    ``0..ways-1`` in the order drawn, and takes ``shots + queries`` distinct
    images of each class.  Classes with fewer than ``shots + queries`` images
    are never picked (see :attr:`classes`).

    Parameters
    ----------
    images : numpy.ndarray
        ``(N, ...)`` inputs, e.g. ``(N, 28, 28)`` or ``(N, 1, 28, 28)``.
    labels : numpy.ndarray
        ``(N,)`` integer class ids (any values).
    ways, shots, queries : int
        Classes per task, support images per class, query images per class.
    seed : int
        Seed of the sampler's own ``numpy.random.Generator``.
    normalize : bool, keyword-only
        Return ``float32`` inputs; ``uint8`` images are divided by 255.  With
        False the input dtype is kept.

    Attributes
    ----------
    classes : numpy.ndarray
        The class ids eligible for sampling.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        *,
        normalize: bool = True,
    ):
        images, labels = np.asarray(images), np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if images.shape[:1] != labels.shape:
            raise ValueError(f"images and labels disagree: {images.shape[0]} images, {labels.shape[0]} labels")
        self.ways, self.shots, self.queries = (
            _positive(k, v) for k, v in (("ways", ways), ("shots", shots), ("queries", queries))
        )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed, self.normalize = int(seed), bool(normalize)
        self.images, self.labels = images, labels.astype(np.int64)
        need = self.shots + self.queries
        values, counts = np.unique(self.labels, return_counts=True)
        self.classes = values[counts >= need]
        if len(self.classes) < self.ways:
            raise ValueError(
                f"{self.ways}-way tasks need {self.ways} classes with at least shots + queries = {need} images; "
                f"only {len(self.classes)} of {len(values)} classes have that many"
            )
        self._pools = [np.flatnonzero(self.labels == c) for c in self.classes]
        self._rng = np.random.default_rng(self.seed)

    def _take(self, index: np.ndarray) -> np.ndarray:
        x = self.images[index]
        if not self.normalize:
            return x
        if x.dtype == np.uint8:
            return x.astype(np.float32) / np.float32(255)
        return x.astype(np.float32)

    def sample_task(self) -> Episode:
        """Draw one task.

        Returns
        -------
        Episode
            Unbatched arrays (no leading ``B`` axis).
        """
        rng = self._rng
        picked = rng.choice(len(self.classes), size=self.ways, replace=False)
        chosen = np.stack([rng.choice(self._pools[p], size=self.shots + self.queries, replace=False) for p in picked])
        support, query = chosen[:, : self.shots].ravel(), chosen[:, self.shots :].ravel()
        ids = np.arange(self.ways, dtype=np.int64)
        return Episode(
            support_x=self._take(support),
            support_y=np.repeat(ids, self.shots),
            query_x=self._take(query),
            query_y=np.repeat(ids, self.queries),
            classes=self.classes[picked].astype(np.int64),
        )

    def sample(self, batch_size: int) -> Episode:
        """Draw a meta-batch of tasks stacked along axis 0.

        Parameters
        ----------
        batch_size : int
            Number of tasks ``B``.

        Returns
        -------
        Episode
            Arrays with a leading axis of length ``B`` (ready for ``torch.vmap``).
        """
        batch_size = _positive("batch_size", batch_size)
        tasks = [self.sample_task() for _ in range(batch_size)]
        return Episode(**{f.name: np.stack([getattr(t, f.name) for t in tasks]) for f in fields(Episode)})

    def _config(self) -> dict[str, Any]:
        return {
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "num_classes": int(len(self.classes)),
            "num_samples": int(len(self.labels)),
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the random-generator position (plain Python data, picklable and JSON-able).

        Returns
        -------
        dict
            ``{"seed", "config", "bit_generator"}``.
        """
        return {"seed": self.seed, "config": self._config(), "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            Output of :meth:`state_dict` of a sampler built on the same data and settings.

        Raises
        ------
        ValueError
            If the state comes from a sampler with different settings or data size.
        """
        if state.get("config") != self._config():
            raise ValueError(f"state was saved with config {state.get('config')}, this sampler has {self._config()}")
        self._rng.bit_generator.state = state["bit_generator"]

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler(ways={self.ways}, shots={self.shots}, queries={self.queries}, "
            f"classes={len(self.classes)}, samples={len(self.labels)}, seed={self.seed})"
        )
