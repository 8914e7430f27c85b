"""The ``bilevel`` command line.

    bilevel methods                       list the methods and their options
    bilevel figures [--out DIR] [--quick] reproduce the synthetic experiments of the papers (PNG + CSV)
    bilevel data download NAME            fetch Fashion-MNIST / MNIST when a network exists
    bilevel demo                          the quadratic demo of ``make demo``
    bilevel run TASK [options]            run hyperclean / fewshot / toy; writes config, metrics, summary, curves
    bilevel compare DIR [DIR ...]         overlay runs' curves and print a Markdown table of their summaries
    bilevel bench [--quick] --out DIR     time/memory of the methods vs the inner loop and hand-written references

See docs/cli.md.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

#: experiment modules run by ``bilevel figures`` (module name under bilevel.app.experiments, description)
FIGURES = (
    ("synthetic_bda", "BDA Figs. 1-3: counterexample Eq. 5, inits, K, alpha schedules"),
    ("synthetic_iaptt", "IAPTT-GM Figs. 1-3 and Table 1: toy Eq. 10, k_bar, LLC Eq. 13"),
    ("synthetic_bvfim", "BVFIM on the BDA counterexample and the LLC problem"),
)


#: default output directory of ``bilevel run`` (a format string)
DEFAULT_OUT = "results/runs/{task}-{method}-seed{seed}"

#: exit status of ``bilevel run``: 0 done, 1 failed after starting (e.g. disk full), 2 usage error, 3 stopped on
#: NaN/inf or divergence (the last good checkpoint is kept; docs/long_runs.md); 128 + the signal number when
#: stopped by SIGINT (130) or SIGTERM (143), after saving the last completed step
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3


def _setup_logging(quiet: bool) -> None:
    """Send the runner's log (warnings of the numerical guards, checkpoint notes) to stderr."""
    import logging

    class _Stderr(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time (it may be replaced, e.g. by tests)."""

        @property  # type: ignore[override]
        def stream(self):  # noqa: D401
            return sys.stderr

        @stream.setter
        def stream(self, value):
            pass

    log = logging.getLogger("bilevel")
    if not any(getattr(h, "_bilevel_cli", False) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("bilevel: %(levelname)s: %(message)s"))
        handler._bilevel_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def _os_error_line(err: OSError, out: str) -> str:
    """One line for an OSError of a run (e.g. a full disk): the file, the system's words, how to go on."""
    import errno
    import shlex

    name = errno.errorcode.get(err.errno, "") if isinstance(err.errno, int) else ""
    text = err.strerror or str(err)
    where = f"{err.filename}: " if err.filename else ""
    full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    fix = "free some space" if full else "fix this"
    return (f"{where}{text}{f' ({name})' if name else ''}; {fix}, then continue with: "
            f"bilevel run --resume {shlex.quote(str(out))}")


def _run_guarded(runner_call, out: str, where) -> int:
    """Run ``runner_call()`` and map its failures to exit statuses (1 failed, 2 directory in use, 3 diverged,
    128 + signal)."""
    from bilevel.app.run.checkpoint import RunLockedError
    from bilevel.app.run.guards import DivergenceError, RunInterrupted

    try:
        summary = runner_call()
    except DivergenceError as err:
        print(f"bilevel run: stopped: {err}\n(partial metrics in {out}; exit status {EXIT_DIVERGED})",
              file=sys.stderr)
        return EXIT_DIVERGED
    except RunInterrupted as err:  # SIGINT / SIGTERM: the runner saved the last completed step
        print(f"bilevel run: {err} (exit status {err.exit_status})", file=sys.stderr)
        return err.exit_status
    except OSError as err:  # e.g. ENOSPC while writing metrics, a checkpoint, the summary or the curves
        print(f"bilevel run: error: {_os_error_line(err, out)}", file=sys.stderr)
        return EXIT_FAILED
    except RunLockedError as err:  # another process is writing this run directory: nothing was touched
        print(f"bilevel run: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"bilevel run: error at outer step {where()}: {err}\n(partial metrics in {out})", file=sys.stderr)
        return EXIT_FAILED
    return summary


def _cmd_resume(args: argparse.Namespace) -> int:
    """``bilevel run --resume DIR``: continue from the newest good checkpoint (other flags ignored, but ``--device``:
    continue on that device instead of config.yaml's)."""
    from bilevel.app import config as cfg
    from bilevel.app.device import resolve_device
    from bilevel.app.run.runner import resume_run

    directory = getattr(args, "resume", None) or getattr(args, "resume_dir", None)
    if directory is None:
        args._parser.error("give a TASK (bilevel run TASK ...) or --resume DIR")
    quiet = bool(getattr(args, "quiet", False) or getattr(args, "resume_quiet", False))
    _setup_logging(quiet)
    if not Path(directory).is_dir():
        args._parser.error(f"cannot resume {directory!r}: no such directory")
    if not (Path(directory) / "config.yaml").is_file() or not (Path(directory) / "metrics.jsonl").is_file():
        args._parser.error(f"cannot resume {directory!r}: no config.yaml and metrics.jsonl (not a `bilevel run` "
                           "directory)")
    # as many processes as the run was made with: --nproc N relaunches through torchrun, as for a new run
    from bilevel.app import launch
    from bilevel.parallel import context

    nproc = getattr(args, "nproc", None) or getattr(args, "resume_nproc", None)
    if nproc is not None and nproc < 1:
        args._parser.error(f"--nproc must be >= 1, got {nproc}")
    under_torchrun = bool(os.environ.get("WORLD_SIZE"))
    try:
        launch.check_resume_world_size(directory, int(os.environ["WORLD_SIZE"]) if under_torchrun else nproc or 1)
    except ValueError as err:
        args._parser.error(str(err))
    if nproc is not None and nproc > 1 and not under_torchrun:
        return launch.launch(launch.strip_nproc(args._argv)[0], nproc)
    device = getattr(args, "resume_device", None)
    if device is None and "device" in (getattr(args, "_given", ()) or ()):  # bilevel run TASK --resume DIR --device D
        device = args.device
    try:  # a clear usage error before anything is locked: --device, or the device of config.yaml on this machine
        if device is not None:
            resolve_device(device)
        else:
            setting = cfg.load_yaml(Path(directory) / "config.yaml").get("device", "auto")
            try:
                resolve_device(setting)
            except ValueError as err:
                raise ValueError(f"cannot resume {directory!r} here: config.yaml: {err}; continue it on another "
                                 f"device with: bilevel run --resume {directory} --device cpu") from None
    except ValueError as err:
        args._parser.error(str(err))
    result = _run_guarded(lambda: resume_run(directory, quiet=quiet, device=device), directory, lambda: "?")
    if isinstance(result, int):
        return result
    if not context().is_main:  # rank 0 alone reports
        return EXIT_OK
    if not quiet:
        print(json.dumps(result, indent=1))
    print(f"wrote {directory}/")
    return EXIT_OK


def method_option_defaults(method) -> List[str]:
    """``name=default`` (``name`` when required) for each keyword-only parameter of ``method.build``."""
    import inspect

    out = []
    for p in inspect.signature(method.build).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return out


def _cmd_methods(args: argparse.Namespace) -> int:
    from bilevel import METHODS

    for name in sorted(METHODS):
        m = METHODS[name]
        opts = ", ".join(method_option_defaults(m)) or "-"
        extra = (" [learns y0]" if m.learns_init else "") + (" [carries y across outer steps]" if m.carries_y else "")
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
        module = importlib.import_module(f"bilevel.app.experiments.{name}")
        summary[name] = module.run(out / name, quick=args.quick)
        print(json.dumps(summary[name], indent=1, default=str), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {out}/")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bilevel.app.demo import main as demo_main

    return demo_main([])


def _cmd_run(args: argparse.Namespace) -> int:
    from bilevel.app import config as cfg

    parser = args._parser
    if getattr(args, "resume", None) is not None:  # the configuration comes from DIR/config.yaml
        return _cmd_resume(args)
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
    # --nproc N: relaunch through torchrun; under torchrun (WORLD_SIZE > 1) this process is one rank
    from bilevel.app import launch
    from bilevel.parallel import context

    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is not None and args.nproc > 1 and not os.environ.get("WORLD_SIZE"):
        return launch.launch(launch.strip_nproc(args._argv)[0], args.nproc)
    from bilevel.app.run.checkpoint import RunLockedError
    from bilevel.app.run.guards import GuardOptions

    _setup_logging(args.quiet)
    try:
        guards = GuardOptions(divergence_factor=args.divergence_factor, stationarity_ratio=args.stationarity_ratio,
                              backtrack_warn=args.backtrack_warn,
                              inner_divergence_factor=args.inner_divergence_factor)
        runner = launch.task_runner(args.task, config, out, quiet=args.quiet, overwrite=args.overwrite,
                                    module=module, task_module=args.task_module,
                                    checkpoint_every=args.checkpoint_every, precision=args.precision, guards=guards)
        runner.setup()
    except RunLockedError as err:  # another process is writing --out (nothing was touched)
        print(f"bilevel run: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:  # output directory in use, or the task rejecting its configuration
        parser.error(str(err))
    except OSError as err:  # e.g. a dataset that is not installed
        print(f"bilevel run: error: {err}", file=sys.stderr)
        return 1
    summary = _run_guarded(runner.execute, out, lambda: runner.t)
    if isinstance(summary, int):
        return summary
    if not context().is_main:  # rank 0 alone reports
        return 0
    if not args.quiet:
        print(json.dumps(summary, indent=1))
    print(f"wrote {out}/")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bilevel.app.run.runner import compare_runs

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
    from bilevel.app import config as cfg

    p = sub.add_parser("run", help="run a task (hyperclean, fewshot, toy) and write its files",
                       description="Run a bilevel task: outer loop with progress bar; writes DIR/config.yaml, "
                                   "DIR/metrics.jsonl, DIR/summary.json, DIR/curves.png. "
                                   "`bilevel run TASK --help` lists the task's options.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--resume", dest="resume_dir", metavar="DIR", default=None,
                   help="continue the interrupted run in DIR from its newest good checkpoint (reads DIR/config.yaml "
                        "and DIR/run_options.yaml; other options are ignored)")
    p.add_argument("--quiet", dest="resume_quiet", action="store_true", help="with --resume: no progress bar")
    p.add_argument("--nproc", dest="resume_nproc", type=int, metavar="N", default=None,
                   help="with --resume: the number of processes the run was made with (relaunches through torchrun; "
                        "a different number is refused)")
    p.add_argument("--device", dest="resume_device", metavar="DEVICE", default=None, type=_device_arg,
                   help="with --resume: continue on this device (auto | cpu | cuda | cuda:N) instead of the device of "
                        "DIR/config.yaml (resolved again on this machine); checkpoints load onto any device")
    p.set_defaults(func=_cmd_resume, _parser=p)
    tasks = p.add_subparsers(dest="task", required=False, metavar="TASK")
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
        tp.add_argument("--nproc", type=int, metavar="N", default=None,
                        help="run on N local processes: relaunches this command through torchrun (the meta-batch "
                             "is split across them; docs/distributed.md)")
        _add_long_run_flags(tp)
        if task != chosen:
            continue
        try:
            module = cfg.load_task(task, module_name)
        except ValueError as err:
            tp.set_defaults(_task_error=str(err))
            continue
        tp.set_defaults(_task_module_obj=module)
        cfg.add_option_arguments(tp, module)


def _device_arg(text: str) -> str:
    """``--device``: auto | cpu | cuda | cuda:N (spelling checked here; availability where it is used)."""
    from bilevel.app.device import check_device

    try:
        return check_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _checked_device(args: argparse.Namespace) -> str:
    """``args.device`` resolved on this machine (a usage error for cuda without CUDA); returns the setting."""
    from bilevel.app.device import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        args._parser.error(str(err))
    return args.device


def _nonneg(kind: type):
    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} >= 0, got "
                                             f"{text!r}") from None
        if value != value or value < 0 or value in (float("inf"),):
            raise argparse.ArgumentTypeError(f"expected a finite value >= 0, got {text!r}")
        return value

    convert.__name__ = kind.__name__
    return convert


def _add_long_run_flags(tp: argparse.ArgumentParser) -> None:
    """Checkpoint, resume, guard and precision flags of ``bilevel run TASK`` (docs/long_runs.md)."""
    from bilevel.app.run.guards import PRECISIONS, GuardOptions
    from bilevel.app.run.checkpoint import DEFAULT_CHECKPOINT_EVERY

    g = tp.add_argument_group("long runs (checkpoints, resuming, numerical guards; docs/long_runs.md)")
    d = GuardOptions()
    g.add_argument("--checkpoint-every", type=_nonneg(int), metavar="N", default=DEFAULT_CHECKPOINT_EVERY,
                   help="write DIR/checkpoints/step-NNNNNN.pt every N outer steps and at the end, keeping the "
                        "newest 2 (0 = no checkpoints)")
    g.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the interrupted run in DIR (same as `bilevel run --resume DIR`; the task and "
                        "every other option come from DIR)")
    g.add_argument("--divergence-factor", type=_nonneg(float), metavar="F", default=d.divergence_factor,
                   help=f"stop (exit status {3}) when |upper| > F x max(|upper at (x0, y0)|, 1); nan/inf always "
                        "stops; 0 = no magnitude check")
    g.add_argument("--inner-divergence-factor", type=_nonneg(float), metavar="G", default=d.inner_divergence_factor,
                   help="stop (exit status 3) when an inner loop raises the lower objective by more than G x "
                        "max(|f at its start|, 1) (inner_lr far too large); 0 = off")
    g.add_argument("--stationarity-ratio", type=_nonneg(float), metavar="R", default=d.stationarity_ratio,
                   help="warn when an inner loop ends with ||grad_y f|| above R x its first value (0 = off)")
    g.add_argument("--backtrack-warn", type=_nonneg(float), metavar="B", default=d.backtrack_warn,
                   help="bvfim: warn when the barrier step is halved B times per y-step or more (0 = off)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="bf16: objectives under torch.autocast(<the run's device type>, bfloat16), float32 "
                        "hypergradient (needs --dtype float32)")


def _add_compare(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("compare", help="overlay the curves of runs and tabulate their summaries",
                       description="Overlay the metrics.jsonl curves of several `bilevel run` directories in one "
                                   "figure and print a Markdown table of their summary.json.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories")
    p.add_argument("--out", metavar="FILE.png", default="compare.png", help="figure to write")
    p.add_argument("--metric", nargs="+", metavar="NAME", default=None,
                   help="panels: any key of the metrics lines, info.NAME or inner_stationarity (default: upper, "
                        "grad_norm, inner_stationarity and every task metric all runs logged)")
    p.set_defaults(func=_cmd_compare, _parser=p)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bilevel_benchmarks.bench import run as bench_run

    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    only = [g for g in args.only.split(",") if g] if args.only else None
    device = _checked_device(args)
    try:
        bench_run(Path(args.out), mode, threads=args.threads, only=only, device=device)
    except ValueError as err:
        args._parser.error(str(err))
    return 0


def _add_bench(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("bench", help="benchmark the methods against the plain inner loop and hand-written references",
                       description="Writes DIR/bench.json and DIR/BENCHMARKS.md (docs/benchmarks.md). Run on a quiet "
                                   "machine. The driver and its references ship with the package "
                                   "(bilevel_benchmarks), so it runs from a checkout or an installed wheel.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", metavar="DIR", default="results/bench", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer K values / repetitions, smaller problems (< 5 min)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--only", metavar="GROUP[,GROUP...]", default=None,
                   help="run only these groups: toy, hyperclean-linear, hyperclean-mlp, memory, hyperclean-linear-wd "
                        "(alias fhg), fewshot-conv4 (alias fewshot)")
    p.add_argument("--device", metavar="DEVICE", default="auto", type=_device_arg,
                   help="where the problems' tensors live: auto (cuda when available, else cpu) | cpu | cuda | cuda:N; "
                        "on cuda every timing waits for the GPU (torch.cuda.synchronize) before reading the clock")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny configuration for the tests
    p.set_defaults(func=_cmd_bench, _parser=p)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from bilevel.app.reproduce import EXPERIMENTS, check_names, default_out_dir, default_report, reproduce, write_report

    if args.list:
        for name, module in EXPERIMENTS.items():
            print(f"{name:18s} {module.TITLE}")
        return 0
    try:
        names = check_names(args.experiments)
        out = Path(args.out) if args.out is not None else default_out_dir(args.scale)
        report = Path(args.report) if args.report is not None else default_report(out)
        if args.report_only:
            path = write_report(out, report, EXPERIMENTS, overwrite=args.overwrite)
        else:
            device = _checked_device(args)
            path = reproduce(names, scale=args.scale, seeds=args.seeds, out_dir=out, report=report,
                             jobs=args.jobs, progress=not args.quiet, data_root=args.data_root,
                             overwrite=args.overwrite, device=device)
    except ValueError as err:
        args._parser.error(str(err))
    print(f"wrote {path} (results in {out}/)")
    return 0


def _add_reproduce(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("reproduce", help="run the papers' experiments and write REPRODUCTION.md",
                       description="Run the papers' experiments (all by default), write OUT/<experiment>.csv and "
                                   "figures, and regenerate the report next to the published numbers. Interrupted "
                                   "runs resume where they stopped when the command is repeated.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="experiments to run (default: all; --list)")
    p.add_argument("--scale", default="cpu", help="smoke (seconds) | cpu (the most faithful settings that finish each "
                   "experiment in <= 45 min on 2 cores) | paper")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per setting")
    p.add_argument("--jobs", type=int, default=2, help="parallel runs (one torch thread each; on cuda they share the "
                   "GPU, each process with a CUDA context of its own)")
    p.add_argument("--device", metavar="DEVICE", default="auto", type=_device_arg,
                   help="device of every run: auto (cuda when available, else cpu) | cpu | cuda | cuda:N; finished runs "
                        "are read back whatever device they ran on, interrupted ones continue on this one")
    p.add_argument("--out", default=None, help="directory of the CSVs, figures and runs (default: results/reproduce "
                   "for --scale cpu, the committed results; results/reproduce-SCALE for other scales)")
    p.add_argument("--report", default=None, help="report file to regenerate (default: REPRODUCTION.md for "
                   "results/reproduce, OUT/REPRODUCTION.md for any other --out)")
    p.add_argument("--overwrite", action="store_true", help="write even over results or a report of another scale")
    p.add_argument("--report-only", action="store_true", help="only regenerate the report from the CSVs in --out")
    p.add_argument("--data-root", default=None, help="directory searched first for data files (MNIST, Omniglot)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reproduce, _parser=p)


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
    from bilevel.app.data.cli import add_subparser as add_data

    add_data(sub)
    _add_run(sub, argv)
    _add_compare(sub)
    _add_bench(sub)
    _add_reproduce(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser(argv).parse_args(argv)
    args._argv = list(argv) if argv is not None else sys.argv[1:]  # for the --nproc relaunch
    try:
        code = int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `bilevel methods | head`
        sys.stderr.close()
        return 0
    from bilevel import parallel

    parallel.shutdown(synchronize=code == 0)  # under torchrun: every rank done before any tears the group down
    return code


if __name__ == "__main__":
    raise SystemExit(main())
