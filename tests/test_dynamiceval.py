"""dynamiceval.py: dynamic evaluation on tiny models (CPU, seconds).

Learning rate 0 is evaluate.py's batch-1 test perplexity; a segment's loss never depends on what
follows it; one step equals the paper's equations by hand; the first version's hyper-parameters map
onto ours; adaptation helps a briefly trained model; the checkpoint is only read; user errors."""
import argparse
import copy
import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dynamiceval
from model import RNNModel
from checkpoint import CORPORA, save_checkpoint, vocab_info
from data import Corpus, batchify, count_windows, windows
from scoring import evaluate, ppl
from utils import repackage_hidden, set_seed
from runfiles import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(emsize=16, nhid=24, nlayers=2, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.1, wdrop=0.5,
            tied=True, locked=True, bptt=12, preset="awd-ptb")
HYPER = ["--lr", "3e-5", "--lamb", "0.002", "--epsilon", "1e-5"]  # the tiny corpus is neither PTB nor WT2


def tiny_model(corpus, seed=0):
    set_seed(seed)
    return RNNModel.from_config(TINY, len(corpus.dictionary))


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """A tiny model trained for two epochs (Adam) on the tiny corpus: better than chance, far from done."""
    corpus = Corpus(tiny_corpus)
    model = tiny_model(corpus)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    source = batchify(corpus.train, 8)
    model.train()
    for _ in range(2):
        hidden = model.init_hidden(8)
        for data, targets in windows(source, 20):
            logits, hidden = model(data, repackage_hidden(hidden))
            opt.zero_grad()
            F.cross_entropy(logits.view(-1, model.ntoken), targets).backward()
            opt.step()
    path = tmp_path_factory.mktemp("dynamiceval") / "trained.pt"
    cfg = dict(TINY, data=str(tiny_corpus))
    save_checkpoint(path, "best", model, cfg, vocab_info(corpus.dictionary))
    return path


def run(save, *args):
    return dynamiceval.main(["--save", str(save), "--device", "cpu", "--batch_size", "10", "--max_batches", "40",
                             *map(str, args)])


def load(save):
    blob = torch.load(save, weights_only=True)
    model = RNNModel.from_config(blob["config"], blob["vocab"]["size"])
    model.load_state_dict(blob["model"])
    return model


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_lr_zero_is_evaluate_at_batch_1(trained, tiny_corpus):
    """No weight moves (bit for bit); the perplexity is evaluate.py's up to the rounding of the LSTM
    kernel, which differs in the last bits between a forward that builds a graph and one that does not."""
    res = run(trained, "--lr", 0, "--lamb", 0.5, "--epsilon", 1e-5, "--bptt", TINY["bptt"])
    model, corpus = load(trained), Corpus(tiny_corpus)
    for split in ("valid", "test"):
        static = evaluate(model, batchify(getattr(corpus, split), 1), TINY["bptt"], 1)
        assert res[f"{split}_ppl"] == pytest.approx(ppl(static), rel=1e-6, abs=0)
    theta_g = [p.detach().clone() for p in model.parameters()]
    rms, _ = dynamiceval.gradient_rms(model, batchify(corpus.train, 10), 5, max_batches=10)
    update = dynamiceval.DynamicUpdate(model, rms, lr=0.0, lamb=0.5, epsilon=1e-5)
    dynamiceval.dynamic_evaluate(model, corpus.test, 5, update)
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), theta_g))


def test_dynamic_evaluation_beats_static_evaluation(trained, tiny_corpus):
    res = run(trained, *HYPER, "--json")
    model, corpus = load(trained), Corpus(tiny_corpus)
    for split in ("valid", "test"):
        static = ppl(evaluate(model, batchify(getattr(corpus, split), 1), TINY["bptt"], 1))
        assert res[f"{split}_ppl"] < 0.95 * static, (split, res[f"{split}_ppl"], static)


