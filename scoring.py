"""Scoring a language model: perplexity over a split, the one evaluation the trainer and every tool share."""
import json
import math

import torch
import torch.nn.functional as F

import distributed
from data import count_windows, windows
from runfiles import UserError
from utils import progress


def ppl(loss):
    return math.exp(loss) if loss < 700 else float("inf")


def stream(source, bptt, desc, max_batches=None, unit="batch"):
    return progress(windows(source, bptt, max_batches), count_windows(source, bptt, max_batches), desc, unit=unit,
                    enabled=distributed.is_main())


@torch.no_grad()
def evaluate(model, source, bptt, batch_size, max_batches=None, desc="evaluation"):
    """Mean token cross-entropy over a batchified stream, hidden state carried throughout."""
    model.eval()
    hidden, total, count = model.init_hidden(batch_size), torch.zeros((), device=source.device), 0
    for data, targets in stream(source, bptt, desc, max_batches):
        logits, hidden = model(data, hidden)
        total += F.cross_entropy(logits.view(-1, model.ntoken), targets, reduction="sum")
        count += targets.numel()
    return total.item() / count


def check_finite(results, fix):
    """A diverged evaluation is no result: one line naming ``fix``, so no record or report ever takes up an inf."""
    if bad := [k[:-5] for k, v in results.items() if k.endswith("_loss") and not math.isfinite(ppl(v))]:
        raise UserError(f"the result is not finite ({bad[0]} perplexity inf): {fix} and rerun")


def report(results, lines, as_json, fix):
    """A tool's result lines, then with ``as_json`` its results as one JSON line; nothing when not finite."""
    check_finite(results, fix)
    print("\n".join(lines))
    if as_json:
        print(json.dumps(results))
    return results
