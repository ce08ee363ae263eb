"""Plot runs' per-epoch metrics (train and validation perplexity, learning rate, penalty) to one PNG.

    python plot.py runs/single_FD.pt runs/single_baseline.pt --out curves.png
    python plot.py runs/awd-ptb_FD.metrics.jsonl

Each run is named by its checkpoint or its ``.metrics.jsonl`` (main.py and finetune.py write one line
per epoch beside the checkpoint).  Needs matplotlib, an optional dependency: pip install matplotlib.
"""
import argparse
import json
import os
from pathlib import Path

from runfiles import UserError, run_cli, sidecar

PANELS = (("train_ppl", "train perplexity", True), ("valid_ppl", "validation perplexity", True),
          ("lr", "learning rate", False), ("penalty", "penalty (times kappa)", False))


def metrics_path(run):
    """A run's metrics file, from the file itself or its checkpoint."""
    path = Path(run)
    return path if path.name.endswith(".metrics.jsonl") else sidecar(path, "metrics.jsonl")


def load_run(run):
    """Per-epoch series of one run: {"epoch": [...], "train_ppl": [...], ...}."""
    path = metrics_path(run)
    if not path.is_file():
        raise UserError(f"no metrics at {path}: name a run's checkpoint or its .metrics.jsonl written by main.py")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        series = {key: [row[key] for row in rows] for key in ("epoch", *(p[0] for p in PANELS))}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a metrics file of main.py ({type(e).__name__}: {e}): name a run's "
                        f".metrics.jsonl") from None
    if not rows:
        raise UserError(f"{path} holds no epoch yet: plot it once the run has finished an epoch")
    return series


def label_of(run):
    name = metrics_path(run).name
    return name[:-len(".metrics.jsonl")]


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("matplotlib is not installed, and plot.py needs it: pip install matplotlib") from None
    return plt


def draw(runs, out):
    """One panel per metric, one line per run."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (key, title, log) in zip(axes.flat, PANELS):
        for label, series in runs.items():
            ax.plot(series["epoch"], series[key], marker="." if len(series["epoch"]) < 30 else None, label=label)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="runs: their checkpoints (runs/NAME.pt) or metrics (runs/NAME.metrics.jsonl)")
    p.add_argument("--out", help="the PNG to write (default: beside the first run, NAME.curves.png)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else sidecar(str(metrics_path(args.runs[0]))[:-len(".metrics.jsonl")], "curves.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} is not a .png file: name the PNG to write")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    runs = {}
    for run in args.runs:
        label = label_of(run)
        runs[label if label not in runs else str(metrics_path(run))] = load_run(run)
    pyplot()  # before any work: a missing matplotlib is one line
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    try:
        draw(runs, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    print(f"Wrote {out} ({len(runs)} run{'s' * (len(runs) > 1)}: {', '.join(runs)})")
    return runs


if __name__ == "__main__":
    run_cli(main)
