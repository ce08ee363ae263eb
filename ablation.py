"""A CPU-scale ablation study on the single-layer PTB setup, trained by main.py's own code: runs named by what they
change (FD_seed322, FD_kappa0.5_seed321, FD_samew_seed321) leave runs/NAME.summary.json in --out, reused while it
matches the run (--retrain replaces one that does not); study_report.py writes the tables, plots and STUDY.md.

    python ablation.py --threads 1                  # the whole committed study (--study full), in priority order
    python ablation.py --study seeds --model baseline FD --seeds 321 322
    python ablation.py --study kappa                # FD at kappa 0, 0.05, 0.15, 0.5, 1.5
    python ablation.py --study masks                # FD sharing one mask site at a time
    python ablation.py --runs FD_kappa0.5_seed321   # named runs
    python ablation.py --report                     # only aggregate the finished runs' summaries
    python ablation.py --scale tiny                 # minutes, in a temporary folder
"""
import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from checkpoint import load_checkpoint, model_from_checkpoint, schedule_finished
from config import VARIANTS, build_config, check_flags, default_kappa, outcome, train_config, with_settings_added_since
from data import SPLITS, Corpus, batchify, write_corpus_cut
from mc_dropout import mask_variance
from results import mean_sd, read_metrics
from runfiles import ArgumentParser, UserError, atomic_write_json, code_commit, cpu_model, run_cli, run_paths
from study_report import (ALL_VARIANTS, DEFAULT_OUT, FULL_SEEDS, KAPPAS, OTHER_SEEDS, SCALES, SITE_NAMES, STUDY_SITES,
                          report, report_path)
from trainer import run
from utils import get_device, set_seed


def make_spec(variant, seed, kappa=None, same=""):
    """A run, named by what it changes: variant, seed, kappa (None: the variant's default) and shared mask sites."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
    if bad := set(same) - set(STUDY_SITES):
        raise UserError(f"unknown mask site {''.join(sorted(bad))!r}: choose from {STUDY_SITES} ({SITE_NAMES})")
    default = kappa is None or float(kappa) == default_kappa("single", variant)  # one name: a sweep reuses that run
    kappa, same = None if default else float(kappa), "".join(s for s in STUDY_SITES if s in same)
    return {"name": f"{variant}{'' if kappa is None else f'_kappa{kappa:g}'}{same and f'_same{same}'}_seed{int(seed)}",
            "variant": variant, "seed": int(seed), "kappa": kappa, "same": same}


NAME_RE = re.compile(r"^(?P<variant>[A-Za-z]+)(?:_kappa(?P<kappa>[0-9.e+-]+))?(?:_same(?P<same>[a-z]+))?"
                     r"_seed(?P<seed>\d+)$")


def parse_run(name):
    if not (m := NAME_RE.match(name)):
        raise UserError(f"cannot read run name {name!r}: write VARIANT[_kappaK][_sameSITES]_seedN, "
                        f"e.g. FD_seed322, FD_kappa0.5_seed321, FD_samew_seed321")
    try:
        return make_spec(m["variant"], int(m["seed"]), m["kappa"] and float(m["kappa"]), m["same"] or "")
    except ValueError:
        raise UserError(f"run name {name!r}: kappa {m['kappa']!r} is not a number") from None


def plan_of(study, variants=(), kappas=(), seeds=()):
    """The runs of one study; the full one most wanted first, so a sitting that stops early has the useful ones."""
    if study == "full":
        return (plan_of("seeds", ["baseline", "FD"], seeds=FULL_SEEDS) + plan_of("kappa", kappas=KAPPAS, seeds=[321])
                + plan_of("masks", seeds=[321]) + plan_of("seeds", ["ELD", "PM", "RD"], seeds=OTHER_SEEDS))
    return [make_spec(v, s) for s in seeds for v in variants] if study == "seeds" else \
        [make_spec("FD", s, k) for s in seeds for k in kappas] if study == "kappa" else \
        [make_spec("FD", s, same=site) for s in seeds for site in ["", *STUDY_SITES]]


def build_plan(args):
    study = args.study or ("kappa" if args.kappas else "seeds" if args.model or args.seeds else "full")
    given = [f for f in ("model", "seeds", "kappas") if getattr(args, f) is not None]
    if study == "full" and given and not args.runs:
        raise UserError(f"--study full has its own variants, seeds and kappas, so --{given[0]} would do nothing: "
                        f"use --study seeds, kappa or masks, or --runs")
    plan = ([parse_run(n) for n in args.runs] if args.runs
            else plan_of(study, args.model or ALL_VARIANTS, args.kappas or KAPPAS, args.seeds or [321]))
    return list({spec["name"]: spec for spec in plan}.values())  # a run in two studies (FD_seed321) runs once


def run_config(spec, study, corpus_dir, save, device):
    """The run's configuration from main.py's own parser, exactly as ``python main.py ...`` builds it."""
    argv = ["--preset", "single", "--model", spec["variant"], "--data", str(corpus_dir), "--save", str(save),
            "--seed", str(spec["seed"]), "--device", device] + [f"--same_mask_{s}" for s in spec["same"]]
    argv += [arg for key in ("emsize", "nhid", "epochs", "batch_size", "bptt") for arg in (f"--{key}", str(study[key]))]
    return train_config(argv + (["--kappa", repr(spec["kappa"])] if spec["kappa"] is not None else []))


def train(cfg):
    """Train one run, continuing or reusing this checkout's run of the same configuration (data path resolved)."""
    paths, resolved = run_paths(cfg["save"]), lambda c: dict(c, data=os.path.abspath(c["data"]))
    blob = load_checkpoint(paths["resume"], "resume") if os.path.exists(paths["resume"]) else None
    if blob is None or resolved(with_settings_added_since(blob["config"])) != resolved(cfg):
        return run(cfg, overwrite=True)
    if all(os.path.exists(paths[k]) for k in ("final", "best")) and schedule_finished(paths["resume"], cfg["epochs"]):
        print(f"Reusing the finished run {cfg['save']} (its checkpoints are in this checkout)")
        return json.loads(Path(paths["final"]).read_text(encoding="utf-8"))
    return run(build_config({"resume": paths["resume"]}, "resume", blob), resume=blob)


