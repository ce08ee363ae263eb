"""Dynamic evaluation (Krause, Kahembwe, Murray, Renals, ICML 2018): the model keeps learning from the text it scores.

Each split from the checkpoint's weights, batch 1: each --bptt segment is scored, then learned from (dropout off):

    theta <- theta - lr * grad / (rms + epsilon) + min(lamb * rms / avg, 1) * (theta_g - theta)

grad: of the segment's mean token loss; rms: over --max_batches training batches' gradients (their mean, as in the
paper and its code since 81e7b35); avg: the mean over tensors of each one's mean rms; theta_g: the trained weights.

    python dynamiceval.py --save runs/awd-ptb_FD.finetune.pt          # PTB defaults (the paper's)
    python dynamiceval.py --save runs/awd-wt2_FD.finetune.pt          # WikiText-2 defaults
    python dynamiceval.py --save runs/awd-ptb_FD.finetune.pt --grid   # the search on validation
"""
import math
import time

import torch
import torch.nn.functional as F

from checkpoint import corpus_of, open_checkpoint, tool_args, tool_parser
from data import batchify, check_split_sizes, count_windows
from runfiles import UserError, run_cli
from scoring import check_finite, ppl, report, stream
from utils import repackage_hidden, set_seed

# The paper's settings (its README: segments of 5, statistics at batch 100) in the first version's terms, converted
# by that pass's training batches (PTB 929,589 tokens / 100 / 5) and AWD-LSTM's 14 tensors (4 per layer, 2 more).
FIRST_VERSION, SEGMENT, STATS_BATCH = dict(lr=0.002, lamb=0.02, epsilon=0.001), 5, 100
TRAIN_BATCHES, AWD_LSTM_TENSORS = {"ptb": 1859, "wt2": 4177}, 14
# The authors' lrlist / lamblist in our terms, for segments of 5; scaled by bptt / 5 as their code does.
GRID_LR, GRID_LAMB = (3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 1e-4), (0.001, 0.002, 0.003, 0.005)
HYPER = ("lr", "lamb", "epsilon")
RULES = {"bptt": "positive_int", "batch_size": "positive_int", "max_batches": "positive_int", "seed": "seed",
         "lr": "non_negative", "grid_lr": "non_negative", "lamb": "weight", "grid_lamb": "weight",
         "epsilon": "positive"}


def from_first_version(batches, tensors, lr, lamb, epsilon):
    """Their first version summed squared gradients and tensor means: its settings in the paper's terms."""
    return dict(lr=lr / math.sqrt(batches), lamb=lamb / tensors, epsilon=epsilon / math.sqrt(batches))


DEFAULTS = {c: from_first_version(n, AWD_LSTM_TENSORS, **FIRST_VERSION) for c, n in TRAIN_BATCHES.items()}


def hyper_parameters(args, blob):
    """Flags win; the rest are the defaults of the checkpoint's corpus, read from its vocabulary."""
    which, given = corpus_of(blob), {k: getattr(args, k) for k in HYPER}
    needed = [k for k in HYPER if given[k] is None and not (args.grid and k in ("lr", "lamb"))]
    if which is None and needed:
        raise UserError(f"checkpoint {args.save} was trained on neither PTB nor WikiText-2 (a vocabulary of "
                        f"{blob['vocab']['size']} words, preset {blob['config'].get('preset')}), so no published "
                        f"setting applies: give {', '.join('--' + k for k in needed)}")
    return which, {k: DEFAULTS[which][k] if given[k] is None and which else given[k] for k in HYPER}


def gradient_rms(model, source, bptt, max_batches=None):
    """Per parameter, the rms over training batches of the gradient of the batch's mean token loss; and the count."""
    model.eval()
    params, n = list(model.parameters()), count_windows(source, bptt, max_batches)
    sums, hidden = [torch.zeros_like(p) for p in params], model.init_hidden(source.size(1))
    for data, targets in stream(source, bptt, "gradient statistics (train)", max_batches):
        model.zero_grad(set_to_none=True)
        logits, hidden = model(data, repackage_hidden(hidden))
        F.cross_entropy(logits.view(-1, model.ntoken), targets).backward()
        for s, p in zip(sums, params):
            if p.grad is not None:
                s.addcmul_(p.grad, p.grad)
    model.zero_grad(set_to_none=True)
    return [torch.sqrt(s / n) for s in sums], n


