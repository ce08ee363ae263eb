"""plot.py on metrics files written by main.py (the committed GPU runs'), with and without matplotlib."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

import plot
from runfiles import UserError

GPU = Path(__file__).resolve().parent.parent / "results" / "gpu"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture
def runs(tmp_path):
    for name in ("single_FD", "single_baseline"):
        shutil.copy(GPU / f"{name}.metrics.jsonl", tmp_path / f"{name}.metrics.jsonl")
    return tmp_path


def test_series_are_the_metrics_rows(runs):
    series = plot.load_run(runs / "single_FD.pt")  # named by its checkpoint: the metrics beside it
    rows = [json.loads(line) for line in open(runs / "single_FD.metrics.jsonl")]
    assert series["epoch"] == [1, 2, 3]
    for key in ("train_ppl", "valid_ppl", "lr", "penalty"):
        assert series[key] == [r[key] for r in rows]


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib not installed: only the PNG rendering is skipped")
def test_plot_writes_a_png_of_several_runs(runs, capsys):
    plot.main([str(runs / "single_FD.pt"), str(runs / "single_baseline.metrics.jsonl")])
    out = runs / "single_FD.curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 runs: single_FD, single_baseline" in capsys.readouterr().out
    assert [p.name for p in runs.iterdir() if p.name.startswith(".")] == []  # no temp file left
    with pytest.raises(UserError, match="exists: pass --overwrite"):
        plot.main([str(runs / "single_FD.pt")])


def test_user_errors_are_one_line(runs, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no metrics at"):
        plot.main([str(tmp_path / "nothing.pt")])
    (runs / "bad.metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(UserError, match="not a metrics file"):
        plot.main([str(runs / "bad.metrics.jsonl")])
    with pytest.raises(UserError, match="not a .png"):
        plot.main([str(runs / "single_FD.pt"), "--out", str(tmp_path / "x.jpg")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(UserError, match="matplotlib is not installed.*pip install matplotlib"):
        plot.main([str(runs / "single_FD.pt"), "--out", str(tmp_path / "y.png")])
    assert not (tmp_path / "y.png").exists()
