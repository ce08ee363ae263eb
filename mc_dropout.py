"""Test-time measures with dropout on: Monte Carlo dropout (Gal & Ghahramani 2016) and the mask variance FD lowers."""
import math

import torch

from fraternal import Masks, first_copy, tile_hidden
from scoring import stream


def mc_cross_entropy(target_logprobs):
    """Mean of -log(mean over samples of p(target)) from log-probs (samples, tokens)."""
    return -(torch.logsumexp(target_logprobs, dim=0) - math.log(target_logprobs.size(0))).mean()


@torch.no_grad()
def mc_evaluate(model, source, bptt, batch_size, samples, chunk=None, max_batches=None, desc="MC dropout"):
    """Mean token cross-entropy, the samples run as ``chunk`` copies of the batch per forward."""
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
    """Mean of (logits of one train-mode pass - another's)^2, from one hidden state (pass 1's carried on)."""
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
