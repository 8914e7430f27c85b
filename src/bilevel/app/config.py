"""Run configurations of ``bilevel run``: the option tables, YAML files and the layered resolution.

A run's configuration is one flat mapping: the runner-owned keys (:data:`RUNNER_OPTIONS` plus
``method_options``), the task's own options (``OPTIONS`` of the task module) and ``task``. It is resolved in
layers, later ones winning::

    runner defaults  <  task COMMON_DEFAULTS / OPTIONS defaults  <  YAML file  <  command line

Every value is checked against the option's type and range; unknown keys, bad values, unknown methods and
unknown method options raise :class:`ValueError` naming what was wrong and what is allowed.

A task module (``bilevel.app.tasks.<name>``, or any importable module) provides ``OPTIONS`` (name ->
``(default, type, help)``), ``COMMON_DEFAULTS`` (defaults of the runner keys) and ``build(config)``.
"""
from __future__ import annotations

import argparse
import importlib
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import yaml

from bilevel.app.device import check_device

#: the tasks of ``bilevel run`` and the modules that implement them
TASKS: Dict[str, str] = {
    "hyperclean": "bilevel.app.tasks.hyperclean",
    "fewshot": "bilevel.app.tasks.fewshot",
    "toy": "bilevel.app.tasks.toy",
    "fewshot-init": "bilevel.app.tasks.fewshot_init",
}

#: one line per task for ``bilevel run --help`` (no import needed)
TASK_HELP: Dict[str, str] = {
    "hyperclean": "data hyper-cleaning: learn per-sample weights of a noisy training set",
    "fewshot": "few-shot learning / hyper-representation: meta-learn a shared representation",
    "toy": "the papers' synthetic problems with known solutions",
    "fewshot-init": "few-shot learning with a learned initialization of the whole network (maml, fomaml, reptile, "
                    "metasgd)",
}

#: runner-owned options: name -> (default, type, help); ``method_options`` is handled separately
RUNNER_OPTIONS: Dict[str, Tuple[Any, type, str]] = {
    "method": ("rhg", str, "hypergradient method (`bilevel methods` lists them)"),
    "inner_steps": (50, int, "K, inner iterations per outer step"),
    "inner_lr": (0.1, float, "lower-level step size"),
    "outer_steps": (100, int, "T, number of outer steps"),
    "outer_lr": (0.01, float, "outer (upper-level) learning rate"),
    "outer_optimizer": ("adam", str, "outer optimizer"),
    "seed": (0, int, "random seed (torch, numpy, random; passed to the task)"),
    "dtype": ("float32", str, "floating-point precision of the task's tensors (float32 on every device unless "
                              "asked)"),
    "device": ("auto", str, "where the task's data and variables live: auto (cuda when available, else cpu) | cpu | "
                            "cuda | cuda:N; moved there once, when the task is built"),
    "log_every": (10, int, "evaluate and write a metrics line every N outer steps (and at the last)"),
    "threads": (None, int, "torch.set_num_threads(N); default: torch's own choice"),
    "init_lr": (None, float, "step of the learned initialization of iaptt / iagm / iagm-a / maml ... "
                             "(IAPTT-GM's alpha_z); default outer_lr"),
    "select_metric": (None, str, "keep the state with the best value of this evaluated metric (e.g. holdout_loss) "
                                 "and summarize the run there; default: the last step"),
    "select_mode": ("min", str, "min | max: whether smaller or larger select_metric values are better"),
    "patience": (None, int, "stop after this many evaluations (every log_every steps) without an improvement "
                            "of select_metric; outer_steps is then the cap"),
    "tensorboard": (None, str, "also write every metric of metrics.jsonl as TensorBoard scalars to this directory "
                               "(needs the tensorboard package: pip install 'bilevel[tensorboard]')"),
    "wandb": (None, str, "also log every metric of metrics.jsonl to this Weights & Biases project (needs the wandb "
                         "package: pip install 'bilevel[wandb]'; the W&B run id is kept in the run directory)"),
}

#: keys of the runner that tasks may give defaults for in ``COMMON_DEFAULTS``
COMMON_KEYS: Tuple[str, ...] = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr",
                                "outer_optimizer", "log_every", "method_options")

