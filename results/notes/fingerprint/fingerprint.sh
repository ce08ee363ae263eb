#!/bin/bash
# Prints every number of a tiny deterministic pipeline; compare two outputs with diff.
# usage: bash /tmp/fingerprint.sh OUTDIR  (run from /work/main with the venv active)
set -e
D=/work/shared/data/penn; O=${1:-/tmp/fp/run}; rm -rf $O; mkdir -p $O
export OMP_NUM_THREADS=1
common="--preset single --train_fraction 0.01 --emsize 24 --nhid 24 --epochs 2 --data $D --log_interval 1000 --checkpoint_every 0"
for m in FD ELD PM RD baseline; do
  python main.py $common --model $m --save $O/$m.pt > $O/$m.log 2>&1
  python -c "import json;[print('$m',json.dumps(json.loads(l),sort_keys=True)) for l in open('$O/$m.metrics.jsonl')]" | python -c "import sys,json
for l in sys.stdin:
  m,j=l.split(' ',1); d=json.loads(j); [d.pop(k,None) for k in ('elapsed','seconds','tokens_per_s','time','wall_s','date')]; print(m,json.dumps(d,sort_keys=True))"
  cat $O/$m.final.json | python -c "import sys,json; d=json.load(sys.stdin); print('$m final', {k:v for k,v in d.items() if 'ppl' in k or 'loss' in k})"
done
python main.py $common --model FD --same_mask_w --save $O/FDw.pt > $O/FDw.log 2>&1; grep -o '"valid_loss": [0-9.e-]*' $O/FDw.metrics.jsonl
python main.py $common --model FD --no-fused_loss --save $O/FDnf.pt > $O/FDnf.log 2>&1; grep -o '"valid_loss": [0-9.e-]*' $O/FDnf.metrics.jsonl
python main.py $common --model FD --locked_mask timestep --optimizer asgd-nt --save $O/FDt.pt > $O/FDt.log 2>&1; grep -o '"valid_loss": [0-9.e-]*' $O/FDt.metrics.jsonl
python finetune.py --save $O/FD.pt --epochs 2 --log_interval 1000 --checkpoint_every 0 > $O/ft.log 2>&1; grep -o '"valid_loss": [0-9.e-]*' $O/FD.finetune.metrics.jsonl
python evaluate.py --save $O/FD.finetune.pt --mc 2 2>&1 | grep -iE 'ppl|perplex|loss' | grep -v '%|'
python pointer.py --save $O/FD.finetune.pt 2>&1 | grep -iE 'ppl|perplex' | grep -v '%|' | tail -3
python dynamiceval.py --save $O/FD.finetune.pt 2>&1 | grep -iE 'ppl|perplex' | grep -v '%|' | tail -3
python generate.py --save $O/FD.finetune.pt --words 12 --seed 1 2>&1 | tail -2
python mc_dropout.py --help >/dev/null 2>&1 || true
