"""--overlap_passes (fraternal.py): pass 2 on a second CUDA stream.  On the CPU the flag runs the
sequential path and gives identical results; the overlapped path itself runs here with stand-in
streams, to hold its order (fork before pass 1, join before the loss, allocator records) and its
values.  tests/test_cuda.py checks it on a GPU against the sequential path."""
import json
from contextlib import contextmanager

import pytest
import torch

import fraternal
import main as main_cli
from config import build_config, build_train_parser, train_config
from fraternal import Regularizer, fraternal_loss, overlap_blocker
from model import RNNModel
from runfiles import UserError

V, T, B = 40, 6, 3
CUDA = torch.device("cuda")  # a device name only: nothing runs on it here
VARIANTS = {"FD": dict(kappa=0.3, double_target=True), "PM": dict(kappa=0.3),
            "RD": dict(kappa=0.5, double_target=True, penalty="kl")}


def tiny_model():
    torch.manual_seed(0)
    return RNNModel(V, 10, 14, 2, dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4).train()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, V, (T, B), generator=g), torch.randint(0, V, (T * B,), generator=g)


def loss_and_grads(reg, seed=5):
    model, (data, targets) = tiny_model(), batch()
    torch.manual_seed(seed)
    out = fraternal_loss(model, data, targets, model.init_hidden(B), reg)
    out.loss.backward()
    return out, [p.grad for p in model.parameters()], model


def assert_identical(a, b):
    (out_a, grads_a, _), (out_b, grads_b, _) = a, b
    for x, y in ((out_a.loss, out_b.loss), (out_a.ce, out_b.ce), (out_a.penalty, out_b.penalty)):
        assert torch.equal(x, y)
    for (h, c), (h2, c2) in zip(out_a.hidden, out_b.hidden):
        assert torch.equal(h, h2) and torch.equal(c, c2)
    for g, g2 in zip(grads_a, grads_b):
        assert torch.equal(g, g2)


def test_flag_is_declared_off_by_default_stored_and_refused_where_it_does_nothing():
    assert train_config([])["overlap_passes"] is False
    assert train_config(["--model", "RD", "--overlap_passes"])["overlap_passes"] is True
    finetune = build_config({"save": "runs/x.pt"}, "finetune", train_config(["--overlap_passes"]))
    assert finetune["overlap_passes"] is False
    text = " ".join(build_train_parser().format_help().split())
    assert "--overlap_passes" in text and "CUDA only" in text and "Off by default" in text
    with pytest.raises(UserError, match="--overlap_passes would do nothing"):
        train_config(["--model", "baseline", "--overlap_passes"])
    assert Regularizer.from_config(train_config(["--overlap_passes"])).overlap
    assert not Regularizer.from_config({**train_config([]), "overlap_passes": False}).overlap


def test_overlap_applies_only_to_independent_train_mode_passes_on_cuda():
    for kw in VARIANTS.values():
        assert overlap_blocker(Regularizer(**kw, overlap=True), CUDA) is None
        assert "CUDA" in overlap_blocker(Regularizer(**kw, overlap=True), torch.device("cpu"))
    blocked = {"batched": Regularizer(kappa=0.3, same_mask="w"), "same_mask": Regularizer(kappa=0.3, same_mask="o"),
               "eval": Regularizer(kappa=0.3, eval_auxiliary=True), "one pass": Regularizer()}
    reasons = {name: overlap_blocker(reg, CUDA) for name, reg in blocked.items()}
    assert "one forward of twice the batch" in reasons["batched"] and "reuses" in reasons["same_mask"]
    assert "eval-mode" in reasons["eval"] and "no second pass" in reasons["one pass"]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("alpha_beta", [(0.0, 0.0), (2.0, 1.0)])
def test_on_cpu_the_flag_runs_the_sequential_path_with_identical_results(variant, alpha_beta, monkeypatch):
    kw = dict(VARIANTS[variant], alpha=alpha_beta[0], beta=alpha_beta[1])
    sequential = loss_and_grads(Regularizer(**kw))

    def never(*args):
        raise AssertionError("the overlapped path ran on the CPU")

    monkeypatch.setattr(fraternal, "_overlapped_passes", never)
    assert_identical(loss_and_grads(Regularizer(**kw, overlap=True)), sequential)


