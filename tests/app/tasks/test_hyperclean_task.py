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
