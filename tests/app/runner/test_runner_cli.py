"""``bilevel run`` and ``bilevel compare``: one full run through a subprocess, the rest in-process (fast)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cli_testutils import main

HERE = Path(__file__).resolve().parent
FAKE = ["--task-module", "runner_fake_task"]
PNG = b"\x89PNG\r\n\x1a\n"


def run(*args, timeout=240):
    env = dict(os.environ, PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "bilevel", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_run_writes_files_with_yaml_and_command_line_precedence(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("method: trhg\ndim: 3\nscale: 2.0\nouter_steps: 5\nmethod_options:\n  truncate: 1\n")
    out = tmp_path / "run"
    p = run("run", "hyperclean", *FAKE, "--config", str(conf), "--scale", "3", "--opt", "truncate=2",
            "--log-every", "2", "--threads", "1", "--flag", "--out", str(out))
    assert p.returncode == 0, p.stderr
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert c["scale"] == 3.0 and c["dim"] == 3 and c["method"] == "trhg"      # command line > YAML > default
    assert c["inner_steps"] == 5 and c["inner_lr"] == 0.5                      # task COMMON_DEFAULTS
    assert c["method_options"] == {"truncate": 2} and c["flag"] is True and c["threads"] == 1
    recs = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 2, 4, 5]  # step 0: the task's metrics at x0
    assert all({"step", "upper", "lower", "grad_norm", "time", "accuracy", "f1"} <= set(r) for r in recs[1:])
    assert {"step", "time", "accuracy", "f1"} <= set(recs[0])  # step 0: no step taken, no grad_norm
    s = json.loads((out / "summary.json").read_text())
    assert {"test_accuracy", "f1", "precision", "recall", "upper_final", "wall_seconds", "peak_rss_mb", "method",
            "task", "outer_steps"} <= set(s)
    assert (s["method"], s["task"], s["outer_steps"]) == ("trhg", "hyperclean", 5)
    assert (s["echo_dim"], s["echo_scale"], s["echo_flag"], s["echo_threads"]) == (3, 3.0, 1.0, 1.0)
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert f"wrote {out}" in p.stdout and "100%" in p.stderr  # progress bar on stderr

    # the saved config.yaml reproduces the run's configuration
    code, _, err = main(["run", "hyperclean", *FAKE, "--config", str(out / "config.yaml"), "--quiet",
                         "--out", str(tmp_path / "again")], capsys)
    assert code == 0, err
    assert (tmp_path / "again" / "config.yaml").read_text() == (out / "config.yaml").read_text()


def test_compare_prints_a_table_and_writes_the_overlay(tmp_path, capsys):
    for m in ("rhg", "cg"):
        code, _, err = main(["run", "hyperclean", *FAKE, "--method", m, "--outer-steps", "4", "--quiet",
                             "--out", str(tmp_path / m)], capsys)
        assert code == 0, err
    code, stdout, err = main(["compare", str(tmp_path / "rhg"), str(tmp_path / "cg"), "--out",
                              str(tmp_path / "c.png"), "--metric", "upper", "accuracy"], capsys)
    assert code == 0, err
    lines = [s for s in stdout.splitlines() if s.startswith("|")]
    assert lines[0].startswith("| run | method | task | test_accuracy |") and lines[0].endswith("wall_seconds |")
    assert [s.split("|")[2].strip() for s in lines[2:]] == ["rhg", "cg"]
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    code, _, err = main(["compare", str(tmp_path / "rhg"), "--metric", "nope", "--out", str(tmp_path / "d.png")],
                        capsys)
    assert code == 2 and "unknown metric(s) nope" in err


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "invalid choice: 'nope' (choose from 'alternating', 'bamm', 'bda',"),
    (["--dim", "2.5"], "bad value '2.5' for option 'dim': expected an integer"),
    (["--inner-lr", "0"], "option 'inner_lr': must be > 0"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--opt", "truncate"], "expected NAME=VALUE"),
    (["--opt", "truncate=3"], "unknown option(s) 'truncate' for method 'rhg'"),
    (["--method", "bda", "--opt", "alfa=1"], "its options are: upper_lr, alpha"),
    (["--method", "bda", "--opt", "inner_optimizer=adam"], "'bda' has its own inner dynamics"),
    (["--opt", "inner_optimizer=adam", "--opt", "inner_optimizer_options={momentum: 0.9}"],
     "allowed: betas, eps, weight_decay"),
    (["--model", "cnn"], "model must be linear or mlp"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--out", "x/{nope}"], "bad --out"),
])
def test_bad_command_lines_exit_2_with_a_message(args, message, tmp_path, capsys):
    code, _, err = main(["run", "hyperclean", *FAKE, "--quiet", "--out", str(tmp_path / "r"), *args]
                        if "--out" not in args else ["run", "hyperclean", *FAKE, "--quiet", *args], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text, message", [
    ("dim: 3\nbogus: 1\n", "unknown option(s) in config file"),
    ("dim: three\n", "bad value 'three' for option 'dim'"),
    ("method: nope\n", "unknown method 'nope'; choose from:"),
    ("method_options: 3\n", "must be a mapping"),
    ("task: fewshot\n", "is for task 'fewshot', not 'hyperclean'"),
    ("dim: [1\n", "not valid YAML"),
])
def test_bad_yaml_files_exit_2_with_a_message(text, message, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = main(["run", "hyperclean", *FAKE, "--config", str(tmp_path / "c.yaml"), "--quiet", "--out",
                         str(tmp_path / "r")], capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists()


def test_existing_run_needs_overwrite(tmp_path, capsys):
    argv = ["run", "hyperclean", *FAKE, "--quiet", "--outer-steps", "1", "--out", str(tmp_path)]
    assert main(argv, capsys)[0] == 0
    code, _, err = main(argv, capsys)
    assert code == 2 and "--overwrite" in err
    assert main(argv + ["--overwrite"], capsys)[0] == 0


def test_help_shows_generated_flags_with_defaults(capsys):
    code, out, _ = main(["run", "hyperclean", *FAKE, "--help"], capsys)
    assert code == 0
    for text in ["--inner-steps", "(default: 5)", "--train-size", "--data-root", "--flag, --no-flag",
                 "--opt NAME=VALUE", "--threads", "--outer-optimizer {adam,sgd}"]:
        assert text in out, text
    code, out, _ = main(["run", "--help"], capsys)
    assert code == 0 and all(t in out for t in ("hyperclean", "fewshot", "toy"))
    code, out, _ = main(["compare", "--help"], capsys)
    assert code == 0 and "--metric" in out


def test_a_missing_task_module_is_a_usage_error(capsys):
    code, _, err = main(["run", "toy", "--task-module", "no_such_task_module"], capsys)
    assert code == 2 and "not available" in err


def test_run_with_an_adam_inner_loop_equals_the_python_api(tmp_path, capsys):
    """``--opt inner_optimizer=adam`` reaches the method: the run's x after 3 outer steps is the one solve() gets
    with the same options on the same toy problem."""
    import bilevel
    from bilevel.app.tasks import toy

    out = tmp_path / "r"
    code, _, err = main(["run", "toy", "--quiet", "--method", "rhg", "--dtype", "float64", "--outer-steps", "3",
                         "--log-every", "3",
                         "--opt", "inner_optimizer=adam", "--opt", "inner_optimizer_options={betas: [0.8, 0.99]}",
                         "--out", str(out)], capsys)
    assert code == 0, err
    c = yaml.safe_load((out / "config.yaml").read_text())
    assert c["method_options"] == {"inner_optimizer": "adam", "inner_optimizer_options": {"betas": [0.8, 0.99]}}
    last = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()][-1]
    run = toy.build(c)
    ref = bilevel.solve(*run.objectives(0), run.x0, run.y0, method="rhg", outer_steps=3, outer_lr=c["outer_lr"],
                        outer_optimizer=c["outer_optimizer"], inner_steps=c["inner_steps"], inner_lr=c["inner_lr"],
                        inner_optimizer="adam", inner_optimizer_options={"betas": (0.8, 0.99)},
                        **run.loop_options)
    assert last["x"] == pytest.approx(float(ref.x), rel=1e-12)
