"""Plot runs' per-epoch metrics (train and validation perplexity, learning rate, penalty) to one PNG.

    python plot.py runs/single_FD.pt runs/single_baseline.pt --out curves.png
    python plot.py runs/awd-ptb_FD.metrics.jsonl
    python plot.py runs/                    # every run in the folder

A run's fine-tuning follows its training's last epoch, dashed.  Needs matplotlib: pip install matplotlib.
"""
import argparse
import re
from pathlib import Path

from results import draw_curve, pyplot, read_metrics, save_figure
from runfiles import ArgumentParser, UserError, check_output_path, run_cli

PANELS = (("train_ppl", "train perplexity", True), ("valid_ppl", "validation perplexity", True),
          ("lr", "learning rate", False), ("penalty", "penalty (times kappa)", False))
KEYS = ("epoch", *(key for key, _, _ in PANELS))


def run_stems(arg):
    """The runs ``arg`` names (a fine-tuning's file names its training's), as paths without suffix."""
    path = Path(arg)
    if path.is_dir():
        stems = sorted({stem(p) for p in path.glob("*.metrics.jsonl")})
        if not stems:
            raise UserError(f"{path} is a folder without a run (no NAME.metrics.jsonl in it): name a run's "
                            f"checkpoint or metrics file, or a folder that holds runs")
        return stems
    return [stem(path)]


def stem(path):
    return path.with_name(re.sub(r"(\.finetune)?(\.pt)?(\.metrics\.jsonl)?$", "", path.name))


def load_run(stem):
    """{"training": rows, "fine-tuning": rows} of the run at ``stem``, each where it has epochs."""
    files = {"training": Path(f"{stem}.metrics.jsonl"), "fine-tuning": Path(f"{stem}.finetune.metrics.jsonl")}
    if not any(p.exists() for p in files.values()):
        raise UserError(f"no metrics at {files['training']}: name a run's checkpoint or its .metrics.jsonl")
    parts = {kind: read_metrics(p, KEYS) for kind, p in files.items() if p.exists()}
    if not any(parts.values()):
        raise UserError(f"{stem} holds no epoch yet: plot it once the run has finished an epoch")
    return {kind: rows for kind, rows in parts.items() if rows}


def draw(runs, out):
    """One panel per metric, one colour per run; fine-tuning dashed, after its training's last epoch."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    fig, axes = pyplot(required=True).subplots(2, 2, figsize=(10, 7))
    for ax, (key, title, log) in zip(axes.flat, PANELS):
        for i, (label, parts) in enumerate(runs.items()):
            train = parts.get("training", [])
            if train:
                draw_curve(ax, train, key, label, color=f"C{i % 10}")
            if "fine-tuning" in parts:
                draw_curve(ax, parts["fine-tuning"], key, f"{label} fine-tuning", offset=train[-1]["epoch"] if train
                           else 0, color=f"C{i % 10}", linestyle="--")
        ax.set_ylabel(title)
        if log:  # labelled at 1-2-3-5 steps in plain numbers, not only at powers of ten
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="runs: their checkpoints (runs/NAME.pt), metrics (runs/NAME.metrics.jsonl) "
                                           "or a folder of runs")
    p.add_argument("--out", help="the PNG to write (default: beside the first run, NAME.curves.png)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file")
    args = p.parse_args(argv)
    pyplot(required=True)  # before any work: a missing matplotlib is one line
    stems = list(dict.fromkeys(s for run in args.runs for s in run_stems(run)))  # a run and its fine-tuning: once
    out = Path(args.out or f"{stems[0]}.curves.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out} is not a .png file: name the PNG to write")
    if out.exists() and not out.is_dir() and not args.overwrite:
        raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    check_output_path(out, "--out")
    runs = {}
    for s in stems:
        runs[s.name if s.name not in runs else str(s)] = load_run(s)
    draw(runs, out)
    print(f"Wrote {out} ({len(runs)} run{'s' * (len(runs) > 1)}: {', '.join(runs)})")
    return runs


if __name__ == "__main__":
    run_cli(main)
