"""The training semantics of main.py: each variant's loss, AR/TAR, the per-batch step, the schedules
(NT-ASGD switching, annealing, the non-monotone stop), averaged weights and evaluation arithmetic."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import epoch
from schedule import Schedule
from config import PRESETS
from data import batchify
from fraternal import VARIANTS, Regularizer, fraternal_loss, penalty_function
from model import Masks, RNNModel
from mc_dropout import mc_cross_entropy
from scoring import evaluate, ppl

V, T, B = 50, 7, 3


def tiny_model(layers=2, locked=True, seed=0):
    torch.manual_seed(seed)
    return RNNModel(V, 12, 16, layers, dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4,
                    locked=locked).train()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, V, (T, B), generator=g)
    targets = torch.randint(0, V, (T * B,), generator=g)
    return data, targets


def ce(logits, targets):
    return F.cross_entropy(logits.view(-1, V), targets)


def reference_passes(model, data, hidden, second="train", reuse=()):
    """Replay the two passes by hand, drawing masks in the same order as fraternal_loss."""
    f = model.features(data, hidden)
    l1, h1, raw, dropped = model.decoder(f.outputs[-1]), f.hidden, f.raw_outputs, f.outputs
    if second == "eval":
        model.eval()
        l2, _ = model(data, hidden)
        model.train()
    else:
        l2, _ = model(data, hidden, Masks(reuse=reuse))
    return l1, l2, h1, raw, dropped


@pytest.mark.parametrize("variant", ["FD", "ELD", "PM", "RD", "baseline"])
def test_loss_of_each_variant_matches_the_reference_formula(variant):
    kappa = 0.37
    reg = {
        "FD": Regularizer(kappa=kappa, double_target=True),
        "ELD": Regularizer(kappa=kappa, eval_auxiliary=True),
        "PM": Regularizer(kappa=kappa),
        "RD": Regularizer(kappa=kappa, double_target=True, penalty="kl"),
        "baseline": Regularizer(),
    }[variant]
    model, (data, targets) = tiny_model(), batch()
    hidden = model.init_hidden(B)
    torch.manual_seed(5)
    out = fraternal_loss(model, data, targets, hidden, reg)
    torch.manual_seed(5)
    l1, l2, h1, _, _ = reference_passes(model, data, hidden, "eval" if variant == "ELD" else "train")
    ce1, ce2 = ce(l1, targets), ce(l2, targets)
    mse = ((l1 - l2) ** 2).sum() / l1.numel()
    p1, p2 = F.softmax(l1, -1), F.softmax(l2, -1)
    kl12 = (p1 * (p1.log() - p2.log())).sum(-1).mean()
    kl21 = (p2 * (p2.log() - p1.log())).sum(-1).mean()
    expected = {
        "FD": (ce1 + ce2) / 2 + kappa * mse,
        "ELD": ce1 + kappa * mse,
        "PM": ce1 + kappa * mse,
        "RD": (ce1 + ce2) / 2 + kappa * (kl12 + kl21) / 2,
        "baseline": ce1,
    }[variant]
    assert torch.allclose(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.ce, ce1)  # the reported loss is pass 1's cross-entropy
    for (h, c), (h_ref, c_ref) in zip(out.hidden, h1):  # pass 1's hidden state is carried on
        assert torch.equal(h, h_ref) and torch.equal(c, c_ref)
    if variant != "baseline":
        assert not torch.allclose(l1, l2)  # the second pass really differs


@pytest.mark.parametrize("variant", ["FD", "ELD", "PM", "RD", "baseline"])
@pytest.mark.parametrize("alpha_beta", [(0.0, 0.0), (2.0, 1.0)])
def test_plain_and_fused_losses_agree_in_value_and_gradient(variant, alpha_beta):
    """The fused chunked loss is an optimization behind the plain formula, nothing more."""
    v = VARIANTS[variant]
    grads = []
    for fused in (False, True):
        reg = Regularizer(kappa=v.kappa or 0.0, double_target=v.double_target, eval_auxiliary=v.second_pass == "eval",
                          penalty=v.penalty, alpha=alpha_beta[0], beta=alpha_beta[1], fused=fused)
        model, (data, targets) = tiny_model(), batch()
        torch.manual_seed(5)
        out = fraternal_loss(model, data, targets, model.init_hidden(B), reg)
        out.loss.backward()
        grads.append((out.loss.detach(), out.ce, out.penalty, [p.grad.clone() for p in model.parameters()]))
    (l0, c0, p0, g0), (l1, c1, p1, g1) = grads
    assert torch.allclose(l0, l1, rtol=1e-5) and torch.allclose(c0, c1, rtol=1e-5)
    assert torch.allclose(p0, p1, rtol=1e-4, atol=1e-7)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_unknown_penalty_fails_everywhere():
    with pytest.raises(ValueError, match="unknown penalty"):
        Regularizer(kappa=0.1, penalty="kld")
    with pytest.raises(ValueError, match="unknown penalty"):
        penalty_function("kld")(torch.zeros(2, 3), torch.zeros(2, 3))
    from fused_loss import decoder_loss
    with pytest.raises(ValueError, match="no gradient for penalty"):
        decoder_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4),
                     torch.zeros(2, dtype=torch.long), 0.5, 0.5, 0.1, "kld")


def test_each_variant_is_declared_once_with_its_defaults():
    from config import default_kappa, train_config
    for name, v in VARIANTS.items():
        for preset in PRESETS:
            cfg = train_config(["--preset", preset, "--model", name])
            assert (cfg["kappa"], cfg["double_target"], cfg["penalty"]) == (default_kappa(preset, name),
                                                                             v.double_target, v.penalty)
            assert cfg["eval_auxiliary"] == (v.second_pass == "eval")
    assert default_kappa("single", "FD") == 0.15 and default_kappa("awd-wt2", "FD") == 0.1
    assert [VARIANTS[m].kappa for m in ("FD", "ELD", "PM", "RD", "baseline")] == [0.1, 0.25, 0.15, 1.0, 0.0]


def test_eld_second_pass_is_deterministic_eval_mode_with_gradient():
    model, (data, targets) = tiny_model(), batch()
    hidden = model.init_hidden(B)
    model.eval()
    with torch.no_grad():
        eval_logits, _ = model(data, hidden)
    model.train()
    torch.manual_seed(3)
    out = fraternal_loss(model, data, targets, hidden, Regularizer(kappa=1.0, eval_auxiliary=True))
    torch.manual_seed(3)
    l1, _ = model(data, hidden)
    assert torch.allclose(out.penalty, F.mse_loss(l1, eval_logits), rtol=1e-5)
    assert model.training  # restored to train mode
    out.loss.backward()
    assert model.rnns[0].weight_hh_l0.grad.abs().sum() > 0


def test_eld_eval_pass_reaches_the_embedding_only_through_the_tied_decoder():
    """As the reference: the eval-mode lookup uses a detached embedding weight."""
    torch.manual_seed(0)
    untied = RNNModel(V, 12, 16, 2, dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4,
                      tie_weights=False).eval()
    data, _ = batch()
    logits, _ = untied(data, untied.init_hidden(B))
    logits.pow(2).sum().backward()
    assert untied.encoder.weight.grad is None  # no path through the lookup
    assert untied.rnns[0].weight_ih_l0.grad.abs().sum() > 0  # the rest of the pass is differentiated
    untied.zero_grad(set_to_none=True)
    untied.train()
    untied(data, untied.init_hidden(B))[0].pow(2).sum().backward()
    assert untied.encoder.weight.grad.abs().sum() > 0  # in train mode the lookup is differentiated
    tied = tiny_model().eval()
    tied(data, tied.init_hidden(B))[0].pow(2).sum().backward()
    assert tied.encoder.weight.grad.abs().sum() > 0  # tied: the decoder path remains


def test_baseline_runs_one_pass_and_pi_model_without_kappa_skips_the_second():
    calls = []
    model, (data, targets) = tiny_model(), batch()
    model.rnns[0].register_forward_hook(lambda *a: calls.append(1))  # once per pass
    fraternal_loss(model, data, targets, model.init_hidden(B), Regularizer())
    fraternal_loss(model, data, targets, model.init_hidden(B), Regularizer(kappa=0.0))
    assert len(calls) == 2
    fraternal_loss(model, data, targets, model.init_hidden(B), Regularizer(kappa=0.1))
    assert len(calls) == 4


@pytest.mark.parametrize("site", ["e", "i", "h", "w", "o"])
def test_same_mask_reuses_pass_one_mask_at_that_site_only(site):
    model, (data, targets) = tiny_model(), batch()
    modules = {"e": model.embedding_dropout, "i": model.input_dropout, "h": model.hidden_dropouts[0],
               "w": model.rnns[0], "o": model.output_dropout}
    seen = {}
    for name, m in modules.items():
        m.register_forward_hook(lambda mod, args, out, name=name: seen.setdefault(name, []).append(mod.mask.clone()))
    # batch_passes off: two separate forwards, so each module is called twice
    fraternal_loss(model, data, targets, model.init_hidden(B), Regularizer(kappa=0.1, same_mask=site,
                                                                           batch_passes=False))
    for name, masks in seen.items():
        assert len(masks) == 2
        assert torch.equal(masks[0], masks[1]) == (name == site), name


@pytest.mark.parametrize("same_mask", ["w", "wi", "eihwo"])
def test_batched_passes_equal_two_separate_passes_with_the_same_masks(same_mask):
    model, (data, targets) = tiny_model(), batch()
    hidden = model.init_hidden(B)
    reg = Regularizer(kappa=0.3, double_target=True, same_mask=same_mask, alpha=0.5, beta=0.5)
    assert reg.batched
    out = fraternal_loss(model, data, targets, hidden, reg)
    out.loss.backward()
    batched_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    sites = {"e": [model.embedding_dropout], "i": [model.input_dropout], "h": list(model.hidden_dropouts),
             "w": list(model.rnns), "o": [model.output_dropout]}
    drawn = {m: m.mask for ms in sites.values() for m in ms}
    assert model.rnns[0].mask.shape[0] == 1  # one W_hh mask for both halves
    assert torch.equal(drawn[model.input_dropout][:, :B], drawn[model.input_dropout][:, B:]) == ("i" in same_mask)

    def half(module, k):  # the mask the k-th copy saw
        mask = drawn[module]
        if module in sites["w"] or mask.size(0) == 1 and module is model.embedding_dropout:
            return mask
        if module is model.embedding_dropout:
            return mask[k:k + 1]
        return mask[:, k * B:(k + 1) * B]

    logits = []
    for k in range(2):
        for module in drawn:
            module.mask = half(module, k)
        f = model.features(data, hidden, Masks(reuse="eihwo"))
        logits.append((model.decoder(f.outputs[-1]), f.hidden, f.raw_outputs, f.outputs))
    (l1, h1, raw, dropped), (l2, _, _, _) = logits
    expected = ((ce(l1, targets) + ce(l2, targets)) / 2 + 0.3 * F.mse_loss(l1, l2)
                + 0.5 * dropped[-1].pow(2).mean() + 0.5 * (raw[-1][1:] - raw[-1][:-1]).pow(2).mean())
    expected.backward()
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    for g, p in zip(batched_grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6)
    for (h, c), (h_ref, c_ref) in zip(out.hidden, h1):
        assert torch.allclose(h, h_ref, atol=1e-6) and torch.allclose(c, c_ref, atol=1e-6)


def test_all_masks_shared_makes_the_penalty_vanish():
    model, (data, targets) = tiny_model(), batch()
    out = fraternal_loss(model, data, targets, model.init_hidden(B),
                         Regularizer(kappa=1.0, double_target=True, same_mask="eihwo"))
    assert out.penalty.item() == 0.0


def test_rdrop_penalty_is_symmetric_kl_per_token():
    torch.manual_seed(0)
    a, b = torch.randn(4, 3, 9), torch.randn(4, 3, 9)
    kl = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="none").sum(-1)
    kl_rev = F.kl_div(F.log_softmax(a, -1), F.log_softmax(b, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(penalty_function("kl")(a, b), (kl.mean() + kl_rev.mean()) / 2, rtol=1e-5)
    assert torch.allclose(penalty_function("mse")(a, b), ((a - b) ** 2).mean())


def test_ar_on_dropped_output_and_tar_on_raw_output_of_the_last_layer():
    model, (data, targets) = tiny_model(), batch()
    hidden = model.init_hidden(B)
    torch.manual_seed(9)
    plain = fraternal_loss(model, data, targets, hidden, Regularizer()).loss
    torch.manual_seed(9)
    _, raw, dropped = model.features(data, hidden)
    torch.manual_seed(9)
    reg = fraternal_loss(model, data, targets, hidden, Regularizer(alpha=2.0, beta=1.5)).loss
    ar = dropped[-1].pow(2).mean()
    tar = (raw[-1][1:] - raw[-1][:-1]).pow(2).mean()
    assert not torch.allclose(dropped[-1], raw[-1])
    assert torch.allclose(reg - plain, 2.0 * ar + 1.5 * tar, rtol=1e-4)


def step_cfg(**kw):
    cfg = dict(PRESETS["awd-ptb"], clip=0.0, wdecay=0.0, lr=2.0, bptt=10)
    cfg.update(kw)
    return cfg


def test_train_step_scales_lr_by_seq_len_for_that_step_only():
    model, (data, targets) = tiny_model(), batch()
    model.set_dropout(0, 0, 0, 0, 0)
    cfg = step_cfg()
    hidden = model.init_hidden(B)
    before = [p.detach().clone() for p in model.parameters()]
    fraternal_loss(model, data, targets, hidden, Regularizer()).loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
    epoch.train_step(model, opt, list(model.parameters()), data, targets, hidden, Regularizer(), cfg, seq_len=T)
    for p, p0, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p.detach(), p0 - cfg["lr"] * T / cfg["bptt"] * g, atol=1e-6)
    assert opt.param_groups[0]["lr"] == cfg["lr"]


def test_train_step_clips_the_gradient_norm():
    model, (data, targets) = tiny_model(), batch()
    cfg = step_cfg(clip=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    epoch.train_step(model, opt, list(model.parameters()), data, targets, model.init_hidden(B),
                       Regularizer(kappa=0.1, double_target=True), cfg, seq_len=T)
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert norm.item() == pytest.approx(0.01, rel=1e-3)


def test_variable_bptt_distribution_and_cap():
    np.random.seed(0)
    lens = np.array([epoch.draw_seq_len(dict(bptt=70, max_seq_len=0)) for _ in range(4000)])
    assert lens.min() >= 5
    half = (lens < 52).mean()
    assert 0.03 < half < 0.07  # base bptt/2 with probability 0.05
    assert abs(np.median(lens) - 70) <= 2
    capped = [epoch.draw_seq_len(dict(bptt=35, max_seq_len=45)) for _ in range(2000)]
    assert max(capped) == 45


def test_hidden_state_reset_probability(monkeypatch):
    seen = []
    real = epoch.fraternal_loss

    def spy(model, data, targets, hidden, reg):
        seen.append(float(sum(h.abs().sum() for hc in hidden for h in hc)))
        return real(model, data, targets, hidden, reg)

    monkeypatch.setattr(epoch, "fraternal_loss", spy)
    model = tiny_model()
    train = batchify(torch.randint(0, V, (600,)), B)
    cfg = dict(step_cfg(), max_seq_len=0, log_interval=1000, save="unused")
    for prob, expect_zero in ((1.0, True), (0.0, False)):
        seen.clear()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        epoch.train_epoch(model, opt, train, dict(cfg, reset_hidden_prob=prob), Regularizer(), 1, max_batches=6)
        assert seen[0] == 0.0
        assert all(s == 0.0 for s in seen[1:]) == expect_zero


def test_non_finite_loss_stops_the_epoch(monkeypatch, tmp_path):
    real = epoch.fraternal_loss

    def poisoned(*args):
        out = real(*args)
        return out._replace(ce=out.ce * float("nan"))

    monkeypatch.setattr(epoch, "fraternal_loss", poisoned)
    model = tiny_model()
    train = batchify(torch.randint(0, V, (600,)), B)
    (tmp_path / "best.pt").write_bytes(b"an earlier epoch's best model")
    cfg = dict(step_cfg(), max_seq_len=0, log_interval=1000, reset_hidden_prob=0.0, save=str(tmp_path / "best.pt"))
    with pytest.raises(epoch.NonFiniteLoss, match="best checkpoint .*best.pt is intact"):
        epoch.train_epoch(model, torch.optim.SGD(model.parameters(), lr=0.1), train, cfg, Regularizer(), 1,
                            max_batches=12)


# --- schedules -----------------------------------------------------------------------------------

def test_averaged_weights_swap_in_asgd_averages_and_restore():
    model = tiny_model()
    opt = torch.optim.ASGD(model.parameters(), lr=0.5, t0=0, lambd=0.0)
    raw = [p.detach().clone() for p in model.parameters()]
    with epoch.averaged_weights(model, opt):  # right after the switch, before any step: no KeyError
        assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))
    history = []
    data, targets = batch()
    for _ in range(4):
        opt.zero_grad()
        fraternal_loss(model, data, targets, model.init_hidden(B), Regularizer()).loss.backward()
        opt.step()
        history.append([p.detach().clone() for p in model.parameters()])
    current = [p.detach().clone() for p in model.parameters()]
    with epoch.averaged_weights(model, opt):
        for p, hist in zip(model.parameters(), zip(*history)):
            # t0 = 0: the average over the iterates from step 2 on (step 1's average is overwritten)
            assert torch.allclose(p, torch.stack(hist[1:]).mean(0), atol=1e-6)
    assert all(torch.equal(p, c) for p, c in zip(model.parameters(), current))


def test_make_optimizer_follows_the_phase():
    model = tiny_model()
    cfg = dict(optimizer="asgd-nt", wdecay=1.2e-6, lr=30.0, nonmono=5, patience=20, anneal=3.0, min_lr=0.1)
    state = Schedule(cfg)
    opt = epoch.make_optimizer(cfg, state, model.parameters(), torch.device("cpu"))
    assert type(opt) is torch.optim.SGD and opt.defaults["weight_decay"] == 1.2e-6
    state.averaging = True
    opt = epoch.make_optimizer(cfg, state, model.parameters(), torch.device("cpu"))
    assert type(opt) is torch.optim.ASGD and opt.defaults["t0"] == 0 and opt.defaults["lambd"] == 0
    assert Schedule(dict(cfg, optimizer="asgd")).averaging


# --- evaluation ----------------------------------------------------------------------------------

def test_evaluate_is_exp_of_mean_token_cross_entropy_without_autograd():
    model = tiny_model()
    stream = torch.randint(0, V, (203,))
    source = batchify(stream, 4)
    grad_modes = []
    model.register_forward_hook(lambda *a: grad_modes.append(torch.is_grad_enabled()))
    loss = evaluate(model, source, 10, 4)
    assert grad_modes and not any(grad_modes) and not model.training
    # by hand: every predicted token once, hidden carried over the windows
    model.eval()
    hidden, total, count = model.init_hidden(4), 0.0, 0
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, 10):
            n = min(10, source.size(0) - 1 - i)
            logits, hidden = model(source[i:i + n], hidden)
            total += F.cross_entropy(logits.view(-1, V), source[i + 1:i + 1 + n].reshape(-1), reduction="sum").item()
            count += n * 4
    assert count == (source.size(0) - 1) * 4
    assert loss == pytest.approx(total / count, rel=1e-6)
    assert ppl(loss) == pytest.approx(math.exp(total / count), rel=1e-6)


def test_mc_cross_entropy_averages_probabilities_not_log_probabilities():
    # two samples give the target probability 0.9 and 0.1: MC averages to 0.5 -> CE = log 2
    logp = torch.log(torch.tensor([[0.9, 0.2], [0.1, 0.2]]))
    assert mc_cross_entropy(logp).item() == pytest.approx((math.log(2) - math.log(0.2)) / 2, rel=1e-6)
    wrong = -logp.mean().item()  # averaging log-probabilities would give this instead
    assert abs(mc_cross_entropy(logp).item() - wrong) > 0.1
