"""Dropout masks as the three dropout modules draw them, kept for a second pass to reuse; the five sites."""
import torch

SITE_RATE = {"e": "dropoute", "i": "dropouti", "h": "dropouth", "w": "wdrop", "o": "dropout"}
SITES = {s: f"{what} ({SITE_RATE[s]})" for s, what in zip(SITE_RATE, (
    "embedding rows", "embedding output", "between layers", "W_hh DropConnect", "last layer output"))}


def dropout_mask(like, shape, p):
    """Mask {0, 1/(1-p)} on ``like``'s device and dtype (uniform draws thresholded: twice bernoulli_'s speed)."""
    return torch.rand(shape, device=like.device, dtype=like.dtype).ge_(p).mul_(1.0 / (1.0 - p))


def check_dropout_p(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return float(p)


def stored_mask(module, shape):
    """The mask of ``module``'s previous training forward, for reuse by a second pass."""
    mask = module.mask
    if mask is None:
        raise RuntimeError(f"{type(module).__name__}: reuse asked for, but no training forward drew a mask yet")
    if tuple(mask.shape) != tuple(shape):
        raise RuntimeError(f"{type(module).__name__}: stored mask has shape {tuple(mask.shape)}, "
                           f"this call needs {tuple(shape)}")
    return mask
