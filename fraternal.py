"""Fraternal dropout and its comparison variants: the loss of two passes with different dropout masks.

One file that imports only torch: copy it into your project.  On an ordinary model with dropout:

    from fraternal import Regularizer, fraternal_loss_pair
    reg = Regularizer.of("FD")             # or "RD", "PM"; "baseline": one pass, CE alone
    model.train()                          # each forward draws its own dropout masks
    loss = fraternal_loss_pair(model(x), model(x), y, reg).loss

On a stateful RNN both passes start from the same state; pass 1's state goes on to the next batch:

    out1, h_next = rnn(x, h)
    out2, _ = rnn(x, h)
    loss = fraternal_loss_pair(head(out1).flatten(0, 1), head(out2).flatten(0, 1), y.flatten(), reg).loss
    h = h_next.detach()

``fraternal_loss`` does it for model.py's models: mask reuse, both passes as one batch, the fused loss (fused_loss.py).
"""
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F


def symmetric_kl_penalty(logits1, logits2):
    """R-Drop's penalty: (KL(p1||p2) + KL(p2||p1)) / 2 of the softmax distributions, mean per token."""
    logp1, logp2 = F.log_softmax(logits1, dim=-1), F.log_softmax(logits2, dim=-1)
    # KL(p1||p2) + KL(p2||p1) = sum_v (p1 - p2)(log p1 - log p2)
    return ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1).mean() / 2


# A new penalty is one entry here; without a gradient in fused_loss.py it runs on the plain loss path.
PENALTIES = {"mse": F.mse_loss, "kl": symmetric_kl_penalty}  # mse: fraternal dropout's, mean of (l1 - l2)^2


def penalty_function(kind):
    if kind not in PENALTIES:
        raise ValueError(f"unknown penalty {kind!r}: choose from {', '.join(PENALTIES)}")
    return PENALTIES[kind]


@dataclass(frozen=True)
class Variant:
    """A regularizer, declared once (a preset may use another kappa)."""
    second_pass: str  # "train" (new masks), "eval" (no dropout) or "none"
    double_target: bool  # target (CE1 + CE2) / 2 instead of CE1
    penalty: str  # a key of PENALTIES
    kappa: float


# fraternal dropout, expectation-linear dropout, Pi-model, R-Drop, and one pass (CE1 alone)
VARIANTS = {"FD": Variant("train", True, "mse", 0.1), "ELD": Variant("eval", False, "mse", 0.25),
            "PM": Variant("train", False, "mse", 0.15), "RD": Variant("train", True, "kl", 1.0),
            "baseline": Variant("none", False, "mse", 0.0)}


@dataclass(frozen=True)
class Regularizer:
    """The per-batch loss settings of a run (a variant with its flags applied)."""
    kappa: float = 0.0
    double_target: bool = False
    eval_auxiliary: bool = False
    penalty: str = "mse"
    same_mask: str = ""  # sites whose pass-1 mask pass 2 reuses ("e", "i", "h", "w", "o")
    alpha: float = 0.0  # AR on the last layer's dropped output
    beta: float = 0.0  # TAR on the last layer's raw output
    batch_passes: bool = True  # with a shared W_hh mask, run both passes as one forward of twice the batch
    fused: bool = True  # the decoder's fused loss where it has one (fused_loss.py); same values as the plain code
    overlap: bool = False  # pass 2 on a second CUDA stream beside pass 1, where overlap_blocker allows

    def __post_init__(self):
        penalty_function(self.penalty)

    @property
    def second_pass(self):  # the one rule: a penalty to weigh, or a second target loss to average
        return self.kappa > 0 or self.double_target

    @property
    def batched(self):
        return self.second_pass and self.batch_passes and not self.eval_auxiliary and "w" in self.same_mask

    def weights(self, second=True):
        """(w1, w2, kappa) in loss = w1 * CE1 + w2 * CE2 + kappa * penalty; no penalty without pass 2."""
        w1, w2 = (0.5, 0.5) if self.double_target else (1.0, 0.0)
        return w1, w2, self.kappa if second else 0.0

    @classmethod
    def of(cls, variant, **settings):
        """A variant of VARIANTS, with ``settings`` (kappa, ...) overriding its defaults."""
        v = VARIANTS[variant]
        return cls(**dict(kappa=v.kappa, double_target=v.double_target, eval_auxiliary=v.second_pass == "eval",
                          penalty=v.penalty) | settings)

    @classmethod
    def from_config(cls, cfg):
        keys = ("kappa", "double_target", "eval_auxiliary", "penalty", "same_mask", "alpha", "beta")
        return cls(**{k: cfg[k] for k in keys}, batch_passes=cfg.get("batch_passes", True),
                   fused=cfg.get("fused_loss", True), overlap=cfg.get("overlap_passes", False))


class LossOutput(NamedTuple):
    loss: torch.Tensor  # what backward() is called on
    ce: torch.Tensor  # pass 1's mean token cross-entropy (detached): the reported training loss
    penalty: torch.Tensor  # kappa times the penalty (detached; zero without a second pass)
    hidden: list = None  # pass 1's final hidden state (fraternal_loss)


