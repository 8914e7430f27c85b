"""EpisodeSampler: shapes, label ranges, class consistency, determinism and resumable state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bilevel.app.data import Episode, EpisodeSampler


def make_data(num_classes: int = 12, per_class: int = 25, skip: int = 3):
    """Images of shape (2, 3) holding (class, sample id) so every draw can be traced back."""
    labels = np.repeat(np.arange(num_classes) * skip, per_class)
    ids = np.arange(len(labels))
    images = np.zeros((len(labels), 2, 3), dtype=np.int64)
    images[:, 0, 0] = labels
    images[:, 1, 0] = ids
    return images, labels


def test_batched_shapes_labels_and_classes():
    images, labels = make_data()
    sampler = EpisodeSampler(images, labels, ways=5, shots=2, queries=3, seed=0, normalize=False)
    ep = sampler.sample(4)
    assert isinstance(ep, Episode)
    assert ep.support_x.shape == (4, 10, 2, 3) and ep.query_x.shape == (4, 15, 2, 3)
    assert ep.support_y.shape == (4, 10) and ep.query_y.shape == (4, 15) and ep.classes.shape == (4, 5)
    assert ep.support_y.dtype == np.int64 and ep.query_y.dtype == np.int64
    for b in range(4):
        np.testing.assert_array_equal(ep.support_y[b], np.repeat(np.arange(5), 2))
        np.testing.assert_array_equal(ep.query_y[b], np.repeat(np.arange(5), 3))
        assert len(set(ep.classes[b].tolist())) == 5  # distinct classes per task
        # every image belongs to the original class its episode label stands for
        np.testing.assert_array_equal(ep.support_x[b, :, 0, 0], ep.classes[b][ep.support_y[b]])
        np.testing.assert_array_equal(ep.query_x[b, :, 0, 0], ep.classes[b][ep.query_y[b]])
        # support and query images are distinct samples
        ids = np.concatenate([ep.support_x[b, :, 1, 0], ep.query_x[b, :, 1, 0]])
        assert len(set(ids.tolist())) == len(ids) == 25


def test_single_task():
    images, labels = make_data()
    task = EpisodeSampler(images, labels, 3, 1, 2, seed=1).sample_task()
    assert task.support_x.shape == (3, 2, 3) and task.query_x.shape == (6, 2, 3)
    assert task.support_x.dtype == np.float32  # normalize=True casts non-uint8 input to float32
    assert set(task.support_y.tolist()) == {0, 1, 2}


def test_uint8_images_are_scaled_to_unit_interval():
    images = np.full((20, 4, 4), 255, dtype=np.uint8)
    labels = np.repeat(np.arange(4), 5)
    ep = EpisodeSampler(images, labels, 2, 1, 1, seed=0).sample(2)
    assert ep.support_x.dtype == np.float32 and np.all(ep.support_x == 1.0)
    raw = EpisodeSampler(images, labels, 2, 1, 1, seed=0, normalize=False).sample(2)
    assert raw.support_x.dtype == np.uint8


def test_deterministic_per_seed():
    images, labels = make_data()
    a = EpisodeSampler(images, labels, 5, 1, 5, seed=42).sample(3)
    b = EpisodeSampler(images, labels, 5, 1, 5, seed=42).sample(3)
    c = EpisodeSampler(images, labels, 5, 1, 5, seed=43).sample(3)
    for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.support_x, c.support_x)


def test_state_dict_resumes_the_stream():
    images, labels = make_data()
    reference = EpisodeSampler(images, labels, 5, 2, 2, seed=7)
    reference.sample(2)
    state = json.loads(json.dumps(reference.state_dict()))  # plain, serialisable data
    expected = reference.sample(3)
    resumed = EpisodeSampler(images, labels, 5, 2, 2, seed=7)
    resumed.load_state_dict(state)
    got = resumed.sample(3)
    np.testing.assert_array_equal(got.support_x, expected.support_x)
    np.testing.assert_array_equal(got.query_x, expected.query_x)
    np.testing.assert_array_equal(got.classes, expected.classes)
    other = EpisodeSampler(images, labels, 4, 2, 2, seed=7)
    with pytest.raises(ValueError, match="state was saved with config"):
        other.load_state_dict(state)


def test_classes_without_enough_samples_are_skipped():
    labels = np.array([0] * 5 + [1] * 5 + [2] * 2)
    images = np.arange(len(labels))[:, None]
    sampler = EpisodeSampler(images, labels, 2, 2, 3, seed=0)
    np.testing.assert_array_equal(sampler.classes, [0, 1])
    for _ in range(10):
        assert set(sampler.sample_task().classes.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="only 2 of 3 classes have that many"):
        EpisodeSampler(images, labels, 3, 2, 3, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ways=0), "ways must be a positive integer"),
        (dict(shots=1.5), "shots must be a positive integer"),
        (dict(queries=-1), "queries must be a positive integer"),
        (dict(seed=-3), "seed must be a non-negative integer"),
    ],
)
def test_argument_validation(kwargs, message):
    images, labels = make_data()
    args = dict(ways=2, shots=1, queries=1, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        EpisodeSampler(images, labels, **args)
    with pytest.raises(ValueError, match="images and labels disagree"):
        EpisodeSampler(images[:-1], labels, 2, 1, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        EpisodeSampler(images, labels, 2, 1, 1).sample(0)


def test_meta_batch_works_with_torch_vmap():
    import torch

    images, labels = make_data()
    ep = EpisodeSampler(images, labels, 4, 2, 3, seed=0).sample(5).as_tensors()
    assert ep.support_x.shape == (5, 8, 2, 3) and ep.support_x.dtype == torch.float32

    def prototype_distance(sx, sy, qx):
        protos = torch.stack([sx[sy == k].mean(0) for k in range(4)])  # (4, 2, 3)
        return ((qx[:, None] - protos[None]) ** 2).flatten(2).sum(-1)  # (queries, 4)

    dist = torch.vmap(prototype_distance, in_dims=(0, None, 0))(ep.support_x, ep.support_y[0], ep.query_x)
    assert dist.shape == (5, 12, 4)
    # column 0 of pixel row 0 holds the class, so the nearest prototype on that pixel alone is the true class
    pix = torch.vmap(lambda sx, qx: (qx[:, None, 0, 0] - sx[::2][None, :, 0, 0]).abs().argmin(-1))(
        ep.support_x, ep.query_x)
    assert torch.equal(pix, ep.query_y)