#: the runner keys passed to ``build`` (``threads`` is applied by the runner itself; the runner hands ``device`` over
#: resolved, as ``cpu`` or ``cuda:N``: :func:`bilevel.app.device.resolve_device`)
BUILD_KEYS: Tuple[str, ...] = ("method", "inner_steps", "inner_lr", "outer_steps", "outer_lr", "outer_optimizer",
                               "seed", "dtype", "method_options", "log_every", "device")

OUTER_OPTIMIZERS: Tuple[str, ...] = ("adam", "sgd")
DTYPES: Tuple[str, ...] = ("float32", "float64")

#: lower bounds: name -> (bound, strict)
_MINIMUM: Dict[str, Tuple[float, bool]] = {
    "inner_steps": (1, False), "outer_steps": (1, False), "log_every": (1, False), "threads": (1, False),
    "seed": (0, False), "inner_lr": (0.0, True), "outer_lr": (0.0, True), "init_lr": (0.0, True),
    "patience": (1, False),
}

#: checks of string options beyond their type: name -> function returning the value normalized (or ValueError)
_VALUE_CHECKS = {"device": check_device}

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


# ------------------------------------------------------------------------------------------ tasks
def load_task(task: str, task_module: Optional[str] = None) -> ModuleType:
    """Import and check the module of a task.

    Parameters
    ----------
    task : str
        One of :data:`TASKS`, or any name when ``task_module`` is given.
    task_module : str, optional
        Import this module instead of ``TASKS[task]`` (custom tasks, tests).

    Returns
    -------
    module
        A module with ``OPTIONS``, ``COMMON_DEFAULTS`` and ``build``.

    Raises
    ------
    ValueError
        Unknown task, a task module that is not installed, or one that breaks the contract.
    """
    if task_module is None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from: {', '.join(TASKS)}")
        task_module = TASKS[task]
    try:
        module = importlib.import_module(task_module)
    except ModuleNotFoundError as err:
        if err.name is not None and task_module.startswith(err.name):  # the task module itself is missing
            raise ValueError(f"task {task!r} is not available: no module named {task_module!r}") from err
        raise
    check_task_module(module)
    return module


def check_task_module(module: ModuleType) -> None:
    """Raise ValueError when ``module`` does not follow the task contract (see the module docstring).

    Parameters
    ----------
    module : module
        The task module.
    """
    name = module.__name__
    for attr in ("OPTIONS", "COMMON_DEFAULTS", "build"):
        if not hasattr(module, attr):
            raise ValueError(f"task module {name} has no {attr} (a task module needs OPTIONS, COMMON_DEFAULTS "
                             "and build)")
    if not callable(module.build):
        raise ValueError(f"task module {name}: build is not callable")
    if not isinstance(module.OPTIONS, Mapping):
        raise ValueError(f"task module {name}: OPTIONS must be a dict name -> (default, type, help)")
    for key, spec in module.OPTIONS.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"task module {name}: option name {key!r} is not an identifier")
        if key in RUNNER_OPTIONS or key in ("method_options", "task"):
            raise ValueError(f"task module {name}: option {key!r} clashes with a runner option")
        if not (isinstance(spec, tuple) and len(spec) == 3 and spec[1] in _TYPE_NAMES):
            raise ValueError(f"task module {name}: OPTIONS[{key!r}] must be (default, type, help) with type "
                             f"one of str, int, float, bool; got {spec!r}")
    unknown = sorted(set(module.COMMON_DEFAULTS) - set(COMMON_KEYS))
    if unknown:
        raise ValueError(f"task module {name}: COMMON_DEFAULTS has unknown key(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(COMMON_KEYS)}")


def option_table(module: ModuleType) -> Dict[str, Tuple[Any, type, str]]:
    """All typed options of a task's runs: runner options (with the task's defaults) then task options.

    Parameters
    ----------
    module : module
        A checked task module.

    Returns
    -------
    dict
        name -> (default, type, help); ``method_options`` and ``task`` are not included.
    """
    table: Dict[str, Tuple[Any, type, str]] = {}
    for key, (default, typ, help_) in RUNNER_OPTIONS.items():
        table[key] = (module.COMMON_DEFAULTS.get(key, default), typ, help_)
    table.update(module.OPTIONS)
    return table


