"""Tests for weight_drop.WeightDropLSTM: DropConnect on W_hh without touching the parameters."""
import copy
import importlib.util
import io
import re
import warnings

import pytest
import torch
import torch.nn as nn

import weight_drop
from weight_drop import WeightDropLSTM, fused_lstm

T, N, I, H = 7, 3, 5, 6
CUDNN_MSG = ("RNN module weights are not part of single contiguous chunk of memory. This means they "
             "need to be compacted at every call, possibly greatly increasing memory usage. To compact "
             "weights again call flatten_parameters().")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(4321)


def _inputs(n=N, layers=1, h=H, i=I, t=T):
    x = torch.randn(t, n, i)
    hx = (torch.randn(layers, n, h), torch.randn(layers, n, h))
    return x, hx


def _plain_twin(wd):
    plain = nn.LSTM(wd.input_size, wd.hidden_size, num_layers=wd.num_layers)
    plain.load_state_dict(wd.state_dict())
    return plain


def _plain_with_dropped(wd, layer_masks):
    """A plain nn.LSTM whose W_hh are the module's raw W_hh times the given masks."""
    plain = _plain_twin(wd)
    with torch.no_grad():
        for k in range(wd.num_layers):
            getattr(plain, f"weight_hh_l{k}").mul_(layer_masks[k])
    return plain


# ------------------------------------------------------------------ equivalence with nn.LSTM

@pytest.mark.parametrize("layers", [1, 2])
def test_p0_training_equals_plain_lstm(layers):
    wd = WeightDropLSTM(I, H, num_layers=layers, weight_dropout=0.0).train()
    plain = _plain_twin(wd).train()
    x, hx = _inputs(layers=layers)
    out, (h, c) = wd(x, hx)
    ref, (rh, rc) = plain(x, hx)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(h, rh, atol=1e-6)
    assert torch.allclose(c, rc, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_eval_equals_plain_lstm(layers):
    wd = WeightDropLSTM(I, H, num_layers=layers, weight_dropout=0.5).eval()
    plain = _plain_twin(wd).eval()
    x, hx = _inputs(layers=layers)
    out, (h, c) = wd(x, hx)
    ref, (rh, rc) = plain(x, hx)
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(h, rh, atol=1e-6)
    assert torch.allclose(c, rc, atol=1e-6)
    out0, _ = wd(x)  # no hidden state given
    assert torch.allclose(out0, plain(x)[0], atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_fused_lstm_pins_private_entry_point(layers):
    wd = WeightDropLSTM(I, H, num_layers=layers, weight_dropout=0.5)
    plain = _plain_twin(wd)
    x, hx = _inputs(layers=layers)
    for mode in (True, False):
        wd.train(mode)
        plain.train(mode)
        out, (h, c) = fused_lstm(wd, x, hx, list(wd._flat_weights))
        ref, (rh, rc) = nn.LSTM.forward(plain, x, hx)
        assert torch.allclose(out, ref, atol=1e-6)
        assert torch.allclose(h, rh, atol=1e-6) and torch.allclose(c, rc, atol=1e-6)
    # the weight list really is what the kernel uses
    w = [t.clone() for t in wd._flat_weights]
    w[1] = torch.zeros_like(w[1])
    out_z, _ = fused_lstm(wd, x, hx, w)
    assert not torch.allclose(out_z, out, atol=1e-4)


# ------------------------------------------------------------------ DropConnect in training mode

@pytest.mark.parametrize("layers", [1, 2])
def test_training_output_is_raw_times_mask(layers):
    wd = WeightDropLSTM(I, H, num_layers=layers, weight_dropout=0.5).train()
    raw = {k: v.clone() for k, v in wd.state_dict().items()}
    x, hx = _inputs(layers=layers)
    out, (h, c) = wd(x, hx)
    assert tuple(wd.mask.shape) == (1, layers, 4 * H, H)
    masks = wd.mask[0]
    ref, (rh, rc) = _plain_with_dropped(wd, masks).train()(x, hx)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(h, rh, atol=1e-6) and torch.allclose(c, rc, atol=1e-6)
    eval_out, _ = wd.eval()(x, hx)
    assert not torch.allclose(out, eval_out, atol=1e-3)
    for k, v in wd.state_dict().items():  # parameters untouched by the forward
        assert torch.equal(v, raw[k]), k


def test_mask_values_and_kept_fraction():
    p, hidden = 0.5, 200  # W_hh mask has 4*200*200 = 160,000 entries
    wd = WeightDropLSTM(4, hidden, weight_dropout=p).train()
    wd(torch.randn(2, 1, 4))
    m = wd.mask
    scale = 1 / (1 - p)
    assert bool(((m == 0) | (m == scale)).all())
    kept = (m != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / m.numel()) ** 0.5

    p = 0.3
    wd = WeightDropLSTM(4, hidden, weight_dropout=p).train()
    wd(torch.randn(2, 1, 4))
    m = wd.mask
    nz = m[m != 0]
    assert torch.allclose(nz, torch.full_like(nz, 1 / (1 - p)), rtol=1e-6, atol=0)
    assert abs(nz.numel() / m.numel() - (1 - p)) < 5 * (p * (1 - p) / m.numel()) ** 0.5


def test_gradients_reach_raw_weight_hh_only_where_kept():
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs()
    out, (h, c) = wd(x, hx)
    (out.pow(2).sum() + c.sum()).backward()
    mask = wd.mask[0, 0]
    g = wd.weight_hh_l0.grad
    assert g is not None and g.shape == wd.weight_hh_l0.shape
    assert (mask == 0).any() and (mask != 0).any()
    assert bool((g[mask == 0] == 0).all())
    assert bool((g[mask != 0] != 0).all())
    for name, prm in wd.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def test_two_forwards_one_backward():
    wd = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5).train()
    x, hx = _inputs(layers=2)
    out1, _ = wd(x, hx)
    m1 = wd.mask.clone()
    out2, _ = wd(x, hx)
    m2 = wd.mask.clone()
    assert not torch.equal(m1, m2)
    assert not torch.allclose(out1, out2, atol=1e-4)
    loss1 = lambda o: (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()  # noqa: E731
    loss2 = lambda o: o.pow(2).sum()  # noqa: E731
    (loss1(out1) + loss2(out2)).backward()
    together = _grads(wd)

    separate = []
    for mask, loss, out in ((m1, loss1, out1), (m2, loss2, out2)):
        wd.zero_grad(set_to_none=True)
        wd.mask = mask
        again, _ = wd(x, hx, reuse=True)
        assert torch.equal(again, out)
        loss(again).backward()
        separate.append(_grads(wd))
    for name, g in together.items():
        assert torch.allclose(g, separate[0][name] + separate[1][name], rtol=1e-5, atol=1e-6), name


# ------------------------------------------------------------------ state_dict and serialization

def test_state_dict_keys_match_plain_lstm():
    wd = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5)
    plain_keys = list(nn.LSTM(I, H, num_layers=2).state_dict().keys())
    raw = {k: v.clone() for k, v in wd.state_dict().items()}
    assert list(wd.state_dict().keys()) == plain_keys
    x, hx = _inputs(layers=2)
    wd.train()(x, hx)[0].sum().backward()
    assert list(wd.state_dict().keys()) == plain_keys
    wd.eval()
    assert list(wd.state_dict().keys()) == plain_keys
    wd(x, hx)
    assert list(wd.state_dict().keys()) == plain_keys
    assert [n for n, _ in wd.named_parameters()] == plain_keys
    for k, v in wd.state_dict().items():  # the raw weights, no dropped copy
        assert torch.equal(v, raw[k]), k

    wd.train()
    out_train, _ = wd(x, hx)  # training still works after the eval() round trip
    out_train.sum().backward()

    fresh = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5)
    fresh.load_state_dict(wd.state_dict(), strict=True)
    plain = nn.LSTM(I, H, num_layers=2)
    plain.load_state_dict(wd.state_dict(), strict=True)
    wd.eval()
    fresh.eval()
    assert torch.equal(fresh(x, hx)[0], wd(x, hx)[0])
    assert torch.allclose(plain(x, hx)[0], wd(x, hx)[0], atol=1e-6)


