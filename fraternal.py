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


@dataclass(frozen=True)
class Regularizer:
    kappa: float = 0.0
    double_target: bool = False
    eval_auxiliary: bool = False
    penalty: str = "mse"  # "mse" on logits (FD, ELD, PM) or "kl" on softmax outputs (RD)
    same_mask: str = ""  # sites whose pass-1 mask pass 2 reuses ("e", "i", "h", "w", "o")
    alpha: float = 0.0  # AR on the last layer's dropped output
    beta: float = 0.0  # TAR on the last layer's raw output

    @property
    def second_pass(self):
        return self.kappa > 0 or self.double_target

    @classmethod
    def from_config(cls, cfg):
        return cls(kappa=cfg["kappa"], double_target=cfg["double_target"],
                   eval_auxiliary=cfg["eval_auxiliary"], penalty=cfg["penalty"],
                   same_mask=cfg["same_mask"], alpha=cfg["alpha"], beta=cfg["beta"])


class LossOutput(NamedTuple):
    loss: torch.Tensor  # what backward() is called on
    ce: torch.Tensor  # pass 1's mean token cross-entropy (detached): the reported training loss
    penalty: torch.Tensor  # kappa times the penalty (detached; zero without a second pass)
    hidden: list  # pass 1's final hidden state


def fraternal_penalty(logits1, logits2, kind="mse"):
    """How much two passes' predictions differ: mean squared difference of the logits over every
    element, or the symmetric KL of the softmax distributions averaged per token (R-Drop)."""
    if kind == "mse":
        return F.mse_loss(logits1, logits2)
    logp1 = F.log_softmax(logits1, dim=-1)
    logp2 = F.log_softmax(logits2, dim=-1)
    # KL(p1||p2) + KL(p2||p1) = sum_v (p1 - p2)(log p1 - log p2)
    sym = ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1)
    return sym.mean() / 2


def fraternal_loss(model, data, targets, hidden, reg):
    """Loss of one batch under ``reg``.  ``hidden`` must already be detached.

    The decoder, both cross-entropies and the penalty run fused (fused_loss.py); the values equal
    ``w1 * CE(logits1) + w2 * CE(logits2) + kappa * fraternal_penalty(logits1, logits2)``."""
    out1, hidden1, raw_outputs, outputs = model(data, hidden, return_h=True, decode=False)
    out2 = None
    if reg.second_pass:
        if reg.eval_auxiliary:
            model.eval()
            try:
                out2, _ = model(data, hidden, decode=False)
            finally:
                model.train()
        else:
            out2, _ = model(data, hidden, reuse=tuple(reg.same_mask), decode=False)
        out2 = out2.reshape(-1, out2.size(-1))
    w1, w2 = (0.5, 0.5) if reg.double_target else (1.0, 0.0)
    loss, ce1, penalty = decoder_loss(out1.reshape(-1, out1.size(-1)), out2, model.decoder.weight,
                                      model.decoder.bias, targets, w1, w2, reg.kappa if out2 is not None else 0.0,
                                      reg.penalty)
    if reg.alpha:
        loss = loss + reg.alpha * outputs[-1].pow(2).mean()
    if reg.beta:
        raw = raw_outputs[-1]
        loss = loss + reg.beta * (raw[1:] - raw[:-1]).pow(2).mean()
    return LossOutput(loss, ce1, penalty, hidden1)