class DynamicUpdate:
    """The adaptation step of one run, its scales fixed from the training statistics."""

    def __init__(self, model, rms, lr, lamb, epsilon, trained=None):
        self.params = list(model.parameters())
        avg = torch.stack([r.mean() for r in rms]).mean().item()
        if not (math.isfinite(avg) and avg > 0):
            raise UserError(f"the gradients on the training data are all zero or not finite (mean rms {avg}): "
                            f"use an intact trained checkpoint")
        self.lr = lr
        self.trained = trained if trained is not None else [p.detach().clone() for p in self.params]  # theta_g
        self.denominators = [r + epsilon for r in rms]
        # lamb * rms / avg, clipped at 1 (the paper clips rms / avg at 1 / lamb): never past theta_g
        self.decay = [torch.clamp(r * (lamb / avg), max=1.0) for r in rms]

    @torch.no_grad()
    def step(self):
        for p, theta_g, denom, decay in zip(self.params, self.trained, self.denominators, self.decay):
            p.lerp_(theta_g, decay)  # p + decay * (theta_g - p), from the weights before this step
            if p.grad is not None:  # the step term does not depend on p: the order is free
                p.addcdiv_(p.grad, denom, value=-self.lr)


def dynamic_evaluate(model, tokens, bptt, update, desc="dynamic evaluation", token_losses=False):
    """Mean token loss at batch 1, each segment scored before ``update`` learns from it (and each token's)."""
    model.eval()
    source = batchify(tokens, 1, next(model.parameters()).device)
    hidden, total, count, losses = model.init_hidden(1), torch.zeros((), device=source.device), 0, []
    for data, targets in stream(source, bptt, desc, unit="segment"):
        model.zero_grad(set_to_none=True)
        logits, hidden = model(data, repackage_hidden(hidden))
        flat = logits.view(-1, model.ntoken)
        loss = F.cross_entropy(flat, targets, reduction="sum")
        total += loss.detach()
        count += targets.numel()
        if token_losses:
            losses.append(F.cross_entropy(flat.detach(), targets, reduction="none").cpu())
        (loss / targets.numel()).backward()
        update.step()
    model.zero_grad(set_to_none=True)
    mean = total.item() / count
    return (mean, torch.cat(losses)) if token_losses else mean


def grid_search(args, run):
    """The authors' search on validation: every lr x lamb, each run from the trained weights."""
    scale, table = args.bptt / SEGMENT, []
    for lamb in args.grid_lamb or [v * scale for v in GRID_LAMB]:
        for lr in args.grid_lr or [v * scale for v in GRID_LR]:
            loss, secs = run("valid", lr, lamb)
            table.append({"lr": lr, "lamb": lamb, "valid_loss": loss, "valid_ppl": ppl(loss), "seconds": secs})
            print(f"| grid | lr {lr:9.3g} | lamb {lamb:9.3g} | valid ppl {ppl(loss):8.2f} |")
    best = min(table, key=lambda row: row["valid_loss"] if math.isfinite(row["valid_loss"]) else math.inf)
    print(f"| grid | best on validation: lr {best['lr']:.3g} | lamb {best['lamb']:.3g} |")
    return best, table