# ------------------------------------------------------------------------------------------ values
def parse_scalar(text: str) -> Any:
    """Parse a command-line value like YAML does, also reading ``1e-3`` as a number.

    Parameters
    ----------
    text : str
        The value as typed (``25``, ``0.5``, ``true``, ``null``, ``[1, 2]``, ``abc``).

    Returns
    -------
    object
        ``yaml.safe_load(text)``; strings that look like numbers (YAML 1.1 reads ``1e-3`` as a string)
        become floats.

    Raises
    ------
    ValueError
        The text is not valid YAML.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"cannot parse value {text!r}: {err}") from None
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def coerce(name: str, value: Any, typ: type, default: Any = None) -> Any:
    """Check and convert one option value.

    Parameters
    ----------
    name : str
        Option name (for messages).
    value : object
        Value from YAML, the command line (a string) or Python.
    typ : type
        ``str``, ``int``, ``float`` or ``bool``.
    default : object
        The option's default; ``None`` is accepted as a value only when the default is None.

    Returns
    -------
    object
        The value as ``typ`` (or None).

    Raises
    ------
    ValueError
        The value cannot be read as ``typ`` or is out of range.
    """
    bad = ValueError(f"bad value {value!r} for option {name!r}: expected {_TYPE_NAMES[typ]}"
                     + (" or null" if default is None else ""))
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")
                         and (typ is not str or default is None)):
        if default is None:
            return None
        raise bad
    if typ is bool:
        if isinstance(value, bool):
            out: Any = value
        elif isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            out = value.strip().lower() in _TRUE
        else:
            raise bad
    elif typ is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
            out = int(value)
        elif isinstance(value, str) and _NUMBER.match(value.strip()):
            f = float(value)
            if not f.is_integer():
                raise bad
            out = int(f)
        else:
            raise bad
    elif typ is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(out):
            raise ValueError(f"bad value {value!r} for option {name!r}: must be finite")
    elif typ is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # YAML ``y0: 2``
            value = str(value)
        if not isinstance(value, str):
            raise bad
        out = value
    else:  # pragma: no cover - guarded by check_task_module
        raise TypeError(f"unsupported option type {typ!r}")
    if name in _VALUE_CHECKS and out is not None:
        out = _VALUE_CHECKS[name](out)
    if name in _MINIMUM and out is not None:
        bound, strict = _MINIMUM[name]
        if out < bound or (strict and out == bound):
            raise ValueError(f"bad value {value!r} for option {name!r}: must be "
                             f"{'>' if strict else '>='} {bound:g}")
    return out


def parse_opt(item: str) -> Tuple[str, Any]:
    """Parse one ``--opt NAME=VALUE`` (VALUE read by :func:`parse_scalar`).

    Parameters
    ----------
    item : str
        ``NAME=VALUE``.

    Returns
    -------
    (str, object)

    Raises
    ------
    ValueError
        No ``=``, or NAME is not an identifier, or VALUE is not valid YAML.
    """
    name, sep, text = item.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ValueError(f"bad method option {item!r}: expected NAME=VALUE, e.g. truncate=25 or alpha=0.5")
    return name, parse_scalar(text)


def _check_method_options(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"method_options{where} must be a mapping NAME: VALUE, got {value!r}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ValueError(f"method_options{where}: option name {k!r} is not an identifier")
        out[k] = parse_scalar(v) if isinstance(v, str) else v
    return out


# ------------------------------------------------------------------------------------------ files
def load_yaml(path: Any) -> Dict[str, Any]:
    """Read a flat YAML configuration file.

    Parameters
    ----------
    path : str or Path
        The file.

    Returns
    -------
    dict
        Its mapping (empty for an empty file). Keys are checked later by :func:`resolve_config`.

    Raises
    ------
    ValueError
        Missing file, invalid YAML, or a top level that is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"cannot read config file {str(path)!r}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of option: value, got "
                         f"{type(data).__name__}")
    return data


