"""Smoke test of bench.py on tiny shapes: it runs, and its JSON holds the figures it promises.

Speed is never asserted (timings depend on the machine and its load); only that the numbers
exist, are positive, and that the analytic FLOP count follows the documented formula.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PRESETS = ("single", "awd-ptb", "awd-wt2", "merity-ptb", "merity-wt2")
MODELS = ("baseline", "FD")
# bench.py --tiny: emsize 8, nhid 12, batch 3, bptt 5, vocabulary 50; layers as in the preset
EMSIZE, NHID, BATCH, BPTT, VOCAB = 8, 12, 3, 5, 50
NLAYERS = {"single": 1, "awd-ptb": 3, "awd-wt2": 3, "merity-ptb": 3, "merity-wt2": 3}


def expected_flops(nlayers, passes):
    """Matmul FLOPs of one training step, written out independently of bench.py."""
    if nlayers == 1:
        layers = [(EMSIZE, EMSIZE)]  # tied: the only layer is sized to the embedding
    else:
        layers = [(EMSIZE, NHID)] + [(NHID, NHID)] * (nlayers - 2) + [(NHID, EMSIZE)]
    per_token = 0
    for inp, hid in layers:
        per_token += 2 * (4 * hid) * inp + 2 * (4 * hid) * hid  # W_ih and W_hh products
    per_token += 2 * EMSIZE * VOCAB  # decoder
    return passes * 3 * BPTT * BATCH * per_token


def test_expected_flops_by_hand():
    # one layer 8 -> 8: 2*32*8 + 2*32*8 = 1024, decoder 2*8*50 = 800, 15 tokens, times 3
    assert expected_flops(1, 1) == 3 * 15 * 1824


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, "bench.py", "--tiny", "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "training step" in proc.stdout and "torch.mm" in proc.stdout
    return json.loads(out.read_text())


def test_header(bench_json):
    h = bench_json["header"]
    assert h["torch"] and h["cpu"] and h["threads"] >= 1 and h["device"] == "cpu"
    assert "bench.py --tiny --quick" in h["command"]


def test_matmul_rate(bench_json):
    mm = bench_json["matmul"]
    assert mm["machine_gflops"] > 0
    assert mm["shapes"] and all(r["gflops"] > 0 for r in mm["shapes"])
    assert mm["machine_gflops"] == max(r["gflops"] for r in mm["shapes"])


def test_every_configuration_timed_with_formula_flops(bench_json):
    rows = {(r["preset"], r["model"]): r for r in bench_json["train"]}
    assert set(rows) == {(p, m) for p in PRESETS for m in MODELS}
    for (preset, model), r in rows.items():
        passes = 2 if model == "FD" else 1
        assert r["passes"] == passes
        assert (r["emsize"], r["nhid"], r["batch_size"], r["seq_len"], r["vocab"]) == (EMSIZE, NHID, BATCH, BPTT, VOCAB)
        assert r["nlayers"] == NLAYERS[preset]
        assert r["flops_per_step"] == expected_flops(NLAYERS[preset], passes)
        assert len(r["times_s"]) >= 1 and all(t > 0 for t in r["times_s"])
        assert 0 < r["min_s"] <= r["median_s"]
        assert r["effective_gflops"] > 0 and r["fraction_of_matmul"] > 0
        assert r["peak_mem_mb"] > 0


def test_fd_baseline_ratio(bench_json):
    rows = {(r["preset"], r["model"]): r for r in bench_json["train"]}
    for preset in PRESETS:
        ratio = bench_json["ratios"][preset]["FD"]
        assert ratio > 0
        assert ratio == pytest.approx(rows[(preset, "FD")]["median_s"] / rows[(preset, "baseline")]["median_s"])


def test_evaluation_rates(bench_json):
    seen = {(r["preset"], r["batch_size"]) for r in bench_json["eval"]}
    assert seen == {(p, b) for p in PRESETS for b in (10, 1)}
    assert all(r["tokens"] > 0 and r["tokens_per_s"] > 0 for r in bench_json["eval"])
