import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bilevel.app.tasks import hyperclean as H
from bilevel.app.tasks import metrics
from task_testutils import check_fractions, run_steps

SMALL = dict(train_size=120, val_size=80, test_size=100, inner_steps=4, outer_steps=2)
SUMMARY_KEYS = ("test_accuracy", "f1", "precision", "recall")


@pytest.mark.parametrize("method", ["rhg", "cg", "bda", "iaptt"])
def test_smoke_digits_methods(method):
    options = {"cg_steps": 10} if method == "cg" else {}
    cfg = H.config_with_defaults(dataset="digits", method=method, method_options=options, **SMALL)
    run = H.build(cfg)
    assert run.x0.shape == (120,) and set(run.y0) == {"weight", "bias"}
    loop = run_steps(run, cfg, 2)
    ev = run.evaluate(loop)
    assert all(math.isfinite(v) for v in ev.values())
    check_fractions(ev, ("val_accuracy", "f1", "precision", "recall"))
    s = run.summarize(loop)
    check_fractions(s, SUMMARY_KEYS)
    assert s["n_corrupted"] == 60.0
    assert all(math.isfinite(v) for v in s.values() if not (isinstance(v, float) and math.isnan(v)))


def test_smoke_fashion_mnist_linear_and_mlp():
    for model, method in (("linear", "rhg"), ("mlp", "iaptt")):
        cfg = H.config_with_defaults(dataset="fashion-mnist", model=model, method=method, hidden=16, **SMALL)
        run = H.build(cfg)
        assert run.x0.shape == (120,)
        if model == "mlp":
            assert run.y0["w1"].shape == (16, 784) and float(run.y0["w1"].abs().sum()) > 0
        loop = run_steps(run, cfg, 2)
        check_fractions(run.summarize(loop), SUMMARY_KEYS)


