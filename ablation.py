"""A CPU-scale ablation study: baseline vs FD vs ELD vs PM vs RD on the single-layer PTB setup.

Why: the published numbers need a GPU for a day; this gives evidence, produced by the same training
code as main.py (``trainer.run`` on a configuration from main.py's own parser), that the
implementation behaves as the paper says, at a scale a 2-core machine affords.  The single-layer
preset is scaled down (width, epochs, share of the training text; flags below); the validation and
test sets are always PTB's full ones.  Every variant gets the same data, seed, schedule and epochs.

For each variant and seed it trains, evaluates the best model on validation and test (main.py's
end of training), and measures the mask variance of that model on validation the same way for all
(mc_dropout.mask_variance: two train-mode passes, mean squared difference of their logits).

Outputs in --out: ``results.md`` (one row per variant), ``epochs.csv`` (every epoch of every run),
``curves.png`` (validation perplexity against epoch and against wall-clock time; needs matplotlib,
the only use of it in the project), ``study.json`` (configuration, machine, per-run summaries), and
``runs/`` with each run's checkpoint and metrics.  An interrupted study continues where it stopped:
finished runs with the same configuration are reused, unfinished ones resumed.

    python ablation.py                 # the default study (about 75 minutes on 2 CPU cores)
    python ablation.py --quick         # a few minutes; what the test runs, on a tiny corpus
"""
import argparse
import csv
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from checkpoint import load_checkpoint, model_from_checkpoint
from config import VARIANTS, build_train_parser, resolve_train_config
from data import SPLITS, Corpus, batchify
from mc_dropout import mask_variance
from trainer import resume_config, run, run_paths
from utils import UserError, atomic_write_json, cpu_model, get_device, run_cli, set_seed

