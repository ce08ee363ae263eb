"""The CPU-scale ablation study, declared once, and its report: tables, plots and STUDY.md from the committed run
summaries, without torch, a checkpoint or a corpus, so any checkout can regenerate it (matplotlib only draws plots)."""
import csv
import io
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

from results import mean_sd, mean_sd_text as fmt, pyplot, save_figure, draw_curve
from runfiles import ArgumentParser, UserError, atomic_write_json, atomic_write_text, run_cli

DEFAULT_OUT = Path("results/ablation")
# The study's scales (ablation.py --scale): the committed study's, and a tiny one that runs in minutes.
SCALES = {"full": dict(emsize=200, nhid=200, epochs=30, train_fraction=0.1, batch_size=20, bptt=35),
          "tiny": dict(emsize=32, nhid=32, epochs=2, train_fraction=0.02, batch_size=20, bptt=35)}
ALL_VARIANTS = ["baseline", "FD", "ELD", "PM", "RD"]
KAPPAS = [0.0, 0.05, 0.15, 0.5, 1.5]
FULL_SEEDS, OTHER_SEEDS = [321, 322, 323, 324], [321, 322, 323]
# The single-layer model's mask sites, copied from config (which needs torch); test_ablation holds the two equal.
SITE_NAMES = {"e": "embedding rows (dropoute)", "i": "embedding output (dropouti)",
              "w": "W_hh DropConnect (wdrop)", "o": "last layer output (dropout)"}
STUDY_SITES = "".join(SITE_NAMES)

BEGIN = "<!-- ablation.py --report writes from here to the end marker; text outside is kept -->"
END = "<!-- end of ablation.py's report -->"
RESULTS = "seeds | best valid ppl | test ppl | mask variance | best epoch"  # the columns of result_cells
PAPER = "published full-scale single-layer PTB: FD 67.5 / 64.9, FD with the same W_hh mask 66.9 / 64.6"


def is_default(s):
    """A run at its variant's own kappa with independent masks (ablation.py names a kappa only off the default)."""
    return "_kappa" not in s["name"] and not s["same_mask"]


def signed(values, digits, suffix=""):
    mean, sd = mean_sd(values)
    return f"{mean:+.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}") + suffix


def paired(summaries, key, a="baseline", b="FD"):
    """Per seed, b minus a of ``key`` for the default-setting runs, and on how many seeds b is lower."""
    by = {(s["variant"], s["seed"]): s[key] for s in summaries if is_default(s)}
    seeds = sorted(seed for (v, seed) in by if v == b and (a, seed) in by)
    rows = [(seed, by[(a, seed)], by[(b, seed)], by[(b, seed)] - by[(a, seed)]) for seed in seeds]
    diffs = [r[3] for r in rows]
    return {"rows": rows, "diffs": diffs, "wins": sum(d < 0 for d in diffs), "n": len(diffs)}


def seed_list(seeds):
    return " ".join(str(s) for s in sorted(set(seeds)))


def scale_text(study, ntrain):
    return (f"single-layer PTB setup at {study['emsize']}/{study['nhid']} units, {study['train_fraction']:g} of the "
            f"training text ({ntrain} tokens), {study['epochs']} epochs, batch {study['batch_size']}, "
            f"bptt {study['bptt']}")


def scale_args(study):
    """The flags of ``study``'s scale: the nearer named scale (none for full) plus every value that differs."""
    name = min(SCALES, key=lambda n: sum(study.get(k) != v for k, v in SCALES[n].items()))
    return f" --scale {name}" * (name != "full") + "".join(f" --{k} {study[k]:g}" for k, v in SCALES[name].items()
                                                           if study.get(k, v) != v)


def table(runs, command, scale, header, rows, note):
    """A table under its caption (command, seeds, scale, torch, CPU with runs per CPU, dates) and above its note."""
    cpus = Counter(s["environment"]["cpu"] for s in runs)
    cpus = "; ".join(f"{cpu} ({n} run{'s' * (n > 1)})" for cpu, n in cpus.items())
    dates, torches, threads = (sorted({s["environment"][k] for s in runs}) for k in ("date", "torch", "threads"))
    return [f"Command: `{command}{scale_args(scale[0])}`. Seeds: {seed_list(s['seed'] for s in runs)}. "
            f"Scale: {scale_text(*scale)}. torch {', '.join(torches)}; CPU: {cpus}; threads "
            f"{', '.join(map(str, threads))}; run {dates[0]}{' to ' + dates[-1] if len(dates) > 1 else ''}.", "",
            header, "|---" * (header.count("|") - 1) + "|", *rows, "", note]


