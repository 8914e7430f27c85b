"""Configuration layer of ``bilevel run``: value parsing, precedence, errors (in-process, fast)."""
import types

import pytest

import runner_fake_task as fake
from bilevel.app import config as cfg


def resolve(*layers, names=()):
    return cfg.resolve_config("fake", fake, *layers, names=names)


@pytest.mark.parametrize("item, expected", [
    ("truncate=25", ("truncate", 25)), ("alpha=0.5", ("alpha", 0.5)), ("flag=true", ("flag", True)),
    ("lr=1e-3", ("lr", 0.001)), ("name=abc", ("name", "abc")), ("x=null", ("x", None)),
    ("steps=[1, 2]", ("steps", [1, 2])), (" a = 2 ", ("a", 2)),
])
def test_parse_opt_reads_values_as_yaml(item, expected):
    assert cfg.parse_opt(item) == expected
    assert type(cfg.parse_opt(item)[1]) is type(expected[1])


@pytest.mark.parametrize("item", ["truncate", "=3", "a b=1", "1x=2", "x=[1"])
def test_parse_opt_rejects_malformed_items(item):
    with pytest.raises(ValueError, match="NAME=VALUE|cannot parse"):
        cfg.parse_opt(item)


@pytest.mark.parametrize("name, value, typ, default, expected", [
    ("dim", "3", int, 4, 3), ("dim", 3.0, int, 4, 3), ("dim", "1e2", int, 4, 100),
    ("scale", "1e-3", float, 1.0, 0.001), ("scale", 2, float, 1.0, 2.0),
    ("flag", "yes", bool, False, True), ("flag", "false", bool, True, False),
    ("train_size", "none", int, None, None), ("data_root", None, str, None, None),
    ("y0", 2, str, None, "2"), ("model", "mlp", str, "linear", "mlp"),
])
def test_coerce_accepts(name, value, typ, default, expected):
    assert cfg.coerce(name, value, typ, default) == expected


@pytest.mark.parametrize("name, value, typ, default, match", [
    ("dim", "2.5", int, 4, "expected an integer"), ("dim", True, int, 4, "expected an integer"),
    ("scale", "abc", float, 1.0, "expected a number"), ("scale", "inf", float, 1.0, "finite"),
    ("flag", "maybe", bool, False, "true or false"), ("dim", None, int, 4, "expected an integer$"),
    ("inner_lr", 0, float, 0.1, "must be > 0"), ("inner_steps", 0, int, 5, "must be >= 1"),
    ("seed", -1, int, 0, "must be >= 0"), ("model", [1], str, "linear", "expected a string"),
])
def test_coerce_rejects_with_the_option_name(name, value, typ, default, match):
    with pytest.raises(ValueError, match=match) as err:
        cfg.coerce(name, value, typ, default)
    assert repr(name) in str(err.value)


def test_precedence_runner_defaults_task_defaults_yaml_command_line():
    c = resolve()
    assert c["task"] == "fake" and list(c)[:2] == ["task", "method"]
    assert c["seed"] == 0 and c["dtype"] == "float32" and c["threads"] is None   # runner defaults
    assert c["inner_steps"] == 5 and c["outer_steps"] == 6                         # task COMMON_DEFAULTS
    assert c["dim"] == 4 and c["model"] == "linear"                                # task OPTIONS defaults
    c = resolve({"inner_steps": 7, "dim": 3, "scale": 2.0}, {"dim": 9})
    assert (c["inner_steps"], c["dim"], c["scale"]) == (7, 9, 2.0)                 # later layers win


def test_method_options_merge_across_layers_and_default_ones_follow_the_method():
    assert resolve()["method_options"] == {}  # the task's default {'truncate': 2} does not apply to rhg
    assert resolve({"method": "trhg"})["method_options"] == {"truncate": 2}
    c = resolve({"method": "bda", "method_options": {"alpha": 0.3, "upper_lr": 0.5}},
                {"method_options": {"alpha": 0.7}})
    assert c["method_options"] == {"alpha": 0.7, "upper_lr": 0.5}


@pytest.mark.parametrize("layer, match", [
    ({"bogus": 1}, "unknown option.*bogus.*allowed: task, method_options, method"),
    ({"method": "nope"}, "unknown method 'nope'; choose from: .*rhg"),
    ({"method_options": {"alpha": 1}}, "unknown option.*'alpha' for method 'rhg'; its options are:"),
    ({"method_options": [1]}, "method_options.*must be a mapping"),
    ({"outer_optimizer": "rmsprop"}, "outer_optimizer.*adam, sgd"),
    ({"dtype": "float16"}, "dtype.*float32, float64"),
    ({"task": "fewshot"}, "for task 'fewshot', not 'fake'"),
    ({"dim": "three"}, "bad value 'three' for option 'dim'.* in cfg.yaml"),
])
def test_resolve_errors_say_what_is_wrong_and_what_is_allowed(layer, match):
    with pytest.raises(ValueError, match=match):
        resolve(layer, names=("cfg.yaml",))


def test_yaml_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dim: 3\nmethod_options:\n  truncate: 1\nmethod: trhg\ninner_lr: 1e-3\n")
    c = resolve(cfg.load_yaml(p))
    assert c["dim"] == 3 and c["method_options"] == {"truncate": 1} and c["inner_lr"] == 0.001
    cfg.dump_yaml(c, tmp_path / "out.yaml")
    assert resolve(cfg.load_yaml(tmp_path / "out.yaml")) == c
    (tmp_path / "empty.yaml").write_text("")
    assert cfg.load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    for name, match in [("bad.yaml", "not valid YAML"), ("missing.yaml", "cannot read")]:
        with pytest.raises(ValueError, match=match):
            cfg.load_yaml(tmp_path / name)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        cfg.load_yaml(tmp_path / "list.yaml")


def test_task_modules_are_checked():
    with pytest.raises(ValueError, match="unknown task 'nope'; choose from: hyperclean, fewshot, toy"):
        cfg.load_task("nope")
    with pytest.raises(ValueError, match="not available: no module named 'no_such_task_module'"):
        cfg.load_task("x", "no_such_task_module")
    bad = types.ModuleType("bad_task")
    bad.OPTIONS, bad.COMMON_DEFAULTS = {"seed": (0, int, "")}, {}
    bad.build = lambda c: None
    with pytest.raises(ValueError, match="clashes with a runner option"):
        cfg.check_task_module(bad)
    bad.OPTIONS, bad.COMMON_DEFAULTS = {"n": (0, list, "")}, {}
    with pytest.raises(ValueError, match="one of str, int, float, bool"):
        cfg.check_task_module(bad)
    bad.OPTIONS, bad.COMMON_DEFAULTS = {}, {"seeds": 1}
    with pytest.raises(ValueError, match="COMMON_DEFAULTS has unknown key"):
        cfg.check_task_module(bad)
    del bad.build
    with pytest.raises(ValueError, match="has no build"):
        cfg.check_task_module(bad)


def test_build_config_holds_the_contract_keys_only():
    c = resolve({"threads": 1})
    b = cfg.build_config(c, fake)
    assert set(b) == set(fake.OPTIONS) | set(cfg.BUILD_KEYS)


def test_peek_task():
    assert cfg.peek_task(["run", "toy", "--task-module", "m", "--x"]) == ("toy", "m")
    assert cfg.peek_task(["run", "toy", "--task-module=m"]) == ("toy", "m")
    assert cfg.peek_task(["run", "--help"]) == (None, None)
    assert cfg.peek_task(["methods"]) == (None, None)
