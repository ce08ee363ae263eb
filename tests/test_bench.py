"""bench.py on tiny shapes: every configuration is timed (FD also with --overlap_passes, which runs the
sequential path on the CPU and says so), the FLOP count is right, errors are one line.

Speed itself is never asserted (it depends on the machine and its load).
"""
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

import bench
import config
from runfiles import UserError

REPO = Path(__file__).resolve().parent.parent
PRESETS = tuple(config.PRESETS)
# --scale tiny: emsize 8, nhid 12, batch 3, bptt 5 (15 tokens a step), vocabulary 50, weights tied.
# One layer: the layer is 8 -> 8.  Three layers: 8 -> 12, 12 -> 12, 12 -> 8.  W_ih is 4H x I, W_hh 4H x H.
SINGLE_WEIGHTS = 32 * 8 + 32 * 8 + 50 * 8  # W_ih, W_hh, decoder = 912
THREE_LAYER_WEIGHTS = (48 * 8 + 48 * 12) + (48 * 12 + 48 * 12) + (32 * 12 + 32 * 8) + 50 * 8  # = 3152
# 2 FLOPs per weight per token, 3 products per weight (forward, grad input, grad weight), 15 tokens
BASELINE_FLOPS = {p: 2 * 3 * 15 * {1: SINGLE_WEIGHTS, 3: THREE_LAYER_WEIGHTS}[config.PRESETS[p]["nlayers"]] for p in PRESETS}


def run_bench(*args):
    return subprocess.run([sys.executable, "bench.py", "--scale", "tiny", "--device", "cpu", "--threads", "1", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = run_bench("--eval", "--overlap", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_configuration_timed(result):
    rows = {(r["preset"], r["model"], r["overlap"]): r for r in result["train"]}
    assert len(rows) == len(result["train"])
    assert set(rows) == {(p, m, o) for p in PRESETS for m, o in (("baseline", False), ("FD", False), ("FD", True))}
    for r in rows.values():
        assert len(r["times_s"]) == 1 and r["min_s"] > 0 and r["median_s"] > 0 and r["tokens_per_s"] > 0
        assert r["peak_mem_mb"] > 0
        assert 0 < r["of_peak"] <= r["of_peak_min"] < 1
    assert all((r["x_base"] is None) == (r["model"] == "baseline") for r in rows.values())
    assert {(e["preset"], e["batch_size"]) for e in result["eval"]} == {(p, b) for p in PRESETS for b in (10, 1)}
    assert all(e["tokens_per_s"] > 0 for e in result["eval"])


def test_flops_match_an_independent_count(result):
    rows = {(r["preset"], r["model"], r["overlap"]): r for r in result["train"]}
    for p in PRESETS:
        assert rows[(p, "baseline", False)]["flops_per_step"] == BASELINE_FLOPS[p]
        assert rows[(p, "FD", False)]["flops_per_step"] == rows[(p, "FD", True)]["flops_per_step"] == 2 * BASELINE_FLOPS[p]


def test_overlap_rows_on_cpu_say_they_ran_the_sequential_path(result):
    """FD / baseline with and without the overlap, and the overlap against FD's own sequential step."""
    rows = {(r["preset"], r["model"], r["overlap"]): r for r in result["train"]}
    for p in PRESETS:
        over, seq = rows[(p, "FD", True)], rows[(p, "FD", False)]
        assert over["overlap_active"] is False and "CUDA" in over["overlap_fallback"]
        assert over["x_sequential"] == over["median_s"] / seq["median_s"]
        assert over["x_sequential_min"] == over["min_s"] / seq["min_s"]
        assert over["x_base"] == over["median_s"] / rows[(p, "baseline", False)]["median_s"]
        for r in (seq, rows[(p, "baseline", False)]):
            assert r["overlap_active"] is False and r["overlap_fallback"] is None and r["x_sequential"] is None


def test_header(result):
    h = result["header"]
    assert h["torch"] == torch.__version__ and h["device"] == "cpu" and h["threads"] == 1 and h["cpu"]
    assert "bench.py --scale tiny --device cpu" in h["command"] and datetime.fromisoformat(h["date"])
    assert h["commit"] and h["commit"] != "unknown"  # which code was timed


def test_unknown_preset_is_one_line_with_exit_code_2_and_the_closest_name():
    proc = run_bench("--preset", "single", "singel")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: unknown preset 'singel' (did you mean single?)")


@pytest.mark.parametrize("args, message", [(["--model", "XX"], "unknown model 'XX'"),
                                           (["--preset", "single,awd-ptb"], "unknown preset 'single,awd-ptb'"),
                                           (["--steps", "0"], "--steps must be a positive integer"),
                                           (["--warmup", "-1"], "--warmup must be an integer >= 0"),
                                           (["--threads", "0"], "--threads must be a positive integer")])
def test_bad_arguments_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        bench.main(["--scale", "tiny", "--device", "cpu", *args])


def test_several_values_are_space_separated_and_model_names_any_case(tmp_path):
    out = tmp_path / "b.json"
    bench.main(["--scale", "tiny", "--device", "cpu", "--threads", "1", "--preset", "single", "awd-ptb",
                "--model", "fd", "Baseline", "--out", str(out)])
    rows = json.loads(out.read_text())["train"]
    assert [(r["preset"], r["model"]) for r in rows] == [("single", "FD"), ("single", "baseline"),
                                                         ("awd-ptb", "FD"), ("awd-ptb", "baseline")]
