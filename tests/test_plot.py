"""plot.py on metrics files written by main.py and finetune.py: what the figure shows (whole epochs,
fine-tuning after training, labelled axes, one-epoch runs as points), and each bad input in one line."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import plot
import results
from runfiles import UserError

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "results" / "gpu"
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib not installed: only the drawing is skipped")


def row(epoch, valid=200.0):
    return {"epoch": epoch, "train_ppl": 300.0 / epoch, "valid_ppl": valid / epoch, "lr": 30.0, "penalty": 0.01}


@pytest.fixture
def runs(tmp_path):
    for name in ("single_FD", "single_baseline"):
        shutil.copy(GPU / f"{name}.metrics.jsonl", tmp_path / f"{name}.metrics.jsonl")
    (tmp_path / "single_FD.finetune.metrics.jsonl").write_text("".join(json.dumps(row(e)) + "\n" for e in (1, 2)))
    (tmp_path / "one.metrics.jsonl").write_text(json.dumps(row(1)) + "\n")
    return tmp_path


def test_a_run_is_its_training_and_its_fine_tuning(runs):
    parts = plot.load_run(plot.stem(runs / "single_FD.pt"))  # named by its checkpoint: the metrics beside it
    assert [r["epoch"] for r in parts["training"]] == [1, 2, 3] and [r["epoch"] for r in parts["fine-tuning"]] == [1, 2]
    assert parts["training"] == [json.loads(line) for line in open(runs / "single_FD.metrics.jsonl")]
    assert plot.stem(runs / "single_FD.finetune.pt") == plot.stem(runs / "single_FD.metrics.jsonl") == runs / "single_FD"
    assert list(plot.load_run(runs / "single_baseline")) == ["training"]


@needs_matplotlib
def test_the_figure_shows_whole_epochs_fine_tuning_after_training_and_labelled_axes(runs, monkeypatch, capsys):
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, out: (figures.append(fig), results.save_figure(fig, out)))
    plot.main([str(runs / "single_FD.pt"), str(runs / "one.metrics.jsonl")])
    assert (runs / "single_FD.curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 runs: single_FD, one" in capsys.readouterr().out
    assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == []  # no temp file left
    for ax in figures[0].axes:
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel()
        assert all(float(t).is_integer() for t in ax.get_xticks())
        lines = {line.get_label(): line for line in ax.get_lines()}
        tuning = lines["single_FD fine-tuning"]
        assert list(tuning.get_xdata()) == [4, 5] and tuning.get_linestyle() == "--"
        assert lines["single_FD"].get_linestyle() == "-" and lines["one"].get_marker() == "o"
    train_axis = figures[0].axes[0]
    assert train_axis.get_yscale() == "log"
    shown = {t.get_text() for t in train_axis.get_yticklabels()}
    assert {"200", "300", "500"} <= shown  # readable numbers between the powers of ten
    with pytest.raises(UserError, match="exists: pass --overwrite"):
        plot.main([str(runs / "single_FD.pt")])


@needs_matplotlib
def test_a_folder_plots_the_runs_inside_it(runs, tmp_path):
    drawn = plot.main([str(runs), "--out", str(tmp_path / "all.png")])
    assert sorted(drawn) == ["one", "single_FD", "single_baseline"] and "fine-tuning" in drawn["single_FD"]
    both = plot.main([str(runs / "single_FD.pt"), str(runs / "single_FD.finetune.pt"), "--out", str(tmp_path / "b.png")])
    assert list(both) == ["single_FD"]  # a run and its fine-tuning named apart are drawn once, not twice
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty is a folder without a run \(no NAME.metrics.jsonl in it\)"):
        plot.main([str(tmp_path / "empty")])


@needs_matplotlib
@pytest.mark.parametrize("content, message", [
    (b"\x8b\xff\x00\x9c random bytes", "is not a text file"),
    (b'{"epoch": 1, "train_ppl": 5, "valid_ppl": "abc", "lr": 1, "penalty": 0}\n', "line 1: valid_ppl is missing or not a number"),
    (b'{"epoch": 1}\n', "line 1: train_ppl is missing or not a number"),
    (b"", "holds no epoch yet")])
def test_a_bad_metrics_file_is_one_line(runs, content, message):
    (runs / "bad.metrics.jsonl").write_bytes(content)
    with pytest.raises(UserError, match=message):
        plot.main([str(runs / "bad.metrics.jsonl"), "--out", str(runs / "bad.png")])


@needs_matplotlib
def test_an_unwritable_out_is_one_line_before_any_drawing(runs, tmp_path):
    with pytest.raises(UserError, match="no metrics at"):
        plot.main([str(tmp_path / "nothing.pt")])
    with pytest.raises(UserError, match="not a .png"):
        plot.main([str(runs / "single_FD.pt"), "--out", str(tmp_path / "x.jpg")])
    with pytest.raises(UserError, match="one.metrics.jsonl is a file, not a folder"):
        plot.main([str(runs / "single_FD.pt"), "--out", str(runs / "one.metrics.jsonl" / "x.png")])
    if Path("/proc/self").is_dir():  # a filesystem that takes no new file, even from root
        with pytest.raises(UserError, match="cannot write in /proc"):
            plot.main([str(runs / "single_FD.pt"), "--out", "/proc/curves.png"])


def test_a_missing_matplotlib_is_the_first_and_only_line(runs, tmp_path):
    code = "import sys; sys.modules['matplotlib'] = None; import plot, runfiles; runfiles.run_cli(plot.main)"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "y.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: matplotlib is not installed") and "pip install matplotlib" in proc.stderr
    assert not (tmp_path / "y.png").exists()

