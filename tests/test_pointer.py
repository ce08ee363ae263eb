"""pointer.py: the continuous cache on tiny untrained models (CPU, seconds).

With lambdasm 0 it is the plain batch-1 evaluation; on text that repeats itself the cache helps; no
position ever sees its own or a later word; the chunk length does not change the result; user errors."""
import argparse
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from model import RNNModel
import pointer
from checkpoint import CORPORA, save_checkpoint, vocab_info
from data import Corpus, batchify
from scoring import evaluate, ppl
from utils import set_seed
from runfiles import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(emsize=16, nhid=24, nlayers=2, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.1, wdrop=0.5,
            tied=True, locked=True, bptt=12, preset="awd-ptb")


def make_checkpoint(data, path, seed=0):
    corpus = Corpus(data)
    cfg = dict(TINY, data=str(data))
    set_seed(seed)
    save_checkpoint(path, "best", RNNModel.from_config(cfg, len(corpus.dictionary)), cfg, vocab_info(corpus.dictionary))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_corpus, tmp_path_factory):
    return make_checkpoint(tiny_corpus, tmp_path_factory.mktemp("pointer") / "tiny.pt")


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """A corpus whose valid / test text is a few 12-word phrases repeated in random order."""
    folder = tmp_path_factory.mktemp("repeated")
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    (folder / "train.txt").write_text(" ".join(vocab) + "\n")
    phrases = [" ".join(rng.sample(vocab, 12)) for _ in range(4)]
    for split in ("valid", "test"):
        (folder / f"{split}.txt").write_text("".join(rng.choice(phrases) + "\n" for _ in range(40)))
    return folder, make_checkpoint(folder, folder / "model.pt")


def run(save, *args):
    return pointer.main(["--save", str(save), "--device", "cpu", *map(str, args)])


def load(save):
    blob = torch.load(save, weights_only=True)
    model = RNNModel.from_config(blob["config"], blob["vocab"]["size"])
    model.load_state_dict(blob["model"])
    return model


def test_lambdasm_zero_is_the_plain_batch1_evaluation(tiny, tiny_corpus):
    res = run(tiny, "--lambdasm", 0, "--bptt", 50, "--window", 50, "--theta", 1.0)
    model, corpus = load(tiny), Corpus(tiny_corpus)
    for split in ("valid", "test"):
        plain = evaluate(model, batchify(getattr(corpus, split), 1), TINY["bptt"], 1)
        assert res[f"{split}_ppl"] == pytest.approx(ppl(plain), rel=1e-5)
        assert res[f"{split}_plain_ppl"] == pytest.approx(ppl(plain), rel=1e-5)


def test_cache_lowers_perplexity_on_repeated_text(repeated):
    _, save = repeated
    res = run(save, "--json", "--window", 500, "--theta", 1.0, "--lambdasm", 0.1, "--bptt", 5000)
    assert (res["window"], res["theta"], res["lambdasm"], res["settings"]) == (500, 1.0, 0.1, "flags")
    for split in ("valid", "test"):
        assert res[f"{split}_ppl"] < 0.8 * res[f"{split}_plain_ppl"], res


def naive_cache_logprob(h, words, t, window, theta):
    """log p_cache(words[t + 1]) from the hidden states before t, one position at a time."""
    lo = max(0, t - window)
    if t == 0:
        return float("nan")
    attn = torch.softmax(theta * (h[lo:t] @ h[t]), 0)
    p = attn[words[lo + 1:t + 1] == words[t + 1]].sum().item()
    return math.log(p) if p > 0 else -math.inf


def test_a_cache_alone_that_misses_is_no_result(tiny, capsys):
    """--lambdasm 1 gives the model no say: a word the cache lacks has probability 0, the perplexity is inf."""
    with pytest.raises(UserError, match=r"the result is not finite \(valid perplexity inf\): lower --lambdasm"):
        run(tiny, "--lambdasm", 1, "--bptt", 50, "--window", 50, "--theta", 1.0, "--json")
    assert "{" not in capsys.readouterr().out


