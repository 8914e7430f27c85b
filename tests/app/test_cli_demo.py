"""The command line and the demo, through subprocesses."""
import os
import subprocess
import sys



def run(*args, timeout=300):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_methods_listing_names_every_method_and_its_options():
    import bilevel

    out = run("bilevel", "methods")
    assert out.returncode == 0, out.stderr
    for name, m in bilevel.METHODS.items():
        assert name in out.stdout
        for opt in m.options:
            assert opt in out.stdout


def test_demo_hypergradients_match_the_closed_form():
    out = run("bilevel.app.demo", "--inner-steps", "200", "--no-hyperclean")
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    for name in ["rhg", "fhg", "cg", "neumann"]:
        assert float(rows[name]) < 1e-10, (name, rows[name])
    assert float(out.stdout.split("|x - x*|_inf = ")[1].split()[0]) < 1e-3


def test_bad_subcommand_is_rejected():
    out = run("bilevel", "frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr
