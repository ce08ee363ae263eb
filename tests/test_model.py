"""Tests for model.RNNModel: sizes, tying, shapes, dropout sites, mask reuse and stacked copies."""
import pytest
import torch

from embed_regularize import EmbeddingDropout
from locked_dropout import LockedDropout
from fraternal import Masks, Regularizer, first_copy, fraternal_loss, fraternal_loss_pair, tile_hidden
from masks import SITES
from model import RNNModel
from weight_drop import WeightDropLSTM


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(2718)


V = 50
SEQ, BSZ = 6, 3

# the three setups of the paper with their dropout rates, at toy sizes
SETUPS = {
    "single-layer": dict(ninp=16, nhid=16, nlayers=1, dropout=0.4, dropouth=0.0, dropouti=0.65,
                         dropoute=0.1, wdrop=0.5, locked=False),
    "ptb-3-layer": dict(ninp=12, nhid=20, nlayers=3, dropout=0.4, dropouth=0.3, dropouti=0.4,
                        dropoute=0.1, wdrop=0.5),
    "wt2-3-layer": dict(ninp=12, nhid=20, nlayers=3, dropout=0.4, dropouth=0.2, dropouti=0.65,
                        dropoute=0.1, wdrop=0.5),
}


def small(**overrides):
    kw = dict(ninp=16, nhid=24, nlayers=3, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.2,
              wdrop=0.5)
    kw.update(overrides)
    return RNNModel(V, **kw)


def words(seq=SEQ, bsz=BSZ):
    return torch.randint(0, V, (seq, bsz))


def random_hidden(model, bsz):
    return [(torch.randn(1, bsz, r.hidden_size), torch.randn(1, bsz, r.hidden_size)) for r in model.rnns]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------ sizes

@pytest.mark.parametrize("kwargs, expected", [
    (dict(ntoken=10000, ninp=655, nhid=655, nlayers=1, locked=False), 9_997_440),
    (dict(ntoken=10000, ninp=400, nhid=1150, nlayers=3), 24_221_600),
    (dict(ntoken=33278, ninp=400, nhid=1150, nlayers=3), 33_556_078),
], ids=["single-layer-ptb", "3-layer-ptb", "3-layer-wt2"])
def test_parameter_counts(kwargs, expected):
    model = RNNModel(**kwargs)
    assert n_params(model) == expected
    tokens = torch.randint(0, kwargs["ntoken"], (2, 1))
    logits, hidden = model.eval()(tokens, model.init_hidden(1))
    assert logits.shape == (2, 1, kwargs["ntoken"])


def test_weight_tying_and_layer_sizes():
    model = small()
    assert model.decoder.weight is model.encoder.weight
    assert [(r.input_size, r.hidden_size) for r in model.rnns] == [(16, 24), (24, 24), (24, 16)]
    assert all(isinstance(r, WeightDropLSTM) for r in model.rnns)
    untied = small(tie_weights=False)
    assert untied.decoder.weight is not untied.encoder.weight
    assert [(r.input_size, r.hidden_size) for r in untied.rnns] == [(16, 24), (24, 24), (24, 24)]
    assert untied.decoder.weight.shape == (V, 24)
    # tying shares one tensor: the parameter count drops by exactly the decoder matrix
    assert n_params(untied) - n_params(model) == V * 24 + (4 * 24 * 24 + 4 * 24 * 24 + 8 * 24) - (
        4 * 16 * 24 + 4 * 16 * 16 + 8 * 16)


def test_init_ranges():
    model = RNNModel(1000, ninp=32, nhid=32, nlayers=1)
    w = model.encoder.weight
    assert w.min() >= -0.1 and w.max() <= 0.1
    assert w.min() < -0.095 and w.max() > 0.095  # uniform over the whole range, not a narrow init
    assert abs(w.mean().item()) < 0.005
    assert torch.equal(model.decoder.bias, torch.zeros(1000))
    untied = RNNModel(1000, ninp=32, nhid=32, nlayers=1, tie_weights=False)
    d = untied.decoder.weight
    assert d.min() >= -0.1 and d.max() <= 0.1 and d.min() < -0.095 and d.max() > 0.095
    assert torch.equal(untied.decoder.bias, torch.zeros(1000))


# ------------------------------------------------------------------ shapes