def fraternal_loss_pair(logits1, logits2, targets, reg):
    """The loss of two passes' logits (rows of classes; ``logits2`` None for one pass) under ``reg``."""
    w1, w2, kappa = reg.weights(logits2 is not None)
    ce1 = F.cross_entropy(logits1, targets)
    loss, penalty = w1 * ce1, ce1.new_zeros(())
    if logits2 is not None:
        penalty = kappa * penalty_function(reg.penalty)(logits1, logits2)
        loss = loss + w2 * F.cross_entropy(logits2, targets) + penalty
    return LossOutput(loss, ce1.detach(), penalty.detach())


class Masks(NamedTuple):
    """The batch stacks ``copies`` of one batch, own masks but at ``share``; ``reuse``: the last forward's masks."""
    copies: int = 1
    share: str = ""
    reuse: str = ""


def tile_hidden(hidden, copies):
    """The hidden state (per layer, (h, c), batch on dim 1) of a batch stacking ``copies`` copies."""
    return [tuple(t.repeat(1, copies, 1) for t in hc) for hc in hidden]


def first_copy(hidden, copies):
    return [tuple(t[:, : t.size(1) // copies] for t in hc) for hc in hidden]


def overlap_blocker(reg, device):
    """Why ``reg``'s two passes cannot run on two CUDA streams on ``device`` (pass 2 must not depend on pass 1)."""
    reasons = ((not reg.second_pass, "there is no second pass"),
               (device.type != "cuda", f"CUDA streams exist only on a CUDA device, not on {device.type}"),
               (reg.batched, "with --same_mask_w the two passes already run as one forward of twice the batch"),
               (reg.same_mask, "pass 2 reuses pass 1's masks (--same_mask_*), so it depends on pass 1"),
               (reg.eval_auxiliary, "ELD's eval-mode second pass is not on the overlapped path, built for train mode"))
    return next((why for blocked, why in reasons if blocked), None)


@functools.lru_cache(maxsize=None)
def _side_stream(device):  # pass 2's stream, one per device
    return torch.cuda.Stream(device)


def _overlapped_passes(model, data, hidden):
    """Pass 1 on the current CUDA stream, pass 2 on a side stream, launched in the sequential order: same Philox
    offsets, same masks.  Autograd runs each backward op on its forward op's stream, syncing what crosses."""
    main, side = torch.cuda.current_stream(data.device), _side_stream(data.device)
    side.wait_stream(main)  # fork before pass 1 is queued: pass 2 must not wait for it
    first = model.features(data, hidden)
    with torch.cuda.stream(side):
        second = model.features(data, hidden)
    main.wait_stream(side)  # join before the loss
    for t in (data, *(t for state in hidden for t in state)):
        t.record_stream(side)
    second.outputs[-1].record_stream(main)
    return first, second.outputs[-1]


def _two_passes(model, data, hidden, reg):
    """Pass 1's features (hidden state, per-layer outputs) and pass 2's decoder input, or None."""
    if not reg.second_pass:
        return model.features(data, hidden), None
    if reg.overlap and overlap_blocker(reg, data.device) is None:
        return _overlapped_passes(model, data, hidden)
    if reg.batched:
        # One forward of twice the batch, one LSTM kernel call (one W_hh mask); other sites per half unless shared.
        B = data.size(1)
        f = model.features(data.repeat(1, 2), tile_hidden(hidden, 2), Masks(copies=2, share=reg.same_mask))
        first = f._replace(hidden=first_copy(f.hidden, 2), raw_outputs=[r[:, :B] for r in f.raw_outputs],
                           outputs=[o[:, :B] for o in f.outputs])
        return first, f.outputs[-1][:, B:]
    first = model.features(data, hidden)
    if not reg.eval_auxiliary:
        return first, model.features(data, hidden, Masks(reuse=reg.same_mask)).outputs[-1]
    model.eval()
    try:
        return first, model.features(data, hidden).outputs[-1]
    finally:
        model.train()


def fraternal_loss(model, data, targets, hidden, reg):
    """One batch's loss under ``reg`` plus AR and TAR (``hidden`` detached); the decoder's fused_loss if it has one."""
    first, out2 = _two_passes(model, data, hidden, reg)
    x1, x2 = (t if t is None else t.reshape(-1, t.size(-1)) for t in (first.outputs[-1], out2))
    fused = getattr(model.decoder, "fused_loss", None) if reg.fused else None
    out = fused(x1, x2, targets, *reg.weights(x2 is not None), reg.penalty) if fused else None
    if out is None:
        out = fraternal_loss_pair(model.decoder(x1), x2 if x2 is None else model.decoder(x2), targets, reg)
    loss, ce1, penalty = out[:3]
    if reg.alpha:
        loss = loss + reg.alpha * first.outputs[-1].pow(2).mean()
    if reg.beta:
        raw = first.raw_outputs[-1]
        loss = loss + reg.beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return LossOutput(loss, ce1, penalty, first.hidden)