def _train_step_updates_own_params(module, x, hx):
    module.train()
    for p in module.parameters():
        p.grad = None
    out, _ = module(x, hx)
    out.sum().backward()
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_deepcopy_after_training_forward():
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs()
    wd(x, hx)
    clone = copy.deepcopy(wd)
    assert all(a is not b for a, b in zip(wd.parameters(), clone.parameters()))
    assert list(clone.state_dict().keys()) == list(wd.state_dict().keys())
    assert _train_step_updates_own_params(clone, x, hx)
    assert all(p.grad is None for p in wd.parameters())  # gradients went to the copy only
    wd.eval()
    clone.eval()
    assert torch.equal(clone(x, hx)[0], wd(x, hx)[0])
    with torch.no_grad():
        clone.weight_hh_l0.zero_()
    assert not torch.equal(clone(x, hx)[0], wd(x, hx)[0])  # the copy runs on its own weights


def test_torch_save_state_dict_and_module_after_training_forward():
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs()
    wd(x, hx)[0].sum().backward()

    buf = io.BytesIO()
    torch.save(wd.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert list(sd.keys()) == list(nn.LSTM(I, H).state_dict().keys())
    fresh = WeightDropLSTM(I, H, weight_dropout=0.5)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.eval()(x, hx)[0], wd.eval()(x, hx)[0])

    wd.train()
    wd(x, hx)
    buf = io.BytesIO()
    torch.save(wd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded, WeightDropLSTM)
    assert _train_step_updates_own_params(loaded, x, hx)
    assert torch.equal(loaded.eval()(x, hx)[0], wd.eval()(x, hx)[0])


# ------------------------------------------------------------------ warnings

