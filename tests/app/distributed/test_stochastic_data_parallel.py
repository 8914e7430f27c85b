"""bilevel.stochastic with data_parallel: 2 gloo ranks, each evaluating half of every batch, follow the single-process
trajectory (to round-off: the sums are reduced in another order)."""
import subprocess
import sys
from pathlib import Path

import torch

from dist_testutils import env

LAUNCHER = Path(__file__).with_name("stochastic_dp_launcher.py")


def _run(tmp: Path, nproc: int) -> dict:
    out = tmp / f"dp{nproc}.pt"
    cmd = [sys.executable, str(LAUNCHER), str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def test_two_ranks_follow_the_single_process_run(tmp_path):
    single, multi = _run(tmp_path, 1), _run(tmp_path, 2)
    assert single["world_size"] == 1 and multi["world_size"] == 2
    for m in ("soba", "saba", "srba"):
        (x1, y1, n1), (x2, y2, n2) = single[m], multi[m]
        assert float((x1 - x2).abs().max()) < 1e-12 and float((y1 - y2).abs().max()) < 1e-12, m
        assert n1 == n2  # the counts are the algorithm's (whole batches), whatever the split
