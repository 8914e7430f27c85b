"""Every script in examples/ runs, on a small budget, and its own assertion (the claim it prints) holds."""
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: small budgets that keep each claim true; every script must be listed
ARGS = {
    "tune_ridge.py": ["--steps", "60"],
    "hyperclean_digits.py": ["--outer-steps", "20", "--inner-steps", "30"],
    "weight_decay_logreg.py": ["--outer-steps", "8", "--inner-steps", "30"],
    "maml_sinusoid.py": ["--outer-steps", "30"],
    "learn_lr_and_decay_fhg.py": ["--outer-steps", "6", "--inner-steps", "30"],
    "distill_digits.py": ["--outer-steps", "30", "--inner-steps", "10", "--inits", "5", "--draws", "3",
                          "--full-steps", "50"],
    "reweight_digits.py": ["--outer-steps", "50"],
}


def test_every_example_is_run():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(ARGS)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(ARGS))
def test_example_runs(script, tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *ARGS[script]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip()