def test_cache_function_matches_a_per_position_loop():
    torch.manual_seed(0)
    n, d, window, theta = 40, 6, 9, 0.7
    h = torch.randn(n, d)
    words = torch.randint(0, 5, (n + 1,))
    got = []
    mem_h, mem_w = h[:0], words[:0]
    for i in range(0, n, 7):  # chunks of 7, the cache carried over as pointer.py does
        chunk, targets = h[i:i + 7], words[i + 1:i + 8]
        got.append(pointer.cache_logprob(chunk, targets, mem_h, mem_w, window, theta))
        mem_h, mem_w = torch.cat([mem_h, chunk])[-window:], torch.cat([mem_w, targets])[-window:]
    got = torch.cat(got)
    want = torch.tensor([naive_cache_logprob(h, words, t, window, theta) for t in range(n)])
    assert torch.isnan(got[0]) and torch.isnan(want[0])
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], atol=1e-5)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    # a word never seen before gets no cache mass: no position sees its own target
    fresh = pointer.cache_logprob(h, torch.arange(n), h[:0], words[:0], window, theta)
    assert torch.isnan(fresh[0]) and torch.isneginf(fresh[1:]).all()


def test_no_position_sees_the_future_and_chunks_do_not_matter(repeated):
    folder, save = repeated
    model, tokens = load(save), Corpus(folder).test[:200]
    k = 120
    changed = tokens.clone()
    changed[k:] = torch.randint(0, 300, (len(tokens) - k,), generator=torch.Generator().manual_seed(1))
    opts = dict(window=30, theta=1.0, lambdasm=0.3)
    _, before = pointer.token_logprobs(model, tokens, bptt=17, **opts)
    _, after = pointer.token_logprobs(model, changed, bptt=17, **opts)
    # position t predicts token t + 1: everything that predicts a token before k is unchanged
    assert torch.allclose(before[:k - 1], after[:k - 1], atol=1e-6, rtol=0)
    assert not torch.allclose(before[k - 1:], after[k - 1:])
    _, one_chunk = pointer.token_logprobs(model, tokens, bptt=1000, **opts)
    assert torch.allclose(before, one_chunk, atol=1e-5, rtol=0)


def blob_of(corpus=None, preset="awd-ptb"):
    sha = {v: k for k, v in CORPORA.items()}.get(corpus, "0" * 64)
    return {"vocab": {"size": 5, "sha256": sha}, "config": {"preset": preset}}


def settings(blob, **flags):
    """settings_for under the flags given (the others None, as the parser leaves them)."""
    unset = dict.fromkeys(("settings", "window", "theta", "lambdasm", "bptt"))
    return pointer.settings_for(blob, argparse.Namespace(save="x.pt", **(unset | flags)))