def result_cells(runs, train=True):
    keys = [("best_valid_ppl", 2), ("test_ppl", 2), ("mask_variance", 4), ("best_epoch", 1)]
    return " | ".join([seed_list(x["seed"] for x in runs)]
                      + [fmt([x[k] for x in runs], d) for k, d in keys + [("final_train_ppl", 2)] * train])


def variants_table(summaries, scale):
    runs = [s for s in summaries if is_default(s)]
    if not runs:
        return []
    groups = {v: g for v in ALL_VARIANTS if (g := [s for s in runs if s["variant"] == v])}
    seeds = seed_list(s["seed"] for s in runs)
    same_seeds = all(seed_list(s["seed"] for s in g) == seeds for g in groups.values())
    command = (f"python ablation.py --study seeds --model {' '.join(groups)} --seeds {seeds}" if same_seeds
               else f"python ablation.py --runs {' '.join(s['name'] for s in runs)}")  # exactly these runs
    return table(runs, command, scale, f"| variant | kappa | {RESULTS} | train ppl (last epoch) | wall time (min) |",
                 [f"| {v} | {s[0]['kappa']:g} | {result_cells(s)} | {fmt([x['wall_s'] / 60 for x in s], 1)} |"
                  for v, s in groups.items()],
                 "Mean ± sample standard deviation over the seeds listed (one value: one seed).")


def paired_table(summaries, scale):
    valid, test, mvar = (paired(summaries, k) for k in ("best_valid_ppl", "test_ppl", "mask_variance"))
    if not valid["n"]:
        return []
    seeds = [r[0] for r in valid["rows"]]
    runs = [s for s in summaries if is_default(s) and s["variant"] in ("baseline", "FD") and s["seed"] in seeds]
    rows = [f"| {seed} | {bv:.2f} / {bt:.2f} | {fv:.2f} / {ft:.2f} | {dv:+.2f} | {dt:+.2f} | {dm:+.4f} |"
            for (seed, bv, fv, dv), (_, bt, ft, dt), (*_, dm) in zip(valid["rows"], test["rows"], mvar["rows"])]
    rows.append(f"| mean ± sd | | | {signed(valid['diffs'], 2)} | {signed(test['diffs'], 2)} | "
                f"{signed(mvar['diffs'], 4)} |")
    return table(runs, f"python ablation.py --study seeds --model baseline FD --seeds {seed_list(seeds)}", scale,
                 "| seed | baseline valid / test | FD valid / test | FD − baseline, valid | FD − baseline, test | "
                 "FD − baseline, mask variance |", rows,
                 f"FD has the lower best validation perplexity on {valid['wins']} of {valid['n']} seeds and the "
                 f"lower test perplexity on {test['wins']} of {test['n']}; the lower mask variance on {mvar['wins']} "
                 f"of {mvar['n']}.")


def versus_fd(group, runs, key):
    """The group's ``key`` minus plain FD's (in ``runs``) on the same seed, mean ± sd, and on how many seeds lower."""
    fd = {s["seed"]: s for s in runs if s["variant"] == "FD" and is_default(s)}
    diffs = [s[key] - fd[s["seed"]][key] for s in group if s["seed"] in fd and not is_default(s)]
    return signed(diffs, 2, f" (lower on {sum(d < 0 for d in diffs)} of {len(diffs)})") if diffs else "–"


def sweep_cells(group, runs):
    """Against plain FD (valid, test), then short CPU names: the rows may come from CPUs that round differently."""
    names = sorted({" ".join(s["environment"]["cpu"].replace("(R)", "").split()[:2]) for s in group})
    return f"{versus_fd(group, runs, 'best_valid_ppl')} | {versus_fd(group, runs, 'test_ppl')} | {', '.join(names)}"


