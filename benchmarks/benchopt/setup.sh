#!/usr/bin/env bash
# Creates benchmarks/benchopt/.venv (git-ignored): benchopt, the CPU build of torch and this repository in editable
# mode (`bilevel` and `bilevel_benchmarks`), so that `benchopt run benchmarks/benchopt` works offline.
#
#   benchmarks/benchopt/setup.sh            # then: . benchmarks/benchopt/.venv/bin/activate
#
# torch is pinned: 2.13.0 is the CPU build that installs offline here; an unpinned torch would pull a multi-GB CUDA
# build. benchopt is pinned to the version this benchmark was written and smoke-run with.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python3 -m venv "$here/.venv"
py="$here/.venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q "benchopt==1.10.0" "torch==2.13.0" -e "$root"
"$py" -c "import benchopt, torch, bilevel, bilevel_benchmarks.stochastic.problems; print('benchopt', benchopt.__version__, 'torch', torch.__version__, 'bilevel', bilevel.__version__)"
