"""bilevel.stochastic at full batch: with y and the linear-system variable at their exact values, one outer step of
every method moves x along the implicit-function hypergradient (float64, 1e-10); PZOBO and BOME against their own
update written out here; the samplers and the option checks."""
import dataclasses

import pytest
import torch

import bilevel
from bilevel import stochastic
from bilevel.problems.finite_sum import make_finite_sum_quadratic
from bilevel.stochastic.sampler import BatchSampler, StepBatches, generator

N = 12
DT = torch.float64
# mean Hessian of f: exactly 0.5 I (mu = L), so a Neumann series with step 2 is exact after its first term
PB = make_finite_sum_quadratic(N, N, 4, 3, mu=0.5, L=0.5, noise=0.1, seed=3)
X = torch.tensor([0.3, -0.7, 1.1], dtype=DT)


def loop(method, pb=PB, state=None, **kw):
    kw.setdefault("outer_lr", 1.0)
    lp = stochastic.StochasticLoop(pb.upper, pb.lower, X, torch.zeros(4, dtype=DT), method=method, n_upper=N,
                                   n_lower=N, batch_size=N, seed=5, **kw)
    if state:
        lp.state.update(state)
    return lp


def direction(lp):
    x = lp.state["x"].clone()
    lp.step()
    return x - lp.state["x"]  # outer_lr = 1 and the step's decay is 1 at t = 1


def close(a, b, tol=1e-10):
    return float((a - b).norm()) <= tol * max(1.0, float(b.norm()))


YS, VS, HG = PB.y_star(X), PB.v_star(X), PB.hypergrad(X)
EXACT = {  # method: (options, exact starting state)
    "soba": ({}, {"y": YS, "v": VS}),
    "saba": ({}, {"y": YS, "v": VS}),
    "srba": ({}, {"y": YS, "v": VS}),
    "amigo": ({}, {"y": YS, "v": VS}),
    "fsla": ({}, {"y": YS, "v": VS}),
    "stocbio": ({"neumann_lr": 2.0}, {"y": YS}),
    "bsa": ({"neumann_lr": 2.0, "n_neumann_steps": 1}, {"y": YS}),
    "ttsa": ({"neumann_lr": 2.0, "n_neumann_steps": 1}, {"y": YS}),
    "mrbo": ({"neumann_lr": 2.0}, {"y": YS}),
    "sustain": ({"neumann_lr": 2.0, "n_neumann_steps": 1}, {"y": YS}),
    "vrbo": ({"neumann_lr": 2.0, "n_inner_steps": 1}, {"y": YS}),
}


@pytest.mark.parametrize("method", sorted(EXACT))
def test_full_batch_direction_is_the_hypergradient(method):
    opts, state = EXACT[method]
    lp = loop(method, state=state, **opts)
    assert close(direction(lp), HG), method
    if method not in ("vrbo", "bsa"):  # y and v stay exact (VRBO and BSA move y after x, at the new x)
        assert close(lp.state["y"], YS)
    if "v" in lp.state:
        assert close(lp.state["v"], VS)


def test_f2sa_direction_is_the_hypergradient_at_y_lambda():
    # F linear in y and no x-y coupling in F: then y_lam = y* - A^{-1} grad_y F / lam and the penalty direction
    # grad_x F + lam (grad_x f(y_lam) - grad_x f(y*)) is the hypergradient for every lam
    pb = dataclasses.replace(PB, P=torch.zeros_like(PB.P), D=torch.zeros_like(PB.D))
    lam = 3.0
    ys = pb.y_star(X)
    y_lam = ys - torch.linalg.solve(pb.A.mean(0), pb.p.mean(0)) / lam
    lp = loop("f2sa", pb, state={"y": y_lam, "z": ys}, lam0=lam, n_inner_steps=2)
    assert close(direction(lp), pb.hypergrad(X))
    assert close(lp.state["y"], y_lam) and close(lp.state["z"], ys)
    assert abs(float(lp.state["lam"]) - (lam + 0.1)) < 1e-15


