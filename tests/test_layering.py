"""The functional core never imports the shell (CLI, runner, tasks, data, distributed, ...)."""
import subprocess
import sys

SHELL = ["bilevel.app.cli", "bilevel.app.run.runner", "bilevel.app.config", "bilevel.app.tasks", "bilevel.app.data", "bilevel.parallel",
         "bilevel.app.run.checkpoint", "bilevel.app.run.guards", "bilevel_benchmarks.bench", "bilevel.app.run.plots", "bilevel.app.experiments",
         "bilevel.app.demo"]


def test_import_bilevel_loads_no_shell_module():
    code = ("import sys, bilevel, bilevel.schedules, bilevel.prox; "
            "print(sorted(m for m in sys.modules if m.startswith('bilevel')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = eval(out.stdout)
    assert "bilevel.api" in loaded
    bad = [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SHELL)]
    assert not bad, bad
