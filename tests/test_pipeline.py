"""README's small-scale pipeline, run line by line at a tiny size, and main.py's --train_fraction."""
import json
import shlex
from pathlib import Path

import pytest

import evaluate
import finetune
import generate
import main as main_cli
import pointer
from config import train_config
from runfiles import UserError

README = Path(__file__).resolve().parent.parent / "README.md"
MODULES = {"main.py": main_cli, "finetune.py": finetune, "evaluate.py": evaluate, "pointer.py": pointer,
           "generate.py": generate}
# README's sizes made tiny; argparse lets the last value of a flag win.
TINY = {"main.py": ["--emsize", "16", "--nhid", "16", "--batch_size", "4", "--eval_batch_size", "4"],
        "finetune.py": ["--batch_size", "4", "--eval_batch_size", "4"], "evaluate.py": ["--eval_batch_size", "4"],
        # the tiny corpus's vocabulary is not PTB's, so the pointer's published settings do not apply: name them
        "pointer.py": ["--window", "50", "--theta", "1", "--lambdasm", "0.1", "--bptt", "100"]}


def readme_pipeline():
    text = README.read_text(encoding="utf-8")
    section = text.split("## CPU quick start", 1)[1].split("\n#", 1)[0]
    return [shlex.split(line.split("#")[0]) for line in section.splitlines() if line.startswith("    python ")]


def test_readme_small_pipeline_runs_end_to_end(tiny_corpus, tmp_path, capsys):
    texts = {p: p.read_bytes() for p in tiny_corpus.glob("*.txt")}
    steps = readme_pipeline()
    assert [s[1] for s in steps] == ["main.py", "finetune.py", "evaluate.py", "pointer.py", "generate.py"]
    results = {}
    for _, script, *argv in steps:
        argv = [str(tmp_path / a[len("runs/"):]) if a.startswith("runs/") else a for a in argv]
        argv += TINY.get(script, []) + ["--device", "cpu"] + (["--data", str(tiny_corpus)] if script == "main.py" else [])
        results[script] = MODULES[script].main(argv)
    out = capsys.readouterr().out
    trained = json.loads((tmp_path / "small_FD.final.json").read_text())
    assert trained["test_ppl"] > 1 and (tmp_path / "small_FD.finetune.final.json").is_file()
    assert results["evaluate.py"]["mc_samples"] == 5 and results["evaluate.py"]["mc_test_ppl"] > 1
    assert results["pointer.py"]["test_ppl"] > 1
    text = results["generate.py"]  # 30 tokens: words, and '<eos>' as line ends
    assert len(text.split()) + text.count("\n") in (30, 31) and out.rstrip().endswith(text.rstrip())  # printed, last
    # The cut: the first 5% of the training lines, recorded for resume and fine-tuning, nothing written to --data.
    lines = (tiny_corpus / "train.txt").read_text().splitlines()
    assert f"Training on the first {round(len(lines) * 0.05)} of the training text's {len(lines)} lines" in out
    assert f"tokens: train {sum(len(l.split()) + 1 for l in lines[:round(len(lines) * 0.05)])}," in out
    assert {p: p.read_bytes() for p in tiny_corpus.glob("*.txt")} == texts


def test_train_fraction_is_checked_and_defaults_to_the_whole_text():
    assert train_config([])["train_fraction"] == 1.0
    assert train_config(["--train_fraction", "0.25"])["train_fraction"] == 0.25
    for bad in ("0", "1.5", "nan"):
        with pytest.raises(UserError, match="--train_fraction must be in"):
            train_config(["--train_fraction", bad])