def dump_yaml(config: Mapping[str, Any], path: Any) -> None:
    """Write a resolved configuration as YAML (key order kept; loadable with ``--config``).

    Parameters
    ----------
    config : mapping
        The resolved configuration.
    path : str or Path
        Destination file.
    """
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False))


# ------------------------------------------------------------------------------------------ resolution
def resolve_config(task: str, module: ModuleType, *layers: Optional[Mapping[str, Any]],
                   names: Sequence[str] = ()) -> Dict[str, Any]:
    """Resolve a run's configuration from the defaults and user layers.

    Parameters
    ----------
    task : str
        Task name (stored as ``task``; a layer may repeat it but not change it).
    module : module
        The checked task module (defaults from ``COMMON_DEFAULTS`` and ``OPTIONS``).
    *layers : mapping or None
        User layers, lowest precedence first (e.g. YAML file, then command line). Keys: any option of
        :func:`option_table`, ``method_options`` (mapping, merged key by key across layers) and ``task``.
    names : sequence of str
        Names of the layers for error messages (e.g. ``("config file x.yaml", "command line")``).

    Returns
    -------
    dict
        ``task``, the runner keys, ``method_options``, then the task's options, all checked.

    Raises
    ------
    ValueError
        Unknown key, bad value, unknown method, unknown method option, or a layer naming another task.
    """
    table = option_table(module)
    config: Dict[str, Any] = {"task": task}
    for key, (default, typ, _) in table.items():
        config[key] = coerce(key, default, typ, default) if default is not None else None
    default_mopts = _check_method_options(module.COMMON_DEFAULTS.get("method_options"), " (task default)")
    user_mopts: Dict[str, Any] = {}
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        where = f" in {names[i]}" if i < len(names) else ""
        unknown = sorted(k for k in layer if k not in table and k not in ("method_options", "task"))
        if unknown:
            raise ValueError(f"unknown option(s){where}: {', '.join(map(str, unknown))}; allowed: "
                             f"{', '.join(['task', 'method_options', *table])}")
        for key, value in layer.items():
            if key == "task":
                if value != task:
                    raise ValueError(f"the configuration{where} is for task {value!r}, not {task!r}")
            elif key == "method_options":
                user_mopts.update(_check_method_options(value, where))
            else:
                default, typ, _ = table[key]
                try:
                    config[key] = coerce(key, value, typ, default)
                except ValueError as err:
                    raise ValueError(f"{err}{where}") from None
    from bilevel import METHODS  # the registry (imports torch)

    method = config["method"]
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from: {', '.join(sorted(METHODS))}")
    if config["outer_optimizer"].lower() not in OUTER_OPTIMIZERS:
        raise ValueError(f"bad value {config['outer_optimizer']!r} for option 'outer_optimizer'; choose from: "
                         f"{', '.join(OUTER_OPTIMIZERS)}")
    config["outer_optimizer"] = config["outer_optimizer"].lower()
    if config["dtype"] not in DTYPES:
        raise ValueError(f"bad value {config['dtype']!r} for option 'dtype'; choose from: {', '.join(DTYPES)}")
    allowed = METHODS[method].options
    METHODS[method].refuse_inner_optimizer(user_mopts)
    bad = sorted(set(user_mopts) - set(allowed))
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, bad))} for method {method!r}; its options "
                         f"are: {', '.join(allowed) or 'none'}")
    # the task's default method options belong to its default method: keep those the chosen method takes
    mopts = {k: v for k, v in default_mopts.items() if k in allowed}
    mopts.update(user_mopts)
    out = {"task": task}
    out.update({k: config[k] for k in RUNNER_OPTIONS})
    out["method_options"] = mopts
    out.update({k: config[k] for k in module.OPTIONS})
    return out


def build_config(config: Mapping[str, Any], module: ModuleType) -> Dict[str, Any]:
    """The mapping handed to the task's ``build``: its OPTIONS keys plus :data:`BUILD_KEYS`.

    Parameters
    ----------
    config : mapping
        A resolved configuration.
    module : module
        The task module.

    Returns
    -------
    dict
    """
    out = {k: config[k] for k in BUILD_KEYS}
    out["method_options"] = dict(config["method_options"])
    out.update({k: config[k] for k in module.OPTIONS})
    return out


