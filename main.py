"""Train an LSTM language model with fraternal dropout (FD), ELD, Pi-model, R-Drop or no regularizer.

    python main.py --model FD                      # single-layer PTB ablation setup, kappa 0.15
    python main.py --preset awd-ptb --model FD     # 3-layer AWD-LSTM on PTB, NT-ASGD
    python main.py --resume runs/single_FD.resume.pt
    torchrun --nproc_per_node 4 main.py --preset awd-ptb --model FD   # one run on 4 GPUs (distributed.py)
"""
import distributed
from config import build_config, build_train_parser
from trainer import load_resume, run
from runfiles import run_cli


def main(argv=None):
    args = build_train_parser().parse_args(argv)
    blob = load_resume(args.resume, "main.py") if args.resume else None
    cfg = build_config(vars(args), "resume", blob) if blob else build_config(vars(args))
    with distributed.session(cfg):
        return run(cfg, resume=blob, overwrite=args.overwrite)


if __name__ == "__main__":
    run_cli(main)