DEFAULTS = dict(emsize=200, nhid=200, epochs=30, train_fraction=0.1, batch_size=20, bptt=35)
QUICK = dict(emsize=32, nhid=32, epochs=2, train_fraction=0.02, batch_size=20, bptt=35)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["baseline", "FD", "ELD", "PM", "RD"], choices=list(VARIANTS),
                   help="regularizers to compare, each with its default kappa")
    p.add_argument("--seeds", nargs="+", type=int, default=[321], help="one run per variant and seed")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=type(value),
                       help=f"default {value} ({QUICK[key]} with --quick)")
    p.add_argument("--data", default="data/penn", help="the PTB folder (train / valid / test)")
    p.add_argument("--out", default="results/ablation", help="folder for the study's outputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="a tiny study (the test runs it); minutes, not an hour")
    return p


def cut_corpus(data, fraction, dest):
    """The first ``fraction`` of the training text's lines; validation and test whole."""
    src = Path(data)
    for split in SPLITS:
        if not (src / f"{split}.txt").is_file():
            raise UserError(f"no corpus at {src} ({split}.txt missing): run ./getdata.sh or pass --data DIR")
    dest.mkdir(parents=True, exist_ok=True)
    lines = (src / "train.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    keep = "".join(lines[:max(1, round(len(lines) * fraction))])
    for split, text in (("train", keep), ("valid", None), ("test", None)):
        text = text if text is not None else (src / f"{split}.txt").read_text(encoding="utf-8")
        target = dest / f"{split}.txt"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return dest


def run_config(variant, seed, study, corpus_dir, save, device):
    argv = ["--preset", "single", "--model", variant, "--data", str(corpus_dir), "--save", str(save),
            "--seed", str(seed), "--device", device]
    for key in ("emsize", "nhid", "epochs", "batch_size", "bptt"):
        argv += [f"--{key}", str(study[key])]
    return resolve_train_config(build_train_parser().parse_args(argv))


def train_or_reuse(cfg):
    """Run one training; reuse a finished run of the same configuration, resume an unfinished one."""
    paths = run_paths(cfg["save"])
    if os.path.exists(paths["final"]) and os.path.exists(paths["best"]):
        if load_checkpoint(paths["best"], "best")["config"] == cfg:
            print(f"Reusing the finished run {cfg['save']}")
            return json.load(open(paths["final"]))
    if os.path.exists(paths["resume"]):
        blob = load_checkpoint(paths["resume"], "resume")
        if blob["config"] == cfg:
            resumed, blob = resume_config(argparse.Namespace(resume=str(paths["resume"])))
            return run(resumed, "training", resume=blob)
    return run(cfg, "training", overwrite=True)


def measure_mask_variance(save, data, device):
    blob = load_checkpoint(save, "best")
    model = model_from_checkpoint(blob, device)
    corpus = Corpus(data)
    set_seed(1234)  # the same masks' law for every model; the seed only fixes the draw
    return mask_variance(model, batchify(corpus.valid, 10, device), blob["config"]["bptt"], 10)


def summarize(variant, seed, cfg, final, mvar):
    rows = [json.loads(line) for line in open(run_paths(cfg["save"])["metrics"])]
    best = min(rows, key=lambda r: r["valid_loss"])
    return {"variant": variant, "seed": seed, "kappa": cfg["kappa"], "best_valid_ppl": best["valid_ppl"],
            "best_epoch": best["epoch"], "test_ppl": final["test_ppl"], "valid_ppl": final["valid_ppl"],
            "epochs": len(rows), "wall_s": rows[-1]["elapsed"],
            "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows),
            "final_train_ppl": rows[-1]["train_ppl"], "mask_variance": mvar, "epoch_rows": rows}


def fmt(values, digits):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def write_table(summaries, variants, path, header):
    lines = [header, "",
             "| variant | kappa | best valid ppl | test ppl | epochs | wall time (min) | tokens/s | "
             "train ppl (last epoch) | mask variance |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        s = [x for x in summaries if x["variant"] == v]
        if not s:
            continue
        col = lambda key, d: fmt([x[key] for x in s], d)  # noqa: E731
        lines.append(f"| {v} | {s[0]['kappa']:g} | {col('best_valid_ppl', 2)} | {col('test_ppl', 2)} | "
                     f"{col('epochs', 0)} | {fmt([x['wall_s'] / 60 for x in s], 1)} | {col('tokens_per_s', 0)} | "
                     f"{col('final_train_ppl', 2)} | {fmt([x['mask_variance'] for x in s], 4)} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_csv(summaries, path):
    keys = ["variant", "seed", "epoch", "elapsed", "seconds", "train_ppl", "valid_ppl", "penalty", "lr",
            "tokens_per_s"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for s in summaries:
            for r in s["epoch_rows"]:
                w.writerow([s["variant"], s["seed"]] + [r[k] for k in keys[2:]])


def plot(summaries, variants, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no curves.png was drawn: pip install matplotlib "
              "(only this study uses it); results.md and epochs.csv are written", file=sys.stderr)
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = dict(zip(variants, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for s in summaries:
        rows = s["epoch_rows"]
        label = s["variant"] if s["seed"] == summaries[0]["seed"] else None
        kw = dict(color=colors[s["variant"]], label=label, marker=".", lw=1.4)
        ax1.plot([r["epoch"] for r in rows], [r["valid_ppl"] for r in rows], **kw)
        ax2.plot([r["elapsed"] / 60 for r in rows], [r["valid_ppl"] for r in rows], **kw)
    ax1.set_xlabel("epoch")
    ax2.set_xlabel("wall-clock minutes (training and validation)")
    for ax in (ax1, ax2):
        ax.set_ylabel("validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend()
    lows = [r["valid_ppl"] for s in summaries for r in s["epoch_rows"]]
    ax1.set_ylim(min(lows) * 0.97, min(max(lows), min(lows) * 1.6))
    ax2.set_ylim(*ax1.get_ylim())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None):
    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    study = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if not 0 < study["train_fraction"] <= 1:
        raise UserError(f"--train_fraction must be in (0, 1], got {study['train_fraction']}")
    device = str(get_device(args.device))
    out = Path(args.out)
    corpus_dir = cut_corpus(args.data, study["train_fraction"], out / "corpus")
    started = time.time()
    summaries = []
    for seed in args.seeds:
        for variant in args.variants:
            print(f"=== {variant}, seed {seed} ===")
            cfg = run_config(variant, seed, study, corpus_dir, out / "runs" / f"{variant}_seed{seed}.pt", device)
            final = train_or_reuse(cfg)
            if final is None:
                raise UserError(f"the {variant} run finished no epoch; rerun the study to continue it")
            mvar = measure_mask_variance(cfg["save"], corpus_dir, torch.device(device))
            summaries.append(summarize(variant, seed, cfg, final, mvar))
    ntrain = Corpus(corpus_dir).train.numel()
    title = (f"single-layer PTB setup at {study['emsize']}/{study['nhid']} units, {study['train_fraction']:g} of "
             f"the training text ({ntrain} tokens), {study['epochs']} epochs, batch {study['batch_size']}, "
             f"seeds {' '.join(map(str, args.seeds))}")
    env = {"command": "python " + " ".join(shlex.quote(a) for a in (sys.argv if argv is None else ["ablation.py", *argv])),
           "torch": torch.__version__, "cpu": cpu_model(),
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
           "study_wall_s": round(time.time() - started, 1)}
    write_table(summaries, args.variants, out / "results.md", f"Ablation: {title}.")
    write_csv(summaries, out / "epochs.csv")
    plotted = plot(summaries, args.variants, out / "curves.png", title)
    atomic_write_json({"study": study, "variants": args.variants, "seeds": args.seeds, "environment": env,
                       "train_tokens": ntrain,
                       "runs": [{k: v for k, v in s.items() if k != "epoch_rows"} for s in summaries]},
                      out / "study.json")
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote {out / 'results.md'}, {out / 'epochs.csv'}, {out / 'study.json'}"
          + (f", {out / 'curves.png'}" if plotted else ""))
    return summaries


if __name__ == "__main__":
    run_cli(main)
