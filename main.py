"""Train an LSTM language model with fraternal dropout (FD), ELD, Pi-model, R-Drop or no regularizer.

    python main.py --model FD                      # single-layer PTB ablation setup, kappa 0.15
    python main.py --preset awd-ptb --model FD     # 3-layer AWD-LSTM on PTB, NT-ASGD
    python main.py --resume runs/single_FD.resume.pt
"""
from config import build_train_parser, resolve_train_config
from trainer import resume_config, run
from utils import run_cli


def main(argv=None):
    args = build_train_parser().parse_args(argv)
    if args.resume:
        cfg, blob = resume_config(args)
        return run(cfg, "training", resume=blob)
    return run(resolve_train_config(args), "training", overwrite=args.overwrite)


if __name__ == "__main__":
    run_cli(main)
