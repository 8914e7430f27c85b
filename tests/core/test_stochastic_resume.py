"""A SIGKILLed stochastic run resumed from its checkpoint ends bitwise equal to an uninterrupted one (SOBA, SABA):
the solver's state (memories, v), both samplers' generators and positions, the oracle counts and the history are
all in the checkpoint."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bilevel import stochastic
from bilevel.problems.finite_sum import make_finite_sum_quadratic

VICTIM = Path(__file__).with_name("stochastic_victim.py")


def run(method, ckpt, out, steps, delay):
    return subprocess.Popen([sys.executable, str(VICTIM), method, str(ckpt), str(out), str(steps), str(delay)])


@pytest.mark.parametrize("method", ["soba", "saba"])
def test_sigkill_then_resume_is_bitwise(method, tmp_path):
    straight = tmp_path / "straight.pt"
    assert run(method, tmp_path / "a.ckpt", straight, 40, 0).wait(120) == 0
    ckpt, out = tmp_path / "b.ckpt", tmp_path / "resumed.pt"
    proc = run(method, ckpt, out, 40, 0.01)  # about 3 lower calls per step: ~1.2 s in all
    try:
        deadline = time.time() + 60
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # past the first checkpoint, before the end
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    saved = torch.load(ckpt, weights_only=True)
    assert 0 < saved["loop"]["t"] < 40
    assert run(method, ckpt, out, 40, 0).wait(120) == 0
    a, b = torch.load(straight, weights_only=True), torch.load(out, weights_only=True)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert a["history"] == b["history"]


def test_state_dict_round_trip_and_mismatch():
    pb = make_finite_sum_quadratic(20, 10, 3, 2, noise=0.2, seed=0)
    kw = dict(method="saba", n_upper=10, n_lower=20, batch_size=3, seed=4)
    x0, y0 = torch.zeros(2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    a = stochastic.StochasticLoop(pb.upper, pb.lower, x0, y0, **kw)
    for _ in range(9):
        a.step()
    b = stochastic.StochasticLoop(pb.upper, pb.lower, x0, y0, **kw)
    b.load_state_dict(a.state_dict())
    for _ in range(7):
        a.step()
        b.step()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.oracle_calls == b.oracle_calls
    c = stochastic.StochasticLoop(pb.upper, pb.lower, x0, y0, **{**kw, "batch_size": 4})
    with pytest.raises(ValueError, match="another run: batch_size"):
        c.load_state_dict(a.state_dict())