def test_f1_rule_matches_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    x = torch.tensor([-1.0, 0.0, 0.5, -0.2, 2.0, -3.0, 1.0, 0.0])
    truth = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=bool)
    flagged = H.flag_corrupted(x).numpy()
    assert flagged.tolist() == [True, True, False, True, False, True, False, True]  # x <= 0 is flagged
    out = metrics.precision_recall_f1(flagged, truth)
    assert out["f1"] == pytest.approx(f1_score(truth, flagged))
    assert out["precision"] == pytest.approx(precision_score(truth, flagged))
    assert out["recall"] == pytest.approx(recall_score(truth, flagged))
    none = metrics.precision_recall_f1(np.zeros(4, bool), np.array([1, 0, 0, 0], bool))
    assert none == {**none, "precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_weighted_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    ce = [-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))),
          -math.log(math.exp(0.3) / (math.exp(0.1) + math.exp(0.2) + math.exp(0.3)))]
    sig = [1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(1.2))]
    expected = (sig[0] * ce[0] + sig[1] * ce[1]) / 2
    assert float(H.weighted_loss(x, logits, labels)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_class_major_cross_entropy_by_hand(reduction):
    """cross_entropy_t takes (C, n) logits: each sample's CE written out, reduced by hand."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, generator=gen, dtype=torch.float64)  # (n, C)
    labels = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    ce = torch.tensor([math.log(sum(math.exp(v) for v in row)) - row[c]
                       for row, c in zip(logits.tolist(), labels.tolist())], dtype=torch.float64)
    expected = {"none": ce, "mean": ce.mean(), "sum": ce.sum()}[reduction]
    got = H.cross_entropy_t(logits.t().contiguous(), labels, reduction)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_class_major_logits_and_lower_gradient(model):
    """forward_t is forward transposed; the task's lower objective (class-major) has the gradient of the same loss
    written sample-major with F.cross_entropy, for both followers (float64)."""
    cfg = H.config_with_defaults(dataset="digits", model=model, dtype="float64", l2=0.01, **SMALL)
    run = H.build(cfg)
    split = H.hyperclean_split("digits", 120, 80, 100, noise=cfg["noise"], seed=cfg["seed"], root=None,
                               holdout_size=cfg["holdout_size"])
    X, labels = torch.as_tensor(split.X_train, dtype=torch.float64), torch.as_tensor(split.y_train)
    gen = torch.Generator().manual_seed(0)
    y = {k: (v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype)).requires_grad_()
         for k, v in run.y0.items()}
    x = torch.randn(120, generator=gen, dtype=torch.float64)
    assert torch.equal(H.forward_t(model, y, X).t(), H.forward(model, y, X))
    rows = X @ y["weight"].T + y["bias"] if model == "linear" else \
        torch.relu(X @ y["w1"].T + y["b1"]) @ y["w2"].T + y["b2"]
    assert torch.allclose(H.forward_t(model, y, X), rows.T, rtol=1e-12, atol=1e-12)
    weights = ("weight",) if model == "linear" else ("w1", "w2")
    by_rows = (torch.sigmoid(x) * F.cross_entropy(rows, labels, reduction="none")).mean() \
        + 0.01 * sum((y[k] ** 2).sum() for k in weights)
    _, lower = run.objectives(0)
    got = torch.autograd.grad(lower(x, y), list(y.values()))
    want = torch.autograd.grad(by_rows, list(y.values()))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-11, atol=1e-14)


def test_lower_objective_with_l2_by_hand():
    cfg = H.config_with_defaults(dataset="digits", l2=0.01, dtype="float64", **SMALL)
    run = H.build(cfg)
    upper, lower = run.objectives(0)
    gen = torch.Generator().manual_seed(3)
    y = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in run.y0.items()}
    x = torch.randn(120, generator=gen, dtype=torch.float64)
    from bilevel.app.data import hyperclean_split
    s = hyperclean_split("digits", 120, 80, 100, noise=0.5, seed=0)
    X, t = torch.as_tensor(s.X_train, dtype=torch.float64), torch.as_tensor(s.y_train)
    logits = X @ y["weight"].T + y["bias"]
    ce = F.cross_entropy(logits, t, reduction="none")
    expected = (torch.sigmoid(x) * ce).sum() / 120 + 0.01 * (y["weight"] ** 2).sum()
    assert float(lower(x, y)) == pytest.approx(float(expected), rel=1e-10)
    Xv = torch.as_tensor(s.X_val, dtype=torch.float64)
    expected_up = F.cross_entropy(Xv @ y["weight"].T + y["bias"], torch.as_tensor(s.y_val))
    assert float(upper(x, y)) == pytest.approx(float(expected_up), rel=1e-10)


def test_deterministic_given_seed():
    xs = []
    for seed in (5, 5, 6):
        cfg = H.config_with_defaults(dataset="digits", model="mlp", hidden=8, seed=seed, **SMALL)
        xs.append(run_steps(H.build(cfg), cfg, 2).x)
    assert torch.equal(xs[0], xs[1])
    assert not torch.equal(xs[0], xs[2])


@pytest.mark.parametrize("bad, match", [
    (dict(dataset="cifar"), "dataset must be one of"),
    (dict(model="resnet"), "model must be one of"),
    (dict(train_size=1000, val_size=500, test_size=500), "exceeds the maximum"),
    (dict(noise=1.5), "noise"),
    (dict(hidden=0), "hidden"),
    (dict(dtype="float16"), "dtype"),
    (dict(method="nope"), "unknown method"),
])
def test_bad_config_raises(bad, match):
    cfg = H.config_with_defaults(**{**SMALL, **bad})
    with pytest.raises(ValueError, match=match):
        H.build(cfg)


def test_missing_key_raises():
    cfg = H.config_with_defaults()
    del cfg["noise"]
    with pytest.raises(ValueError, match="missing key"):
        H.build(cfg)


def test_options_contract():
    for name, (default, typ, help_) in H.OPTIONS.items():
        assert typ in (str, int, float, bool) and isinstance(help_, str)
        assert default is None or isinstance(default, typ), name
    assert set(H.COMMON_DEFAULTS) == {"method", "inner_steps", "inner_lr", "outer_steps", "outer_lr",
                                      "outer_optimizer", "log_every", "method_options"}


def test_warm_start_starts_each_inner_loop_at_the_previous_iterate():
    cfg = H.config_with_defaults(dataset="digits", train_size=40, val_size=40, test_size=40, inner_steps=3,
                                 outer_steps=2, method="rhg", warm_start=True, dtype="float64")
    run = H.build(cfg)
    assert run.loop_options == {"warm_start": True}
    loop = run_steps(run, cfg, 1)
    y_last = loop.y
    assert all(torch.equal(loop.y0[k], y_last[k]) for k in y_last)  # next loop starts at y_K
    cold = H.build(dict(cfg, warm_start=False))
    assert cold.loop_options == {}
    with pytest.raises(ValueError, match="learns the inner"):
        H.build(dict(cfg, method="iaptt"))
    with pytest.raises(ValueError, match="warm_start"):
        H.build(dict(cfg, warm_start="yes"))


def test_holdout_split_is_extra_clean_and_leaves_the_other_splits_unchanged():
    from bilevel.app.data import hyperclean_split

    plain = hyperclean_split("digits", 300, 200, 300, noise=0.5, seed=3)
    held = hyperclean_split("digits", 300, 200, 300, noise=0.5, seed=3, holdout_size=150)
    for k in ("X_train", "y_train", "y_train_clean", "corrupted", "X_val", "y_val", "X_test", "y_test"):
        assert np.array_equal(getattr(plain, k), getattr(held, k)), k
    assert plain.X_holdout.shape == (0, 64) and held.X_holdout.shape == (150, 64) and held.y_holdout.shape == (150,)
    # the held-out samples are the pool's next 150: disjoint from train / val / test by index, so their rows are
    # (up to digits' exact duplicates) none of the others'
    others = {r.tobytes() for r in np.concatenate([held.X_train, held.X_val, held.X_test])}
    assert sum(r.tobytes() in others for r in held.X_holdout) <= 3
    with pytest.raises(ValueError, match="holdout_size = 1798 exceeds the maximum of 1797"):
        hyperclean_split("digits", 300, 200, 300, holdout_size=998)
    with pytest.raises(ValueError, match="holdout_size must be an integer >= 0"):
        hyperclean_split("digits", 30, 20, 30, holdout_size=-1)


def test_holdout_metrics_activation_and_clean_f1_by_hand():
    cfg = H.config_with_defaults(dataset="digits", model="mlp", hidden=6, activation="none", holdout_size=90,
                                 dtype="float64", **SMALL)
    run = H.build(cfg)
    loop = run_steps(run, cfg, 2)
    ev, s = run.evaluate(loop), run.summarize(loop)
    from bilevel.app.data import hyperclean_split

    split = hyperclean_split("digits", 120, 80, 100, noise=0.5, seed=0, holdout_size=90)
    _, y = loop.evaluate(*run.objectives(0))
    X = torch.as_tensor(split.X_holdout, dtype=torch.float64)
    logits = (X @ y["w1"].T + y["b1"]) @ y["w2"].T + y["b2"]  # activation "none": two stacked linear maps
    labels = torch.as_tensor(split.y_holdout)
    for d in (ev, s):
        assert d["holdout_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-12)
        assert d["holdout_accuracy"] == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    from sklearn.metrics import f1_score

    flagged = H.flag_corrupted(loop.x).numpy()
    assert s["f1_clean"] == pytest.approx(f1_score(~split.corrupted, ~flagged))
    assert s["f1"] == pytest.approx(f1_score(split.corrupted, flagged))
    relu = H.build(dict(cfg, activation="relu"))
    h = torch.randn(5, 64, dtype=torch.float64)
    expect = torch.relu(h @ relu.y0["w1"].T + relu.y0["b1"]) @ relu.y0["w2"].T + relu.y0["b2"]
    assert torch.allclose(H.forward("mlp", relu.y0, h), expect)
    no_holdout = H.build(dict(cfg, holdout_size=0))
    assert "holdout_loss" not in no_holdout.evaluate(run_steps(no_holdout, cfg, 1))
    with pytest.raises(ValueError, match="activation"):
        H.build(dict(cfg, activation="tanh"))
