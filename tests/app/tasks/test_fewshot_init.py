"""The fewshot-init task (whole conv-4 + head adapted per task from a learned initialization) on tiny generated
data: vmapped objectives equal a per-task loop, the meta-gradient equals a brute-force unroll, meta-training
lowers the query loss, and the runner runs it through ``task_module``."""
import math

import numpy as np
import pytest
import torch

import bilevel
from bilevel.app.data.idx import write_idx
from bilevel.app.tasks import fewshot as FS
from bilevel.app.tasks import fewshot_init as FI
from task_testutils import check_fractions, make_loop

TINY = dict(width=4, ways=3, shots=2, queries=3, meta_batch=2, test_episodes=6, test_chunk=4, inner_steps=2,
            outer_steps=2, inner_lr=0.4, outer_lr=0.01)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A fake Fashion-MNIST in IDX format: 10 classes, each an off-centre bar (so its four rotations are four
    different classes) plus noise; 8 + 2 images per class."""
    root = tmp_path_factory.mktemp("fake_fashion")
    rng = np.random.default_rng(0)
    for stem, per_class in (("train", 8), ("t10k", 2)):
        images, labels = [], []
        for c in range(10):
            for _ in range(per_class):
                img = rng.integers(0, 60, size=(28, 28))
                r0, c0 = 2 + 2 * (c % 5), 3 + 9 * (c // 5)
                img[r0:r0 + 4 + c % 3, c0:c0 + 12] += 180
                images.append(np.clip(img, 0, 255).astype(np.uint8))
                labels.append(c)
        write_idx(root / f"{stem}-images-idx3-ubyte", np.stack(images))
        write_idx(root / f"{stem}-labels-idx1-ubyte", np.array(labels, dtype=np.uint8))
    return str(root)


def config(data_root, **kw):
    return FI.config_with_defaults(data_root=data_root, **{**TINY, **kw})


@pytest.fixture(scope="module")
def task(data_root):
    return FI.FewShotInitTask(config(data_root, dtype="float64"))


def perturbed(task, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in task.y0().items()}


def loop_loss(y, images, labels):
    """Per-task loop with the fewshot module's backbone and head (no vmap)."""
    out = []
    for j in range(images.shape[0]):
        params = {k: v[j] for k, v in y.items()}
        feats = FS.backbone(params, images[j:j + 1])[0]
        out.append(torch.nn.functional.cross_entropy(FS.head_logits(params["head"], feats), labels[j]))
    return torch.stack(out)


def test_variables(task):
    run = task.task_run()
    assert set(run.y0) == {f"{p}{i}.{w}" for i in range(4) for p, w in (("conv", "weight"), ("bn", "weight"),
                                                                            ("bn", "bias"))} | {"head"}
    assert run.y0["conv0.weight"].shape == (2, 4, 1, 3, 3) and run.y0["head"].shape == (2, 3, task.base.feat + 1)
    for v in run.y0.values():  # one initialization, repeated per task
        assert torch.equal(v[0], v[1])
    assert run.x0.numel() == 0 and run.loop_options == {"shared_init": True}


def test_vmap_equals_per_task_loop(task):
    y = perturbed(task)
    ep = task.base.train_batch(3)
    upper, lower = task.objectives_for(ep)
    sx, sy, qx, qy = FS.episode_tensors(ep, torch.float64)
    assert float(lower(None, y)) == pytest.approx(float(loop_loss(y, sx, sy).sum()), abs=1e-10)
    assert float(upper(None, y)) == pytest.approx(float(loop_loss(y, qx, qy).mean()), abs=1e-10)
    yl = {k: v.clone().requires_grad_() for k, v in y.items()}
    g_vmap = torch.autograd.grad(lower(None, yl), list(yl.values()))
    g_loop = torch.autograd.grad(loop_loss(yl, sx, sy).sum(), list(yl.values()))
    for a, b in zip(g_vmap, g_loop):
        assert float((a - b).abs().max()) <= 1e-5 * (1 + float(b.abs().max()))
    logits = FI.batched_logits(y, qx)
    assert logits.shape == (2, 9, 3)


