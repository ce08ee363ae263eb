"""Embedding dropout (Gal & Ghahramani): drop whole word types (rows of the embedding matrix), kept rows scaled
by 1/(1-p).  Multiplying only the rows looked up gives the full matrix's values and gradients, far cheaper."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from masks import check_dropout_p, dropout_mask, stored_mask


class EmbeddingDropout(nn.Module):
    def __init__(self, p=0.1):
        super().__init__()
        self.p = check_dropout_p(p)
        self.mask = None  # (copies, vocab) row mask of the last training forward

    def forward(self, weight, words, copies=1, share=False, reuse=False):
        """``copies`` > 1: the batch stacks copies of one batch, each with its own row mask unless ``share``."""
        if not self.training:
            # As the reference: ELD's eval-mode pass reaches the embedding only through the tied decoder.
            return F.embedding(words, weight.detach())
        emb = F.embedding(words, weight)
        if self.p == 0:
            return emb
        groups = 1 if (copies == 1 or share) else copies
        shape = (groups, weight.size(0))
        self.mask = mask = stored_mask(self, shape) if reuse else dropout_mask(weight, shape, self.p)
        group = torch.arange(words.size(1), device=words.device) // (words.size(1) // groups)  # each column's copy
        return emb * mask.view(-1)[group * weight.size(0) + words].unsqueeze(-1)

    def extra_repr(self):
        return f"p={self.p}"