def test_corpus_comes_from_the_checkpoint_vocabulary_and_settings_from_its_source():
    """The real corpora's vocabulary fingerprints; the folder name or preset never decides the corpus."""
    for name, corpus in (("penn", "ptb"), ("wikitext-2", "wt2")):
        text = pytest.importorskip("conftest")._mirror_path() / name
        assert CORPORA[vocab_info(Corpus(text).dictionary)["sha256"]] == corpus
    assert settings(blob_of("wt2", "merity-wt2")) == (pointer.SETTINGS["wt2", "paper"], "wt2 paper")
    assert settings(blob_of("wt2", "single")) == (pointer.SETTINGS["wt2", "readme"], "wt2 readme")
    assert settings(blob_of("ptb", "merity-ptb"))[0]["window"] == 2000             # the paper's PTB window
    assert settings(blob_of("ptb", "merity-readme-ptb"))[0]["window"] == 500       # the README's
    assert settings(blob_of("ptb", "awd-ptb"))[0]["window"] == 500
    assert settings(blob_of("ptb", "awd-ptb"), settings="paper")[0]["window"] == 2000
    assert settings(blob_of("ptb", "merity-ptb"), window=7)[0] == dict(window=7, theta=1.0, lambdasm=0.1,
                                                                              bptt=5000)
    assert pointer.SETTINGS["wt2", "readme"] == dict(window=3785, theta=0.662, lambdasm=0.1279, bptt=2000)
    # the preset's declaration names its source; awd-lstm-lm's tag PyTorch==0.1.12 README has its own
    assert settings(blob_of("ptb", "merity-tag-ptb")) == (dict(window=500, theta=1.0, lambdasm=0.1, bptt=5000), "ptb tag")
    assert settings(blob_of("wt2", "merity-tag-wt2"))[0] == dict(window=3785, theta=0.662, lambdasm=0.1279, bptt=2000)
    assert settings(blob_of("ptb", "awd-ptb"), settings="tag")[1] == "ptb tag"
    assert settings(blob_of("wt2", "my-own")) == (pointer.SETTINGS["wt2", "readme"],
                                                  "wt2 readme (preset 'my-own' is unknown: the README's settings)")
    with pytest.raises(UserError, match="neither PTB nor WikiText-2 .* pass --window, --theta, --lambdasm and --bptt"):
        settings(blob_of(None, "merity-wt2"), window=10)
    assert settings(blob_of(None), window=10, theta=1.0, lambdasm=0.2, bptt=9) == \
        (dict(window=10, theta=1.0, lambdasm=0.2, bptt=9), "flags")


def test_awd_scoring_replicates_the_reference_script(repeated):
    """No cache until more than --window positions were seen nor at a chunk's first position (the
    result then depends on --bptt); everywhere else the same mixture as ours."""
    folder, save = repeated
    model, tokens = load(save), Corpus(folder).test[:200]
    opts = dict(window=30, theta=1.0, lambdasm=0.3)
    plain, ours = pointer.token_logprobs(model, tokens, bptt=17, **opts)
    _, awd = pointer.token_logprobs(model, tokens, bptt=17, awd_scoring=True, **opts)
    _, awd_other = pointer.token_logprobs(model, tokens, bptt=40, awd_scoring=True, **opts)
    t = torch.arange(len(ours))
    held = torch.clamp((t // 17) * 17, max=30)          # cache entries held before each position's chunk
    off = held + t % 17 <= 30
    assert off[:31].all() and off[34] and not off[35] and off[51] and not off[52]
    assert torch.equal(awd[off], plain[off]) and torch.allclose(awd[~off], ours[~off], atol=1e-6, rtol=0)
    assert not torch.allclose(awd, awd_other)           # the reference's result depends on --bptt
    res = run(save, "--window", 30, "--theta", 1.0, "--lambdasm", 0.3, "--bptt", 17, "--awd_scoring")
    test = Corpus(folder).test
    _, full = pointer.token_logprobs(model, test, bptt=17, awd_scoring=True, **opts)
    assert math.isclose(res["test_loss"], -full.double().sum().item() / test.numel(), rel_tol=1e-12)


@pytest.mark.parametrize("flags, message", [
    (["--window", "0"], "--window must be a positive"),
    (["--theta", "-0.1"], "--theta must be a finite number >= 0"),
    (["--theta", "inf"], "--theta must be a finite number >= 0"),
    (["--lambdasm", "1.5"], "--lambdasm must be in [0, 1]"),
    (["--lambdasm", "-0.1"], "--lambdasm must be in [0, 1]"),
    (["--bptt", "0"], "--bptt must be a positive integer"),
])
def test_bad_flags_fail_before_any_work(tmp_path, flags, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run(tmp_path / "does-not-exist.pt", *flags)  # the flag is reported, not the missing file


def test_bad_checkpoint_and_wrong_corpus(tmp_path, tiny, repeated):
    with pytest.raises(UserError, match="no checkpoint at"):
        run(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        run(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="vocabulary of 2061 words.*301 words"):
        run(tiny, "--data", repeated[0])


def test_command_line_error_is_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "pointer.py"), "--save", str(tmp_path / "junk.pt")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: cannot read")