@pytest.mark.parametrize("method", ["maml", "metasgd"])
def test_meta_gradient_equals_per_task_unroll(task, method):
    """The library's meta-gradient on the vmapped objectives vs. a brute-force per-task unroll from theta."""
    theta = {k: v[0] for k, v in perturbed(task, seed=1).items()}
    y0 = {k: v.expand(2, *v.shape).clone() for k, v in theta.items()}
    ep = task.base.train_batch(5)
    upper, lower = task.objectives_for(ep)
    sx, sy, qx, qy = FS.episode_tensors(ep, torch.float64)
    K, lr = 2, 0.4
    g = torch.Generator().manual_seed(2)
    a = {k: 0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype) for k, v in theta.items()}
    x = a if method == "metasgd" else torch.zeros(0, dtype=torch.float64)
    res = bilevel.hypergrad(upper, lower, x, y0, method=method, inner_steps=K, inner_lr=lr, shared_init=True)

    th = {k: v.clone().requires_grad_() for k, v in theta.items()}
    ar = {k: v.clone().requires_grad_() for k, v in a.items()}
    keys = list(th)
    total = 0.0
    for j in range(2):
        w = dict(th)
        for _ in range(K):
            feats = FS.backbone(w, sx[j:j + 1])[0]
            loss = torch.nn.functional.cross_entropy(FS.head_logits(w["head"], feats), sy[j])
            gs = torch.autograd.grad(loss, [w[k] for k in keys], create_graph=True)
            w = {k: w[k] - lr * (gk if method == "maml" else ar[k] * gk) for k, gk in zip(keys, gs)}
        feats = FS.backbone(w, qx[j:j + 1])[0]
        total = total + torch.nn.functional.cross_entropy(FS.head_logits(w["head"], feats), qy[j]) / 2
    wrt = [th[k] for k in keys] + ([ar[k] for k in keys] if method == "metasgd" else [])
    grads = torch.autograd.grad(total, wrt)
    exp_theta = torch.cat([gk.reshape(-1) for gk in grads[:len(keys)]])
    for j in range(2):
        got = torch.cat([res.grad_y0[k][j].reshape(-1) for k in keys])
        assert float(torch.linalg.vector_norm(got - exp_theta)) <= 1e-5 * float(torch.linalg.vector_norm(exp_theta))
    if method == "metasgd":
        exp_a = torch.cat([gk.reshape(-1) for gk in grads[len(keys):]])
        got_a = torch.cat([res.grad[k].reshape(-1) for k in keys])
        assert float(torch.linalg.vector_norm(got_a - exp_a)) <= 1e-5 * float(torch.linalg.vector_norm(exp_a))


@pytest.mark.parametrize("method", FI.META_METHODS)
def test_meta_training_lowers_the_query_loss(data_root, method):
    """Outer steps on one fixed meta-batch: the query loss after adaptation must drop well below its start."""
    cfg = config(data_root, method=method, dtype="float64", outer_lr=0.02)
    t = FI.FewShotInitTask(cfg)
    run = t.task_run()
    loop = make_loop(run, cfg)
    upper, lower = t.objectives_for(t.base.train_batch(7))
    first = loop.evaluate(upper, lower)[0]
    for _ in range(25):
        loop.step(upper, lower)
    last = loop.evaluate(upper, lower)[0]
    assert last < 0.5 * first, (first, last)  # measured: 0.77 -> 0.01-0.09
    for v in loop.y0.values():  # the rows are still one shared initialization
        assert torch.allclose(v[0], v[1], atol=1e-12)


@pytest.mark.parametrize("method", FI.META_METHODS)
def test_smoke_train_and_meta_test(data_root, method):
    cfg = config(data_root, method=method)
    run = FI.build(cfg)
    loop = make_loop(run, cfg)
    for t in range(2):
        rec = loop.step(*run.objectives(t))
        assert math.isfinite(rec["upper"])
    s = run.summarize(loop)
    check_fractions(s, ("meta_test_accuracy", "meta_test_ci95", "train_query_accuracy"))
    assert s["meta_test_episodes"] == 6.0
    if method == "metasgd":
        assert set(loop.x) == set(loop.y0) and loop.x["head"].shape == loop.y0["head"].shape[1:]


def test_adapt_lowers_support_loss(task):
    theta = {k: v[0] for k, v in task.y0().items()}
    sx, sy, _, _ = FS.episode_tensors(task.base.test_sampler().sample(3), torch.float64)
    w = task.adapt(theta, None, sx, sy, 5)
    assert w["head"].shape == (3, 3, task.base.feat + 1)
    start = {k: v.expand(3, *v.shape) for k, v in theta.items()}
    assert float(FI.lower_value(w, sx, sy)) < float(FI.lower_value(start, sx, sy))


def test_runner_runs_the_task_module(data_root, tmp_path):
    from bilevel.app.run.runner import run_task

    summary = run_task("fewshot-init", dict(TINY, data_root=data_root, method="fomaml", log_every=1),
                       tmp_path / "run", quiet=True, task_module="bilevel.app.tasks.fewshot_init")
    assert summary["method"] == "fomaml" and summary["outer_steps"] == 2
    assert 0.0 <= summary["meta_test_accuracy"] <= 1.0


@pytest.mark.parametrize("bad, match", [
    (dict(method="rhg"), "method must be one of maml, fomaml, reptile, metasgd"),
    (dict(method_options={"shared_init": False}), "fixes the method option shared_init"),
    (dict(width=0), "width"),
    (dict(ways=30), "30-way tasks need"),
])
def test_bad_config_raises(data_root, bad, match):
    with pytest.raises(ValueError, match=match):
        FI.build(config(data_root, **bad))
