"""Tests for locked_dropout.LockedDropout and embed_regularize.EmbeddingDropout."""
import pytest
import torch
import torch.nn.functional as F

from embed_regularize import EmbeddingDropout
from locked_dropout import LockedDropout


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


# ============================================================================ LockedDropout

SHAPES = {"sequence": (1, 3, 8), "timestep": (6, 1, 8), "full": (6, 3, 8)}  # for x of shape (6, 3, 8)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_locked_mask_shape_and_what_it_shares(kind):
    """sequence: one mask per sequence for every time step; timestep: a new mask at every time step
    shared by the whole batch (awd-lstm-lm's tag PyTorch==0.1.12); full: nothing shared."""
    d = LockedDropout(0.5, kind).train()
    x = torch.randn(6, 3, 8)
    out = d(x)
    assert tuple(d.mask.shape) == SHAPES[kind]
    assert torch.equal(out, x * d.mask)
    dropped = out == 0
    assert dropped.any() and not dropped.all()
    same_over_time = all(torch.equal(dropped[t], dropped[0]) for t in range(6))
    same_over_batch = all(torch.equal(dropped[:, n], dropped[:, 0]) for n in range(3))
    assert (same_over_time, same_over_batch) == {"sequence": (True, False), "timestep": (False, True),
                                                 "full": (False, False)}[kind]


def test_unknown_mask_kind_is_refused():
    with pytest.raises(ValueError, match="timestep"):
        LockedDropout(0.5, "per-token")


