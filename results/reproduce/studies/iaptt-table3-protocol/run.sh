#!/bin/bash
# Protocol study for iaptt-table3 (issue 16): the paper's split sizes, MLP with 100 hidden units, K = 50,
# 200 outer steps, seed 0; five runs, two at a time, one thread each (about 25 minutes on 2 cores).
# Writes OUT/<run>/ (default: a temporary directory); the committed metrics.jsonl / summary.json / config.yaml
# next to this script come from these commands.
set -e
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-$(mktemp -d)}
COMMON="--dataset fashion-mnist --model mlp --hidden 100 --train-size 5000 --val-size 5000 --test-size 10000 --noise 0.5 --inner-steps 50 --inner-lr 0.3 --outer-steps 200 --outer-lr 0.3 --log-every 10 --threads 1 --seed 0 --quiet --overwrite"
run() { name=$1; shift; bilevel run hyperclean $COMMON "$@" --out "$OUT/$name"; echo "$name done"; }
(run rhg-cold --method rhg; run iaptt-z0.001 --method iaptt --init-lr 0.001; run iaptt-z0.1 --method iaptt --init-lr 0.1) &
(run rhg-warm --method rhg --warm-start; run iaptt-z0.01 --method iaptt --init-lr 0.01) &
wait
echo "runs in $OUT"