def kappa_rows(summaries):
    """FD's runs per kappa, on the seeds the sweep covers (so every kappa averages the same seeds)."""
    runs = [s for s in summaries if s["variant"] == "FD" and not s["same_mask"]]
    swept = {s["seed"] for s in runs if not is_default(s)}
    runs = [s for s in runs if s["seed"] in swept]
    return {k: [s for s in runs if s["kappa"] == k] for k in sorted({s["kappa"] for s in runs})}


def kappa_table(summaries, scale):
    groups = kappa_rows(summaries)
    if len(groups) < 2:
        return []
    runs = [s for g in groups.values() for s in g]
    return table(runs, f"python ablation.py --study kappa --kappas {' '.join(f'{k:g}' for k in groups)} "
                       f"--seeds {seed_list(s['seed'] for s in runs)}", scale,
                 f"| kappa | {RESULTS} | train ppl (last epoch) | − FD at 0.15, valid | − FD at 0.15, test | CPU |",
                 [f"| {k:g}{' (default)' if all(map(is_default, s)) else ''} | {result_cells(s)} | "
                  f"{sweep_cells(s, summaries)} |" for k, s in groups.items()],
                 "kappa 0 is FD without the penalty: two passes, averaged target loss. Mean ± sample standard "
                 "deviation over the seeds listed; the two differences are paired by seed with FD at the default "
                 "kappa 0.15 (mean ± sd of the per-seed differences; negative: lower perplexity than FD).")


def mask_runs(summaries):
    """FD at its default kappa on the seeds of the same-mask sweep (plain FD included), and those seeds."""
    runs = [s for s in summaries if s["variant"] == "FD" and "_kappa" not in s["name"]]
    seeds = seed_list(s["seed"] for s in runs if s["same_mask"])
    return [s for s in runs if str(s["seed"]) in seeds.split()], seeds


def masks_table(summaries, scale):
    runs, seeds = mask_runs(summaries)
    if not runs:
        return []
    groups = {site: [x for x in runs if x["same_mask"] == site] for site in ["", *STUDY_SITES]}
    return table(runs, f"python ablation.py --study masks --seeds {seeds}", scale,
                 f"| pass 2 reuses pass 1's mask at | {RESULTS} | − FD, valid | − FD, test | CPU |",
                 [f"| {SITE_NAMES[site] if site else 'nowhere (FD)'} | {result_cells(s, train=False)} | "
                  f"{sweep_cells(s, summaries)} |" for site, s in groups.items() if s],
                 "All at FD's default kappa 0.15. Mask variance is always measured with independent masks at every "
                 "site (what the penalty of plain FD sees), so the rows compare the same quantity. The differences "
                 "are paired by seed with plain FD (mean ± sd of the per-seed differences).")


def runs_table(summaries):
    return ["| run | best valid ppl | test ppl | best epoch | mask variance | wall time (min) | threads | CPU | "
            "date | commit |", "|---" * 10 + "|"] + [
        f"| {s['name']} | {s['best_valid_ppl']:.2f} | {s['test_ppl']:.2f} | {s['best_epoch']} | "
        f"{s['mask_variance']:.4f} | {s['wall_s'] / 60:.1f} | {e['threads']} | {e['cpu']} | {e['date']} | "
        f"{e.get('commit', 'not recorded')} |" for s in summaries for e in [s["environment"]]]


