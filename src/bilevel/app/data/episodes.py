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


@dataclass(eq=False)
class EpisodeIndex:
    """Where the images of one task (or of a batch of tasks, leading axis ``B``) are: indices into the images of
    the :class:`EpisodeSampler` that drew them, in the order of :class:`Episode`'s sets.

    ``sampler.take(index)`` gives the :class:`Episode`; a task that keeps the images on a device of its own
    gathers them there with the indices instead (``bilevel.app.tasks.fewshot.DeviceImages``), so the images are
    copied to the device once, not at every step.

    Attributes
    ----------
    support, query : numpy.ndarray
        ``int64`` ``([B,] ways*shots)`` / ``([B,] ways*queries)`` row indices into the sampler's ``images``.
    support_y, query_y, classes : numpy.ndarray
        As in :class:`Episode`.
    """

    support: np.ndarray
    support_y: np.ndarray
    query: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray


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

    def sample_task_indices(self) -> EpisodeIndex:
        """Draw one task, as indices into :attr:`images` (the draws of :meth:`sample_task`).

        Returns
        -------
        EpisodeIndex
            Unbatched arrays (no leading ``B`` axis).
        """
        rng = self._rng
        picked = rng.choice(len(self.classes), size=self.ways, replace=False)
        chosen = np.stack([rng.choice(self._pools[p], size=self.shots + self.queries, replace=False) for p in picked])
        ids = np.arange(self.ways, dtype=np.int64)
        return EpisodeIndex(
            support=chosen[:, : self.shots].ravel().astype(np.int64),
            support_y=np.repeat(ids, self.shots),
            query=chosen[:, self.shots :].ravel().astype(np.int64),
            query_y=np.repeat(ids, self.queries),
            classes=self.classes[picked].astype(np.int64),
        )

    def sample_indices(self, batch_size: int) -> EpisodeIndex:
        """Draw a meta-batch of tasks as indices (the draws of :meth:`sample`: the same generator steps).

        Parameters
        ----------
        batch_size : int
            Number of tasks ``B``.

        Returns
        -------
        EpisodeIndex
            Arrays with a leading axis of length ``B``.
        """
        batch_size = _positive("batch_size", batch_size)
        tasks = [self.sample_task_indices() for _ in range(batch_size)]
        return EpisodeIndex(**{f.name: np.stack([getattr(t, f.name) for t in tasks]) for f in fields(EpisodeIndex)})

    def take(self, index: EpisodeIndex) -> Episode:
        """The :class:`Episode` of drawn indices: the images gathered (and normalized, see ``normalize``)."""
        return Episode(support_x=self._take(index.support), support_y=index.support_y, query_x=self._take(index.query),
                       query_y=index.query_y, classes=index.classes)

    def sample_task(self) -> Episode:
        """Draw one task.

        Returns
        -------
        Episode
            Unbatched arrays (no leading ``B`` axis).
        """
        return self.take(self.sample_task_indices())

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
        return self.take(self.sample_indices(batch_size))

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
