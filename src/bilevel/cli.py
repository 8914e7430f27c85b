"""The ``bilevel`` command line.

    bilevel methods                       list the methods and their options
    bilevel figures [--out DIR] [--quick] reproduce the synthetic experiments of the papers (PNG + CSV)
    bilevel data download NAME            fetch Fashion-MNIST / MNIST when a network exists
    bilevel demo                          the quadratic demo of ``make demo``
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


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
