"""The compiled engine (compile_block=B): blocks of iterations through one torch.compile graph follow the eager
trajectory (same batches, same counts) to round-off, in float64."""
import os

import pytest
import torch

from bilevel import stochastic
from bilevel.problems.finite_sum import make_finite_sum_quadratic

PB = make_finite_sum_quadratic(16, 8, 3, 2, mu=0.5, noise=0.2, seed=4)
DT = torch.float64


def run(method, steps, **kw):
    return stochastic.solve(PB.upper, PB.lower, torch.zeros(2, dtype=DT), torch.zeros(3, dtype=DT), method=method,
                            n_upper=8, n_lower=16, batch_size=4, outer_steps=steps, log_every=4, seed=1, **kw)


# compiling costs 10-40 s per method here: the suite checks saba (SOBA's oracles and steps, plus memories updated in
# place inside the graph); BILEVEL_TEST_ALL_COMPILED=1 adds soba, amigo and stocbio (inner loops, Neumann series)
CASES = [("saba", {})]
if os.environ.get("BILEVEL_TEST_ALL_COMPILED") == "1":
    CASES += [("soba", {}), ("amigo", {"n_inner_steps": 2}), ("stocbio", {"n_inner_steps": 2, "n_neumann_steps": 2})]


@pytest.mark.slow
@pytest.mark.parametrize("method,options", CASES)
def test_compiled_blocks_follow_the_eager_run(method, options):
    eager = run(method, 10, **options)
    comp = run(method, 10, compile_block=2, **options)
    assert float((eager.x - comp.x).abs().max()) < 1e-12 and float((eager.y - comp.y).abs().max()) < 1e-12
    for a, b in zip(eager.history, comp.history):
        assert a["step"] == b["step"] and a["inner_oracles"] == b["inner_oracles"]
        assert a["outer_oracles"] == b["outer_oracles"] and abs(a["upper"] - b["upper"]) < 1e-12
    assert comp.history[-1]["compile_seconds"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("batches", ["shuffled", "contiguous"])
def test_compiled_blocks_with_a_smaller_last_batch_follow_the_eager_run(batches):
    """batch_size 3 divides neither n_lower = 16 nor n_upper = 8: the iterations that draw a smaller last batch run
    eagerly (SABA weighs its memories by |batch| / n), the others in compiled runs of 4, 2 or 1 iterations; with
    shuffled and with contiguous batches."""
    def go(**kw):
        return stochastic.solve(PB.upper, PB.lower, torch.zeros(2, dtype=DT), torch.zeros(3, dtype=DT),
                                method="saba", n_upper=8, n_lower=16, batch_size=3, outer_steps=24, log_every=8,
                                seed=2, batches=batches, **kw)

    eager, comp = go(), go(compile_block=4)
    assert comp.history[-1]["compile_seconds"] > 0
    assert float((eager.x - comp.x).abs().max()) < 1e-12 and float((eager.y - comp.y).abs().max()) < 1e-12
    assert [(h["step"], h["inner_oracles"], h["outer_oracles"]) for h in eager.history] == \
        [(h["step"], h["inner_oracles"], h["outer_oracles"]) for h in comp.history]


def test_compiled_blocks_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match="compile_block is available for soba, saba, amigo, stocbio; 'mrbo'"):
        run("mrbo", 1, compile_block=2)
