"""Fine-tune a trained model the way the reference did for the 3-layer setups, without touching it.

Averaged SGD from the first step (t0 = 0, lambda = 0), one pass per batch (no FD term), AR alpha 2
and TAR beta 1, stopping when the averaged validation loss breaks the non-monotone rule (nonmono 5).
Batch size, epoch limit and seed follow the reference's fine-tuning row for the checkpoint's preset;
dropout rates are the checkpoint's (the reference's script in effect kept them too).  The input
checkpoint is only read; the result goes to --out, evaluated on validation and test at the end.

    python finetune.py --save runs/awd-ptb_FD.pt            # writes runs/awd-ptb_FD.finetune.pt
"""
import argparse

import distributed
from checkpoint import load_checkpoint
from config import DROPOUT_FLAGS, EVAL_BATCH_FLAGS, FINETUNE, add_flags, add_run_args, build_config
from trainer import run
from utils import UserError, run_cli

def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", help="the trained best-model checkpoint to fine-tune (never modified)")
    p.add_argument("--out", help="where the fine-tuned best model goes (default: <save stem>.finetune.pt)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file")
    p.add_argument("--data", help="corpus folder (default: the one recorded in the checkpoint)")
    g = p.add_argument_group("fine-tuning (defaults: the reference's fine-tuning row)")
    add_flags(g, [("batch_size", int, "batch size"), ("epochs", int, "upper epoch limit"),
                  ("seed", int, "random seed")], FINETUNE)
    add_flags(g, [("alpha", float, "AR weight (2)"), ("beta", float, "TAR weight (1)"),
                  ("nonmono", int, "stop once the averaged validation loss breaks the non-monotone rule over this "
                                   "many epochs (5)"),
                  ("lr", float, "learning rate of averaged SGD (the training run's, 30)"),
                  ("clip", float, "gradient norm clipping (the training run's)"),
                  ("wdecay", float, "weight decay (the training run's)"),
                  ("bptt", int, "base sequence length (the training run's)"), *EVAL_BATCH_FLAGS], table=None)
    for name in DROPOUT_FLAGS:
        g.add_argument(f"--{name}", type=float, help=f"override the checkpoint's {name} rate")
    g = add_run_args(p)
    g.add_argument("--resume", help="continue an interrupted fine-tuning from its .resume.pt checkpoint")
    g.add_argument("--dry_run", action="store_true", help="two batches, short validation and test, then exit")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resume:
        if args.save or args.out:
            raise UserError("--resume continues a fine-tuning run with its saved paths: drop --save / --out")
        blob = load_checkpoint(args.resume, "resume")
        cfg = build_config(vars(args), "resume", blob)
        with distributed.session(cfg):
            return run(cfg, "fine-tuning", resume=blob, overwrite=args.overwrite)
    if not args.save:
        raise UserError("name the trained checkpoint to fine-tune with --save PATH")
    source = load_checkpoint(args.save, "best")
    cfg = build_config(vars(args), "finetune", source["config"])
    with distributed.session(cfg):
        return run(cfg, "fine-tuning", source=source, overwrite=args.overwrite)


if __name__ == "__main__":
    run_cli(main)
