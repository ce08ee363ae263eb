"""Evaluate a checkpoint with the continuous cache pointer (Grave, Joulin, Usunier 2017), as AWD-LSTM did.

No training: at each position t the model's last-layer output h_t is compared with the outputs h_i of
the previous ``--window`` positions; softmax(theta * h_t . h_i) over them puts mass on the word that
followed each h_i, and that cache distribution is mixed into the model's softmax:
p(w) = (1 - lambdasm) * p_vocab(w) + lambdasm * p_cache(w).  Both splits run at batch 1 as one
stream, the hidden state and the cache carried from one --bptt chunk to the next (the chunk length
only trades memory for speed; it does not change the result).  At the very start the cache holds the
fewer than --window positions seen so far (none at the first token, which gets p_vocab alone);
AWD-LSTM's script instead left the cache off until --window positions had been seen.

After fine-tuning, on a GPU:

    python pointer.py --save runs/awd-ptb_FD.finetune.pt    # PTB defaults: window 500, theta 1.0, lambdasm 0.1
    python pointer.py --save runs/awd-wt2_FD.finetune.pt    # WT2 defaults: window 3785, theta 0.662, lambdasm 0.1279
"""
import json
import math
from pathlib import Path

import torch

from checkpoint import open_checkpoint
from config import tool_parser
from data import batchify, count_windows, windows
from trainer import ppl
from utils import UserError, progress, run_cli

# The awd-lstm-lm README's pointer commands (salesforce/awd-lstm-lm, "Finally, run the pointer").
DEFAULTS = {
    "ptb": dict(window=500, theta=1.0, lambdasm=0.1, bptt=5000),
    "wt2": dict(window=3785, theta=0.662, lambdasm=0.1279, bptt=2000),
}


def build_parser():
    p = tool_parser(__doc__)
    p.add_argument("--window", type=int, help="cache size in past positions (PTB 500, WT2 3785)")
    p.add_argument("--theta", type=float, help="flatness of the cache softmax (PTB 1.0, WT2 0.662)")
    p.add_argument("--lambdasm", type=float, help="weight of the cache in the mixture, 0 = model alone "
                                                  "(PTB 0.1, WT2 0.1279)")
    p.add_argument("--bptt", type=int, help="tokens per forward; memory only, same result (PTB 5000, WT2 2000)")
    p.add_argument("--max_batches", type=int, help="evaluate only this many --bptt chunks of each split (quick checks)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    return p


def check_args(args):
    if args.window is not None and args.window <= 0:
        raise UserError(f"--window must be a positive number of positions, got {args.window}")
    if args.theta is not None and not args.theta >= 0:
        raise UserError(f"--theta must be >= 0, got {args.theta}")
    if args.lambdasm is not None and not 0.0 <= args.lambdasm <= 1.0:
        raise UserError(f"--lambdasm must be in [0, 1], got {args.lambdasm}")
    if args.bptt is not None and args.bptt <= 0:
        raise UserError(f"--bptt must be positive, got {args.bptt}")
    if args.max_batches is not None and args.max_batches <= 0:
        raise UserError(f"--max_batches must be positive, got {args.max_batches}")


def corpus_of(cfg, data):
    """'wt2' for a WikiText-2 checkpoint (by preset or folder name), else 'ptb'."""
    return "wt2" if cfg.get("preset") == "awd-wt2" or "wikitext" in Path(data).name.lower() else "ptb"


def cache_logprob(h, targets, mem_h, mem_w, window, theta):
    """log p_cache(target) for each of the L positions of a chunk, vectorized over the chunk.

    h (L, d) are the chunk's last-layer outputs, targets (L,) the words that follow them; mem_h (M, d)
    and mem_w (M,) the last M <= window outputs before the chunk and their next words.  Position t sees
    the entries j of [mem; chunk] with M + t - window <= j < M + t: the past only, never itself.
    Returns (L,) log-probabilities, -inf where no cached entry has the target, NaN where the cache is empty.
    """
    keys = torch.cat([mem_h, h])                      # (M + L, d)
    words = torch.cat([mem_w, targets])               # (M + L,)
    m, length = mem_h.size(0), h.size(0)
    scores = theta * (h @ keys.t())                   # (L, M + L)
    t = torch.arange(length, device=h.device).unsqueeze(1) + m
    j = torch.arange(m + length, device=h.device).unsqueeze(0)
    visible = (j < t) & (j >= t - window)
    scores = scores.masked_fill(~visible, -math.inf)
    hit = scores.masked_fill(words.unsqueeze(0) != targets.unsqueeze(1), -math.inf)
    return torch.logsumexp(hit, 1) - torch.logsumexp(scores, 1)


@torch.no_grad()
def token_logprobs(model, tokens, window, theta, lambdasm, bptt, max_batches=None):
    """Per-token log-probabilities of a 1-D token stream at batch 1, with and without the cache."""
    model.eval()
    source = batchify(tokens, 1, next(model.parameters()).device)
    hidden = model.init_hidden(1)
    mem_h, mem_w = None, source.new_zeros(0)
    log_wv = math.log(1 - lambdasm) if lambdasm < 1 else -math.inf   # log mixture weights
    log_wc = math.log(lambdasm) if lambdasm > 0 else -math.inf
    plain, mixed = [], []
    for data, targets in progress(windows(source, bptt, max_batches), count_windows(source, bptt, max_batches),
                                  "cache pointer", unit="chunk"):
        hidden, _, dropped = model.features(data, hidden)
        logits = model.decoder(dropped[-1])
        h = dropped[-1].view(-1, dropped[-1].size(-1)).float()   # eval mode: the last layer's output
        flat = logits.view(-1, model.ntoken).float()
        vocab = flat.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(flat, 1)   # log p_vocab(target)
        mem_h = h[:0] if mem_h is None else mem_h
        cache = cache_logprob(h, targets, mem_h, mem_w, window, theta)
        mix = torch.logaddexp(vocab + log_wv, cache + log_wc)
        mixed.append(torch.where(torch.isnan(cache), vocab, mix))   # empty cache (first token): model alone
        plain.append(vocab)
        mem_h, mem_w = torch.cat([mem_h, h])[-window:], torch.cat([mem_w, targets])[-window:]
    return torch.cat(plain), torch.cat(mixed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    blob, corpus, model, device = open_checkpoint(args.save, args.data, args.device)
    cfg, data = blob["config"], args.data or blob["config"]["data"]
    which = corpus_of(cfg, data)
    opts = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in DEFAULTS[which].items()}
    print(f"| cache pointer | window {opts['window']} | theta {opts['theta']} | lambdasm {opts['lambdasm']} | "
          f"bptt {opts['bptt']} | defaults: {which} |")
    results = {"checkpoint": args.save, "data": str(data), **opts}
    for name in ("valid", "test"):
        plain, mixed = token_logprobs(model, getattr(corpus, name), max_batches=args.max_batches, **opts)
        loss, base = -mixed.double().mean().item(), -plain.double().mean().item()
        results.update({f"{name}_loss": loss, f"{name}_ppl": ppl(loss),
                        f"{name}_plain_loss": base, f"{name}_plain_ppl": ppl(base)})
        print(f"| {name:5s} | with cache: loss {loss:5.3f} | ppl {ppl(loss):8.2f} | "
              f"model alone: ppl {ppl(base):8.2f} | batch size 1 |")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    run_cli(main)
