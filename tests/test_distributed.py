"""Data-parallel training (distributed.py) with torchrun: 2 CPU processes over gloo on the tiny PTB cut.

Without dropout the two processes must reproduce the single-process run (each update is the whole
batch's); with dropout fraternal dropout must train, checkpoint and resume exactly."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

import distributed
import main as main_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_DROPOUT = ["--dropout", "0", "--dropouth", "0", "--dropouti", "0", "--dropoute", "0", "--wdrop", "0"]


def tiny_args(data, save, *extra, epochs=2):
    return ["--preset", "awd-ptb", "--data", str(data), "--emsize", "16", "--nhid", "24", "--nlayers", "2",
            "--batch_size", "4", "--bptt", "12", "--eval_batch_size", "4", "--epochs", str(epochs),
            "--log-interval", "50", "--save", str(save), "--device", "cpu", *extra]


def env(**extra):
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **extra)


def torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "main.py"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=300,
                          env=env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(save):
    with open(str(save)[:-3] + ".metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def final(save):
    with open(str(save)[:-3] + ".final.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_equal_one_without_dropout(tiny_corpus, tmp_path):
    """ELD (two forwards per backward: pass 2 in eval mode), AR / TAR, hidden resets and averaged SGD,
    every dropout at 0 (FD with no dropout is refused: its passes would be identical).  The
    distributed run also writes a mid-epoch resume point every 0.12 s (a few per epoch), which must not
    change what it computes."""
    flags = ["--model", "ELD", *NO_DROPOUT, "--alpha", "2", "--beta", "1", "--reset_hidden_prob", "0.1",
             "--optimizer", "asgd"]
    main_cli.main(tiny_args(tiny_corpus, tmp_path / "one.pt", *flags))
    proc = torchrun(*tiny_args(tiny_corpus, tmp_path / "two.pt", *flags, "--checkpoint_every", "0.002"))
    one, two = metrics(tmp_path / "one.pt"), metrics(tmp_path / "two.pt")
    assert [r["epoch"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        for key in ("train_loss", "valid_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a[key], b[key])
        assert b["best"] == a["best"] and b["phase"] == a["phase"] == "asgd"
    assert final(tmp_path / "two.pt")["test_ppl"] == pytest.approx(final(tmp_path / "one.pt")["test_ppl"], rel=1e-5)
    assert proc.stdout.count("End of training") == 1  # rank 1 prints nothing
    assert "One run in 2 processes (torchrun, gloo)" in proc.stdout


@pytest.mark.slow
def test_fd_with_dropout_trains_checkpoints_and_resumes_exactly(tiny_corpus, tmp_path):
    """2 epochs straight, against 1 epoch then --resume: the same losses (each rank's own dropout
    RNG is saved in the resume checkpoint and restored)."""
    torchrun(*tiny_args(tiny_corpus, tmp_path / "straight.pt"))
    torchrun(*tiny_args(tiny_corpus, tmp_path / "split.pt", epochs=1))
    resume = torch.load(tmp_path / "split.resume.pt", weights_only=True)
    assert resume["config"]["model"] == "FD" and len(resume["rng"]["ranks"]) == 2
    assert not torch.equal(resume["rng"]["ranks"][0]["torch"], resume["rng"]["ranks"][1]["torch"])
    torchrun("--resume", tmp_path / "split.resume.pt", "--epochs", "2")
    straight, split = metrics(tmp_path / "straight.pt"), metrics(tmp_path / "split.pt")
    assert [r["epoch"] for r in split] == [1, 2] and all(r["penalty"] > 0 for r in split)
    for a, b in zip(straight, split):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
        assert b["valid_loss"] == pytest.approx(a["valid_loss"], rel=1e-9)
    assert final(tmp_path / "split.pt")["test_ppl"] == pytest.approx(final(tmp_path / "straight.pt")["test_ppl"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("split")) == [
        "split.final.json", "split.metrics.jsonl", "split.pt", "split.resume.pt"]  # no lock once it ended


def test_batch_size_not_divisible_is_one_line_error(tiny_corpus, tmp_path):
    args = tiny_args(tiny_corpus, tmp_path / "m.pt", "--batch_size", "5")
    cmd = [sys.executable, os.path.join(REPO, "main.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=120,
                          env=env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: --batch_size 5 cannot be split into 2"), lines
    assert not (tmp_path / "m.pt").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank, port):
    """What torchrun tells a process of a 2-process run on this machine."""
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _position_roundtrip(rank, port, full):
    join(rank, port)
    with distributed.session({"batch_size": 4, "device": "cpu"}):
        mine = distributed.own_position(full)
        assert mine["tokens"] == 12
        assert torch.equal(mine["hidden"][0][1], full["hidden"][0][1][:, 2 * rank:2 * rank + 2])
        merged = distributed.merge_position(dict(mine, total_ce=full["total_ce"] + rank))
        assert torch.equal(merged["hidden"][0][0], full["hidden"][0][0]) and merged["tokens"] == 24
        assert merged["total_ce"].item() == pytest.approx(full["total_ce"].item() + 0.5)
        # resumed by as many ranks: each takes back its own sums, not their mean (exact logged losses)
        assert distributed.own_position(merged)["total_ce"].item() == full["total_ce"].item() + rank


@pytest.mark.slow
def test_mid_epoch_resume_point_splits_and_joins_across_ranks():
    """A resume point saved inside an epoch holds the whole batch's hidden state, so runs of any
    number of processes continue it: each rank takes its columns, and saving joins them again."""
    port = free_port()
    full = {"epoch": 1, "batch": 3, "i": 30, "tokens": 24, "seconds": 1.0, "total_ce": torch.tensor(6.0),
            "total_pen": torch.tensor(0.5), "interval_ce": torch.tensor(6.0),
            "hidden": [(torch.randn(1, 4, 3), torch.randn(1, 4, 3))]}
    torch.multiprocessing.spawn(_position_roundtrip, args=(port, full), nprocs=2)


def _leave(rank, port, folder):
    join(rank, port)
    with distributed.session({"batch_size": 4, "device": "cpu"}):
        if rank == 0:
            time.sleep(1.5)  # rank 0's test evaluation, which the other ranks skip
            with open(os.path.join(folder, "done0"), "w") as f:
                f.write(repr(time.time()))
    with open(os.path.join(folder, f"left{rank}"), "w") as f:
        f.write(repr(time.time()))


@pytest.mark.slow
def test_ranks_leave_the_process_group_together(tmp_path):
    """Rank 1 waits for rank 0's work at the end of a run before tearing its connections down: a rank
    that left early was once aborted at exit (and torchrun reported a finished run as failed)."""
    port = free_port()
    torch.multiprocessing.spawn(_leave, args=(port, str(tmp_path)), nprocs=2)
    done0, left1 = (float((tmp_path / name).read_text()) for name in ("done0", "left1"))
    assert left1 >= done0, (done0, left1)