@pytest.mark.parametrize("kind", ["sequence", "full"])
@pytest.mark.parametrize("p", [0.3, 0.65])
def test_locked_dropout_statistics(kind, p):
    d = LockedDropout(p, kind).train()
    x = torch.ones(4, 400, 500)  # the locked mask alone has 200,000 entries
    out = d(x)
    kept = out != 0
    n = kept[0].numel() if kind == "sequence" else kept.numel()
    tol = 5 * ((p * (1 - p)) / n) ** 0.5 + 1e-4
    assert abs(kept.float().mean().item() - (1 - p)) < tol
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)), rtol=1e-6, atol=0)
    assert abs(out.mean().item() - 1.0) < 5 * tol / (1 - p)

    # non-constant input: kept values are exactly the input times 1/(1-p)
    y = torch.randn(4, 400, 500)
    out_y = d(y)
    k = out_y != 0
    assert torch.allclose(out_y[k], y[k] / (1 - p), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_locked_identity_in_eval_and_at_p0(kind):
    x = torch.randn(5, 4, 3)
    d = LockedDropout(0.5, kind).eval()
    assert torch.equal(d(x), x)
    d0 = LockedDropout(0.0, kind).train()
    assert torch.equal(d0(x), x)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_locked_fresh_mask_each_forward(kind):
    d = LockedDropout(0.5, kind).train()
    x = torch.ones(5, 4, 16)
    out1 = d(x)
    m1 = d.mask.clone()
    out2 = d(x)
    assert not torch.equal(out1, out2)
    assert not torch.equal(m1, d.mask)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_locked_reuse_applies_previous_mask(kind):
    d = LockedDropout(0.5, kind).train()
    d(torch.randn(5, 4, 16))
    m1 = d.mask.clone()
    y = torch.randn(5, 4, 16)
    out = d(y, reuse=True)
    assert torch.equal(d.mask, m1)
    assert torch.equal(out, y * m1)


def test_locked_reuse_without_previous_mask_raises():
    d = LockedDropout(0.5).train()
    with pytest.raises(RuntimeError):
        d(torch.randn(5, 4, 16), reuse=True)
    d.eval()(torch.randn(5, 4, 16))  # an eval forward draws no mask
    with pytest.raises(RuntimeError):
        d.train()(torch.randn(5, 4, 16), reuse=True)


@pytest.mark.parametrize("kind", list(SHAPES))
def test_locked_copies_share(kind):
    d = LockedDropout(0.5, kind).train()
    half = torch.randn(5, 6, 16)
    x = torch.cat([half, half], 1)
    shared = d(x, copies=2, share=True)
    assert (shared == 0).any()
    assert torch.equal(shared[:, :6], shared[:, 6:])
    independent = d(x, copies=2, share=False)
    assert not torch.equal(independent[:, :6], independent[:, 6:])
    if kind == "timestep":  # each copy's own mask is still shared by that copy's sequences
        assert tuple(d.mask.shape) == (5, 12, 16)
        assert all(torch.equal(d.mask[:, n], d.mask[:, 6 * (n // 6)]) for n in range(12))
    # reuse of a shared mask keeps it shared
    again = d(x, copies=2, share=True)
    reused = d(torch.cat([half, 2 * half], 1), reuse=True)
    assert torch.equal(reused[:, :6] * 2, reused[:, 6:])
    assert torch.equal(reused[:, :6], again[:, :6])


# ============================================================================ EmbeddingDropout

def _per_word_consistent(out, words, weight, scale):
    """Every occurrence of a word is either all zero or exactly its row times ``scale``."""
    dropped = (out == 0).all(-1)
    for w in words.unique().tolist():
        at = words == w
        flags = dropped[at]
        assert flags.all() or not flags.any(), f"word {w} dropped at some positions only"
        if not flags.any():
            assert torch.allclose(out[at], (weight[w] * scale).expand_as(out[at]), rtol=1e-6, atol=1e-7)
    return dropped


def test_embedding_dropout_drops_whole_words():
    p = 0.5
    V, D = 20, 8
    weight = torch.randn(V, D)
    words = torch.randint(0, V, (30, 6))
    words[0, :] = torch.arange(6)
    ed = EmbeddingDropout(p).train()
    out = ed(weight, words)
    assert out.shape == (30, 6, D)
    dropped = _per_word_consistent(out, words, weight, 1 / (1 - p))
    assert dropped.any() and not dropped.all()
    assert tuple(ed.mask.shape) == (1, V)
    for w in words.unique().tolist():
        assert bool(dropped[words == w][0]) == (ed.mask[0, w].item() == 0)


def test_embedding_dropout_kept_fraction():
    p = 0.1
    V = 200_000
    weight = torch.ones(V, 1)
    words = torch.arange(V).view(-1, 1)
    out = EmbeddingDropout(p).train()(weight, words)
    kept = (out != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 5 * (p * (1 - p) / V) ** 0.5
    assert torch.allclose(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)), rtol=1e-6, atol=0)


def test_embedding_dropout_identity_in_eval_and_at_p0():
    weight = torch.randn(30, 5)
    words = torch.randint(0, 30, (7, 4))
    expected = F.embedding(words, weight)
    assert torch.equal(EmbeddingDropout(0.5).eval()(weight, words), expected)
    assert torch.equal(EmbeddingDropout(0.0).train()(weight, words), expected)


def test_embedding_dropout_gradient_equals_full_matrix_masking():
    V, D = 40, 6
    base = torch.randn(V, D)
    words = torch.randint(0, V, (12, 5))
    g = torch.randn(12, 5, D)

    weight = base.clone().requires_grad_()
    ed = EmbeddingDropout(0.4).train()
    out = ed(weight, words)
    (out * g).sum().backward()
    mask = ed.mask[0]
    assert (mask == 0).any()

    ref_weight = base.clone().requires_grad_()
    ref = F.embedding(words, ref_weight * mask[:, None])
    (ref * g).sum().backward()

    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-7)
    assert torch.allclose(weight.grad, ref_weight.grad, rtol=1e-5, atol=1e-6)
    present = torch.zeros(V, dtype=torch.bool)
    present[words.unique()] = True
    row_has_grad = (weight.grad != 0).any(-1)
    assert torch.equal(row_has_grad, present & (mask != 0))  # only kept rows that occur get gradient


def test_embedding_dropout_reuse():
    V = 50
    weight = torch.randn(V, 4)
    ed = EmbeddingDropout(0.5).train()
    ed(weight, torch.randint(0, V, (6, 3)))
    m1 = ed.mask.clone()
    words2 = torch.randint(0, V, (9, 2))
    out = ed(weight, words2, reuse=True)
    assert torch.equal(ed.mask, m1)
    assert torch.equal(out, F.embedding(words2, weight) * m1[0][words2].unsqueeze(-1))
    fresh = ed(weight, words2)
    assert not torch.equal(fresh, out)


def test_embedding_dropout_reuse_without_previous_mask_raises():
    with pytest.raises(RuntimeError):
        EmbeddingDropout(0.5).train()(torch.randn(10, 3), torch.zeros(2, 2, dtype=torch.long), reuse=True)


def test_embedding_dropout_copies_independent_masks():
    V, D, B = 60, 4, 5
    weight = torch.randn(V, D)
    half = torch.randint(0, V, (10, B))
    words = torch.cat([half, half], 1)
    ed = EmbeddingDropout(0.5).train()
    out = ed(weight, words, copies=2, share=False)
    assert tuple(ed.mask.shape) == (2, V)
    d1 = _per_word_consistent(out[:, :B], half, weight, 2.0)
    d2 = _per_word_consistent(out[:, B:], half, weight, 2.0)
    assert (d1 & ~d2).any() or (d2 & ~d1).any()  # some word dropped in one copy, kept in the other
    # each copy follows its own row of the mask
    for c, block in enumerate((out[:, :B], out[:, B:])):
        assert torch.equal(block, F.embedding(half, weight) * ed.mask[c][half].unsqueeze(-1))


def test_embedding_dropout_copies_shared_mask():
    V, D, B = 60, 4, 5
    weight = torch.randn(V, D)
    half = torch.randint(0, V, (10, B))
    ed = EmbeddingDropout(0.5).train()
    out = ed(weight, torch.cat([half, half], 1), copies=2, share=True)
    assert tuple(ed.mask.shape) == (1, V)
    assert (out == 0).any()
    assert torch.equal(out[:, :B], out[:, B:])
