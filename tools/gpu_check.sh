#!/usr/bin/env bash
# The GPU checks of issue 17 (docs/gpu.md), prepared to run in at most 10 minutes on one GPU:
#
#   1. pytest -m gpu                      tests/app/test_gpu.py: cuda agrees with the cpu to float32 tolerance,
#                                         checkpoints move between the devices, bf16 autocast, the bench on cuda
#   2. bilevel bench --quick --device cuda
#   3. one hyper-cleaning run at paper scale on cuda: Fashion-MNIST 5000 train (half the labels corrupted) / 5000
#      validation / 10000 test / 5000 held out, linear follower, K = 100 inner steps of 0.3, Adam 0.3 on x, at most
#      1000 outer steps stopped on the held-out loss (patience 5): the "paper" settings of improved-table1 and
#      bvfim-fig2 (src/bilevel/app/reproduce), method rhg
#
# Usage, from the repository root:
#     OUT=/some/dir tools/gpu_check.sh
# Everything goes under $OUT (default results/gpu-check): one log per step, the bench's bench.json / BENCHMARKS.md,
# the run directory (config.yaml, metrics.jsonl, summary.json with "device" and "peak_gpu_mb"), env.txt (GPU, torch)
# and status.txt (one line per step: name, exit status, seconds). The exit status is 0 when every step passed.
#
# Environment:
#   PYTHON        the interpreter, with a CUDA build of torch and bilevel's dependencies (default: .venv/bin/python
#                 when present, else python3); the checkout is used through PYTHONPATH, no install needed
#   BILEVEL_DATA  a directory holding the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...), unless they are
#                 in ~/.cache/bilevel/fashion-mnist or /usr/share/datasets/fashion-mnist (30 MB: carry them along)
#   DEVICE        cuda (default) | cuda:N
#   GPU_TESTS_S, BENCH_S, HYPERCLEAN_S   time limits of the three steps (default 180, 210, 180 s: 9.5 min in all)
#   SMOKE=1       a rehearsal in seconds (tiny bench and run on the embedded digits); with DEVICE=cpu it runs on a
#                 machine without a GPU (the GPU tests then skip), to check the script itself
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-results/gpu-check}
DEVICE=${DEVICE:-cuda}
SMOKE=${SMOKE:-0}
GPU_TESTS_S=${GPU_TESTS_S:-180}
BENCH_S=${BENCH_S:-210}
HYPERCLEAN_S=${HYPERCLEAN_S:-180}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# the checkout without an install: bilevel from src/, bilevel_benchmarks (the `bilevel bench` driver) from benchmarks/
SHIM=$(mktemp -d)
trap 'rm -rf "$SHIM"' EXIT
ln -s "$ROOT/benchmarks" "$SHIM/bilevel_benchmarks"
export PYTHONPATH="$ROOT/src:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
: > "$OUT/status.txt"
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS rc
    echo "== $name (at most ${limit}s): $*"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "   timed out after ${limit}s"; fi
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
    tail -n 5 "$OUT/$name.log" | sed 's/^/   /'
    if [ "$rc" -ne 0 ]; then FAILED=1; fi
    return 0
}

# -- the machine: fail fast (and say why) when the asked-for device is not there
"$PYTHON" - "$DEVICE" > "$OUT/env.txt" 2>&1 <<'EOF'
import sys

import torch

from bilevel.app.device import resolve_device

print("torch", torch.__version__, "cuda build", torch.version.cuda, "available", torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2 ** 30:.0f} GiB")
print("device", sys.argv[1], "->", resolve_device(sys.argv[1]))  # ValueError when it is not available
EOF
rc=$?
cat "$OUT/env.txt"
if [ "$rc" -ne 0 ]; then
    echo "env rc=$rc" >> "$OUT/status.txt"
    echo "gpu_check: device $DEVICE is not usable here (see $OUT/env.txt); nothing else was run" >&2
    exit 2
fi
command -v nvidia-smi > /dev/null && nvidia-smi >> "$OUT/env.txt" 2>&1

# -- 1. the GPU tests (skipped, with the reason, where CUDA is not available)
step gpu-tests "$GPU_TESTS_S" "$PYTHON" -m pytest -q -m gpu -rs -p no:cacheprovider tests/app/test_gpu.py

# -- 2. a quick bench on the device
if [ "$SMOKE" = 1 ]; then MODE=--smoke; else MODE=--quick; fi
step bench "$BENCH_S" "$PYTHON" -m bilevel bench "$MODE" --device "$DEVICE" --out "$OUT/bench"

# -- 3. one hyper-cleaning run at paper scale
CONFIG="$OUT/hyperclean-paper.yaml"
if [ "$SMOKE" = 1 ]; then
    cat > "$CONFIG" <<'EOF'
dataset: digits
train_size: 200
val_size: 200
test_size: 200
holdout_size: 100
inner_steps: 10
outer_steps: 20
log_every: 5
select_metric: holdout_loss
patience: 5
EOF
else
    cat > "$CONFIG" <<'EOF'
# the "paper" settings of improved-table1 / bvfim-fig2 (src/bilevel/app/reproduce), method rhg
dataset: fashion-mnist
model: linear
train_size: 5000
val_size: 5000
test_size: 10000
holdout_size: 5000
noise: 0.5
method: rhg
inner_steps: 100
inner_lr: 0.3
outer_steps: 1000
outer_lr: 0.3
outer_optimizer: adam
log_every: 10
select_metric: holdout_loss
patience: 5
dtype: float32
seed: 0
EOF
fi
step hyperclean-paper "$HYPERCLEAN_S" "$PYTHON" -m bilevel run hyperclean --config "$CONFIG" --device "$DEVICE" \
    --quiet --overwrite --out "$OUT/hyperclean-paper"
if [ -f "$OUT/hyperclean-paper/summary.json" ]; then
    "$PYTHON" - "$OUT/hyperclean-paper/summary.json" <<'EOF' | tee -a "$OUT/status.txt"
import json
import sys

s = json.load(open(sys.argv[1]))
keys = ("device", "test_accuracy", "f1", "selected_step", "outer_steps", "loop_seconds", "wall_seconds",
        "peak_gpu_mb", "peak_rss_mb")
print("hyperclean-paper summary: " + ", ".join(f"{k}={s.get(k)}" for k in keys))
EOF
fi

echo "gpu_check: $( [ "$FAILED" = 0 ] && echo "all steps passed" || echo "some step failed" ); see $OUT/status.txt"
exit "$FAILED"
