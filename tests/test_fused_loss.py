"""fused_loss.decoder_loss against autograd on the plain formulas: loss, logged parts, every gradient;
a penalty without a fused gradient falls back to the plain path."""
import copy

import pytest
import torch
import torch.nn.functional as F

import fraternal
from fraternal import Regularizer, fraternal_loss, penalty_function
from fused_loss import FUSED_PENALTIES, FusedDecoder, chunk_rows, decoder_loss
from model import RNNModel

N, E, V = 23, 6, 17


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(N, E, generator=g, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(N, E, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, E, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    return x1, x2, w, b, t


CASES = [  # (w1, w2, kappa, penalty, second pass)
    (1.0, 0.0, 0.0, "mse", False),  # baseline
    (0.5, 0.5, 0.15, "mse", True),  # FD
    (1.0, 0.0, 0.25, "mse", True),  # ELD / PM
    (0.5, 0.5, 1.0, "kl", True),  # RD
    (1.0, 0.0, 0.7, "kl", True),
    (0.5, 0.5, 0.0, "mse", True),  # double target only
]


@pytest.mark.parametrize("w1, w2, kappa, penalty, second", CASES)
@pytest.mark.parametrize("rows", [5, 23, 100])  # several chunks with a remainder, one, more than needed
def test_fused_loss_and_gradients_match_the_plain_formulas(w1, w2, kappa, penalty, second, rows):
    x1, x2, w, b, t = inputs()
    l1 = F.linear(x1, w, b)
    expected = w1 * F.cross_entropy(l1, t)
    if second:
        l2 = F.linear(x2, w, b)
        expected = expected + w2 * F.cross_entropy(l2, t) + kappa * penalty_function(penalty)(l1, l2)
    params = [x1, x2, w, b] if second else [x1, w, b]
    want = torch.autograd.grad(3.0 * expected, params)
    loss, ce1, pen = decoder_loss(x1, x2 if second else None, w, b, t, w1, w2, kappa, penalty, rows=rows)
    got = torch.autograd.grad(3.0 * loss, params)  # a non-unit upstream gradient is scaled through
    assert torch.allclose(loss, expected, rtol=1e-10)
    assert torch.allclose(ce1, F.cross_entropy(l1, t), rtol=1e-10) and not ce1.requires_grad
    if second:
        assert torch.allclose(pen, kappa * penalty_function(penalty)(l1, l2), rtol=1e-9, atol=1e-15)
    for name, a, e in zip(["x1", "x2", "weight", "bias"] if second else ["x1", "weight", "bias"], got, want):
        assert torch.allclose(a, e, rtol=1e-9, atol=1e-12), name


def test_penalty_needs_a_second_pass():
    x1, _, w, b, t = inputs()
    with pytest.raises(ValueError):
        decoder_loss(x1, None, w, b, t, kappa=0.1)


def test_chunks_stay_within_the_budget():
    assert chunk_rows(10000, torch.device("cpu")) * 10000 * 4 <= 8 << 20
    assert chunk_rows(33278, torch.device("cpu")) >= 16
    assert chunk_rows(10000, torch.device("cuda")) > chunk_rows(10000, torch.device("cpu"))


def test_a_penalty_without_a_fused_gradient_trains_on_the_plain_path(monkeypatch, capsys):
    """A new penalty is one entry in fraternal.PENALTIES: with the fused loss on (the default) it runs on
    the plain path, with the plain path's values, says so once, and trains."""
    monkeypatch.setitem(fraternal.PENALTIES, "l1", lambda a, b: (a - b).abs().mean())
    monkeypatch.setattr(FusedDecoder, "said", set())
    reg = Regularizer(kappa=0.5, double_target=True, penalty="l1")
    assert reg.fused and "l1" not in FUSED_PENALTIES
    torch.manual_seed(0)
    model = RNNModel(V, 8, 12, 2, dropout=0.3, dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4).train()
    plain_model = copy.deepcopy(model)
    data, targets = torch.randint(0, V, (5, 3)), torch.randint(0, V, (15,))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(2):
        torch.manual_seed(step)
        out = fraternal_loss(model, data, targets, model.init_hidden(3), reg)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step == 0:
            torch.manual_seed(0)
            plain = fraternal_loss(plain_model, data, targets, plain_model.init_hidden(3),
                                   Regularizer(kappa=0.5, double_target=True, penalty="l1", fused=False))
            assert torch.equal(out.loss, plain.loss) and torch.equal(out.penalty, plain.penalty) and out.penalty > 0
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    said = capsys.readouterr().out
    assert said.count("penalty 'l1' has no hand-derived gradient in fused_loss.py: the plain loss computes it") == 1


def test_penalty_names_are_checked_in_fraternal_py():
    assert fraternal.penalty_function("kl") is fraternal.symmetric_kl_penalty
    for check in (lambda: Regularizer(penalty="kld"), lambda: penalty_function("kld")(torch.zeros(1), torch.zeros(1))):
        with pytest.raises(ValueError, match="unknown penalty 'kld': choose from mse, kl"):
            check()
