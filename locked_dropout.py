"""Locked (variational) dropout: one mask per sequence, reused at every time step.

The 3-layer AWD-LSTM draws masks of shape (1, batch, features); the single-layer fraternal-dropout
setup draws a full-shape mask instead (``lock_time=False``).  The last mask is kept so a second
pass can reuse it (fraternal dropout's ``same_mask_i/h/o``).
"""
import torch.nn as nn

from masks import check_dropout_p, dropout_mask, stored_mask


class LockedDropout(nn.Module):
    def __init__(self, p=0.5, lock_time=True):
        super().__init__()
        self.p = check_dropout_p(p)
        self.lock_time = lock_time
        self.mask = None  # plain attribute, not a buffer: never part of the state_dict

    def forward(self, x, copies=1, share=False, reuse=False):
        """x: (seq_len, batch, features).  ``copies`` > 1 means the batch stacks that many copies of
        one batch; ``share`` gives all copies one mask, otherwise each copy draws its own."""
        if not self.training or self.p == 0:
            return x
        T, N, F = x.shape
        rows = 1 if self.lock_time else T
        if reuse:
            mask = stored_mask(self, (rows, N, F))
        elif copies > 1 and share:
            mask = dropout_mask(x, (rows, N // copies, F), self.p).repeat(1, copies, 1)
        else:  # columns are independent, so independent copies need no special case
            mask = dropout_mask(x, (rows, N, F), self.p)
        self.mask = mask
        return x * mask

    def extra_repr(self):
        return f"p={self.p}, lock_time={self.lock_time}"
