"""Few-shot objectives compute the backbone features once per x (bilevel.Factored), without changing any
hypergradient; the memo of the core is invalidated by an in-place change of x.

Tiny generated data (random 16x16 images, a width-2 conv-4), float64.
"""
import warnings

import pytest
import torch

import bilevel
from bilevel import Factored
from bilevel._tree import flatten
from bilevel.problem import Problem
from bilevel.app.tasks import fewshot as FS
from tree_assert import assert_tree_close

B, WAYS, SHOTS, QUERIES, SIZE, WIDTH = 2, 3, 1, 2, 16, 2
K = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(seed=0, lq=0.0):
    gen = torch.Generator().manual_seed(seed)
    sx = torch.rand(B, WAYS * SHOTS, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)
    qx = torch.rand(B, WAYS * QUERIES, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)
    sy = torch.arange(WAYS).repeat_interleave(SHOTS).expand(B, -1).clone()
    qy = torch.arange(WAYS).repeat_interleave(QUERIES).expand(B, -1).clone()
    x = FS.init_backbone(WIDTH, 1, True, torch.float64, gen)
    x = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in x.items()}
    feat = FS.feature_dim(WIDTH, SIZE)
    y0 = 0.1 * torch.randn(B, WAYS, feat + 1, generator=gen, dtype=torch.float64)
    upper, lower = FS.make_objectives(sx, sy, qx, qy, lq=lq)
    return upper, lower, x, y0


def _counting(obj, counter, key):
    def features(x):
        counter[key] += 1
        return obj.features(x)

    return Factored(features, obj.head)


def _plain(obj, counter=None, key=None):
    """The same objective as an ordinary function: no memo, features recomputed at every call."""
    def fn(x, y):
        if counter is not None:
            counter[key] += 1
        return obj(x, y)

    return fn


def _close(a, b, tol=1e-6):
    assert_tree_close(a, b, tol)