class FakeStreams:
    """Stand-ins for torch.cuda's streams that log every fork, join, stream switch and allocator record."""

    def __init__(self, monkeypatch):
        self.log, self.current = [], "main"
        streams = self

        class Stream:
            def __init__(self, name):
                self.name = name

            def wait_stream(self, other):
                streams.log.append(("wait", self.name, other.name))

        self.main, self.side = Stream("main"), Stream("side")

        @contextmanager
        def use(stream):
            before, self.current = self.current, stream.name
            self.log.append(("enter", stream.name))
            yield
            self.current = before
            self.log.append(("exit", stream.name))

        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: getattr(self, self.current))
        monkeypatch.setattr(torch.cuda, "stream", use)
        monkeypatch.setattr(torch.Tensor, "record_stream",
                            lambda t, stream: self.log.append(("record", t, stream.name)))
        monkeypatch.setattr(fraternal, "_side_stream", lambda device: self.side)
        monkeypatch.setattr(fraternal, "overlap_blocker", lambda reg, device: None)  # as on a CUDA device


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_overlapped_path_forks_before_pass_one_joins_before_the_loss_and_keeps_the_values(variant, monkeypatch):
    kw = dict(VARIANTS[variant], alpha=2.0, beta=1.0)
    sequential = loss_and_grads(Regularizer(**kw))
    streams = FakeStreams(monkeypatch)
    model, (data, targets) = tiny_model(), batch()
    hidden = model.init_hidden(B)
    features, loss = model.features, model.decoder.fused_loss

    def logged_features(*args, **kwargs):
        streams.log.append(("pass", streams.current))
        f = features(*args, **kwargs)
        streams.log.append(("output", f.outputs[-1]))
        return f

    def logged_loss(*args, **kwargs):
        streams.log.append(("loss", streams.current))
        return loss(*args, **kwargs)

    monkeypatch.setattr(model, "features", logged_features)
    monkeypatch.setattr(model.decoder, "fused_loss", logged_loss)
    torch.manual_seed(5)
    out = fraternal_loss(model, data, targets, hidden, Regularizer(**kw, overlap=True))
    out.loss.backward()
    assert_identical((out, [p.grad for p in model.parameters()], model), sequential)

    log = streams.log
    out2 = [e[1] for e in log if e[0] == "output"][1]
    order = [e if e[0] in ("wait", "enter", "exit", "pass", "loss") else e[:1] for e in log if e[0] != "record"]
    assert order == [("wait", "side", "main"), ("pass", "main"), ("output",), ("enter", "side"), ("pass", "side"),
                     ("output",), ("exit", "side"), ("wait", "main", "side"), ("loss", "main")]
    records = [(e[1], e[2]) for e in log if e[0] == "record"]
    assert log.index(("loss", "main")) > max(i for i, e in enumerate(log) if e[0] == "record")
    read_by_side = [data] + [t for state in hidden for t in state]
    assert len(records) == len(read_by_side) + 1
    assert all(any(t is r and s == "side" for r, s in records) for t in read_by_side)
    assert any(t is out2 and s == "main" for t, s in records)


def test_training_with_the_flag_on_cpu_equals_training_without_it(tiny_corpus, tmp_path, capsys):
    """A whole run through main.py: the run says the passes are sequential here, and every epoch's
    losses and the final perplexities are those of the run without the flag."""
    results = {}
    for flag in ((), ("--overlap_passes",)):
        save = tmp_path / f"run{len(flag)}.pt"
        results[flag] = main_cli.main(
            ["--preset", "awd-ptb", "--model", "RD", "--data", str(tiny_corpus), "--emsize", "8", "--nhid", "12",
             "--nlayers", "2", "--batch_size", "4", "--bptt", "12", "--eval_batch_size", "4", "--epochs", "1",
             "--log-interval", "50", "--save", str(save), "--device", "cpu", *flag])
        metrics = [json.loads(line) for line in open(tmp_path / f"run{len(flag)}.metrics.jsonl")]
        results[flag]["losses"] = [(m["train_loss"], m["valid_loss"], m["penalty"]) for m in metrics]
    out = capsys.readouterr().out
    assert out.count("--overlap_passes: the two passes run one after the other here: CUDA streams exist only") == 1
    plain, flagged = results[()], results[("--overlap_passes",)]
    assert plain["losses"] == flagged["losses"]
    assert (plain["valid_ppl"], plain["test_ppl"]) == (flagged["valid_ppl"], flagged["test_ppl"])