@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_output_and_hidden_shapes(setup):
    model = RNNModel(V, **SETUPS[setup]).train()
    cfg = SETUPS[setup]
    hidden = model.init_hidden(BSZ)
    sizes = [cfg["nhid"]] * (cfg["nlayers"] - 1) + [cfg["ninp"]]
    assert [tuple(h.shape) for h, _ in hidden] == [(1, BSZ, s) for s in sizes]
    logits, new_hidden = model(words(), hidden)
    assert logits.shape == (SEQ, BSZ, V)
    assert len(new_hidden) == cfg["nlayers"]
    assert [(tuple(h.shape), tuple(c.shape)) for h, c in new_hidden] == [((1, BSZ, s),) * 2 for s in sizes]


def test_return_h_raw_and_dropped_outputs():
    model = small().train()
    inp = words()
    hidden, raw, dropped = model.features(inp, model.init_hidden(BSZ))
    logits, _ = model(inp, model.init_hidden(BSZ), Masks(reuse=SITES))  # forward = decoder(features)
    assert len(raw) == 3 and len(dropped) == 3
    assert [tuple(r.shape) for r in raw] == [(SEQ, BSZ, 24), (SEQ, BSZ, 24), (SEQ, BSZ, 16)]
    assert [tuple(d.shape) for d in dropped] == [(SEQ, BSZ, 24), (SEQ, BSZ, 24), (SEQ, BSZ, 16)]
    for l in range(2):  # between layers: the hidden dropout of that layer's raw output
        assert torch.equal(dropped[l], raw[l] * model.hidden_dropouts[l].mask)
    assert torch.equal(dropped[-1], raw[-1] * model.output_dropout.mask)  # the output dropout result
    assert torch.allclose(model.decoder(dropped[-1]), logits, atol=1e-6)
    assert torch.equal(raw[-1][-1:], hidden[-1][0])  # last raw output is the last layer's h

    single = RNNModel(V, **SETUPS["single-layer"]).train()
    hidden, raw, dropped = single.features(words(), single.init_hidden(BSZ))
    assert len(raw) == 1 and len(dropped) == 1
    assert torch.equal(dropped[0], raw[0] * single.output_dropout.mask)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_forward_backward_reaches_all_parameters(setup):
    model = RNNModel(V, **SETUPS[setup]).train()
    inp = words(8, 4)
    logits, _ = model(inp, model.init_hidden(4))
    loss = torch.nn.functional.cross_entropy(logits.view(-1, V), torch.randint(0, V, (32,)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ dropout sites

def test_single_layer_uses_full_shape_masks():
    model = RNNModel(V, **SETUPS["single-layer"]).train()
    model(words(), model.init_hidden(BSZ))
    assert model.input_dropout.kind == "full" and model.output_dropout.kind == "full"
    assert tuple(model.input_dropout.mask.shape) == (SEQ, BSZ, 16)
    assert tuple(model.output_dropout.mask.shape) == (SEQ, BSZ, 16)
    assert tuple(model.embedding_dropout.mask.shape) == (1, V)
    assert tuple(model.rnns[0].mask.shape) == (1, 1, 64, 16)


def test_three_layer_uses_locked_masks():
    model = small().train()
    model(words(), model.init_hidden(BSZ))
    assert tuple(model.input_dropout.mask.shape) == (1, BSZ, 16)
    assert [tuple(d.mask.shape) for d in model.hidden_dropouts] == [(1, BSZ, 24)] * 2
    assert tuple(model.output_dropout.mask.shape) == (1, BSZ, 16)
    assert [tuple(r.mask.shape) for r in model.rnns] == [(1, 1, 96, 24), (1, 1, 96, 24), (1, 1, 64, 16)]


def test_locked_flag_applies_to_every_locked_site():
    model = small(locked=False).train()
    model(words(), model.init_hidden(BSZ))
    assert tuple(model.input_dropout.mask.shape) == (SEQ, BSZ, 16)
    assert [tuple(d.mask.shape) for d in model.hidden_dropouts] == [(SEQ, BSZ, 24)] * 2
    assert tuple(model.output_dropout.mask.shape) == (SEQ, BSZ, 16)


def test_timestep_masks_from_the_config():
    """locked_mask timestep (awd-lstm-lm's tag PyTorch==0.1.12): every locked site draws (seq_len, 1, features);
    a configuration without the setting keeps the per-sequence mask."""
    cfg = dict(emsize=16, nhid=24, nlayers=3, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.2, wdrop=0.5,
               tied=True, locked=True)
    assert RNNModel.from_config(cfg, V).input_dropout.kind == "sequence"
    model = RNNModel.from_config(dict(cfg, locked_mask="timestep"), V).train()
    model(words(), model.init_hidden(BSZ))
    assert tuple(model.input_dropout.mask.shape) == (SEQ, 1, 16)
    assert [tuple(d.mask.shape) for d in model.hidden_dropouts] == [(SEQ, 1, 24)] * 2
    assert tuple(model.output_dropout.mask.shape) == (SEQ, 1, 16)
    assert RNNModel.from_config(dict(cfg, locked=False, locked_mask="timestep"), V).output_dropout.kind == "full"


@pytest.mark.parametrize("same_mask", ["", "io"])
def test_timestep_masks_in_fraternal_dropouts_passes(same_mask):
    """FD's sequential second pass draws new timestep masks (or reuses pass 1's where asked): the loss is
    the formula on two forwards replayed with the same draws."""
    model, inp, targets = small(locked_mask="timestep").train(), words(), torch.randint(0, V, (SEQ * BSZ,))
    hidden, reg = model.init_hidden(BSZ), Regularizer(kappa=0.3, double_target=True, same_mask=same_mask)
    torch.manual_seed(7)
    out = fraternal_loss(model, inp, targets, hidden, reg)
    torch.manual_seed(7)
    logits1, _ = model(inp, hidden)
    masks1 = [m.clone() for m in (model.input_dropout.mask, model.output_dropout.mask)]
    logits2, _ = model(inp, hidden, Masks(reuse=same_mask))
    masks2 = (model.input_dropout.mask, model.output_dropout.mask)
    want = fraternal_loss_pair(logits1.view(-1, V), logits2.view(-1, V), targets, reg)
    assert torch.allclose(out.loss, want.loss, rtol=1e-5) and torch.allclose(out.penalty, want.penalty, rtol=1e-4)
    assert out.penalty > 0
    assert [torch.equal(a, b) for a, b in zip(masks1, masks2)] == [bool(same_mask)] * 2


@pytest.mark.parametrize("share", ["w", "wio"])
def test_timestep_masks_with_stacked_copies(share):
    """The batched passes (--same_mask_w): each copy draws its own timestep mask, shared across its own
    sequences, unless the site is shared too."""
    model = small(locked_mask="timestep").train()
    model(torch.cat([words()] * 2, 1), tile_hidden(random_hidden(model, BSZ), 2), Masks(copies=2, share=share))
    for d in (model.input_dropout, model.output_dropout):
        if "i" in share:
            assert tuple(d.mask.shape) == (SEQ, 1, 16)
        else:
            assert tuple(d.mask.shape) == (SEQ, 2 * BSZ, 16)
            assert torch.equal(d.mask[:, :1].expand(-1, BSZ, -1), d.mask[:, :BSZ])
            assert not torch.equal(d.mask[:, :BSZ], d.mask[:, BSZ:])


def test_dropout_rates_reach_the_modules():
    model = RNNModel(V, **SETUPS["wt2-3-layer"])
    assert isinstance(model.embedding_dropout, EmbeddingDropout) and model.embedding_dropout.p == 0.1
    assert isinstance(model.input_dropout, LockedDropout) and model.input_dropout.p == 0.65
    assert [d.p for d in model.hidden_dropouts] == [0.2, 0.2]
    assert model.output_dropout.p == 0.4
    assert [r.weight_dropout for r in model.rnns] == [0.5] * 3


# ------------------------------------------------------------------ mask reuse

def site_masks(model):
    """Current mask of every site, keyed by site letter (lists for the per-layer sites)."""
    return {
        "e": [model.embedding_dropout.mask],
        "i": [model.input_dropout.mask],
        "h": [d.mask for d in model.hidden_dropouts],
        "w": [r.mask for r in model.rnns],
        "o": [model.output_dropout.mask],
    }


def test_reuse_all_sites_reproduces_logits():
    model = small().train()
    inp, hidden = words(), random_hidden(model, BSZ)
    first, _ = model(inp, hidden)
    same, _ = model(inp, hidden, Masks(reuse=SITES))
    assert torch.equal(first, same)
    other, _ = model(inp, hidden)
    assert not torch.allclose(first, other, atol=1e-4)


@pytest.mark.parametrize("site", SITES)
def test_reuse_one_site(site):
    model = small().train()
    inp, hidden = words(), random_hidden(model, BSZ)
    model(inp, hidden)
    before = site_masks(model)
    values = {s: [m.clone() for m in ms] for s, ms in before.items()}
    model(inp, hidden, Masks(reuse=(site,)))
    after = site_masks(model)
    for s in SITES:
        for k, (old, new) in enumerate(zip(values[s], after[s])):
            if s == site:
                assert new is before[s][k], f"site {s}[{k}]: the stored mask object was replaced"
                assert torch.equal(new, old)
            else:
                assert not torch.equal(new, old), f"site {s}[{k}] reused although only {site} asked"


def test_reuse_single_layer_same_mask_flags():
    # the single-layer ablation's same_mask_e/i/w/o: reusing the four sites reproduces pass 1
    model = RNNModel(V, **SETUPS["single-layer"]).train()
    inp, hidden = words(), random_hidden(model, BSZ)
    first, _ = model(inp, hidden)
    same, _ = model(inp, hidden, Masks(reuse="eiwo"))
    assert torch.equal(first, same)


# ------------------------------------------------------------------ stacked copies

def test_copies_shared_masks_give_identical_halves():
    model = small().train()
    inp = words()
    hidden = random_hidden(model, BSZ)
    logits, new_hidden = model(torch.cat([inp, inp], 1), tile_hidden(hidden, 2), Masks(copies=2, share=SITES))
    assert logits.shape == (SEQ, 2 * BSZ, V)
    assert torch.allclose(logits[:, :BSZ], logits[:, BSZ:], atol=1e-6)
    for h, c in new_hidden:
        assert torch.allclose(h[:, :BSZ], h[:, BSZ:], atol=1e-6)
    # shared masks are genuinely dropout masks: logits differ from eval mode
    eval_logits, _ = model.eval()(inp, hidden)
    assert not torch.allclose(logits[:, :BSZ], eval_logits, atol=1e-4)


def test_copies_independent_masks_give_different_halves():
    model = small().train()
    inp = words()
    hidden = random_hidden(model, BSZ)
    logits, _ = model(torch.cat([inp, inp], 1), tile_hidden(hidden, 2), Masks(copies=2))
    assert not torch.allclose(logits[:, :BSZ], logits[:, BSZ:], atol=1e-4)
    assert tuple(model.embedding_dropout.mask.shape) == (2, V)
    assert all(r.mask.shape[0] == 2 for r in model.rnns)


@pytest.mark.parametrize("site", SITES)
def test_copies_share_one_site_only(site):
    # sharing only one site still leaves the copies different (the other sites draw per copy)
    model = small().train()
    inp = words()
    logits, _ = model(torch.cat([inp, inp], 1), tile_hidden(random_hidden(model, BSZ), 2),
                      Masks(copies=2, share=(site,)))
    assert not torch.allclose(logits[:, :BSZ], logits[:, BSZ:], atol=1e-4)


def test_tile_hidden_first_copy_round_trip():
    model = small()
    hidden = random_hidden(model, BSZ)
    tiled = tile_hidden(hidden, 3)
    assert len(tiled) == len(hidden)
    for (h, c), (th, tc) in zip(hidden, tiled):
        assert th.shape == (1, 3 * BSZ, h.size(2))
        for k in range(3):
            assert torch.equal(th[:, k * BSZ:(k + 1) * BSZ], h)
            assert torch.equal(tc[:, k * BSZ:(k + 1) * BSZ], c)
    back = first_copy(tiled, 3)
    for (h, c), (bh, bc) in zip(hidden, back):
        assert torch.equal(bh, h) and torch.equal(bc, c)
    # first_copy takes the first block, not any other
    mixed = [(torch.cat([h, h + 1], 1), torch.cat([c, c - 1], 1)) for h, c in hidden]
    for (h, c), (bh, bc) in zip(hidden, first_copy(mixed, 2)):
        assert torch.equal(bh, h) and torch.equal(bc, c)


# ------------------------------------------------------------------ eval

def test_eval_is_deterministic_and_dropout_free():
    model = small().eval()
    inp, hidden = words(), random_hidden(model, BSZ)
    a, ha = model(inp, hidden)
    b, hb = model(inp, hidden)
    assert torch.equal(a, b)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(ha, hb))
    train_out, _ = model.train()(inp, hidden)
    assert not torch.allclose(a, train_out, atol=1e-4)
