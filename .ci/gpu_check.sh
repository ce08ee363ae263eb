#!/usr/bin/env bash
# The checks a lent GPU gets (README "On a GPU"): the CUDA tests, the whole suite, a dry run of each
# preset with FD / ELD / RD / --same_mask_w through the command line, and bench.py on cuda.
# Usage: ./getdata.sh --from DIR && bash .ci/gpu_check.sh OUTDIR
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee "$out/device.txt"
timeout 240 python3 -m pytest -q -rs tests/test_cuda.py > "$out/test_cuda.txt" 2>&1; echo "test_cuda rc=$?" | tee -a "$out/summary.txt"
for preset in single awd-ptb awd-wt2 merity-ptb merity-wt2; do
  for flags in "--model FD" "--model ELD" "--model RD" "--model FD --same_mask_w"; do
    timeout 120 python3 main.py --preset $preset $flags --dry_run --device cuda > "$out/dry.log" 2>&1
    echo "dry_run $preset $flags rc=$? $(grep 'End of training' "$out/dry.log")" | tee -a "$out/summary.txt"
  done
done
timeout 200 python3 bench.py --device cuda --out "$out/bench_cuda.json" > "$out/bench.txt" 2>&1; echo "bench rc=$?" | tee -a "$out/summary.txt"
tail -40 "$out/bench.txt"
timeout 300 python3 -m pytest -q -x --ignore=tests/test_cuda.py > "$out/suite.txt" 2>&1; echo "suite rc=$?" | tee -a "$out/summary.txt"
tail -5 "$out/suite.txt"
