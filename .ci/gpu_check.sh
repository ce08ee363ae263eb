#!/usr/bin/env bash
# The checks a lent GPU gets (README "On a GPU"): the CUDA tests (the overlapped passes against the
# sequential ones among them), bench.py on cuda with and without --overlap_passes and the evaluation
# throughput, a dry run of each preset with FD / ELD / RD / --same_mask_w / --overlap_passes through the
# command line, and the whole suite.
# Usage: ./getdata.sh --from DIR && bash .ci/gpu_check.sh OUTDIR   (default: $OUT when set, else gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$out/device.txt"
timeout 240 python3 -m pytest -q -rs tests/test_cuda.py > "$out/test_cuda.txt" 2>&1; echo "test_cuda rc=$?" | tee -a "$out/summary.txt"
# FD / baseline, FD with --overlap_passes in the same rounds on the same batches, evaluation tokens/s
timeout 300 python3 bench.py --device cuda --overlap --eval --out "$out/bench_cuda.json" > "$out/bench.txt" 2>&1; echo "bench rc=$?" | tee -a "$out/summary.txt"
tail -40 "$out/bench.txt"
for preset in single awd-ptb awd-wt2 merity-ptb merity-wt2; do
  for flags in "--model FD" "--model ELD" "--model RD" "--model FD --same_mask_w" "--model FD --overlap_passes"; do
    timeout 120 python3 main.py --preset $preset $flags --dry_run --device cuda > "$out/dry.log" 2>&1
    echo "dry_run $preset $flags rc=$? $(grep -E -e 'End of training|overlap_passes: ' "$out/dry.log" | tr '\n' ' ')" | tee -a "$out/summary.txt"
  done
done
timeout 300 python3 -m pytest -q -x --ignore=tests/test_cuda.py > "$out/suite.txt" 2>&1; echo "suite rc=$?" | tee -a "$out/summary.txt"
tail -5 "$out/suite.txt"