def test_pzobo_step_is_its_formula():
    q, mu, n, lr = 3, 0.05, 4, 0.4
    y0 = torch.tensor([0.2, -0.1, 0.3, 0.5], dtype=DT)
    lp = loop("pzobo", state={"y": y0}, inner_lr=lr, outer_lr=0.3, n_gaussian_vectors=q, mu=mu, n_inner_steps=n)
    lp.step()

    def gd(x):
        y = y0.clone()
        for _ in range(n):
            y = y - lr * (PB.A.mean(0) @ y + PB.C.mean(0).T @ x + PB.a.mean(0))
        return y

    u = torch.randn(q, 3, generator=generator(5, 2), dtype=DT)
    y = gd(X)
    fy = PB.P.mean(0) @ y + PB.D.mean(0).T @ X + PB.p.mean(0)
    fx = PB.R @ X + PB.D.mean(0) @ y + PB.r.mean(0)
    g_hat = sum(u[k] * torch.dot((gd(X + mu * u[k]) - y) / mu, fy) for k in range(q)) / q
    assert close(lp.state["x"], X - 0.3 * (fx + g_hat)) and close(lp.state["y"], y)
    # the zeroth-order term estimates (dy_N/dx)' grad_y F: with many directions it approaches the exact one
    jac = torch.func.jacrev(gd)(X)
    lp = loop("pzobo", state={"y": y0}, inner_lr=lr, outer_lr=1.0, n_gaussian_vectors=4000, mu=1e-4, n_inner_steps=n)
    d = direction(lp)
    assert float((d - (fx + jac.T @ fy)).norm() / (fx + jac.T @ fy).norm()) < 0.1


@pytest.mark.parametrize("phi", ["grad_norm", "value"])
def test_bome_full_batch_equals_the_deterministic_bome(phi):
    y0 = torch.tensor([0.2, -0.1, 0.3, 0.5], dtype=DT)
    lp = loop("bome", state={"y": y0}, inner_lr=0.3, outer_lr=0.2, eta=0.7, phi=phi, n_inner_steps=5)
    lp.step()
    res = bilevel.hypergrad(lambda x, y: PB.upper(x, y), lambda x, y: PB.lower(x, y), X, y0, method="bome",
                            inner_steps=5, inner_lr=0.3, eta=0.7, phi=phi)
    assert close(lp.state["x"], X - 0.2 * res.grad) and close(lp.state["y"], res.y)


# ---------------------------------------------------------------------------------------------- samplers
def test_batch_sampler_visits_fixed_batches_once_per_epoch_and_resumes_bitwise():
    s = BatchSampler(10, 3, seed=7)
    batches = [s.batch(b) for b in range(s.n_batches)]
    assert sorted(torch.cat(batches).tolist()) == list(range(10)) and [len(b) for b in batches] == [3, 3, 3, 1]
    assert abs(sum(s.weight(b) for b in range(4)) - 1) < 1e-15
    for _ in range(3):  # every epoch: each batch once
        assert sorted(s.draw()[1] for _ in range(4)) == [0, 1, 2, 3]
    sd = s.state_dict()
    ahead = [s.draw()[1] for _ in range(9)]
    s2 = BatchSampler(10, 3, seed=7)
    s2.load_state_dict(sd)
    assert [s2.draw()[1] for _ in range(9)] == ahead
    with pytest.raises(ValueError, match="batches"):
        BatchSampler(10, 5, seed=7).load_state_dict(sd)


