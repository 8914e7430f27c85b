"""Shared by the tests of tests/distributed (a uniquely named module)."""
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def env() -> dict:
    """Environment of a torchrun / ``python -m bilevel`` subprocess: the checkout's src first, one thread, no
    inherited WORLD_SIZE."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[2] / "src"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("WORLD_SIZE", None)
    return env
