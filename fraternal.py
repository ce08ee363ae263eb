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
    penalty and its default kappa (config.PRESET_KAPPA where a preset's experiments used another)."""
    second_pass: str  # "train" (new masks), "eval" (no dropout) or "none"
    double_target: bool  # (CE1 + CE2) / 2 instead of CE1
    penalty: str  # a key of PENALTIES
    kappa: float


VARIANTS = {
    "FD": Variant("train", True, "mse", 0.1),
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
    overlap: bool = False  # pass 2 on a second CUDA stream beside pass 1, where overlap_blocker allows

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
                   batch_passes=cfg.get("batch_passes", True), fused=cfg.get("fused_loss", True),
                   overlap=cfg.get("overlap_passes", False))


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


def overlap_blocker(reg, device):
    """Why ``reg``'s two passes cannot run on two CUDA streams on ``device``; None when they can.
    The overlap needs a pass 2 that depends on nothing of pass 1 and draws every mask of its own."""
    if not reg.second_pass:
        return "there is no second pass"
    if device.type != "cuda":
        return f"CUDA streams exist only on a CUDA device, not on {device.type}"
    if reg.batched:
        return "with --same_mask_w the two passes already run as one forward of twice the batch"
    if reg.same_mask:
        return "pass 2 reuses pass 1's masks (--same_mask_*), so it depends on pass 1"
    if reg.eval_auxiliary:
        return "the eval-mode second pass (ELD) is not part of the overlapped path, which is built and tested " \
               "for train-mode passes"
    return None


_SIDE_STREAMS = {}


def _side_stream(device):
    """The stream pass 2 runs on: one per device, made once."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]


def _overlapped_passes(model, data, hidden):
    """Pass 1 on the current CUDA stream, pass 2 on a side stream, so that their kernels run side by
    side (each pass alone is a chain of small, latency-bound recurrent kernels).

    Same masks as the sequential path: the passes are launched from the host in the same order, and
    the CUDA generator (Philox) gives each draw its counter offset on the host at launch, so every
    mask has the value the sequential path draws, whichever stream it runs on.
    Synchronization: the side stream starts after all the current stream has queued before pass 1
    (the batch, the hidden state, the last update of the weights), not after pass 1; the current
    stream waits for pass 2 before the loss reads it.  Every tensor one stream made and the other
    reads is recorded with the allocator (``record_stream``), so its memory is not reused while the
    other stream may still read it: the batch and the hidden state (also read by pass 2's backward)
    and pass 2's output.  Backward needs nothing more: autograd runs each backward op on its forward
    op's stream, synchronizes every gradient that crosses streams (the two passes' sums into the
    shared weights included), and ``backward()`` returns synchronized with the calling stream, so
    clipping and the optimizer step read complete gradients."""
    main, side = torch.cuda.current_stream(data.device), _side_stream(data.device)
    side.wait_stream(main)  # fork before pass 1 is queued: pass 2 must not wait for it
    first = model.features(data, hidden)
    with torch.cuda.stream(side):
        second = model.features(data, hidden)
    main.wait_stream(side)  # join before the loss
    for t in (data, *(t for state in hidden for t in state)):
        t.record_stream(side)
    out2 = second.outputs[-1]
    out2.record_stream(main)
    return first, out2


def _two_passes(model, data, hidden, reg):
    """Pass 1's features (hidden state, per-layer outputs) and pass 2's decoder input, or None."""
    if not reg.second_pass:
        return model.features(data, hidden), None
    if reg.overlap and overlap_blocker(reg, data.device) is None:
        return _overlapped_passes(model, data, hidden)
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
