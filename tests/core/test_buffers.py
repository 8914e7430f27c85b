"""Modules with buffers (BatchNorm): the inner loop carries the running statistics exactly as a torch training loop
of the same module does, they are never differentiated, and every memory mode replays them.

The problem: a small conv net with BatchNorm2d and BatchNorm1d on 8 random 1x6x6 images (float64); x holds one
weight logit per training image (data reweighting), the lower objective is the weighted cross-entropy of the net
in training mode, the upper the cross-entropy on 6 other images.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bilevel

D = torch.float64
K = 6
LR = 0.1


def _net():
    torch.manual_seed(0)
    # no bias before a BatchNorm (it would have a zero gradient, which Adam turns into round-off noise)
    return nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3)).to(D)


def _data():
    g = torch.Generator().manual_seed(1)
    Xtr = torch.randn(8, 1, 6, 6, generator=g, dtype=D)
    ttr = torch.randint(0, 3, (8,), generator=g)
    Xval = torch.randn(6, 1, 6, 6, generator=g, dtype=D)
    tval = torch.randint(0, 3, (6,), generator=g)
    x = 0.3 * torch.randn(8, generator=g, dtype=D)
    return Xtr, ttr, Xval, tval, x


XTR, TTR, XVAL, TVAL, X = _data()


def _weighted_ce(logits, x):
    return (torch.sigmoid(x) * F.cross_entropy(logits, TTR, reduction="none")).mean()


def _problem(net, *, upper_training=True):
    stats = bilevel.models.Buffers(net)
    train = bilevel.models.functional(net, buffers=stats, training=True)
    up = bilevel.models.functional(net, buffers=stats, training=upper_training)

    def lower(x, y):
        return _weighted_ce(train(y, XTR), x)

    def upper(x, y):
        return F.cross_entropy(up(y, XVAL), TVAL)

    return stats, lower, upper


def _torch_loop(net, x, steps, cls=torch.optim.SGD, **kw):
    """The reference: ``steps`` iterations of loss.backward(); opt.step() on a copy of the module."""
    m = copy.deepcopy(net).train()
    opt = cls(m.parameters(), lr=LR, **kw)
    for _ in range(steps):
        opt.zero_grad()
        _weighted_ce(m(XTR), x).backward()
        opt.step()
    return ({n: p.detach() for n, p in m.named_parameters()}, {n: b.detach() for n, b in m.named_buffers()})


def _assert_close(got, want, tol):
    assert set(got) == set(want)
    for n in want:
        if want[n].is_floating_point():
            torch.testing.assert_close(got[n], want[n], rtol=tol, atol=tol, msg=n)
        else:
            assert torch.equal(got[n], want[n]), n


@pytest.mark.parametrize("opt", [("gd", {}, torch.optim.SGD, {}),
                                 ("momentum", {}, torch.optim.SGD, {"momentum": 0.9}),
                                 ("adam", {}, torch.optim.Adam, {})], ids=["gd", "momentum", "adam"])
def test_iterate_and_buffers_equal_a_torch_training_loop(opt):
    name, opts, cls, kw = opt
    net = _net()
    stats, lower, upper = _problem(net)
    y0 = bilevel.models.parameters(net)
    res = bilevel.hypergrad(upper, lower, X, y0, method="rhg", inner_steps=K, inner_lr=LR, buffers=stats,
                            inner_optimizer=name, inner_optimizer_options=opts)
    params, buffers = _torch_loop(net, X, K, cls, **kw)
    _assert_close(res.y, params, 1e-12)
    _assert_close(res.buffers, buffers, 1e-12)
    assert int(res.buffers["1.num_batches_tracked"]) == K
    # the statistics moved (the test compares something), and the module itself was never written
    assert not torch.allclose(res.buffers["1.running_mean"], torch.zeros(3, dtype=D))
    assert torch.equal(net[1].running_mean, torch.zeros(3, dtype=D)) and int(net[1].num_batches_tracked) == 0


def test_hypergradient_passes_finite_differences():
    net = _net()
    stats, lower, upper = _problem(net)
    chk = bilevel.check_hypergrad(upper, lower, X, bilevel.models.parameters(net), method="rhg", inner_steps=K,
                                  inner_lr=LR, buffers=stats, rtol=1e-6, atol=1e-10)
    assert chk.ok, chk
    assert chk.fd_derivatives.abs().max() > 1e-4  # a nonzero gradient, so the check can fail


@pytest.mark.parametrize("method,opts", [("fhg", {}), ("rhg", {"checkpoint": 2}), ("rhg", {"checkpoint": 4}),
                                         ("rhg", {"inner_optimizer": "adam", "checkpoint": 2}),
                                         ("fhg", {"inner_optimizer": "adam"})])
def test_memory_modes_replay_the_buffers(method, opts):
    """forward mode = reverse mode = checkpointed reverse mode, and all end with the training loop's buffers."""
    net = _net()
    stats, lower, upper = _problem(net)
    y0 = bilevel.models.parameters(net)
    base = {k: v for k, v in opts.items() if k != "checkpoint"}
    ref = bilevel.hypergrad(upper, lower, X, y0, method="rhg", inner_steps=K, inner_lr=LR, buffers=stats, **base)
    res = bilevel.hypergrad(upper, lower, X, y0, method=method, inner_steps=K, inner_lr=LR, buffers=stats, **opts)
    torch.testing.assert_close(res.grad, ref.grad, rtol=1e-10, atol=1e-12)
    _assert_close(res.buffers, ref.buffers, 1e-12)
    _assert_close(res.y, ref.y, 1e-12)


