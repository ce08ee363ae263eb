"""Evaluate a checkpoint with the continuous cache pointer (Grave, Joulin, Usunier 2017), as AWD-LSTM did.

p(w) = (1 - lambdasm) p_vocab(w) + lambdasm p_cache(w), p_cache putting softmax(theta * h_t . h_i) on the word
that followed each of the previous --window last-layer outputs h_i.  Each split runs at batch 1 in --bptt chunks;
the loss is the mean over the N - 1 predictions.  Settings: the preset's source's, unless --settings or flags.

    python pointer.py --save runs/merity-ptb_baseline.finetune.pt   # paper: window 2000, theta 1.0, lambdasm 0.1
    python pointer.py --save runs/awd-ptb_FD.finetune.pt            # README: window 500, theta 1.0, lambdasm 0.1
    python pointer.py --save runs/awd-wt2_FD.finetune.pt            # window 3785, theta 0.662, lambdasm 0.1279
"""
import math

import torch

from checkpoint import corpus_of, open_checkpoint, tool_args, tool_parser
from config import PRESET
from data import batchify
from runfiles import UserError, run_cli
from scoring import ppl, report, stream

# readme: awd-lstm-lm's README at bf0742c; paper: AWD-LSTM's, its PTB window 2000 (README note, commit 19470c8), the
# rest the README's; tag: PyTorch==0.1.12's README.  bptt: the README's (with --awd_scoring it changes the result).
_PTB = dict(window=500, theta=1.0, lambdasm=0.1, bptt=5000)
_WT2 = dict(window=3785, theta=0.662, lambdasm=0.1279, bptt=2000)
SETTINGS = {("ptb", "readme"): _PTB, ("ptb", "paper"): dict(_PTB, window=2000), ("ptb", "tag"): _PTB,
            ("wt2", "readme"): _WT2, ("wt2", "paper"): _WT2, ("wt2", "tag"): _WT2}
OPTS = ("window", "theta", "lambdasm", "bptt")


def settings_for(blob, args):
    """The cache settings and their source: flags > --settings > the preset's (unknown: the README's, said so)."""
    given, corpus = {k: getattr(args, k) for k in OPTS if getattr(args, k) is not None}, corpus_of(blob)
    if corpus is None:
        if len(given) == len(OPTS):
            return given, "flags"
        raise UserError(f"checkpoint {args.save} was trained on neither PTB nor WikiText-2 (a vocabulary of "
                        f"{blob['vocab']['size']} words), so no published cache settings apply: pass "
                        f"--window, --theta, --lambdasm and --bptt")
    preset = blob["config"].get("preset")
    source = args.settings or (PRESET[preset].pointer if preset in PRESET else None)
    note = "" if source else f" (preset {preset!r} is unknown: the README's settings)"
    return {**SETTINGS[corpus, source or "readme"], **given}, f"{corpus} {source or 'readme'}{note}"


def cache_logprob(h, targets, mem_h, mem_w, window, theta):
    """log p_cache(targets) (L,) of outputs h (L, d) after cached mem_h (M, d), next words mem_w (M,): t sees
    [mem; chunk][M + t - window : M + t].  -inf where no entry has the target, NaN where the cache is empty."""
    words, m, length = torch.cat([mem_w, targets]), mem_h.size(0), h.size(0)   # words: (M + L,)
    scores = theta * (h @ torch.cat([mem_h, h]).t())                             # (L, M + L)
    t = torch.arange(length, device=h.device).unsqueeze(1) + m
    j = torch.arange(m + length, device=h.device).unsqueeze(0)
    scores = scores.masked_fill((j >= t) | (j < t - window), -math.inf)   # visible: t - window <= j < t
    hit = scores.masked_fill(words.unsqueeze(0) != targets.unsqueeze(1), -math.inf)
    return torch.logsumexp(hit, 1) - torch.logsumexp(scores, 1)


