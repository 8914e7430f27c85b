import math

import numpy as np
import pytest
import torch

import bilevel
from bilevel.app.tasks import fewshot as FS
from bilevel.app.tasks import metrics
from task_testutils import check_fractions, make_loop

TINY = dict(width=4, ways=3, shots=1, queries=4, meta_batch=2, max_per_class=20, test_episodes=6, test_chunk=4,
            inner_steps=3, outer_steps=2, inner_lr=0.5, outer_lr=0.01)


@pytest.fixture(scope="module")
def task():
    return FS.FewShotTask(FS.config_with_defaults(dtype="float64", **TINY))


def test_shapes(task):
    run = task.task_run()
    assert task.feat == 4
    assert set(run.x0) == {f"{p}{i}.{w}" for i in range(4) for p, w in (("conv", "weight"), ("bn", "weight"),
                                                                            ("bn", "bias"))}
    assert run.x0["conv0.weight"].shape == (4, 1, 3, 3) and run.x0["conv3.weight"].shape == (4, 4, 3, 3)
    assert run.y0.shape == (2, 3, 5)
    ep = task.train_batch(0)
    assert ep.support_x.shape == (2, 3, 28, 28) and ep.query_x.shape == (2, 12, 28, 28)
    sx, sy, qx, qy = FS.episode_tensors(ep, torch.float64)
    assert sx.shape == (2, 3, 1, 28, 28) and FS.backbone(run.x0, sx).shape == (2, 3, 4)


def test_vmap_equals_loop(task):
    run = task.task_run()
    gen = torch.Generator().manual_seed(0)
    x = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in run.x0.items()}
    y = torch.randn(run.y0.shape, generator=gen, dtype=run.y0.dtype)
    ep = task.train_batch(3)
    upper, lower = task.objectives_for(ep)
    sx, sy, qx, qy = FS.episode_tensors(ep, torch.float64)
    lo = sum(FS.task_loss(y[j], FS.backbone(x, sx[j:j + 1])[0], sy[j]) for j in range(2))
    up = sum(FS.task_loss(y[j], FS.backbone(x, qx[j:j + 1])[0], qy[j]) for j in range(2)) / 2
    assert float(lower(x, y)) == pytest.approx(float(lo), abs=1e-5)
    assert float(upper(x, y)) == pytest.approx(float(up), abs=1e-5)
    # with the l_q regularizer, in float32
    feats = FS.backbone(x, sx).float()
    reg = FS.lower_value(y.float(), feats, sy, lq=0.1, q=0.5, eps=0.01)
    loop_reg = sum(FS.task_loss(y[j].float(), feats[j], sy[j]) + 0.1 * ((y[j, :, :-1].float() ** 2 + 1e-4) ** 0.25).sum()
                   for j in range(2))
    assert float(reg) == pytest.approx(float(loop_reg), abs=1e-5)


def test_hypergradient_reaches_every_backbone_tensor(task):
    run = task.task_run()
    upper, lower = run.objectives(0)
    res = bilevel.hypergrad(upper, lower, run.x0, run.y0, method="rhg", inner_steps=2, inner_lr=0.5)
    for name, g in res.grad.items():
        assert torch.isfinite(g).all() and float(g.abs().sum()) > 0, name