# ------------------------------------------------------------------------------------------ argparse
def flag(name: str) -> str:
    """Command-line flag of an option: ``foo_bar`` -> ``--foo-bar``."""
    return "--" + name.replace("_", "-")


class _Explicit(argparse.Action):
    """Store the value and remember that the option was given (so it overrides the YAML file)."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "_given", ()) or ())
        given.add(self.dest)
        setattr(namespace, "_given", given)


class _ExplicitBool(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, remembering that it was given."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: D102
        super().__call__(parser, namespace, values, option_string)
        given = set(getattr(namespace, "_given", ()) or ())
        given.add(self.dest)
        setattr(namespace, "_given", given)


def _converter(name: str, typ: type, default: Any):
    def convert(text: str) -> Any:
        try:
            return coerce(name, text, typ, default)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = typ.__name__  # argparse names the type in "invalid <type> value" messages
    return convert


def add_option_arguments(parser: argparse.ArgumentParser, module: ModuleType) -> None:
    """Add one flag per option of :func:`option_table` (runner group, then task group).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``bilevel run TASK`` parser.
    module : module
        The checked task module.
    """
    from bilevel import METHODS

    table = option_table(module)
    runner = parser.add_argument_group("run options (runner)")
    taskg = parser.add_argument_group(f"task options ({module.__name__})")
    choices = {"method": sorted(METHODS), "outer_optimizer": list(OUTER_OPTIMIZERS), "dtype": list(DTYPES)}
    for key, (default, typ, help_) in table.items():
        group = runner if key in RUNNER_OPTIONS else taskg
        kwargs: Dict[str, Any] = {"dest": key, "default": default, "help": (help_ or " ").replace("%", "%%")}
        if typ is bool:
            group.add_argument(flag(key), action=_ExplicitBool, **kwargs)
            continue
        metavar = key.upper() if key not in choices else None
        group.add_argument(flag(key), action=_Explicit, type=_converter(key, typ, default), metavar=metavar,
                           choices=choices.get(key), **kwargs)


def given_options(args: argparse.Namespace, module: ModuleType) -> Dict[str, Any]:
    """The options typed on the command line (the top layer of :func:`resolve_config`).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of a parser built with :func:`add_option_arguments`.
    module : module
        The task module.

    Returns
    -------
    dict
        Only the options that were given explicitly.
    """
    given = getattr(args, "_given", ()) or ()
    return {k: getattr(args, k) for k in option_table(module) if k in given}


def method_options_from_args(items: Optional[Iterable[str]]) -> Dict[str, Any]:
    """Parse repeated ``--opt NAME=VALUE`` items into a dict (later items win).

    Parameters
    ----------
    items : iterable of str or None

    Returns
    -------
    dict
    """
    out: Dict[str, Any] = {}
    for item in items or ():
        name, value = parse_opt(item)
        out[name] = value
    return out


def peek_task(argv: Sequence[str]) -> Tuple[Optional[str], Optional[str]]:
    """Find ``TASK`` and ``--task-module M`` in ``bilevel run TASK ...`` before parsing.

    Parameters
    ----------
    argv : sequence of str
        Arguments after the program name.

    Returns
    -------
    (str or None, str or None)
        The task name and the task module override, when present.
    """
    argv = list(argv)
    if len(argv) < 2 or argv[0] != "run" or argv[1].startswith("-"):
        return None, None
    module = None
    for i, a in enumerate(argv[2:], start=2):
        if a == "--task-module" and i + 1 < len(argv):
            module = argv[i + 1]
        elif a.startswith("--task-module="):
            module = a.split("=", 1)[1]
    return argv[1], module


__all__ = ["TASKS", "RUNNER_OPTIONS", "COMMON_KEYS", "BUILD_KEYS", "load_task", "check_task_module",
           "option_table", "parse_scalar", "coerce", "parse_opt", "load_yaml", "dump_yaml", "resolve_config",
           "build_config", "flag", "add_option_arguments", "given_options", "method_options_from_args",
           "peek_task"]