def summary_mismatch(summary, cfg, study, train_sha):
    """Why a committed summary does not stand for this run ('' when it does)."""
    if summary.get("study") != study:
        return f"its scale {summary.get('study')} is not {study}"
    if summary.get("train_sha256") != train_sha:
        return "it trained on another cut of the training text"
    old, new = outcome(summary.get("config", {})), outcome(cfg)
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
    return f"its configuration differs in {', '.join(keys)}" if keys else ""


def run_one(spec, study, out, train_sha, ntrain, device, command, commit, retrain=False):
    """The run's committed summary when it matches, else train and write it (a stale one only with ``retrain``)."""
    name = spec["name"]
    cfg = run_config(spec, study, out / "corpus", out / "runs" / f"{name}.pt", device)
    path, paths = out / "runs" / f"{name}.summary.json", run_paths(cfg["save"])
    if path.is_file():
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not (why := summary_mismatch(summary, cfg, study, train_sha)):
            print(f"Reusing the committed summary of {name}")
            return summary
        if not retrain:
            raise UserError(f"the committed summary {path} does not stand for this run ({why}): pass --retrain "
                            f"to train it again and replace it, or choose another --out")
        print(f"The summary of {name} does not stand for this run ({why}): training it again")
    print(f"=== {name} ===")
    started = time.strftime("%Y-%m-%d %H:%M")
    final = train(cfg)
    if final is None or not schedule_finished(paths["resume"], cfg["epochs"]):  # Ctrl-C also writes final.json
        raise UserError(f"the run {name} did not finish (interrupted): rerun the same command to continue it")
    rows = read_metrics(paths["metrics"], ("epoch", "valid_loss", "valid_ppl", "train_ppl", "elapsed", "tokens_per_s"))
    best = min(rows, key=lambda r: r["valid_loss"])
    model = model_from_checkpoint(load_checkpoint(cfg["save"], "best"), torch.device(device))
    set_seed(1234)  # the same masks' law for every model; the seed only fixes the draw
    mvar = mask_variance(model, batchify(Corpus(out / "corpus").valid, 10, torch.device(device)), cfg["bptt"], 10)
    env = {"command": command, "torch": torch.__version__, "cpu": cpu_model(), "threads": torch.get_num_threads(),
           "started": started, "date": time.strftime("%Y-%m-%d"), "commit": commit}
    summary = {"name": name, "variant": spec["variant"], "seed": spec["seed"], "kappa": cfg["kappa"],
               "same_mask": cfg["same_mask"], "best_valid_ppl": best["valid_ppl"], "best_epoch": best["epoch"],
               "test_ppl": final["test_ppl"], "valid_ppl": final["valid_ppl"], "epochs": len(rows),
               "wall_s": rows[-1]["elapsed"], "tokens_per_s": mean_sd(r["tokens_per_s"] for r in rows)[0],
               "final_train_ppl": rows[-1]["train_ppl"], "mask_variance": mvar, "study": study,
               "train_sha256": train_sha, "train_tokens": ntrain, "environment": env, "config": cfg, "epoch_rows": rows}
    atomic_write_json(summary, path)
    print(f"Wrote {path}")
    return summary


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=("full", "seeds", "kappa", "masks"),
                   help="full (default): baseline and FD on seeds 321-324, FD's kappa and mask sweeps on 321, ELD / "
                        "PM / RD on 321-323, in that order; seeds (default with --model or --seeds): --model x "
                        "--seeds; kappa (default with --kappas): FD at each kappa; masks: FD sharing one mask site")
    p.add_argument("--runs", nargs="+", metavar="NAME", help="only these runs (not --study), e.g. FD_kappa0.5_seed321")
    p.add_argument("--model", nargs="+", choices=list(VARIANTS), help="--study seeds: regularizers (default all)")
    p.add_argument("--seeds", nargs="+", type=int, help="--study seeds / kappa / masks: seeds (default 321)")
    p.add_argument("--kappas", nargs="+", type=float,
                   help=f"--study kappa: FD's kappas (default {' '.join(f'{k:g}' for k in KAPPAS)})")
    p.add_argument("--scale", choices=list(SCALES), default="full",
                   help="full: the committed study's; tiny: minutes, in a new temporary folder unless --out is given")
    for key, value in SCALES["full"].items():
        p.add_argument(f"--{key}", type=type(value), help=f"default {value} ({SCALES['tiny'][key]} at --scale tiny)")
    p.add_argument("--data", default="data/penn", help="the PTB folder (train / valid / test)")
    p.add_argument("--out", help=f"the study's folder (default {DEFAULT_OUT}; at --scale tiny a new temporary one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch.set_num_threads for every run (default: PyTorch's choice)")
    p.add_argument("--retrain", action="store_true", help="retrain and replace runs whose summary no longer matches")
    p.add_argument("--report", action="store_true", help="train nothing; rewrite the report (tables, plots, STUDY.md)")
    return p


