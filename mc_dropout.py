"""Test-time measures that keep dropout on: Monte Carlo dropout evaluation and the mask variance.

MC dropout (Gal & Ghahramani 2016) averages the probabilities, not the log-probabilities, of N masked passes, run
batched as ``copies`` of the batch (see model.py).  The mask variance is what fraternal dropout minimizes: the mean
squared difference of two train-mode passes' logits from one hidden state (pass 1's carried on, as in training).
"""
import math

import torch

from fraternal import Masks, first_copy, tile_hidden
from scoring import stream


def mc_cross_entropy(target_logprobs):
    """Mean of -log(mean over samples of p(target)) from per-sample log-probs (samples, tokens)."""
    return -(torch.logsumexp(target_logprobs, dim=0) - math.log(target_logprobs.size(0))).mean()


@torch.no_grad()
def mc_evaluate(model, source, bptt, batch_size, samples, chunk=None, max_batches=None, desc="MC dropout"):
    """MC-dropout mean token cross-entropy over a batchified stream (dropout on at every site)."""
    chunk = chunk or max(1, min(samples, (256 << 20) // (bptt * batch_size * model.ntoken * 4)))  # 256 MB of logits
    sizes = [min(chunk, samples - s) for s in range(0, samples, chunk)]
    model.train()
    hiddens = [tile_hidden(model.init_hidden(batch_size), c) for c in sizes]
    total, count = torch.zeros((), device=source.device), 0
    try:
        for data, targets in stream(source, bptt, f"{desc}, {samples} samples", max_batches):
            T, per_sample = data.size(0), []
            for k, c in enumerate(sizes):
                logits, hiddens[k] = model(data.repeat(1, c), hiddens[k], Masks(copies=c))
                tgt = targets.view(T, 1, batch_size).expand(T, c, batch_size).reshape(T, c * batch_size, 1)
                logp = logits.gather(-1, tgt).squeeze(-1) - torch.logsumexp(logits, dim=-1)
                per_sample.append(logp.view(T, c, batch_size).transpose(0, 1).reshape(c, -1))
            total += mc_cross_entropy(torch.cat(per_sample)) * targets.numel()
            count += targets.numel()
    finally:
        model.eval()
    return total.item() / count


@torch.no_grad()
def mask_variance(model, source, bptt, batch_size, max_batches=None, desc="mask variance"):
    """Mean over all elements of (logits of one dropout pass - logits of another)^2."""
    model.train()
    hidden, total, count = model.init_hidden(batch_size), torch.zeros((), device=source.device), 0
    try:
        for data, _ in stream(source, bptt, desc, max_batches):
            logits, pair_hidden = model(data.repeat(1, 2), tile_hidden(hidden, 2), Masks(copies=2))
            diff = logits[:, :batch_size] - logits[:, batch_size:]
            total += diff.pow(2).sum()
            count += diff.numel()
            hidden = first_copy(pair_hidden, 2)
    finally:
        model.eval()
    return total.item() / count
