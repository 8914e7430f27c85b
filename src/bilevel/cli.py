"""The ``bilevel`` command line.

    bilevel methods                       list the methods and their options
    bilevel figures [--out DIR] [--quick] reproduce the synthetic experiments of the papers (PNG + CSV)
    bilevel data download NAME            fetch Fashion-MNIST / MNIST when a network exists
    bilevel demo                          the quadratic demo of ``make demo``
    bilevel run TASK [options]            run hyperclean / fewshot / toy; writes config, metrics, summary, curves
    bilevel compare DIR [DIR ...]         overlay runs' curves and print a Markdown table of their summaries

See docs/cli.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

#: experiment modules run by ``bilevel figures`` (module name under bilevel.experiments, description)
FIGURES = (
    ("synthetic_bda", "BDA Figs. 1-3: counterexample Eq. 5, inits, K, alpha schedules"),
    ("synthetic_iaptt", "IAPTT-GM Figs. 1-3 and Table 1: toy Eq. 10, k_bar, LLC Eq. 13"),
    ("synthetic_bvfim", "BVFIM on the BDA counterexample and the LLC problem"),
)


#: default output directory of ``bilevel run`` (a format string)
DEFAULT_OUT = "results/runs/{task}-{method}-seed{seed}"


def _cmd_methods(args: argparse.Namespace) -> int:
    from . import METHODS

    for name in sorted(METHODS):
        m = METHODS[name]
        opts = ", ".join(m.options) or "-"
        extra = " [learns y0]" if m.learns_init else ""
        print(f"{name:10s} {m.summary}{extra}\n{'':10s} options: {opts}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only or [name for name, _ in FIGURES])
    unknown = wanted - {name for name, _ in FIGURES}
    if unknown:
        print(f"unknown experiment(s) {sorted(unknown)}; choose from {[n for n, _ in FIGURES]}", file=sys.stderr)
        return 2
    summary = {}
    for name, desc in FIGURES:
        if name not in wanted:
            continue
        print(f"== {name}: {desc}", flush=True)
        module = importlib.import_module(f"bilevel.experiments.{name}")
        summary[name] = module.run(out / name, quick=args.quick)
        print(json.dumps(summary[name], indent=1, default=str), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}/")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main([])


def _cmd_run(args: argparse.Namespace) -> int:
    from . import config as cfg
    from .runner import TaskRunner

    parser = args._parser
    module = args._task_module_obj
    if module is None:  # the task's module could not be imported when the parser was built
        parser.error(args._task_error)
    try:
        layers, names = [], []
        if args.config is not None:
            layers.append(cfg.load_yaml(args.config))
            names.append(f"config file {args.config}")
        given = cfg.given_options(args, module)
        mopts = cfg.method_options_from_args(args.opt)
        if mopts:
            given["method_options"] = mopts
        layers.append(given)
        names.append("command line")
        config = cfg.resolve_config(args.task, module, *layers, names=names)
    except ValueError as err:
        parser.error(str(err))
    try:
        out = args.out.format(task=args.task, method=config["method"], seed=config["seed"])
    except (KeyError, IndexError, ValueError) as err:
        parser.error(f"bad --out {args.out!r}: only {{task}}, {{method}} and {{seed}} may appear in braces ({err})")
    try:
        runner = TaskRunner(args.task, config, out, quiet=args.quiet, overwrite=args.overwrite, module=module)
        runner.setup()
    except ValueError as err:  # output directory in use, or the task rejecting its configuration
        parser.error(str(err))
    except OSError as err:  # e.g. a dataset that is not installed
        print(f"bilevel run: error: {err}", file=sys.stderr)
        return 1
    try:
        summary = runner.execute()
    except ValueError as err:  # e.g. NonFiniteError during the run
        print(f"bilevel run: error at outer step {runner.t}: {err}\n(partial metrics in {out})", file=sys.stderr)
        return 1
    if not args.quiet:
        print(json.dumps(summary, indent=1))
    print(f"wrote {out}/")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .runner import compare_runs

    try:
        table, path = compare_runs(args.dirs, out=args.out, metrics=args.metric)
    except ValueError as err:
        args._parser.error(str(err))
    print(table)
    if path is not None:
        print(f"\nwrote {path}")
    return 0


def _add_run(sub: "argparse._SubParsersAction", argv: Optional[List[str]]) -> None:
    """``bilevel run TASK``: one sub-parser per task; the selected task's options come from its module."""
    from . import config as cfg

    p = sub.add_parser("run", help="run a task (hyperclean, fewshot, toy) and write its files",
                       description="Run a bilevel task: outer loop with progress bar; writes DIR/config.yaml, "
                                   "DIR/metrics.jsonl, DIR/summary.json, DIR/curves.png. "
                                   "`bilevel run TASK --help` lists the task's options.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    chosen, module_name = cfg.peek_task(argv if argv is not None else sys.argv[1:])
    for task, help_ in cfg.TASK_HELP.items():
        tp = tasks.add_parser(task, help=help_, description=f"bilevel run {task}: {help_}.",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        tp.set_defaults(func=_cmd_run, _parser=tp, _task_module_obj=None,
                        _task_error=f"task {task!r}: options not loaded")
        tp.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of options (flat mapping, names with underscores; method_options: as a "
                             "mapping); the command line overrides it")
        tp.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help="output directory; {task}, {method}, {seed} are replaced by the run's values")
        tp.add_argument("--opt", action="append", metavar="NAME=VALUE", default=None,
                        help="method option, repeatable (values read as YAML: --opt truncate=25 --opt alpha=0.5)")
        tp.add_argument("--quiet", action="store_true", help="no progress bar and no summary printout")
        tp.add_argument("--overwrite", action="store_true", help="allow an --out directory that holds a run")
        tp.add_argument("--task-module", metavar="MODULE", default=None,
                        help=f"import the task from MODULE instead of {cfg.TASKS[task]}")
        if task != chosen:
            continue
        try:
            module = cfg.load_task(task, module_name)
        except ValueError as err:
            tp.set_defaults(_task_error=str(err))
            continue
        tp.set_defaults(_task_module_obj=module)
        cfg.add_option_arguments(tp, module)


def _add_compare(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("compare", help="overlay the curves of runs and tabulate their summaries",
                       description="Overlay the metrics.jsonl curves of several `bilevel run` directories in one "
                                   "figure and print a Markdown table of their summary.json.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    p.add_argument("--out", metavar="FILE.png", default="compare.png", help="figure to write")
    p.add_argument("--metric", nargs="+", metavar="NAME", default=None,
                   help="panels (default: upper and every task metric all runs logged)")
    p.set_defaults(func=_cmd_compare, _parser=p)


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    """The ``bilevel`` parser; ``argv`` selects which task's options ``bilevel run TASK`` loads."""
    parser = argparse.ArgumentParser(prog="bilevel", description="Gradient-based bilevel optimization.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("methods", help="list the methods and their options")
    p.set_defaults(func=_cmd_methods)
    p = sub.add_parser("figures", help="reproduce the papers' synthetic experiments (PNG + CSV)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="results/figures", help="output directory")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), as in the tests")
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"subset of: {', '.join(n for n, _ in FIGURES)}")
    p.set_defaults(func=_cmd_figures)
    p = sub.add_parser("demo", help="hypergradients of every method on a quadratic with a known solution")
    p.set_defaults(func=_cmd_demo)
    from .data.cli import add_subparser as add_data

    add_data(sub)
    _add_run(sub, argv)
    _add_compare(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `bilevel methods | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