@torch.no_grad()
def token_logprobs(model, tokens, window, theta, lambdasm, bptt, max_batches=None, awd_scoring=False):
    """Per-token log-probabilities at batch 1, without and with the cache (``awd_scoring``: as the reference)."""
    model.eval()
    source = batchify(tokens, 1, next(model.parameters()).device)
    hidden, mem_w = model.init_hidden(1), source.new_zeros(0)
    mem_h = torch.zeros(0, model.decoder.in_features, device=source.device)
    log_wv = math.log(1 - lambdasm) if lambdasm < 1 else -math.inf   # log mixture weights
    log_wc = math.log(lambdasm) if lambdasm > 0 else -math.inf
    plain, mixed = [], []
    for data, targets in stream(source, bptt, "cache pointer", max_batches, "chunk"):
        hidden, _, dropped = model.features(data, hidden)
        h = dropped[-1].view(-1, dropped[-1].size(-1)).float()   # eval mode: the last layer's output
        flat = model.decoder(dropped[-1]).view(-1, model.ntoken).float()
        vocab = flat.gather(1, targets.unsqueeze(1)).squeeze(1) - torch.logsumexp(flat, 1)   # log p_vocab(target)
        cache = cache_logprob(h, targets, mem_h, mem_w, window, theta)
        mix = torch.logaddexp(vocab + log_wv, cache + log_wc)
        off = torch.isnan(cache)                                      # empty cache (first token): model alone
        if awd_scoring:   # the reference's test `start_idx + idx > window`, start_idx = entries held before the chunk
            off |= mem_h.size(0) + torch.arange(h.size(0), device=h.device) <= window
        mixed.append(torch.where(off, vocab, mix))
        plain.append(vocab)
        mem_h, mem_w = torch.cat([mem_h, h])[-window:], torch.cat([mem_w, targets])[-window:]
    return torch.cat(plain), torch.cat(mixed)


def main(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--settings", choices=("paper", "readme", "tag"), help="the AWD-LSTM paper's cache settings, "
                   "awd-lstm-lm README's or its tag PyTorch==0.1.12's (default: the preset's); flags below win")
    p.add_argument("--window", type=int, help="cache size in past positions (PTB 500, paper 2000; WT2 3785)")
    p.add_argument("--theta", type=float, help="flatness of the cache softmax (PTB 1.0, WT2 0.662)")
    p.add_argument("--lambdasm", type=float, help="weight of the cache in the mixture (PTB 0.1, WT2 0.1279)")
    p.add_argument("--bptt", type=int, help="tokens per forward; memory only, same result (PTB 5000, WT2 2000)")
    p.add_argument("--max_batches", type=int, help="evaluate only this many --bptt chunks of each split (quick checks)")
    p.add_argument("--awd_scoring", action="store_true", help="score as awd-lstm-lm's pointer.py: no cache before "
                   "--window positions nor at a --bptt chunk's first; loss divided by N tokens, not N - 1 predictions")
    args = tool_args(p, argv, {"window": "positive_int", "theta": "non_negative", "lambdasm": "weight",
                               "bptt": "positive_int", "max_batches": "positive_int"})
    blob, corpus, model, device = open_checkpoint(args)
    opts, source = settings_for(blob, args)
    print(f"| cache pointer | window {opts['window']} | theta {opts['theta']} | lambdasm {opts['lambdasm']} | "
          f"bptt {opts['bptt']} | settings: {source} | scoring: {'awd-lstm-lm' if args.awd_scoring else 'ours'} |")
    results, lines = dict(checkpoint=args.save, data=str(corpus.path), settings=source, awd_scoring=args.awd_scoring,
                          **opts), []
    for name in ("valid", "test"):
        tokens = getattr(corpus, name)
        plain, mixed = token_logprobs(model, tokens, max_batches=args.max_batches, awd_scoring=args.awd_scoring, **opts)
        # ours: mean over the N - 1 predictions; the reference divided their sum by the N tokens
        denom = tokens.numel() if args.awd_scoring and args.max_batches is None else mixed.numel()
        loss, base = -mixed.double().sum().item() / denom, -plain.double().sum().item() / denom
        results.update({f"{name}_loss": loss, f"{name}_ppl": ppl(loss),
                        f"{name}_plain_loss": base, f"{name}_plain_ppl": ppl(base)})
        lines.append(f"| {name:5s} | with cache: loss {loss:5.3f} | ppl {ppl(loss):8.2f} | "
                     f"model alone: ppl {ppl(base):8.2f} | batch size 1 |")
    return report(results, lines, args.json, f"lower --lambdasm (it is {opts['lambdasm']})")


if __name__ == "__main__":
    run_cli(main)
