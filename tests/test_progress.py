"""What a user sees during a long run: plain progress lines when the output is not a terminal, the
run's files named at the start, Ctrl-C answered with a resume point and the command to continue,
and the lock file gone once the run ends."""
import os
import re
import signal

import pytest
import torch

import epoch
import main as main_cli
from data import batchify
from fraternal import Regularizer
from model import RNNModel
import runfiles
import utils
from conftest import tiny_args


def test_plain_progress_lines_when_not_a_terminal(tiny_corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(utils, "PLAIN_EVERY", 0.0)  # a line at every step (stderr is captured: no terminal)
    main_cli.main(tiny_args(tiny_corpus, tmp_path / "p.pt", "--log-interval", "1000", epochs=1))
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert "\r" not in captured.err  # no bar redrawn in place
    lines = [line for line in err if line.startswith("epoch 1: ")]
    assert lines and "ETA" in lines[0] and " elapsed" in lines[0] and "/" in lines[0]
    for step in ("validation, epoch 1: ", "validation, best model: ", "test, best model: "):
        assert any(line.startswith(step) for line in err), step
    # The run's files in plain words before the first epoch, after the configuration line users parse.
    out = captured.out
    assert out.index("Configuration: {") < out.index("Files of this run:") < out.index("end of epoch")
    for name in ("p.pt", "p.resume.pt", "p.metrics.jsonl", "p.final.json", "p.lock"):
        assert str(tmp_path / name) in out
    assert f"python main.py --resume {tmp_path / 'p.resume.pt'}" in out


def test_progress_never_counts_past_its_total_when_bptt_runs_short(monkeypatch, capsys):
    """Variable BPTT can take more batches than len / bptt: the count shown grows its total, never "21/20"."""
    monkeypatch.setattr(utils, "PLAIN_EVERY", 0.0)
    bar = utils.PlainProgress(None, 20, "epoch 1", "batch")
    bar.n = 20
    bar.update(1)
    assert "21/21 batch (100%)" in capsys.readouterr().err
    monkeypatch.setattr(epoch, "draw_seq_len", lambda cfg: 5)  # half the base length: twice the estimated batches
    torch.manual_seed(0)
    model = RNNModel(50, 8, 8, 1, dropout=0, dropouth=0, dropouti=0, dropoute=0, wdrop=0)
    cfg = dict(bptt=10, clip=0.25, reset_hidden_prob=0.0, log_interval=1, save="unused")
    train = batchify(torch.randint(0, 50, (200,)), 2)
    epoch.train_epoch(model, torch.optim.SGD(model.parameters(), lr=1.0), train, cfg, Regularizer(), 1)
    counts = [tuple(map(int, m)) for m in re.findall(r"\| +(\d+)/ *(\d+) batches", capsys.readouterr().out)]
    assert counts[9] == (10, 10) and counts[-1] == (20, 20)  # estimated 10, took 20


def test_ctrl_c_in_the_first_epoch_writes_a_resume_point_and_says_how_to_continue(tiny_corpus, tmp_path,
                                                                                     monkeypatch, capsys):
    real, calls = epoch.train_step, []

    def ctrl_c_at_batch_5(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, in the middle of the first epoch
        return out

    monkeypatch.setattr(epoch, "train_step", ctrl_c_at_batch_5)
    save = tmp_path / "c.pt"
    with pytest.raises(runfiles.Interrupted, match="continue with"):  # exit code 130, before any checkpoint
        main_cli.main(tiny_args(tiny_corpus, save, "--checkpoint_every", "0", epochs=1))
    captured = capsys.readouterr()
    assert len(calls) == 5  # stopped after the batch under way, not before
    assert "Ctrl-C: stopping at the end of this batch" in captured.err
    resume = tmp_path / "c.resume.pt"
    assert "resume point written mid-epoch (inside epoch 1, after batch 5)" in captured.out
    assert f"Continue with: python main.py --resume {resume}" in captured.out
    blob = torch.load(resume, weights_only=True)
    assert blob["position"]["epoch"] == 1 and blob["position"]["batch"] == 5
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is plain again afterwards
    assert not (tmp_path / "c.lock").exists()
    monkeypatch.setattr(epoch, "train_step", real)
    main_cli.main(["--resume", str(resume), "--device", "cpu"])
    assert "Resuming after epoch 0, inside epoch 1 at batch 5" in capsys.readouterr().out
    assert (tmp_path / "c.final.json").is_file() and not (tmp_path / "c.lock").exists()


def test_the_lock_belongs_to_the_run_in_progress_only(tmp_path):
    path = tmp_path / "r.lock"
    with runfiles.RunLock(path):
        assert path.exists()
        try:
            with runfiles.RunLock(path):
                raise AssertionError("a second holder got the lock")
        except runfiles.UserError as e:
            assert "another process" in str(e)
    assert not path.exists()
    with runfiles.RunLock(path):  # taken again after the first run ended
        assert path.exists()
    assert not path.exists()