def test_upper_in_eval_mode_uses_the_final_statistics():
    """An evaluation-mode upper objective reads the buffers of y_K: its value equals the module loaded with
    res.y and res.buffers in eval mode."""
    net = _net()
    stats, lower, upper = _problem(net, upper_training=False)
    res = bilevel.hypergrad(upper, lower, X, bilevel.models.parameters(net), method="rhg", inner_steps=K,
                            inner_lr=LR, buffers=stats)
    m = bilevel.models.load(copy.deepcopy(net), res.y, res.buffers).eval()
    want = F.cross_entropy(m(XVAL), TVAL).item()
    assert abs(res.info["upper"] - want) < 1e-12
    # with the initial (zero-mean, unit-variance) statistics the value differs: the buffers mattered
    m0 = bilevel.models.load(copy.deepcopy(net), res.y).eval()
    assert abs(F.cross_entropy(m0(XVAL), TVAL).item() - want) > 1e-6


@pytest.mark.filterwarnings("ignore:cg:RuntimeWarning")  # 3 CG steps on a nonconvex net: a biased solve, as asked
def test_implicit_and_ptt_methods_carry_buffers():
    net = _net()
    stats, lower, upper = _problem(net)
    y0 = bilevel.models.parameters(net)
    params, buffers = _torch_loop(net, X, K)
    cg = bilevel.hypergrad(upper, lower, X, y0, method="cg", inner_steps=K, inner_lr=LR, buffers=stats, cg_steps=3)
    _assert_close(cg.buffers, buffers, 1e-12)  # the solve's Hessian-vector products do not move the statistics
    pt = bilevel.hypergrad(upper, lower, X, y0, method="iaptt", inner_steps=K, inner_lr=LR, buffers=stats)
    kbar = int(pt.info["k_bar"])
    params_k, buffers_k = _torch_loop(net, X, kbar)
    _assert_close(pt.y, params_k, 1e-12)
    _assert_close(pt.buffers, buffers_k, 1e-12)  # the buffers of y_kbar