def test_cudnn_compaction_warning_filter_installed_at_import():
    # pytest restores the warning filters after collection, so re-execute the module's source
    # in a fresh module object and look at what importing it installs.
    spec = importlib.util.spec_from_file_location("_weight_drop_fresh", weight_drop.__file__)
    fresh = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        spec.loader.exec_module(fresh)
        matching = [f for f in warnings.filters
                    if f[0] == "ignore" and isinstance(f[1], re.Pattern) and f[1].match(CUDNN_MSG)]
        assert matching, "no 'ignore' filter for the cuDNN weight-compaction warning"
        warnings.warn(CUDNN_MSG, UserWarning)
        warnings.warn("some other RNN warning", UserWarning)
    assert [str(w.message) for w in rec] == ["some other RNN warning"]


def test_no_warning_on_repeated_training_forwards():
    wd = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5).train()
    x, hx = _inputs(layers=2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            out, _ = wd(x, hx)
            out.sum().backward()
        wd(x, hx, copies=1, reuse=True)
        wd(torch.cat([x, x], 1), tuple(torch.cat([t, t], 1) for t in hx), copies=2)
        wd.eval()(x, hx)
    assert [str(w.message) for w in rec] == []


# ------------------------------------------------------------------ parameters never re-pointed

def test_parameters_never_repointed():
    wd = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5)
    before = [(n, p, p.data_ptr()) for n, p in wd.named_parameters()]
    x, hx = _inputs(layers=2)
    wd.train()
    o1, _ = wd(x, hx)
    o2, _ = wd(x, hx)
    (o1.sum() + o2.sum()).backward()
    wd.eval()
    wd(x, hx)
    wd.train()
    wd(x, hx)
    wd.eval().train().eval()
    after = list(wd.named_parameters())
    assert [n for n, _ in after] == [n for n, _, _ in before]
    for (name, p, ptr), (_, q) in zip(before, after):
        assert q is p, f"{name} is no longer the module's original Parameter"
        assert isinstance(q, nn.Parameter)
        assert q.data_ptr() == ptr, f"{name} storage re-pointed"
        assert getattr(wd, name) is p
    assert all(a is b for a, b in zip(wd._flat_weights, (p for _, p, _ in before)))


# ------------------------------------------------------------------ reuse and copies

def test_reuse_applies_stored_mask():
    wd = WeightDropLSTM(I, H, num_layers=2, weight_dropout=0.5).train()
    x, hx = _inputs(layers=2)
    out1, (h1, c1) = wd(x, hx)
    m1 = wd.mask.clone()
    out2, (h2, c2) = wd(x, hx, reuse=True)
    assert torch.equal(wd.mask, m1)
    assert torch.equal(out1, out2) and torch.equal(h1, h2) and torch.equal(c1, c2)
    out3, _ = wd(x, hx)
    assert not torch.allclose(out1, out3, atol=1e-4)


def test_reuse_without_previous_mask_raises():
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs()
    with pytest.raises(RuntimeError):
        wd(x, hx, reuse=True)


def test_copies_independent_masks():
    B = 4
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs(n=B)
    xx = torch.cat([x, x], 1)
    hh = tuple(torch.cat([t, t], 1) for t in hx)
    out, (h, c) = wd(xx, hh, copies=2, share=False)
    assert out.shape == (T, 2 * B, H) and h.shape == (1, 2 * B, H)
    masks = wd.mask.clone()
    assert tuple(masks.shape) == (2, 1, 4 * H, H)
    assert not torch.equal(masks[0], masks[1])
    assert not torch.allclose(out[:, :B], out[:, B:], atol=1e-4)
    for g in range(2):  # each half is exactly a single-copy run with its own mask
        wd.mask = masks[g:g + 1]
        ref, (rh, rc) = wd(x, hx, reuse=True)
        assert torch.allclose(out[:, g * B:(g + 1) * B], ref, atol=1e-6)
        assert torch.allclose(h[:, g * B:(g + 1) * B], rh, atol=1e-6)


def test_copies_shared_mask():
    B = 4
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs(n=B)
    out, (h, c) = wd(torch.cat([x, x], 1), tuple(torch.cat([t, t], 1) for t in hx), copies=2, share=True)
    assert tuple(wd.mask.shape) == (1, 1, 4 * H, H)
    assert torch.allclose(out[:, :B], out[:, B:], atol=1e-6)
    assert torch.allclose(c[:, :B], c[:, B:], atol=1e-6)
    eval_out, _ = wd.eval()(x, hx)
    assert not torch.allclose(out[:, :B], eval_out, atol=1e-4)  # dropout was really applied


def test_training_forward_stays_on_the_fused_kernel():
    """One fused LSTM call per forward, forward and backward, no per-time-step gate ops."""
    wd = WeightDropLSTM(I, H, weight_dropout=0.5).train()
    x, hx = _inputs()
    with torch.profiler.profile() as prof:
        out, _ = wd(x, hx)
        out.sum().backward()
    names = [e.name for e in prof.events()]
    assert names.count("aten::lstm") == 1
    assert not any(n in ("aten::sigmoid", "aten::sigmoid_", "aten::tanh") for n in names), \
        "the LSTM fell back to per-time-step operations"