def test_contiguous_batches_are_ranges_in_a_random_order():
    """contiguous=True: batch b is [3b, 3b + 3) clipped to n, every epoch visits each once, the first epoch's order
    is the generator's first permutation of the 4 batches, and the state resumes bitwise."""
    s = BatchSampler(10, 3, seed=7, contiguous=True)
    assert [s.batch(b).tolist() for b in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    epochs = [[s.draw()[1] for _ in range(4)] for _ in range(3)]
    assert all(sorted(e) == [0, 1, 2, 3] for e in epochs) and len({tuple(e) for e in epochs}) > 1
    gen = torch.Generator().manual_seed(7)
    assert epochs[0] == torch.randperm(4, generator=gen).tolist()
    sd = s.state_dict()
    ahead = [s.draw()[1] for _ in range(6)]
    s2 = BatchSampler(10, 3, seed=7, contiguous=True)
    s2.load_state_dict(sd)
    assert [s2.draw()[1] for _ in range(6)] == ahead


def test_a_contiguous_run_evaluates_the_objectives_on_ranges():
    """StochasticLoop(batches="contiguous") hands every objective call a range of consecutive samples; an unknown
    value is refused by name; a state saved before the option existed resumes as a shuffled run."""
    seen = []

    def watch(fn):
        def f(x, y, idx):
            seen.append(idx.tolist())
            return fn(x, y, idx)
        return f

    lp = stochastic.StochasticLoop(watch(PB.upper), watch(PB.lower), X, torch.zeros(4, dtype=DT), method="soba",
                                   n_upper=N, n_lower=N, batch_size=5, seed=5, batches="contiguous")
    for _ in range(6):
        lp.step()
    assert len(seen) >= 12 and all(i == list(range(i[0], i[0] + len(i))) and i[0] % 5 == 0 for i in seen)
    assert {len(i) for i in seen} == {5, 2}  # batches [0, 5), [5, 10), [10, 12)
    with pytest.raises(ValueError, match="batches must be one of 'shuffled', 'contiguous', got 'random'"):
        stochastic.StochasticLoop(PB.upper, PB.lower, X, torch.zeros(4, dtype=DT), method="soba", n_upper=N,
                                  n_lower=N, batch_size=5, batches="random")
    old = loop("soba")
    old.step()
    sd = old.state_dict()
    del sd["config"]["batches"]
    again = loop("soba")
    again.load_state_dict(sd)
    assert again.t == 1 and torch.equal(again.state["x"], old.state["x"])
    with pytest.raises(ValueError, match="another run: batches"):
        loop("soba", batches="contiguous").load_state_dict(old.state_dict())


@pytest.mark.parametrize("first, block", [(0, 5), (2, 5), (3, 12), (4, 1), (1, 0)])
def test_draw_many_is_k_draws(first, block):
    """A block of draws (the compiled engine's) = the same number of single draws, across epoch ends, and leaves the
    sampler where they leave it."""
    one, many = BatchSampler(12, 3, seed=5), BatchSampler(12, 3, seed=5)
    for _ in range(first):
        one.draw(), many.draw()
    expected = [one.draw()[0] for _ in range(block)]
    got = many.draw_many(block)
    assert got.shape == (block, 3) and all(torch.equal(g, e) for g, e in zip(got, expected))
    assert many.draws == one.draws and [many.draw()[1] for _ in range(7)] == [one.draw()[1] for _ in range(7)]
    with pytest.raises(ValueError, match="must divide"):
        BatchSampler(10, 3, seed=5).draw_many(2)


@pytest.mark.parametrize("first, k", [(0, 9), (3, 4), (5, 0)])
def test_draw_ids_are_the_ids_of_k_draws_with_a_smaller_last_batch(first, k):
    one, many = BatchSampler(10, 3, seed=5), BatchSampler(10, 3, seed=5)  # batches of 3, 3, 3 and 1
    assert one.partial == 3 and BatchSampler(12, 3, seed=5).partial is None
    for _ in range(first):
        one.draw(), many.draw()
    expected = [one.draw()[1] for _ in range(k)]
    assert many.draw_ids(k).tolist() == expected and many.draws == one.draws
    assert [many.draw()[1] for _ in range(5)] == [one.draw()[1] for _ in range(5)]
    full = torch.tensor([b for b in range(3)][::-1])
    assert all(torch.equal(r, many.batch(int(b))) for r, b in zip(many.rows(full), full))


def test_step_batches_are_a_function_of_the_step():
    a, b = StepBatches(20, 6, seed=1), StepBatches(20, 6, seed=1)
    seq = [a(k).tolist() for k in range(9)]
    assert [b(k).tolist() for k in reversed(range(9))] == seq[::-1]  # any order of calls, same draws
    assert all(len(set(sum(seq[3 * e:3 * e + 3], []))) == 18 for e in range(3))  # an epoch has no repeats
    assert torch.equal(StepBatches(20, 20, seed=1)(5), torch.arange(20))


# ---------------------------------------------------------------------------------------------- checks
def test_options_and_arguments_are_checked():
    with pytest.raises(ValueError, match="unknown option.*'n_inner'.*amigo.*n_inner_steps"):
        loop("amigo", n_inner=3)
    with pytest.raises(ValueError, match="unknown stochastic method 'sgd'"):
        loop("sgd")
    with pytest.raises(ValueError, match="batch_size"):
        stochastic.solve(PB.upper, PB.lower, X, torch.zeros(4, dtype=DT), method="soba", n_upper=N, n_lower=N,
                         batch_size=0, outer_steps=1)
    with pytest.raises(ValueError, match="saba's per-sample memories need .* MiB, more than max_memory_mb=0.001"):
        loop("saba", max_memory_mb=0.001)
    assert set(stochastic.METHODS) == {"stocbio", "amigo", "soba", "saba", "srba", "ttsa", "fsla", "mrbo", "vrbo",
                                       "bsa", "sustain", "pzobo", "f2sa", "bome"}


def test_saba_memory_rows_hold_each_batch_last_value():
    lp = stochastic.StochasticLoop(PB.upper, PB.lower, X, torch.zeros(4, dtype=DT), method="saba", n_upper=N,
                                   n_lower=N, batch_size=4, seed=0)
    for _ in range(5):
        lp.step()
    m = lp.state["mem_g"]
    assert m.shape == (N, 4)
    for b in range(3):  # rows of one batch are equal; the running mean is the mean of the rows
        rows = m[lp.ctx.inner.batch(b)]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    assert close(lp.state["avg_g"], m.mean(0), 1e-14)


def test_divergence_is_an_error_not_a_nan():
    with pytest.raises(bilevel.NonFiniteError, match="soba: x became"):
        stochastic.solve(PB.upper, PB.lower, X, torch.zeros(4, dtype=DT), method="soba", n_upper=N, n_lower=N,
                         batch_size=4, outer_steps=400, outer_lr=1e3, inner_lr=1e3)