def plot_seeds(summaries, path, title):
    """Validation perplexity per epoch: each seed faint, the mean over seeds bold; best per seed beside it."""
    runs = [s for s in summaries if is_default(s)]
    if not runs or (plt := pyplot()) is None:
        return False
    groups = {v: g for v in ALL_VARIANTS if (g := [s for s in runs if s["variant"] == v])}
    colors = dict(zip(ALL_VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for i, (v, group) in enumerate(groups.items()):
        for s in group:
            draw_curve(ax1, s["epoch_rows"], "valid_ppl", color=colors[v], lw=0.8, alpha=0.3)
        mean = [{"epoch": e + 1, "valid_ppl": mean_sd(s["epoch_rows"][e]["valid_ppl"] for s in group)[0]}
                for e in range(min(len(s["epoch_rows"]) for s in group))]
        draw_curve(ax1, mean, "valid_ppl", f"{v} ({len(group)} seed{'s' * (len(group) > 1)})", color=colors[v], lw=2.2)
        best = [s["best_valid_ppl"] for s in group]
        ax2.scatter([i] * len(best), best, color=colors[v], alpha=0.5, s=18)
        ax2.errorbar([i + 0.2], [mean_sd(best)[0]], yerr=[mean_sd(best)[1] or 0], color=colors[v], fmt="o", capsize=4)
    lows = [r["valid_ppl"] for s in runs for r in s["epoch_rows"]]
    ax1.set(ylim=(min(lows) * 0.97, min(max(lows), min(lows) * 1.5)), ylabel="validation perplexity")
    ax2.set_xticks(range(len(groups)), list(groups))
    ax2.set(xlabel="variant", ylabel="best valid ppl (dots: seeds; mean ± sd)")
    return finish(fig, (ax1, ax2), path, title)


def plot_kappa(summaries, path, title):
    groups = kappa_rows(summaries)
    if len(groups) < 2 or (plt := pyplot()) is None:
        return False
    ks = list(groups)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, style in ((ax1, "best_valid_ppl", {"label": "best validation"}), (ax1, "test_ppl", {"label": "test"}),
                           (ax2, "mask_variance", {"color": "C2"})):
        stats = [mean_sd(s[key] for s in groups[k]) for k in ks]
        ax.errorbar(ks, [m for m, _ in stats], [sd or 0.0 for _, sd in stats], marker="o", capsize=3, **style)
    for ax, label in ((ax1, "perplexity"), (ax2, "mask variance (validation)")):
        ax.set_xscale("symlog", linthresh=0.05)
        ax.set_xticks(ks, [f"{k:g}" for k in ks])
        ax.set(xlabel="kappa (FD)", ylabel=label)
    return finish(fig, (ax1, ax2), path, title)


def plot_masks(summaries, path, title):
    """Each same-mask point against plain FD's spread over all its seeds (the yardstick a one-seed point needs)."""
    runs, _ = mask_runs(summaries)
    if not runs or (plt := pyplot()) is None:
        return False
    sites = [site for site in ["", *STUDY_SITES] if any(x["same_mask"] == site for x in runs)]
    fd = [s["best_valid_ppl"] for s in summaries if s["variant"] == "FD" and is_default(s)]
    fig, ax = plt.subplots(figsize=(8, 4))
    if len(fd) > 1:
        ax.axhspan(min(fd), max(fd), color="0.85", label=f"plain FD, best validation, {len(fd)} seeds (min to max)")
    xs = list(range(len(sites)))
    for key, label, marker in (("best_valid_ppl", "best validation", "o"), ("test_ppl", "test", "s")):
        ax.plot(xs, [mean_sd(x[key] for x in runs if x["same_mask"] == site)[0] for site in sites],
                marker=marker, linestyle="none", label=label)
    ax.set_xticks(xs, [SITE_NAMES[site].split(" (")[0] if site else "nowhere (FD)" for site in sites], rotation=15)
    ax.set(xlabel="pass 2 reuses pass 1's mask at", ylabel="perplexity")
    return finish(fig, (ax,), path, title)


def finish(fig, axes, path, title):
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def load_summaries(out, study, folder="runs"):
    summaries = []
    for path in sorted((out / folder).glob("*.summary.json")):
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the run summary {path} ({e}): restore it from git") from None
    return sorted((s for s in summaries if s["study"] == study), key=lambda s: (
        ALL_VARIANTS.index(s["variant"]), s["kappa"], STUDY_SITES.find(s["same_mask"]) if s["same_mask"] else -1,
        s["seed"]))


def archived(out, study, rel="."):
    """Runs kept in ``runs-*/`` (another CPU kind, older code): listed apart, never in the tables."""
    lines = []
    for folder in sorted(p.name for p in out.glob("runs-*") if p.is_dir()):
        if runs := load_summaries(out, study, folder):
            lines += [""] * bool(lines) + [f"In [{rel}/{folder}/]({rel}/{folder}/), {len(runs)} run"
                                           f"{'s' * (len(runs) > 1)}:", "", *runs_table(runs)]
    return lines


def report_path(out):
    return out.parent / "STUDY.md" if out.resolve() == DEFAULT_OUT.resolve() else out / "STUDY.md"


PLOTS = (("curves.png", plot_seeds, "Variants over seeds", "validation perplexity per epoch, seeds faint, mean bold"),
         ("kappa.png", plot_kappa, "FD's kappa", "perplexity and mask variance against kappa"),
         ("masks.png", plot_masks, "FD sharing one mask site between the passes",
          "perplexity per shared mask site, plain FD's seed range shaded"))


def report(out, study, command):
    """Every table and plot from the runs' summaries in ``out``: what --report does, and every study at its end."""
    summaries = load_summaries(out, study)
    if not summaries:
        print(f"No finished runs at scale {study} in {out}/runs: nothing to report")
        return None
    md, scale = report_path(out), (study, summaries[0]["train_tokens"])
    rel, title = os.path.relpath(out, md.parent), scale_text(*scale)
    plotted = {heading: (name, f"![{alt}]({rel}/{name})") for name, draw, heading, alt in PLOTS
               if draw(summaries, out / name, title)}
    sections = {"Variants over seeds": variants_table(summaries, scale),
                "FD minus baseline, paired by seed": paired_table(summaries, scale),
                "FD's kappa": kappa_table(summaries, scale),
                "FD sharing one mask site between the passes": masks_table(summaries, scale),
                "Every run": runs_table(summaries), "Archived runs, not in the tables": archived(out, study, rel)}
    lines = [BEGIN, f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from the {len(summaries)} run "
                    f"summaries in [{rel}/runs/]({rel}/runs/) ({title}). For comparison, {PAPER}."]
    for heading, body in sections.items():
        if body:
            lines += ["", f"### {heading}", "", *body] + (["", plotted[heading][1]] if heading in plotted else [])
    old = md.read_text(encoding="utf-8") if md.is_file() else ""
    keep = (old[:old.index(BEGIN)], old[old.index(END):]) if BEGIN in old and END in old else \
        ("# Ablation study\n\n", END + "\n" + old)
    atomic_write_text(keep[0] + "\n".join(lines) + "\n" + keep[1], md)
    if variants := sections["Variants over seeds"]:
        atomic_write_text(f"Ablation: {title}.\n\n" + "\n".join(variants) + "\n", out / "results.md")
    keys = ["run", "variant", "seed", "kappa", "same_mask", "epoch", "elapsed", "seconds", "train_ppl", "valid_ppl",
            "penalty", "lr", "tokens_per_s"]
    epochs = io.StringIO(newline="")
    csv.writer(epochs).writerows([keys] + [[s["name"], s["variant"], s["seed"], s["kappa"], s["same_mask"]]
                                           + [r[k] for k in keys[5:]] for s in summaries for r in s["epoch_rows"]])
    atomic_write_text(epochs.getvalue(), out / "epochs.csv")
    atomic_write_json({"study": study, **{k: summaries[0][k] for k in ("train_tokens", "train_sha256")},
                       "report": {"command": command, "date": time.strftime("%Y-%m-%d")},
                       "runs": [{k: v for k, v in s.items() if k not in ("epoch_rows", "config")} for s in summaries]},
                      out / "study.json")
    print("\n".join(variants))
    print(f"Wrote {md}, {out / 'results.md'}, {out / 'epochs.csv'}, {out / 'study.json'}"
          + "".join(f", {out / name}" for name, _ in plotted.values()))
    return summaries


def main(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"the study's folder, with study.json and "
                   f"runs/*.summary.json (default {DEFAULT_OUT}): what python ablation.py --report does there")
    out = Path(p.parse_args(argv).out)
    if not (out / "study.json").is_file():
        raise UserError(f"no study at {out} (study.json missing): pass the --out folder of an ablation.py study")
    study = json.loads((out / "study.json").read_text(encoding="utf-8"))["study"]
    return report(out, study, shlex.join(["python", *(sys.argv if argv is None else ["study_report.py", *argv])]))


if __name__ == "__main__":
    run_cli(main)
