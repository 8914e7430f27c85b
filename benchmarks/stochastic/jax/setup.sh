#!/usr/bin/env bash
# Creates benchmarks/stochastic/jax/.venv (JAX on CPU + benchopt) and exports benchopt's benchmark_bilevel into
# benchmarks/stochastic/jax/benchmark_bilevel, for their_step.py / compare.py. Both are git-ignored; neither JAX nor
# benchopt is a dependency of bilevel. Their solver files import `from benchopt import BaseSolver,
# safe_import_context`; benchmark_utils/ also imports joblib (gen_matrices.py; benchopt pulls it in anyway).
#
#   benchmarks/stochastic/jax/setup.sh [path/to/benchmark_bilevel.git]
#
# With a git dir (bare or not) the tree of its HEAD is exported; without one, it is cloned from GitHub.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/benchmark_bilevel"
if [ ! -f "$src/solvers/soba.py" ]; then
    mkdir -p "$src"
    if [ $# -ge 1 ]; then
        gitdir="$1"
    else
        tmp="$(mktemp -d)"
        git clone --depth 1 https://github.com/benchopt/benchmark_bilevel "$tmp/bb"
        gitdir="$tmp/bb/.git"
    fi
    git --git-dir="$gitdir" archive HEAD | tar -x -C "$src"
    git --git-dir="$gitdir" log -1 --format='%H %cI' > "$src/.commit"  # read by compare.py
    rm -rf "${tmp:-}"
fi
python3 -m venv "$here/.venv"
pip="$here/.venv/bin/pip"
"$pip" install -q --upgrade pip
# jax 0.10.2 (the newest on PyPI when this was written); numpy/joblib unpinned (benchopt's own requirements).
"$pip" install -q "jax[cpu]==0.10.2" "benchopt==1.10.0" numpy joblib
"$here/.venv/bin/python" -c "import jax, jaxlib, benchopt, numpy; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'benchopt', benchopt.__version__, 'numpy', numpy.__version__)"