def main(argv=None):
    p = tool_parser(__doc__)
    d = {k: f"PTB {DEFAULTS['ptb'][k]:.4g}, WT2 {DEFAULTS['wt2'][k]:.4g}" for k in HYPER}
    p.add_argument("--lr", type=float, help=f"learning rate eta of the adaptation step ({d['lr']})")
    p.add_argument("--lamb", type=float, help=f"decay rate lambda toward the trained weights, 0 = none ({d['lamb']})")
    p.add_argument("--epsilon", type=float, help=f"stabilizer added to the gradients' rms ({d['epsilon']})")
    p.add_argument("--bptt", type=int, default=SEGMENT, help=f"tokens per update and per statistics batch ({SEGMENT})")
    p.add_argument("--batch_size", type=int, default=STATS_BATCH, help=f"batch size of the statistics ({STATS_BATCH})")
    p.add_argument("--max_batches", type=int, help="training batches for the statistics (default: all)")
    p.add_argument("--grid", action="store_true", help="search lr x lamb on validation, then test at the best pair")
    p.add_argument("--grid_lr", type=float, nargs="+", help="lr searched (default: 3e-5 .. 1e-4 x bptt / 5)")
    p.add_argument("--grid_lamb", type=float, nargs="+", help="lamb searched (default: 0.001 .. 0.005 x bptt / 5)")
    p.add_argument("--seed", type=int, default=1111, help="random seed (nothing is drawn; as evaluate.py's)")
    args = tool_args(p, argv, RULES)
    if args.grid and (args.lr is not None or args.lamb is not None):
        raise UserError("--grid searches lr and lamb itself: give the searched values as --grid_lr / --grid_lamb")
    if not args.grid and (args.grid_lr or args.grid_lamb):
        raise UserError("--grid_lr / --grid_lamb set the values --grid searches: add --grid, or use --lr / --lamb")
    blob, corpus, model, device = open_checkpoint(args)
    which, hyper = hyper_parameters(args, blob)
    check_split_sizes(corpus, {"batch_size": args.batch_size, "eval_batch_size": 1, "test_batch_size": 1})
    set_seed(args.seed)
    start = time.perf_counter()
    rms, batches = gradient_rms(model, batchify(corpus.train, args.batch_size, device), args.bptt, args.max_batches)
    seconds = {"statistics": time.perf_counter() - start}
    results = {"checkpoint": args.save, "data": str(corpus.path), "defaults": which, "bptt": args.bptt,
               "batch_size": args.batch_size, "max_batches": args.max_batches, "statistics_batches": batches}
    print(f"| gradient statistics | {batches} training batches of {args.batch_size} x {args.bptt} | "
          f"{seconds['statistics']:.0f} s | defaults: {which or 'none (flags given)'} |")
    trained = [p.detach().clone() for p in model.parameters()]

    def run(split, lr, lamb):
        if lr > torch.finfo(trained[0].dtype).max:  # beyond what addcdiv_ takes: diverged, as overflowing steps do
            return math.inf, 0.0
        for p, theta_g in zip(model.parameters(), trained):  # each run from the checkpoint's weights
            p.detach().copy_(theta_g)
        update, start = DynamicUpdate(model, rms, lr, lamb, hyper["epsilon"], trained), time.perf_counter()
        loss = dynamic_evaluate(model, getattr(corpus, split), args.bptt, update, f"dynamic eval {split} (lr {lr:.3g})")
        return loss, time.perf_counter() - start

    if args.grid:
        best, results["grid"] = grid_search(args, run)
        hyper.update(lr=best["lr"], lamb=best["lamb"])
        seconds.update(grid=sum(row["seconds"] for row in results["grid"]), valid=best["seconds"])
        results["valid_loss"] = best["valid_loss"]
    else:
        results["valid_loss"], seconds["valid"] = run("valid", hyper["lr"], hyper["lamb"])
    fix = "lower --grid_lr" if args.grid else f"lower --lr (it is {hyper['lr']:.4g})"
    check_finite(results, fix)  # before the test run
    results["test_loss"], seconds["test"] = run("test", hyper["lr"], hyper["lamb"])
    results.update(hyper, seconds=seconds)
    lines = [f"| dynamic eval | lr {hyper['lr']:.4g} | lamb {hyper['lamb']:.4g} | epsilon {hyper['epsilon']:.4g} | "
             f"bptt {args.bptt} |"]
    for name in ("valid", "test"):
        loss, tokens = results[f"{name}_loss"], getattr(corpus, name).numel() - 1
        results[f"{name}_ppl"] = ppl(loss)
        lines.append(f"| {name:5s} | loss {loss:5.3f} | ppl {ppl(loss):8.2f} | batch size 1 | "
                     f"{seconds[name]:.0f} s, {tokens / max(seconds[name], 1e-9):.0f} tokens/s |")
    return report(results, lines, args.json, fix)


if __name__ == "__main__":
    run_cli(main)
