"""Fine-tune a trained model the way the reference did for the 3-layer setups, without touching it.

Averaged SGD from the first step, one pass per batch, AR 2, TAR 1, stopping by the non-monotone rule (5);
batch size, epochs and seed from the reference's row for the checkpoint's preset, dropout from the checkpoint
(as the reference's script in effect did).  The result goes to --out, scored on validation and test.

    python finetune.py --save runs/awd-ptb_FD.pt            # writes runs/awd-ptb_FD.finetune.pt
"""
import distributed
from checkpoint import load_checkpoint
from config import build_config, build_finetune_parser
from trainer import load_resume, run
from runfiles import UserError, run_cli


def build_parser():
    return build_finetune_parser(__doc__)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resume and (args.save or args.out):
        raise UserError("--resume continues a fine-tuning run with its saved paths: drop --save / --out")
    if not (args.resume or args.save):
        raise UserError("name the trained checkpoint to fine-tune with --save PATH")
    blob = load_resume(args.resume, "finetune.py") if args.resume else None
    source = None if blob else load_checkpoint(args.save, "best")
    cfg = build_config(vars(args), "resume", blob) if blob else build_config(vars(args), "finetune", source["config"])
    with distributed.session(cfg):
        return run(cfg, resume=blob, source=source, overwrite=args.overwrite)


if __name__ == "__main__":
    run_cli(main)