def _hg(upper, lower, x, y0, method, **opts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cg/neumann convergence warnings
        return bilevel.hypergrad(upper, lower, x, y0, method=method, inner_steps=K, inner_lr=0.5, **opts)


METHODS = [("rhg", {}), ("rhg", {"checkpoint": 2}), ("trhg", {"truncate": 2}), ("fhg", {}),
           ("cg", {"cg_steps": 5}), ("neumann", {"neumann_terms": 5}), ("bda", {}), ("iaptt", {}), ("iaptt", {"single_pass": True}),
           ("bvfim", {})]


@pytest.mark.parametrize("method, opts", METHODS, ids=[m + "".join(f"-{k}{v}" for k, v in o.items())
                                                        for m, o in METHODS])
def test_cached_hypergradient_equals_uncached(method, opts):
    upper, lower, x, y0 = _data(lq=0.1 if method == "rhg" else 0.0)
    counts = {"support": 0, "query": 0}
    evals = {"support": 0, "query": 0}
    cached = _hg(_counting(upper, counts, "query"), _counting(lower, counts, "support"), x, y0, method, **opts)
    plain = _hg(_plain(upper, evals, "query"), _plain(lower, evals, "support"), x, y0, method, **opts)
    _close(cached.grad, plain.grad)
    _close(cached.y, plain.y)
    if method == "iaptt":
        assert cached.info["k_bar"] == plain.info["k_bar"]
        _close(cached.grad_y0, plain.grad_y0)
    assert cached.info["upper"] == pytest.approx(plain.info["upper"], rel=1e-10)
    # the inner loop reuses the support features: fewer backbone passes than lower evaluations (fhg takes a
    # fresh leaf x at every step for that step's local tape, so there every evaluation is a new x)
    assert 1 <= counts["support"] <= evals["support"] and counts["query"] <= evals["query"], (counts, evals)
    if method != "fhg":
        assert counts["support"] < evals["support"], (counts, evals)
    if method == "rhg" and not opts:
        # one pass on the support set (shared by the K taped steps and by info["lower"]), one on the query set
        assert counts == {"support": 1, "query": 1}


def test_fhg_recomputes_per_step_leaf_but_agrees_with_rhg():
    # fhg takes a fresh leaf x at every step (each step's local tape): the memo must miss there, and the result
    # still equals RHG
    upper, lower, x, y0 = _data(seed=3)
    a = _hg(upper, lower, x, y0, "fhg")
    b = _hg(upper, lower, x, y0, "rhg")
    _close(a.grad, b.grad)


def test_meta_batch_matches_per_task_objectives():
    upper, lower, x, y0 = _data(seed=1)
    sx_feats = lower.features(x)
    assert sx_feats.shape == (B, WAYS * SHOTS, FS.feature_dim(WIDTH, SIZE))
    assert float(lower(x, y0)) == pytest.approx(float(lower.head(sx_feats, y0)), abs=0)


def _problem(upper, lower, x, y0):
    xf, xs = flatten(x)
    yf, ys = flatten(y0)
    return Problem.from_user(upper, lower, xs, ys), xf.clone(), yf


def test_in_place_change_of_x_invalidates_the_memo():
    upper, lower, x, y0 = _data(seed=2)
    counts = {"support": 0}
    prob, xf, yf = _problem(upper, _counting(lower, counts, "support"), x, y0)
    v1 = prob.lower(xf, yf)
    assert prob.lower(xf, yf) == v1 and counts["support"] == 1  # same x object, unchanged: reused
    with torch.no_grad():
        xf.add_(0.05)  # in place: bumps the version counter
    v2 = prob.lower(xf, yf)
    assert counts["support"] == 2
    fresh = lower(prob.x_spec.unflatten(xf.clone()), y0)
    assert float(v2) == pytest.approx(float(fresh), abs=1e-12)
    assert float(v2) != pytest.approx(float(v1), abs=1e-9)
    # an equal but distinct tensor is a different x: recomputed (never matched by value or id alone)
    prob.lower(xf.clone(), yf)
    assert counts["support"] == 3


def test_memo_keeps_graph_and_no_graph_apart():
    upper, lower, x, y0 = _data(seed=4)
    counts = {"support": 0}
    prob, xf, yf = _problem(upper, _counting(lower, counts, "support"), x, y0)
    with torch.no_grad():
        prob.lower(xf, yf)
    assert counts["support"] == 1
    xf.requires_grad_()  # same object and version, but now the features must carry a graph to x
    out = prob.lower(xf, yf)
    assert counts["support"] == 2 and out.requires_grad
    (g,) = torch.autograd.grad(out, xf)  # frees the graph of the features
    with torch.no_grad():  # their values still serve graph-free calls, also through an alias of x
        prob.lower(xf, yf), prob.lower(xf.detach(), yf)
    assert counts["support"] == 2
    ref_x = xf.detach().clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(lower(prob.x_spec.unflatten(ref_x), y0), ref_x)
    _close(g, g_ref, 1e-12)
    # but not where a tape is recorded: recomputed; then repeated calls share one feature node (the gradient of
    # the sum is the sum of the gradients)
    a, b = prob.lower(xf, yf), prob.lower(xf, yf + 0.1)
    assert counts["support"] == 3
    (g2,) = torch.autograd.grad(a + b, xf)
    (gb,) = torch.autograd.grad(lower(prob.x_spec.unflatten(ref_x), prob.y_spec.unflatten(yf + 0.1)), ref_x)
    _close(g2, g_ref + gb, 1e-12)


def test_outer_loop_with_factored_objectives_equals_plain():
    upper, lower, x, y0 = _data(seed=5)
    loops = []
    for up, lo in ((upper, lower), (_plain(upper), _plain(lower))):
        loop = bilevel.OuterLoop(x, y0, method="rhg", outer_lr=0.01, inner_steps=K, inner_lr=0.5)
        for _ in range(2):
            loop.step(up, lo)
        loops.append(loop)
    _close(loops[0].x, loops[1].x, 1e-10)


def test_task_objectives_are_factored_and_shards_sum_to_the_whole():
    task = FS.FewShotTask(FS.config_with_defaults(dtype="float64", width=2, ways=3, shots=1, queries=2,
                                                  meta_batch=3, max_per_class=20, test_episodes=2))
    upper, lower = task.objectives(0)
    assert isinstance(upper, Factored) and isinstance(lower, Factored)
    x = task.x0()
    y = torch.randn(task.y0().shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shards = [task.shard_objectives(0, r, 2) for r in range(2)]
    assert all(isinstance(o, Factored) for pair in shards for o in pair)
    assert float(sum(u(x, y) for u, _ in shards)) == pytest.approx(float(upper(x, y)), rel=1e-12)
    assert float(sum(lo(x, y) for _, lo in shards)) == pytest.approx(float(lower(x, y)), rel=1e-12)
    whole = _hg(upper, lower, x, y, "rhg")
    plain = _hg(_plain(upper), _plain(lower), x, y, "rhg")
    _close(whole.grad, plain.grad)


def test_factored_rejects_non_callables():
    with pytest.raises(ValueError, match="two callables"):
        Factored(None, lambda h, y: h)
