"""Train an LSTM language model with fraternal dropout (FD), ELD, Pi-model, R-Drop or no regularizer.

    python main.py --model FD                      # single-layer PTB ablation setup, kappa 0.15
    python main.py --preset awd-ptb --model FD     # 3-layer AWD-LSTM on PTB, NT-ASGD
    python main.py --resume runs/single_FD.resume.pt
"""
import json
import os
import tempfile

from checkpoint import build_model, check_vocab, load_checkpoint, set_rng_state, sidecar, vocab_info
from config import RESUME_OVERRIDES, build_train_parser, resolve_train_config
from data import Corpus, batchify
from fraternal import Regularizer
from trainer import final_evaluation, fit, new_schedule
from utils import UserError, get_device, run_cli, set_seed


def run_paths(save):
    return {"best": save, "resume": sidecar(save, "resume.pt"), "metrics": sidecar(save, "metrics.jsonl"),
            "final": sidecar(save, "final.json")}


def resume_config(args):
    blob = load_checkpoint(args.resume, "resume")
    cfg = dict(blob["config"])
    ignored = {"resume", "overwrite"}
    for key, value in vars(args).items():
        if value is None or value is False or key in ignored:
            continue
        if key not in RESUME_OVERRIDES:
            raise UserError(f"--resume continues a run with its saved configuration, so --{key} cannot change; "
                            f"only {', '.join('--' + k for k in RESUME_OVERRIDES)} can (start a new run instead)")
        cfg[key] = value
    return cfg, blob


def prepare(cfg, args):
    """Refuse to clobber an earlier run's files unless asked to."""
    paths = run_paths(cfg["save"])
    if not args.resume and not args.overwrite:
        existing = [str(p) for p in (paths["best"], paths["resume"]) if os.path.exists(p)]
        if existing:
            raise UserError(f"{existing[0]} already exists: continue that run with --resume "
                            f"{paths['resume']}, choose another --save, or pass --overwrite")
    return paths


def train(cfg, args, blob):
    device = get_device(cfg["device"])
    paths = prepare(cfg, args)
    print("Configuration: " + json.dumps(cfg, sort_keys=True))
    set_seed(cfg["seed"])
    corpus = Corpus(cfg["data"])
    vocab = vocab_info(corpus.dictionary)
    if blob is not None:
        check_vocab(blob, corpus.dictionary, args.resume, cfg["data"])
    splits = {"train": batchify(corpus.train, cfg["batch_size"], device),
              "valid": batchify(corpus.valid, cfg["eval_batch_size"], device),
              "test": batchify(corpus.test, cfg["test_batch_size"], device)}
    model = build_model(cfg, len(corpus.dictionary)).to(device)
    optimizer_state = None
    if blob is None:
        state = new_schedule(cfg)
    else:
        model.load_state_dict(blob["model"])
        state, optimizer_state = blob["schedule"], blob["optimizer"]
        set_rng_state(blob["rng"])
        print(f"Resuming after epoch {state['epoch']} (best valid ppl so far from epoch {state['best_epoch']})")
    print(f"Model total parameters: {sum(p.numel() for p in model.parameters())}")
    print(f"Device: {device}; tokens: train {corpus.train.numel()}, valid {corpus.valid.numel()}, "
          f"test {corpus.test.numel()}; vocabulary {len(corpus.dictionary)}")
    state = fit(model, cfg, splits, Regularizer.from_config(cfg), state, paths, vocab, device, optimizer_state)
    if state["best_epoch"] == 0:
        print("No epoch finished, so there is no best model to evaluate on test.")
        return None
    return final_evaluation(model, cfg, splits, paths, "training", 5 if cfg["dry_run"] else None)


def main(argv=None):
    args = build_train_parser().parse_args(argv)
    cfg, blob = resume_config(args) if args.resume else (resolve_train_config(args), None)
    if cfg["dry_run"]:
        cfg["epochs"] = min(cfg["epochs"], blob["schedule"]["epoch"] + 1 if blob else 1)
    if cfg["dry_run"] and args.save is None and not args.resume:
        with tempfile.TemporaryDirectory(prefix="fd-dry-run-") as tmp:
            cfg["save"] = f"{tmp}/{cfg['preset']}_{cfg['model']}.pt"
            return train(cfg, args, blob)
    return train(cfg, args, blob)


if __name__ == "__main__":
    run_cli(main)