def test_no_segment_sees_its_own_or_later_tokens(trained, tiny_corpus):
    model, corpus = load(trained), Corpus(tiny_corpus)
    tokens = corpus.test[:200]
    k = 103  # inside a segment of 5 (inputs 100..104): a loss taken after the update would change 101, 102
    changed = tokens.clone()
    changed[k:] = torch.randint(0, model.ntoken, (len(tokens) - k,), generator=torch.Generator().manual_seed(1))
    rms, _ = dynamiceval.gradient_rms(model, batchify(corpus.train, 10), 5, max_batches=20)
    update = dynamiceval.DynamicUpdate(model, rms, lr=1e-3, lamb=0.01, epsilon=1e-5)
    _, before = dynamiceval.dynamic_evaluate(model, tokens, 5, update, token_losses=True)
    for p, trained_p in zip(model.parameters(), update.trained):  # back to the trained weights
        p.detach().copy_(trained_p)
    _, after = dynamiceval.dynamic_evaluate(model, changed, 5, update, token_losses=True)
    # loss j predicts token j + 1: every prediction of a token before k is unchanged, the rest is not
    assert torch.allclose(before[:k - 1], after[:k - 1], atol=1e-6, rtol=0)
    assert not torch.allclose(before[k + 5:], after[k + 5:], atol=1e-3)


def hand_rms(model, source, bptt):
    """The paper's statistics written out: sqrt(1/N sum_k grad_k^2) over the training batches, hidden state carried."""
    model.eval()
    params = list(model.parameters())
    squares, n = [torch.zeros_like(p) for p in params], 0
    hidden = model.init_hidden(source.size(1))
    for i in range(0, source.size(0) - 1, bptt):
        data, targets = source[i:i + bptt], source[i + 1:i + 1 + bptt].reshape(-1)
        data = data[:targets.numel() // source.size(1)]
        logits, hidden = model(data, [tuple(t.detach() for t in hc) for hc in hidden])
        grads = torch.autograd.grad(F.cross_entropy(logits.view(-1, model.ntoken), targets), params)
        squares = [s + g * g for s, g in zip(squares, grads)]
        n += 1
    return [torch.sqrt(s / n) for s in squares]


def test_two_updates_follow_the_paper_equations(tiny_corpus):
    """Segment 1 starts at theta_g (no decay yet), segment 2 from the adapted weights: the step
    -lr g / (rms + eps) and the decay lamb * min(rms / avg, 1 / lamb) * (theta_g - theta), every parameter."""
    corpus = Corpus(tiny_corpus)
    model, bptt, lr, lamb, eps = tiny_model(corpus, seed=3), 4, 1e-3, 0.6, 1e-3
    train = batchify(corpus.train[:400], 5)
    rms, n = dynamiceval.gradient_rms(model, train, bptt)
    want_rms = hand_rms(copy.deepcopy(model), train, bptt)
    assert n == count_windows(train, bptt)
    for got, want in zip(rms, want_rms):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-9)

    tokens = corpus.test[:2 * bptt + 1]  # exactly two segments
    hand = copy.deepcopy(model)
    update = dynamiceval.DynamicUpdate(model, rms, lr, lamb, eps)
    dynamiceval.dynamic_evaluate(model, tokens, bptt, update)

    params = list(hand.parameters())
    theta_g = [p.detach().clone() for p in params]
    avg = sum(r.mean() for r in want_rms) / len(want_rms)
    rms_norm = [r / avg for r in want_rms]
    clipped = [torch.minimum(r, torch.full_like(r, 1 / lamb)) for r in rms_norm]
    assert any((r > 1 / lamb).any() for r in rms_norm) and any((r < 1 / lamb).any() for r in rms_norm)
    hidden = hand.init_hidden(1)
    theta = theta_g
    for s in range(2):
        data, targets = tokens[s * bptt:(s + 1) * bptt, None], tokens[s * bptt + 1:(s + 1) * bptt + 1]
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        logits, hidden = hand(data, [tuple(t.detach() for t in hc) for hc in hidden])
        grads = torch.autograd.grad(F.cross_entropy(logits.view(-1, hand.ntoken), targets), params)
        decay = [lamb * c * (g0 - t) for c, g0, t in zip(clipped, theta_g, theta)]
        if s == 1:
            assert max(d.abs().max().item() for d in decay) > 1e-3  # the decay term is really tested
        theta = [t - lr * g / (r + eps) + d for t, g, r, d in zip(theta, grads, want_rms, decay)]
    for got, want in zip(model.parameters(), theta):
        assert torch.allclose(got.detach(), want, rtol=1e-5, atol=1e-7)


