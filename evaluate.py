"""Evaluate a saved model: validation (batch 10) and test (batch 1) perplexity; optionally train perplexity,
Monte Carlo dropout and the mask variance.

    python evaluate.py --save runs/awd-ptb_FD.pt
    python evaluate.py --save runs/single_FD.pt --mc 50 --mask_variance --json
"""
from checkpoint import open_checkpoint, tool_args, tool_parser
from config import DROPOUT_FLAGS
from data import batchify, check_split_sizes
from mc_dropout import mask_variance, mc_evaluate
from runfiles import run_cli
from scoring import evaluate, ppl, report
from utils import set_seed

def main(argv=None):
    p = tool_parser(__doc__)
    p.add_argument("--bptt", type=int, help="sequence length of evaluation windows (default: the run's)")
    p.add_argument("--eval_batch_size", type=int, default=10, help="validation batch size")
    p.add_argument("--test_batch_size", type=int, default=1, help="test batch size")
    p.add_argument("--train", action="store_true", help="also report train perplexity (at the validation batch size)")
    p.add_argument("--mc", type=int, default=0, metavar="N",
                   help="also evaluate with Monte Carlo dropout over N mask samples (probabilities averaged)")
    p.add_argument("--mc_batch", type=int, help="MC samples stacked in one forward (default: 256 MB of logits)")
    p.add_argument("--mask_variance", action="store_true", help="also the mean squared logit gap of two dropout passes")
    p.add_argument("--seed", type=int, default=1111, help="seed for the dropout masks of --mc and --mask_variance")
    for name in DROPOUT_FLAGS:
        p.add_argument(f"--{name}", type=float, help=f"{name} rate for --mc / --mask_variance (default: the run's)")
    p.add_argument("--max_batches", type=int, help="evaluate only this many windows of each split (quick checks)")
    args = tool_args(p, argv, {"eval_batch_size": "positive_int", "test_batch_size": "positive_int",
                               "bptt": "positive_int", "mc_batch": "positive_int", "max_batches": "positive_int",
                               "mc": "count", "seed": "seed", **{k: "probability" for k in DROPOUT_FLAGS}})
    blob, corpus, model, device = open_checkpoint(args)
    check_split_sizes(corpus, {"batch_size": 1, "eval_batch_size": args.eval_batch_size,
                               "test_batch_size": args.test_batch_size})
    model.set_dropout(**{k: getattr(args, k) for k in DROPOUT_FLAGS if getattr(args, k) is not None})
    bptt = args.bptt or blob["config"]["bptt"]
    splits = {"valid": (corpus.valid, args.eval_batch_size), "test": (corpus.test, args.test_batch_size)}
    if args.train:
        splits["train"] = (corpus.train, args.eval_batch_size)
    results, lines = {"checkpoint": args.save, "data": str(corpus.path)}, []
    set_seed(args.seed)
    for name, (tokens, bsz) in splits.items():
        source = batchify(tokens, bsz, device)
        loss = evaluate(model, source, bptt, bsz, args.max_batches, desc=name)
        results.update({f"{name}_loss": loss, f"{name}_ppl": ppl(loss)})
        lines.append(f"| {name:5s} | loss {loss:5.3f} | ppl {ppl(loss):8.2f} | batch size {bsz} |")
        if args.mc and name != "train":
            loss = mc_evaluate(model, source, bptt, bsz, args.mc, args.mc_batch, args.max_batches,
                               desc=f"MC dropout ({name})")
            results.update({f"mc_{name}_loss": loss, f"mc_{name}_ppl": ppl(loss), "mc_samples": args.mc})
            lines.append(f"| {name:5s} | MC dropout, {args.mc} samples | loss {loss:5.3f} | ppl {ppl(loss):8.2f} |")
        if args.mask_variance and name == "valid":
            results["mask_variance"] = mask_variance(model, source, bptt, bsz, args.max_batches,
                                                     desc="mask variance (valid)")
            lines.append(f"| valid | mask variance {results['mask_variance']:.5f} |")
    return report(results, lines, args.json, "use an intact checkpoint, or lower the --dropout rates given")


if __name__ == "__main__":
    run_cli(main)