def main(argv=None):
    commit = code_commit()  # read once, at start: the code this process imported
    args = build_parser().parse_args(argv)
    command = shlex.join(["python", *(sys.argv if argv is None else ["ablation.py", *argv])])
    study = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in SCALES[args.scale].items()}
    check_flags({**study, "threads": args.threads, "seeds": args.seeds, "kappas": args.kappas},
                {**dict.fromkeys(("emsize", "nhid", "epochs", "batch_size", "bptt", "threads"), "positive_int"),
                 "train_fraction": "fraction", "seeds": "seed", "kappas": "non_negative"})
    if args.threads:
        torch.set_num_threads(args.threads)
    temporary = args.scale == "tiny" and not args.out  # a toy study never lands in results/, which holds real ones
    out = Path(tempfile.mkdtemp(prefix="ablation-tiny-")) if temporary else Path(args.out or DEFAULT_OUT)
    if temporary:
        print(f"--scale tiny writes to {out} (pass --out to choose)")
    claim = out / "study.json"  # one scale per folder: the tables never mix studies of different sizes
    held = json.loads(claim.read_text(encoding="utf-8")).get("study") if claim.is_file() else study
    if held != study:
        raise UserError(f"{out} holds a study at another scale ({held}); this one is {study}: "
                        f"choose another --out (one folder holds one configuration)")
    if args.report:
        return report(out, study, command)
    plan = build_plan(args)
    if not claim.is_file():  # claimed before the first run, so an interrupted study guards its folder too
        atomic_write_json({"study": study}, claim)
    device = str(get_device(args.device))
    src = Path(args.data)
    if split := next((s for s in SPLITS if not (src / f"{s}.txt").is_file()), None):
        raise UserError(f"no corpus at {src} ({split}.txt missing): run ./getdata.sh or pass --data DIR")
    lines = len((src / "train.txt").read_text(encoding="utf-8").splitlines())  # cut to its first train_fraction
    texts = write_corpus_cut(src, out / "corpus", {"train": max(1, round(lines * study["train_fraction"]))})
    train_sha = hashlib.sha256(texts["train"].encode("utf-8")).hexdigest()  # what a reused summary must share
    ntrain = Corpus(out / "corpus").train.numel()
    print(f"{len(plan)} runs: {' '.join(s['name'] for s in plan)}")
    try:
        summaries = [run_one(spec, study, out, train_sha, ntrain, device, command, commit, args.retrain)
                     for spec in plan]
        report(out, study, command)
    finally:
        if temporary:  # a tiny study keeps its report, not its checkpoints or corpus cut
            for path in (out / "runs").glob("*.pt"):
                path.unlink()
            shutil.rmtree(out / "corpus", ignore_errors=True)
            print(f"Removed the checkpoints and the corpus cut from {out}; the report stays: {report_path(out)}")
    return summaries


if __name__ == "__main__":
    run_cli(main)
