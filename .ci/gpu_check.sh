#!/usr/bin/env bash
# The checks a lent GPU gets, in the order they matter, each with its own time limit, so that the
# whole script fits in about 10 minutes and a failure in one part never hides the others:
#   1. the CUDA tests (the overlapped passes against the sequential ones, and every variant's dry run on
#      each model shape, among them), one dry run through the command line, the rest of the suite;
#   1b. the first epoch of awd-lstm-lm's tag PyTorch==0.1.12 recipes (PTB, WT2) on three seeds each;
#   2. bench.py on the device, with and without --overlap_passes, and the evaluation throughput;
#   3. several single-preset FD trainings sharing the GPU at once (1, 2 and 4 runs: tokens/s per run and
#      in all, from each run's own metrics), the figure reproduce.py --jobs needs;
#   4. with the time left (BUDGET seconds in all), one single-preset FD run as far as it gets.
# Every log and JSON goes to OUTDIR; summary.txt has one line per check.
# Usage: ./getdata.sh --from DIR && bash .ci/gpu_check.sh OUTDIR   (default: $OUT when set, else gpu-check)
# DEVICE=cpu BUDGET=60 bash .ci/gpu_check.sh /tmp/x runs the same steps on a CPU (a smoke test of the script).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
device=${DEVICE:-cuda}
budget=${BUDGET:-540}
start=$SECONDS
mkdir -p "$out"
summary="$out/summary.txt"
left() { echo $(( budget - (SECONDS - start) )); }
note() { echo "$*" | tee -a "$summary"; }
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" | tee "$out/device.txt"

# 1. correctness: the CUDA tests (every variant's dry run on each model shape among them), one dry run
#    through the command line, the rest of the suite
timeout 240 python3 -m pytest -q -rs tests/test_cuda.py > "$out/test_cuda.txt" 2>&1; note "test_cuda rc=$? $(tail -1 "$out/test_cuda.txt")"
timeout 90 python3 main.py --preset awd-ptb --model FD --overlap_passes --dry_run --device "$device" > "$out/dry.log" 2>&1
note "dry_run awd-ptb FD --overlap_passes rc=$? $(grep -E -e 'End of training|overlap_passes: ' "$out/dry.log" | tr '\n' ' ')"
[ "$(left)" -gt 200 ] && { timeout 200 python3 -m pytest -q -x --ignore=tests/test_cuda.py > "$out/suite.txt" 2>&1; note "suite rc=$? $(tail -1 "$out/suite.txt")"; } \
  || note "suite skipped: $(left) s left"

# 1b. the tag PyTorch==0.1.12 recipes' first epoch (awd-lstm-lm's README gives epoch 1's validation perplexity:
#     PTB 308.03, WT2 629.93), on three seeds each: the RNG streams differ from PyTorch 0.1.12, so the spread over
#     seeds says how close is close
for spec in "merity-tag-ptb 308.03 28 29 30" "merity-tag-wt2 629.93 20923 20924 20925"; do
  set -- $spec; preset=$1; published=$2; shift 2
  for seed in "$@"; do
    [ "$(left)" -lt 120 ] && { note "first epoch $preset seed $seed skipped: $(left) s left"; continue; }
    timeout 110 python3 main.py --preset "$preset" --model baseline --epochs 1 --seed "$seed" --test_batch_size 80 \
      --checkpoint_every 0 --device "$device" --save "$out/first_epoch/${preset}_seed$seed.pt" \
      > "$out/first_epoch_${preset}_seed$seed.log" 2>&1
    rc=$?
    note "first epoch $preset seed $seed rc=$rc valid ppl $(python3 -c "import json,sys; print(round(json.loads(open(sys.argv[1]).readline())['valid_ppl'], 2))" "$out/first_epoch/${preset}_seed$seed.metrics.jsonl" 2> /dev/null || echo none) (published, seed $([ "$preset" = merity-tag-ptb ] && echo 28 || echo 20923): $published)"
  done
done

# 2. speed of one step, FD against the baseline, with and without the overlap; evaluation tokens/s
if [ "$(left)" -gt 150 ]; then
  timeout 150 python3 bench.py --device "$device" --overlap --eval --out "$out/bench.json" > "$out/bench.txt" 2>&1; note "bench rc=$?"
  tail -30 "$out/bench.txt"
else
  note "bench skipped: $(left) s left"
fi

# 3. several trainings sharing the device: one epoch of single-preset FD each, started together
for n in 1 2 4; do
  [ "$(left)" -lt 90 ] && { note "concurrent n=$n skipped: $(left) s left"; continue; }
  pids=()
  for i in $(seq 1 "$n"); do
    timeout 120 python3 main.py --model FD --epochs 1 --test_batch_size 80 --device "$device" \
      --save "$out/concurrent$n/run$i.pt" > "$out/concurrent${n}_run$i.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  note "concurrent n=$n $(python3 - "$out/concurrent$n" <<'EOF'
import json, pathlib, sys
rates = [json.loads(p.read_text().splitlines()[0])["tokens_per_s"] for p in sorted(pathlib.Path(sys.argv[1]).glob("*.metrics.jsonl"))]
print(f"runs finished {len(rates)}; training tokens/s per run {[round(r) for r in rates]}; in all {round(sum(rates))}")
EOF
)"
done

# 4. the time left: one single-preset FD run, its curve kept (metrics.jsonl after every epoch)
if [ "$(left)" -gt 60 ]; then
  timeout $(( $(left) - 20 )) python3 main.py --model FD --device "$device" --save "$out/single_FD.pt" --checkpoint_every 0 \
    > "$out/single_FD.log" 2>&1
  note "single FD run rc=$? ($(wc -l < "$out/single_FD.metrics.jsonl" 2> /dev/null || echo 0) epochs in the time left)"
fi
rm -f "$out"/*.pt "$out"/*/*.pt "$out"/*.resume.pt
note "total $(( SECONDS - start )) s"
