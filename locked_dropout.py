"""Locked (variational) dropout on (seq_len, batch, features): "sequence" masks (1, batch, features), as
awd-lstm-lm since 2017-09-01; "timestep" (seq_len, 1, features), as the AWD-LSTM paper's code; "full", every
entry its own (the single-layer FD setup).  The last mask is kept for a second pass to reuse."""
import torch.nn as nn

from masks import check_dropout_p, dropout_mask, stored_mask

KINDS = ("sequence", "timestep", "full")


class LockedDropout(nn.Module):
    def __init__(self, p=0.5, kind="sequence"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown locked dropout mask {kind!r}: choose from {', '.join(KINDS)}")
        self.p = check_dropout_p(p)
        self.kind = kind
        self.mask = None  # plain attribute, not a buffer: never part of the state_dict

    def forward(self, x, copies=1, share=False, reuse=False):
        """``copies`` > 1: the batch stacks copies of one batch, each with its own mask unless ``share``."""
        if not self.training or self.p == 0:
            return x
        T, N, F = x.shape
        rows = 1 if self.kind == "sequence" else T
        if reuse:
            mask = stored_mask(self, (rows, 1 if self.kind == "timestep" else N, F))
        elif self.kind == "timestep":  # one column per copy that draws its own mask
            groups = 1 if share else copies
            mask = dropout_mask(x, (T, groups, F), self.p)
            mask = mask.repeat_interleave(N // groups, dim=1) if groups > 1 else mask
        elif copies > 1 and share:
            mask = dropout_mask(x, (rows, N // copies, F), self.p).repeat(1, copies, 1)
        else:  # columns are independent, so independent copies need no special case
            mask = dropout_mask(x, (rows, N, F), self.p)
        self.mask = mask
        return x * mask

    def extra_repr(self):
        return f"p={self.p}, kind={self.kind}"