def test_outer_loop_warm_start_carries_buffers_and_checkpoints_them():
    net = _net()
    stats, lower, upper = _problem(net)
    y0 = bilevel.models.parameters(net)
    loop = bilevel.OuterLoop(X, y0, method="rhg", outer_lr=0.1, inner_steps=3, inner_lr=LR, warm_start=True,
                             buffers=stats)
    loop.step(upper, lower)
    state = loop.state_dict()
    assert int(loop.buffers["1.num_batches_tracked"]) == 3
    rec = loop.step(upper, lower)
    assert int(loop.buffers["1.num_batches_tracked"]) == 6  # the second loop continued from the first's buffers
    # resume from the checkpoint in a fresh loop (fresh Buffers): the same second step, bitwise
    net2 = _net()
    stats2, lower2, upper2 = _problem(net2)
    loop2 = bilevel.OuterLoop(X, y0, method="rhg", outer_lr=0.1, inner_steps=3, inner_lr=LR, warm_start=True,
                              buffers=stats2)
    loop2.load_state_dict(state)
    rec2 = loop2.step(upper2, lower2)
    assert rec2["upper"] == rec["upper"]
    _assert_close(loop2.buffers, loop.buffers, 0.0)
    # without warm start every inner loop starts from the module's buffers (a fresh Buffers object: the warm-started
    # loops above moved the start of theirs)
    stats3, lower3, upper3 = _problem(_net())
    cold = bilevel.OuterLoop(X, y0, method="rhg", outer_lr=0.1, inner_steps=3, inner_lr=LR, buffers=stats3)
    cold.step(upper3, lower3)
    cold.step(upper3, lower3)
    assert int(cold.buffers["1.num_batches_tracked"]) == 3


def test_solve_returns_the_final_buffers():
    net = _net()
    stats, lower, upper = _problem(net)
    out = bilevel.solve(upper, lower, X, bilevel.models.parameters(net), method="rhg", outer_steps=2, outer_lr=0.1,
                        inner_steps=K, inner_lr=LR, buffers=stats)
    _, buffers = _torch_loop(net, out.x, K)
    _assert_close(out.buffers, buffers, 1e-12)


def test_without_buffers_the_module_is_never_written():
    net = _net()
    model = bilevel.models.functional(net)
    before = {n: b.clone() for n, b in net.named_buffers()}
    net.train()
    model(bilevel.models.parameters(net), XTR)
    _assert_close(dict(net.named_buffers()), before, 0.0)


def test_training_flag_restores_the_module_mode():
    net = _net().eval()
    model = bilevel.models.functional(net, training=True)
    p = bilevel.models.parameters(net)
    out_train = model(p, XTR)
    assert not net.training and not any(m.training for m in net.modules())
    torch.testing.assert_close(out_train, bilevel.models.functional(copy.deepcopy(net).train())(p, XTR))


def test_bad_buffers_are_refused():
    net = _net()
    stats, lower, upper = _problem(net)
    y0 = bilevel.models.parameters(net)
    with pytest.raises(ValueError, match="Buffers object"):
        bilevel.hypergrad(upper, lower, X, y0, method="rhg", inner_steps=2, inner_lr=LR, buffers={"a": 1})
    with pytest.raises(ValueError, match="does not carry module buffers"):
        bilevel.hypergrad(upper, lower, X, y0, method="bvfim", inner_steps=2, inner_lr=LR, buffers=stats)
    with pytest.raises(ValueError, match="compile_step"):
        bilevel.hypergrad(upper, lower, X, y0, method="cg", inner_steps=2, inner_lr=LR, buffers=stats,
                          compile_step=True)
    with pytest.raises(ValueError, match="no buffers"):
        bilevel.models.Buffers(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="module's buffers are"):
        bilevel.models.functional(nn.BatchNorm1d(4), buffers=stats)
    with pytest.raises(ValueError, match="Buffers.start"):
        stats.start = {"nope": torch.zeros(1)}
    with pytest.raises(ValueError, match="training"):
        bilevel.models.functional(net, training="yes")
