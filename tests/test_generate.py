"""generate.py on a fixed tiny model (CPU, seconds): reproducible by seed, only vocabulary words,
temperature spreads the choice, --outf is never clobbered, user errors are one clear line."""
import os
import subprocess
import sys

import pytest
import torch

import generate
from checkpoint import save_checkpoint, vocab_info
from data import Corpus
from model import RNNModel
from utils import set_seed
from runfiles import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(emsize=16, nhid=24, nlayers=2, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.1, wdrop=0.5,
            tied=True, locked=True, bptt=12, preset="awd-ptb")


@pytest.fixture(scope="module")
def model(tiny_corpus, tmp_path_factory):
    """An untrained tiny model whose decoder bias is spread out, so its next-word distribution is peaked
    (an untrained model's is near uniform, and temperature would make no visible difference)."""
    corpus = Corpus(tiny_corpus)
    cfg = dict(TINY, data=str(tiny_corpus))
    set_seed(0)
    net = RNNModel.from_config(cfg, len(corpus.dictionary))
    with torch.no_grad():
        net.decoder.bias.normal_(0, 3)
    path = tmp_path_factory.mktemp("generate") / "tiny.pt"
    save_checkpoint(path, "best", net, cfg, vocab_info(corpus.dictionary))
    return path, corpus.dictionary


def gen(save, *args):
    return generate.main(["--save", str(save), "--device", "cpu", *map(str, args)])


def test_same_seed_same_text_and_only_vocabulary_words(model, tmp_path, capsys):
    save, dictionary = model
    gen(save, "--words", 300, "--seed", 5, "--outf", tmp_path / "a.txt")
    gen(save, "--words", 300, "--seed", 5, "--outf", tmp_path / "b.txt")
    a = (tmp_path / "a.txt").read_text()
    assert a == (tmp_path / "b.txt").read_text()
    capsys.readouterr()
    assert gen(save, "--words", 300, "--seed", 5) == capsys.readouterr().out == a  # stdout: the same text
    assert gen(save, "--words", 300, "--seed", 6) != a
    words = a.split()
    assert words and all(w in dictionary.word2idx and w != "<eos>" for w in words)
    assert len(words) + a.count("\n") in (300, 301)  # every '<eos>' is a line break, plus the last one


def test_eos_becomes_a_line_break():
    assert generate.to_text(["a", "b", "<eos>", "c", "<eos>"]) == "a b\nc\n"
    assert generate.to_text(["a", "<eos>", "<eos>", "b"]) == "a\n\nb\n"


def test_higher_temperature_gives_more_distinct_words(model):
    save, _ = model
    distinct = [len(set(gen(save, "--words", 300, "--temperature", t).split())) for t in (0.3, 1.0, 3.0)]
    assert distinct[0] < distinct[1] < distinct[2], distinct


def test_existing_outf_is_kept_unless_overwrite(model, tmp_path):
    save, _ = model
    out = tmp_path / "samples.txt"
    out.write_text("keep me\n")
    with pytest.raises(UserError, match="exists: pass --overwrite"):
        gen(save, "--words", 5, "--outf", out)
    assert out.read_text() == "keep me\n"
    assert gen(save, "--words", 5, "--outf", out, "--overwrite") == out.read_text() != "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.txt"]  # no temporary file left behind


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "0"], "--temperature must be a finite number > 0"),
    (["--temperature", "-1"], "--temperature must be a finite number > 0"),
    (["--words", "0"], "--words must be a positive integer"),
])
def test_bad_flags(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        gen(tmp_path / "does-not-exist.pt", *flags)  # checked before the checkpoint is opened


def test_bad_checkpoint_and_unwritable_outf(model, tmp_path):
    save, _ = model
    with pytest.raises(UserError, match="no checkpoint at"):
        gen(tmp_path / "missing.pt")
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(UserError, match="--outf .*file is a file, not a folder"):
        gen(save, "--outf", tmp_path / "file" / "out.txt")


def test_command_line_error_is_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "generate.py"), "--save", str(tmp_path / "junk.pt")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: cannot read")
