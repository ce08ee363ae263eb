"""The per-batch training loss of fraternal dropout and its comparison variants.

Both passes run the same model from the same initial hidden state on the same batch; the hidden
state carried to the next batch is pass 1's.  ``logits`` are the decoder outputs before softmax.

| variant  | pass 2          | target loss              | penalty (times kappa)                      |
|----------|-----------------|--------------------------|--------------------------------------------|
| FD       | train, new masks| (CE(logits1)+CE(logits2))/2 | mean((logits1 - logits2)^2), every element |
| ELD      | eval, no dropout| CE(logits1)              | same                                       |
| PM       | train, new masks| CE(logits1)              | same                                       |
| RD       | train, new masks| (CE1 + CE2) / 2          | (KL(p1||p2) + KL(p2||p1)) / 2 per token    |
| baseline | none            | CE(logits1)              | none                                       |

To lift fraternal dropout into another model, ``fraternal_penalty`` and the structure of
``fraternal_loss`` are all that is needed: any model whose forward draws new dropout masks.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from fused_loss import decoder_loss
from model import Features, Masks, first_copy, tile_hidden


def mse_penalty(logits1, logits2):
    """Fraternal dropout's penalty: mean over every element of (logits1 - logits2)^2."""
    return F.mse_loss(logits1, logits2)


def symmetric_kl_penalty(logits1, logits2):
    """R-Drop's penalty: (KL(p1||p2) + KL(p2||p1)) / 2 of the softmax distributions, mean per token."""
    logp1 = F.log_softmax(logits1, dim=-1)
    logp2 = F.log_softmax(logits2, dim=-1)
    # KL(p1||p2) + KL(p2||p1) = sum_v (p1 - p2)(log p1 - log p2)
    return ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1).mean() / 2


PENALTIES = {"mse": mse_penalty, "kl": symmetric_kl_penalty}


@dataclass(frozen=True)
class Variant:
    """A regularizer, declared once: what its second pass is, which target losses it averages, its
    penalty and its default kappa (``preset_kappa`` where a preset's experiments used another)."""
    second_pass: str  # "train" (new masks), "eval" (no dropout) or "none"
    double_target: bool  # (CE1 + CE2) / 2 instead of CE1
    penalty: str  # a key of PENALTIES
    kappa: float
    preset_kappa: tuple = ()  # ((preset, kappa), ...)

    def default_kappa(self, preset):
        return dict(self.preset_kappa).get(preset, self.kappa)


VARIANTS = {
    "FD": Variant("train", True, "mse", 0.1, (("single", 0.15),)),
    "ELD": Variant("eval", False, "mse", 0.25),
    "PM": Variant("train", False, "mse", 0.15),
    "RD": Variant("train", True, "kl", 1.0),
    "baseline": Variant("none", False, "mse", 0.0),
}


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
    fused: bool = True  # decoder + losses in cache-sized chunks (fused_loss.py); same values as the plain code

    def __post_init__(self):
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}: choose from {', '.join(PENALTIES)}")

    @property
    def second_pass(self):
        return self.kappa > 0 or self.double_target

    @property
    def batched(self):
        return self.second_pass and self.batch_passes and not self.eval_auxiliary and "w" in self.same_mask

    @classmethod
    def from_config(cls, cfg):
        return cls(kappa=cfg["kappa"], double_target=cfg["double_target"],
                   eval_auxiliary=cfg["eval_auxiliary"], penalty=cfg["penalty"],
                   same_mask=cfg["same_mask"], alpha=cfg["alpha"], beta=cfg["beta"],
                   batch_passes=cfg.get("batch_passes", True), fused=cfg.get("fused_loss", True))


class LossOutput(NamedTuple):
    loss: torch.Tensor  # what backward() is called on
    ce: torch.Tensor  # pass 1's mean token cross-entropy (detached): the reported training loss
    penalty: torch.Tensor  # kappa times the penalty (detached; zero without a second pass)
    hidden: list  # pass 1's final hidden state


def fraternal_penalty(logits1, logits2, kind="mse"):
    """How much two passes' predictions differ, by the penalty named ``kind``."""
    if kind not in PENALTIES:
        raise ValueError(f"unknown penalty {kind!r}: choose from {', '.join(PENALTIES)}")
    return PENALTIES[kind](logits1, logits2)


def _two_passes(model, data, hidden, reg):
    """Pass 1's features (hidden state, per-layer outputs) and pass 2's decoder input, or None."""
    if not reg.second_pass:
        return model.features(data, hidden), None
    if reg.batched:
        # One forward of twice the batch: the shared W_hh mask lets both halves go through one
        # LSTM kernel call; every other site gives each half its own mask unless it is shared too.
        B = data.size(1)
        f = model.features(data.repeat(1, 2), tile_hidden(hidden, 2), Masks(copies=2, share=reg.same_mask))
        first = Features(first_copy(f.hidden, 2), [r[:, :B] for r in f.raw_outputs], [o[:, :B] for o in f.outputs])
        return first, f.outputs[-1][:, B:]
    first = model.features(data, hidden)
    if reg.eval_auxiliary:
        model.eval()
        try:
            second = model.features(data, hidden)
        finally:
            model.train()
    else:
        second = model.features(data, hidden, Masks(reuse=reg.same_mask))
    return first, second.outputs[-1]


def fraternal_loss(model, data, targets, hidden, reg):
    """Loss of one batch under ``reg``.  ``hidden`` must already be detached.

        loss = w1 * CE(logits1) + w2 * CE(logits2) + kappa * penalty(logits1, logits2)  [+ AR + TAR]

    with (w1, w2) = (1/2, 1/2) for a double target, else (1, 0).  ``reg.fused`` computes the same
    values with the decoder and every loss in cache-sized chunks (fused_loss.py; a test holds the
    two equal), far less memory traffic than the plain code below."""
    first, out2 = _two_passes(model, data, hidden, reg)
    out1, raw_outputs, outputs = first.outputs[-1], first.raw_outputs, first.outputs
    w1, w2 = (0.5, 0.5) if reg.double_target else (1.0, 0.0)
    kappa = reg.kappa if out2 is not None else 0.0
    flat = lambda t: t.reshape(-1, t.size(-1))  # noqa: E731
    if reg.fused:
        loss, ce1, penalty = decoder_loss(flat(out1), flat(out2) if out2 is not None else None,
                                          model.decoder.weight, model.decoder.bias, targets, w1, w2, kappa,
                                          reg.penalty)
    else:
        logits1 = model.decoder(flat(out1))
        ce1 = F.cross_entropy(logits1, targets)
        loss, penalty = w1 * ce1, ce1.new_zeros(())
        if out2 is not None:
            logits2 = model.decoder(flat(out2))
            penalty = kappa * fraternal_penalty(logits1, logits2, reg.penalty)
            loss = loss + w2 * F.cross_entropy(logits2, targets) + penalty
        ce1, penalty = ce1.detach(), penalty.detach()
    if reg.alpha:
        loss = loss + reg.alpha * outputs[-1].pow(2).mean()
    if reg.beta:
        raw = raw_outputs[-1]
        loss = loss + reg.beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return LossOutput(loss, ce1, penalty, first.hidden)