def test_meta_train_and_meta_test_classes_are_disjoint(task):
    train_classes = set(np.unique(task.train_data.labels).tolist())
    test_classes = set(np.unique(task.test_data.labels).tolist())
    assert train_classes == set(range(24)) and test_classes == set(range(24, 40))
    assert not {c // 4 for c in train_classes} & {c // 4 for c in test_classes}  # no rotation of a test class
    for t in range(3):
        assert set(task.train_batch(t).classes.ravel().tolist()) <= train_classes
    assert set(task.test_sampler().sample(10).classes.ravel().tolist()) <= test_classes


def test_meta_validation_split_takes_classes_4_and_5_out_of_meta_train():
    task = FS.FewShotTask(FS.config_with_defaults(dtype="float64", **TINY, val_episodes=5))
    train = set(np.unique(task.train_data.labels).tolist())
    val = set(np.unique(task.val_data.labels).tolist())
    test = set(np.unique(task.test_data.labels).tolist())
    assert {c // 4 for c in train} == {0, 1, 2, 3} and {c // 4 for c in val} == set(FS.META_VAL_CLASSES)
    assert test == set(range(24, 40))  # meta-test unchanged
    loop = make_loop(task.task_run(), FS.config_with_defaults(dtype="float64", **TINY, val_episodes=5))
    first, again = task.evaluate(loop), task.evaluate(loop)
    assert first["meta_val_accuracy"] == again["meta_val_accuracy"]  # the same episodes every time
    # the accuracy of the fixed episodes recomputed by hand: fresh heads, K steps, argmax on the query set
    sampler = task._sampler(task.val_data, FS._derive(0, FS._VAL))
    ep = sampler.sample(5)
    assert set(ep.classes.ravel().tolist()) <= val
    sx, sy, qx, qy = FS.episode_tensors(ep, torch.float64)
    init = torch.zeros(TINY["ways"], task.feat + 1, dtype=torch.float64)
    heads = task.adapt(loop.x, init, FS.backbone(loop.x, sx), sy, TINY["inner_steps"])
    pred = FS._batched_logits(heads, FS.backbone(loop.x, qx)).argmax(-1)
    assert first["meta_val_accuracy"] == pytest.approx(float((pred == qy).double().mean()), abs=1e-12)
    assert "meta_val_accuracy" not in FS.FewShotTask(FS.config_with_defaults(dtype="float64", **TINY)).evaluate(loop)


def test_omniglot_meta_validation_is_the_last_sixth_of_the_background_characters():
    from bilevel.app.data.images import FewShotData

    labels = np.repeat(np.arange(48), 2)  # 12 characters x 4 rotations, 2 images each
    data = FewShotData(np.zeros((96, 28, 28), np.uint8), labels, {c: f"char{c // 4}@{90 * (c % 4)}" for c in range(48)})
    train, val = FS._omniglot_part(data, "train"), FS._omniglot_part(data, "val")
    assert set(val.labels // 4) == {10, 11} and set(train.labels // 4) == set(range(10))
    assert len(train.labels) + len(val.labels) == 96 and set(val.class_names) == set(range(40, 48))


def test_objectives_pure_in_t(task):
    a, b, c = task.train_batch(5), task.train_batch(5), task.train_batch(6)
    assert np.array_equal(a.support_x, b.support_x) and np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.query_x, c.query_x)


def test_ci95_formula():
    v = np.array([0.2, 0.4, 0.6, 1.0, 0.8])
    mean, ci = metrics.mean_ci95(v)
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(1.96 * np.std(v) / math.sqrt(5))
    assert metrics.mean_ci95([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        metrics.mean_ci95([])


@pytest.mark.parametrize("method", ["rhg", "iaptt"])
def test_smoke_train_and_meta_test(method):
    cfg = FS.config_with_defaults(method=method, **TINY)
    run = FS.build(cfg)
    loop = make_loop(run, cfg)
    for t in range(2):
        loop.step(*run.objectives(t))
    ev = run.evaluate(loop)
    assert math.isfinite(ev["upper"]) and 0 <= ev["train_query_accuracy"] <= 1
    s = run.summarize(loop)
    check_fractions(s, ("meta_test_accuracy", "meta_test_ci95"))
    assert s["meta_test_episodes"] == 6.0


def test_meta_test_adapts_heads(task):
    # the adapted heads lower the support loss (gradient steps on the lower objective)
    run = task.task_run()
    sx, sy, _, _ = FS.episode_tensors(task.test_sampler().sample(3), torch.float64)
    feats = FS.backbone(run.x0, sx)
    init = torch.zeros(3, task.feat + 1, dtype=torch.float64)
    heads = task.adapt(run.x0, init, feats, sy, 5)
    assert heads.shape == (3, 3, task.feat + 1)
    assert float(FS.lower_value(heads, feats, sy)) < float(FS.lower_value(init.expand(3, 3, 5), feats, sy))


@pytest.mark.parametrize("bad, match", [
    (dict(dataset="cifar-fs"), "dataset must be one of"),
    (dict(ways=30), "30-way tasks need"),
    (dict(q=1.5), "q must lie"),
    (dict(width=0), "width"),
    (dict(dataset="omniglot"), "needs data_root"),
    (dict(val_episodes=-1), "val_episodes"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        FS.build(FS.config_with_defaults(**{**TINY, **bad}))


def test_backbone_chunks_equal_one_call(monkeypatch):
    """CPU cache blocking over whole tasks leaves every task's batch-norm statistics, features and gradients
    unchanged; and the batched backbone equals one call per task."""
    gen = torch.Generator().manual_seed(0)
    x = {k: v.requires_grad_() for k, v in FS.init_backbone(4, 1, True, torch.float64, gen).items()}
    images = torch.rand(5, 3, 1, 16, 16, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, 4, generator=gen, dtype=torch.float64)

    def run():
        out = FS.backbone(x, images)
        return out, torch.autograd.grad((out * w).sum(), list(x.values()))

    monkeypatch.setattr(FS, "CPU_CHUNK_BYTES", 1)  # one task per chunk
    chunked, g_chunked = run()
    monkeypatch.setattr(FS, "CPU_CHUNK_BYTES", 2 ** 40)  # one call
    whole, g_whole = run()
    per_task = torch.cat([FS.backbone(x, images[j:j + 1]) for j in range(5)])
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-12) and torch.allclose(per_task, whole, rtol=0, atol=1e-12)
    for a, b in zip(g_chunked, g_whole):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
