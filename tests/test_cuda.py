"""The CUDA path, checked against the CPU: run on any machine with a GPU (skipped without one).

    python -m pytest -q tests/test_cuda.py

DropConnect through cuDNN, fraternal dropout's two forwards before one backward, the two passes
overlapped on two CUDA streams (--overlap_passes) against the sequential path, averaged SGD's
capturable state, checkpoints crossing devices, a dry run of every preset and variant, MC dropout.
"""
import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import evaluate as evaluate_cli
import fraternal
import main as main_cli
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from config import train_config
from fraternal import Regularizer, fraternal_loss, overlap_blocker
from fraternal import Masks
from model import RNNModel
from schedule import Schedule
from epoch import make_optimizer, train_step
from weight_drop import WeightDropLSTM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
SITES = {"embedding_dropout": "e", "input_dropout": "i", "output_dropout": "o"}


def _small_cfg(preset="awd-ptb", model="FD", *flags):
    argv = ["--preset", preset, "--model", model, "--emsize", "16", "--nhid", "24", "--device", "cpu", *flags]
    return train_config(argv)


def test_dropconnect_through_cudnn_equals_plain_lstm_with_masked_weight():
    torch.manual_seed(0)
    wd = WeightDropLSTM(8, 16, num_layers=2, weight_dropout=0.5).to(CUDA).train()
    x = torch.randn(9, 4, 8, device=CUDA, requires_grad=True)
    hx = (torch.randn(2, 4, 16, device=CUDA), torch.randn(2, 4, 16, device=CUDA))
    out, (h, c) = wd(x, hx)
    mask = wd.mask[0]
    plain = nn.LSTM(8, 16, num_layers=2).to(CUDA)
    plain.load_state_dict(wd.state_dict())
    with torch.no_grad():
        for k in range(2):
            getattr(plain, f"weight_hh_l{k}").mul_(mask[k])
    x2 = x.detach().clone().requires_grad_(True)
    out2, (h2, c2) = plain(x2, hx)
    torch.testing.assert_close(out, out2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, h2, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    out2.backward(grad_out)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    for k in range(2):
        # d/dW_raw of (W_raw * m) = m * d/dW_dropped
        torch.testing.assert_close(getattr(wd, f"weight_hh_l{k}").grad,
                                   getattr(plain, f"weight_hh_l{k}").grad * mask[k], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(getattr(wd, f"weight_ih_l{k}").grad, getattr(plain, f"weight_ih_l{k}").grad,
                                   rtol=1e-4, atol=1e-5)


def test_no_warning_per_call_on_cuda():
    wd = WeightDropLSTM(8, 16, weight_dropout=0.5).to(CUDA).train()
    x = torch.randn(5, 3, 8, device=CUDA)
    with warnings.catch_warnings(record=True) as seen:
        for _ in range(3):
            wd(x)[0].sum().backward()
    assert not [w for w in seen if "contiguous" in str(w.message)], [str(w.message) for w in seen]


def _record_masks(model):
    """Each dropout site's mask after every forward, in call order."""
    log = []

    def hook(module, args, out):
        log.append((module, module.mask.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in
               [model.embedding_dropout, model.input_dropout, model.output_dropout, *model.hidden_dropouts,
                *model.rnns]]
    return log, handles


@pytest.mark.parametrize("model_name", ["FD", "RD", "PM", "ELD"])
def test_two_forwards_one_backward_gives_the_cpu_gradients(model_name):
    """Fraternal loss on CUDA (fused loss, cuDNN) against plain autograd on the CPU, same masks."""
    cfg = _small_cfg("awd-ptb", model_name)
    torch.manual_seed(1)
    cpu = RNNModel.from_config(cfg, 50).train()
    gpu = RNNModel.from_config(cfg, 50)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA).train()
    data = torch.randint(0, 50, (12, 3))
    targets = torch.randint(0, 50, (12 * 3,))
    reg = Regularizer.from_config(cfg)
    log, handles = _record_masks(gpu)
    out = fraternal_loss(gpu, data.to(CUDA), targets.to(CUDA), gpu.init_hidden(3), reg)
    out.loss.backward()
    for h in handles:
        h.remove()
    per_call = len(log) // 2
    passes = [log[:per_call], log[per_call:]]
    logits = []
    twin = dict(zip(gpu.modules(), cpu.modules()))
    for k, recorded in enumerate(passes):
        if k == 1 and reg.eval_auxiliary:  # ELD: pass 2 without dropout, back-propagated
            cpu.eval()
            lg, _ = cpu(data, cpu.init_hidden(3))
            cpu.train()
        else:
            for module, mask in recorded:
                twin[module].mask = mask.cpu()
            lg, _ = cpu(data, cpu.init_hidden(3), Masks(reuse="eihwo"))
        logits.append(lg.view(-1, 50))
    ce = [F.cross_entropy(lg, targets) for lg in logits]
    target = (ce[0] + ce[1]) / 2 if reg.double_target else ce[0]
    if reg.penalty == "mse":
        penalty = F.mse_loss(logits[0], logits[1])
    else:
        lp1, lp2 = F.log_softmax(logits[0], -1), F.log_softmax(logits[1], -1)
        penalty = ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(-1).mean() / 2
    loss = target + reg.kappa * penalty
    loss.backward()
    torch.testing.assert_close(out.loss.cpu(), loss.detach(), rtol=1e-4, atol=1e-5)
    for (name, pg), (_, pc) in zip(gpu.named_parameters(), cpu.named_parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-3, atol=2e-5, msg=name)


def _overlap_spy(monkeypatch):
    """Counts the calls of the overlapped path, so a test knows it ran."""
    calls, real = [], fraternal._overlapped_passes

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(fraternal, "_overlapped_passes", spy)
    return calls


def _loss_grads_masks(model, data, targets, reg, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    log, handles = _record_masks(model)
    out = fraternal_loss(model, data, targets, model.init_hidden(data.size(1)), reg)
    out.loss.backward()
    for h in handles:
        h.remove()
    torch.cuda.synchronize()
    return out, [p.grad.clone() for p in model.parameters()], [mask for _, mask in log]


@pytest.mark.parametrize("model_name", ["FD", "PM", "RD"])
@pytest.mark.parametrize("ar_tar", [(), ("--alpha", "2", "--beta", "1")])
@pytest.mark.parametrize("fused", [True, False])
def test_overlapped_passes_equal_the_sequential_path(model_name, ar_tar, fused, monkeypatch):
    """Same seed: the same masks at every site (drawn in the same order from the host), the same loss,
    logged parts, carried hidden state and every gradient (the two passes' contributions to the shared
    weights are summed across the two streams)."""
    cfg = _small_cfg("awd-ptb", model_name, *ar_tar)
    torch.manual_seed(1)
    model = RNNModel.from_config(cfg, 50).to(CUDA).train()
    data = torch.randint(0, 50, (12, 3), device=CUDA)
    targets = torch.randint(0, 50, (12 * 3,), device=CUDA)
    sequential = dataclasses.replace(Regularizer.from_config(cfg), fused=fused)
    overlapped = dataclasses.replace(sequential, overlap=True)
    assert overlap_blocker(overlapped, CUDA) is None
    calls = _overlap_spy(monkeypatch)
    out_s, grads_s, masks_s = _loss_grads_masks(model, data, targets, sequential, 7)
    assert not calls
    out_o, grads_o, masks_o = _loss_grads_masks(model, data, targets, overlapped, 7)
    assert calls == [1]
    assert len(masks_o) == len(masks_s) == 2 * (1 + 1 + 3 + 2 + 1)  # e, i, 3 x w, 2 x h, o per pass
    for a, b in zip(masks_s, masks_o):
        assert torch.equal(a, b)
    for a, b in ((out_s.loss, out_o.loss), (out_s.ce, out_o.ce), (out_s.penalty, out_o.penalty)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (h, c), (h2, c2) in zip(out_s.hidden, out_o.hidden):
        torch.testing.assert_close(h, h2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, c2, rtol=1e-5, atol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), grads_s, grads_o):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_name", ["FD", "RD"])
def test_training_steps_with_overlapped_passes_match_the_sequential_steps(model_name, monkeypatch):
    """Six optimizer steps (lr scaling, clipping, SGD) on the same batches from the same weights."""
    cfg = _small_cfg("awd-ptb", model_name)
    torch.manual_seed(2)
    init = RNNModel.from_config(cfg, 50).state_dict()
    batches = [(torch.randint(0, 50, (10, 4), device=CUDA), torch.randint(0, 50, (40,), device=CUDA))
               for _ in range(6)]
    calls = _overlap_spy(monkeypatch)
    runs = {}
    for overlap in (False, True):
        model = RNNModel.from_config(cfg, 50)
        model.load_state_dict(init)
        model.to(CUDA).train()
        params = list(model.parameters())
        opt = make_optimizer(cfg, Schedule(cfg), params, CUDA)
        reg = dataclasses.replace(Regularizer.from_config(cfg), overlap=overlap)
        hidden, losses = model.init_hidden(4), []
        torch.manual_seed(3)
        for data, targets in batches:
            out = train_step(model, opt, params, data, targets, hidden, reg, cfg, 10)
            hidden = out.hidden
            losses.append(out.loss.item())
        runs[overlap] = losses, [p.detach().clone() for p in params]
    assert len(calls) == len(batches)
    (loss_s, params_s), (loss_o, params_o) = runs[False], runs[True]
    assert loss_o == pytest.approx(loss_s, rel=1e-3)  # cuDNN's and the embedding's atomics: not bit-exact
    for (name, _), a, b in zip(model.named_parameters(), params_s, params_o):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)


def test_averaged_sgd_state_matches_the_cpu():
    cfg = dict(_small_cfg(), wdecay=1.2e-6, lr=30.0, optimizer="asgd")
    torch.manual_seed(2)
    params = [torch.randn(5, 4), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(4)]
    runs = {}
    for device in ("cpu", "cuda"):
        ps = [p.clone().to(device).requires_grad_(True) for p in params]
        opt = make_optimizer(cfg, Schedule(cfg).load_state_dict({"averaging": True}), ps, torch.device(device))
        for step in grads:
            for p, g in zip(ps, step):
                p.grad = g.to(device)
            opt.step()
        runs[device] = (ps, opt)
    (pc, oc), (pg, og) = runs["cpu"], runs["cuda"]
    for a, b in zip(pc, pg):
        torch.testing.assert_close(a.detach(), b.detach().cpu(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(oc.state[a]["ax"], og.state[b]["ax"].cpu(), rtol=1e-5, atol=1e-6)
        assert float(oc.state[a]["step"]) == float(og.state[b]["step"])


@pytest.mark.parametrize("direction", ["cuda_to_cpu", "cpu_to_cuda"])
def test_checkpoint_crosses_devices(tmp_path, direction):
    cfg = _small_cfg()
    src, dst = (CUDA, torch.device("cpu")) if direction == "cuda_to_cpu" else (torch.device("cpu"), CUDA)
    torch.manual_seed(3)
    model = RNNModel.from_config(cfg, 50).to(src).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, "best", model, cfg, {"size": 50, "sha256": "x"})
    loaded = model_from_checkpoint(load_checkpoint(path, "best"), dst).eval()
    data = torch.randint(0, 50, (6, 2))
    with torch.no_grad():
        a, _ = model(data.to(src), model.init_hidden(2))
        b, _ = loaded(data.to(dst), loaded.init_hidden(2))
    torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-4, atol=1e-5)


def _dry_run_cases():
    """Every variant on each model shape (the single layer, PTB's and WikiText-2's three layers) and on AR/TAR
    (merity-ptb): the other presets share these shapes."""
    for preset in ("single", "awd-ptb", "awd-wt2", "merity-ptb"):
        for model in ("FD", "ELD", "PM", "RD", "baseline"):
            yield preset, model, ()
        yield preset, "FD", ("--same_mask_w",)
        yield preset, "RD", ("--overlap_passes",)


@pytest.mark.parametrize("preset,model,flags", list(_dry_run_cases()))
def test_dry_run_on_cuda(preset, model, flags, mirror):
    data = mirror / ("wikitext-2" if "wt2" in preset else "penn")
    result = main_cli.main(["--preset", preset, "--model", model, "--dry_run", "--device", "cuda",
                            "--data", str(data), *flags])
    assert result["test_ppl"] > 1 and result["valid_ppl"] > 1


def test_evaluate_mc_on_cuda(tiny_corpus, tmp_path):
    from data import Corpus
    from checkpoint import vocab_info
    corpus = Corpus(tiny_corpus)
    cfg = dict(_small_cfg("single", "FD"), data=str(tiny_corpus))
    model = RNNModel.from_config(cfg, len(corpus.dictionary))
    path = tmp_path / "m.pt"
    save_checkpoint(path, "best", model, cfg, vocab_info(corpus.dictionary))
    res = evaluate_cli.main(["--save", str(path), "--mc", "4", "--mask_variance", "--device", "cuda",
                             "--max_batches", "3", "--json"])
    cpu = evaluate_cli.main(["--save", str(path), "--device", "cpu", "--max_batches", "3"])
    assert res["mc_test_ppl"] > 1 and res["mask_variance"] > 0
    assert abs(res["valid_loss"] - cpu["valid_loss"]) < 1e-4
