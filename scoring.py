"""Scoring a language model: perplexity over a split, the one evaluation the trainer and every tool share."""
import math

import torch
import torch.nn.functional as F

import distributed
from data import count_windows, windows
from utils import progress


def ppl(loss):
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def evaluate(model, source, bptt, batch_size, max_batches=None, desc="evaluation"):
    """Mean token cross-entropy over a batchified stream, hidden state carried throughout."""
    model.eval()
    hidden = model.init_hidden(batch_size)
    total = torch.zeros((), device=source.device)
    count = 0
    for data, targets in progress(windows(source, bptt, max_batches), count_windows(source, bptt, max_batches),
                                  desc, enabled=distributed.is_main()):
        logits, hidden = model(data, hidden)
        total += F.cross_entropy(logits.view(-1, model.ntoken), targets, reduction="sum")
        count += targets.numel()
    return total.item() / count