def test_first_version_hyper_parameters_map_onto_ours():
    """The authors' first code: root SUM of squares, decay rates over the SUM of tensor means.  Its
    update with (lr, lamb, eps) equals ours with from_first_version's values."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    params = list(net.parameters())
    batches, old = 37, dict(lr=0.002, lamb=0.5, epsilon=0.001)
    rms = [torch.rand_like(p) * 0.05 for p in params]
    rms[0][0, 0] = 50.0  # one element whose decay rate is clipped
    theta_g = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.1)
    start = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    root_sum = [r * math.sqrt(batches) for r in rms]
    total = sum(r.mean() for r in root_sum)
    assert (root_sum[0] / total > 1 / old["lamb"]).sum() == 1  # exactly the one element is clipped
    want = [t - old["lr"] * p.grad / (r + old["epsilon"]) + old["lamb"] * torch.clamp(r / total, max=1 / old["lamb"])
            * (g - t) for t, p, r, g in zip(start, params, root_sum, theta_g)]
    new = dynamiceval.from_first_version(**old, batches=batches, tensors=len(params))
    dynamiceval.DynamicUpdate(net, rms, trained=theta_g, **new).step()
    for p, w in zip(params, want):
        assert torch.allclose(p.detach(), w, rtol=1e-5, atol=1e-8)


def test_published_defaults_per_corpus():
    assert (dynamiceval.SEGMENT, dynamiceval.STATS_BATCH) == (5, 100)
    for corpus, tokens in (("ptb", 929_589), ("wt2", 2_088_628)):  # full training sets, batch 100, bptt 5
        batches = count_windows(batchify(torch.zeros(tokens, dtype=torch.long), 100), 5)
        assert dynamiceval.TRAIN_BATCHES[corpus] == batches
        d = dynamiceval.DEFAULTS[corpus]
        assert d["lr"] == pytest.approx(0.002 / math.sqrt(batches))
        assert d["epsilon"] == pytest.approx(0.001 / math.sqrt(batches))
        assert d["lamb"] == pytest.approx(0.02 / 14)
    three_layers = RNNModel.from_config(dict(TINY, nlayers=3), 50)
    assert len(list(three_layers.parameters())) == dynamiceval.AWD_LSTM_TENSORS  # tied: 1 + 4 * 3 + 1


def test_defaults_follow_the_checkpoint_vocabulary_not_its_folder():
    args = argparse.Namespace(save="x.pt", grid=False, lr=None, lamb=None, epsilon=1e-4)
    for fingerprint, corpus in CORPORA.items():
        blob = {"vocab": {"size": 1, "sha256": fingerprint}, "config": {"preset": "single", "data": "data/other"}}
        which, hyper = dynamiceval.hyper_parameters(args, blob)
        d = dynamiceval.DEFAULTS[corpus]
        assert which == corpus and hyper == dict(lr=d["lr"], lamb=d["lamb"], epsilon=1e-4)  # a flag wins
    blob = {"vocab": {"size": 2061, "sha256": "0" * 64}, "config": {"preset": "awd-wt2", "data": "data/wikitext-2"}}
    with pytest.raises(UserError, match="neither PTB nor WikiText-2 .* give --lr, --lamb$"):
        dynamiceval.hyper_parameters(args, blob)


def test_grid_runs_each_setting_from_the_trained_weights(trained):
    before = sha256(trained)
    res = run(trained, "--grid", "--grid_lr", 1e-5, 3e-5, "--grid_lamb", 0.002, "--epsilon", 1e-5, "--json")
    assert sha256(trained) == before  # the checkpoint is only read
    assert [(row["lr"], row["lamb"]) for row in res["grid"]] == [(1e-5, 0.002), (3e-5, 0.002)]
    best = min(res["grid"], key=lambda row: row["valid_ppl"])
    assert (res["lr"], res["lamb"], res["valid_ppl"]) == (best["lr"], best["lamb"], best["valid_ppl"])
    alone = run(trained, "--lr", best["lr"], "--lamb", 0.002, "--epsilon", 1e-5)
    assert (alone["valid_ppl"], alone["test_ppl"]) == (res["valid_ppl"], res["test_ppl"])
    assert sha256(trained) == before


@pytest.mark.parametrize("flags, fix", [
    (["--lr", "1e6", "--lamb", "0"], "lower --lr"), (["--lr", "1e30", "--lamb", "0"], "lower --lr"),
    (["--lr", "1e300", "--lamb", "0"], "lower --lr"),  # beyond float32: addcdiv_ itself would raise
    (["--grid", "--grid_lr", "1e6", "1e300", "--grid_lamb", "0"], "lower --grid_lr"),
])
def test_a_diverging_evaluation_is_no_result(trained, capsys, flags, fix):
    """One line saying the result is not finite and what to lower; no result line, no JSON line."""
    with pytest.raises(UserError, match=f"the result is not finite .*: {fix}"):
        run(trained, "--epsilon", 1e-5, "--json", *flags)
    out = capsys.readouterr().out
    assert "| valid |" not in out and "{" not in out


@pytest.mark.parametrize("flags, message", [
    (["--lr=-1e-5"], "--lr must be a finite number >= 0"),
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--lamb", "1.5"], r"--lamb must be in \[0, 1\]"),
    (["--epsilon", "0"], "--epsilon must be a finite number > 0"),
    (["--bptt", "0"], "--bptt must be a positive integer"),
    (["--batch_size", "0"], "--batch_size must be a positive integer"),
    (["--max_batches", "0"], "--max_batches must be a positive integer"),
    (["--grid", "--grid_lamb", "0.1", "-1"], r"--grid_lamb must be in \[0, 1\]"),
    (["--grid", "--lr", "1e-5"], "--grid searches lr and lamb itself"),
    (["--grid_lr", "1e-5"], "add --grid"),
    (["--device", "tpu"], "--device tpu is not a device"),
])
def test_bad_flags_fail_before_any_work(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        run(tmp_path / "does-not-exist.pt", *flags)  # the flag is reported, not the missing file


def test_bad_checkpoint_and_unknown_corpus(tmp_path, trained):
    with pytest.raises(UserError, match="no checkpoint at"):
        run(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        run(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="neither PTB .* give --lr, --lamb, --epsilon$"):
        run(trained)
    with pytest.raises(UserError, match="give --epsilon$"):
        run(trained, "--grid")
    with pytest.raises(UserError, match="too few for --batch_size 100000"):
        run(trained, *HYPER, "--batch_size", 100000)


@pytest.mark.parametrize("case", ["junk", "diverged"])
def test_command_line_error_is_one_line(tmp_path, trained, case):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    argv = ["--save", str(tmp_path / "junk.pt")] if case == "junk" else [
        "--save", str(trained), "--device", "cpu", "--max_batches", "2", "--batch_size", "10", *HYPER[2:], "--lr",
        "1e300", "--lamb", "0", "--json"]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "dynamiceval.py"), *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "{" not in proc.stdout
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: cannot read" if case == "junk" else "error: the result is not finite")
