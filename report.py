"""The table runner's report, torch-free: per row, published against measured, each number with the commit, date
and device that computed it (read from the steps' records); plots from the runs' metrics."""
import time
from pathlib import Path

import rows
from results import draw_curve, mean_sd, mean_sd_text, pyplot, read_metrics, save_figure
from rows import STAGES, lineage
from runfiles import UserError, atomic_write_json, atomic_write_text, read_json

TINY_NOTE = ("Tiny scale: 16-unit models trained 2 epochs on a 200-line cut of each corpus. These numbers cannot be "
             "compared with the published ones; the differences only show that every chain runs end to end.")
EXPLAINED = ("Measured: each row's step result (recorded when the step finished: final.json of main.py / finetune.py, "
             "the JSON line of pointer.py / dynamiceval.py), mean ± sample std over seeds. Difference: measured minus "
             "published (negative is better). Wall time: per seed, the chain's steps up to the row's. Computed at: the "
             "commit, date and device of each number; † marks another commit than this report's.")


def seconds(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def epoch_rows(path):
    """A run's epoch rows; none when missing or damaged (named among the side files)."""
    try:
        return read_metrics(path, ("epoch", "valid_ppl", "elapsed"))
    except UserError:
        return []


def shown(path):
    path = Path(path).resolve()
    return str(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)


def run_entry(run, row, out, finished):
    """One seed's number for ``row``, with its provenance, or None while its step is not done."""
    steps = {s.stage: s for s in run.steps}
    if (record := finished(steps[row.stage])) is None:
        return None
    upto = {s: finished(steps[s]) or {} for s in lineage(row.stage)}
    result_file = out / steps[row.stage].path("final.json" if STAGES[row.stage].trains else "output")
    return {"seed": run.seed, **record["result"], "result_file": shown(result_file),
            "epochs": {s: r.get("epochs") for s, r in upto.items() if STAGES[s].trains},
            "steps_wall_s": {s: r.get("wall_s") for s, r in upto.items()},
            "wall_s": round(sum(r.get("wall_s") or 0 for r in upto.values()), 1),
            **{k: record.get(k) for k in ("commit", "date", "machine", "device")}}


def row_report(row, runs, out, finished):
    entries, failures = [], []
    for run in runs:
        if (entry := run_entry(run, row, out, finished)) is not None:
            entries.append(entry)
        elif run.failure:
            failure = dict(run.failure, seed=run.seed)
            if list(STAGES).index(failure["step"]) < list(STAGES).index(row.stage):
                failure["reason"] = f"not run: its chain's {failure['step']} step failed ({failure['reason']})"
            failures.append(failure)
    waiting = len(runs) - len(entries) - len(failures)
    (valid, valid_sd), (test, test_sd) = (mean_sd(e[k] for e in entries) for k in ("valid_ppl", "test_ppl"))
    published = {"valid": row.published[0], "test": row.published[1]} if row.published else None
    status = "partial" if waiting and entries else "pending" if waiting else "failed" if failures else "done"
    return {"id": row.id, "what": row.what, "source": row.source, "stage": row.stage, "published": published,
            "status": status, "seeds": [e["seed"] for e in entries], "runs": entries, "failures": failures,
            "measured": {"valid": valid, "valid_sd": valid_sd, "test": test, "test_sd": test_sd} if entries else None,
            "difference": {"valid": valid - published["valid"], "test": test - published["test"]}
            if entries and published else None}


def side_file_notes(plan, out):
    """Damaged or missing side files of recorded steps, one line each: the numbers come from the records."""
    notes = []
    for step in (s for run in plan for s in run.steps if s.kind.trains and (out / s.path("record")).exists()):
        if read_json(out / step.path("final.json")) is None:
            notes.append(f"{step.path('final.json')} is missing or damaged: the result is read from its record")
        try:
            read_metrics(out / step.path("metrics.jsonl"))
        except UserError as e:
            notes.append(str(e))
    return notes


def write(plan, selected, out, finished, meta, report_dir, plots=False):
    table = [row_report(row, [r for r in plan if r.chain.id == row.chain], out, finished) for row in selected]
    report = {**meta, "partial": any(r["status"] in ("partial", "pending") for r in table),
              "written": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": table, "side_files": side_file_notes(plan, out)}
    images = draw_plots(report, plan, out, report_dir / meta["name"]) if plots else {}
    atomic_write_json(report, report_dir / f"{meta['name']}.json")
    atomic_write_text(markdown(report, images), report_dir / f"{meta['name']}.md")


def markdown(report, images):
    lines = [f"# Reproduction: {report['name']}{' (partial: chains still to run)' if report['partial'] else ''}", "",
             f"Command: `{report['command']}`  ",
             f"Written {report['written']} at commit {report['commit']}; scale {report['scale']}; "
             f"torch {report['torch']}; devices: {', '.join(report['devices'])}.", ""]
    lines += [f"**{TINY_NOTE}**", ""] if report["scale"] == "tiny" else []
    lines += [EXPLAINED, "", "| row | published valid / test | measured valid | measured test | difference valid / "
              "test | seeds | epochs (train + fine-tune) | wall time | computed at | status |", "|---" * 10 + "|"]
    for r in report["rows"]:
        pub = f"{r['published']['valid']} / {r['published']['test']}" if r["published"] else "none published"
        diff = f"{r['difference']['valid']:+.2f} / {r['difference']['test']:+.2f}" if r["difference"] else "-"
        epochs = "; ".join(" + ".join(str(v) for v in e["epochs"].values()) for e in r["runs"]) or "-"
        wall = "; ".join(seconds(e["wall_s"]) for e in r["runs"]) or "-"
        computed = {f"{e['commit']}{'' if e['commit'] == report['commit'] else ' †'}, {e['date'][:10]}, {e['device']}"
                    for e in r["runs"]}
        lines.append(f"| `{r['id']}` {r['what']} | {pub} | {mean_sd_text(e['valid_ppl'] for e in r['runs'])} | "
                     f"{mean_sd_text(e['test_ppl'] for e in r['runs'])} | {diff} | "
                     f"{' '.join(map(str, r['seeds'])) or '-'} | {epochs} | {wall} | "
                     f"{'; '.join(sorted(computed)) or '-'} | {r['status']} |")
    failed = [f"- `{r['id']}` seed {f['seed']}, step {f['step']}: {f['reason']}; log `{shown(f['log'])}`"
              + (f" (last line: `{f['last_line']}`)" if f["last_line"] else "")
              for r in report["rows"] for f in r["failures"]]
    lines += ["", "Failed:", "", *failed] if failed else []
    lines += ["", "Side files:", "", *(f"- {note}" for note in report["side_files"])] if report["side_files"] else []
    if images:
        lines += ["", "Validation perplexity per epoch, published validation perplexity as a dashed line:", ""]
        lines += [f"![{rid}]({path})" for rid, path in images.items()]
    return "\n".join(lines) + "\n"


def draw_plots(report, plan, out, folder):
    """A validation curve per seed for each row with a training stage (matplotlib optional)."""
    plt, images = pyplot(), {}
    for r in (r for r in report["rows"] if plt and STAGES[r["stage"]].trains):
        curves = [(run.seed, epoch_rows(out / step.path("metrics.jsonl"))) for run in plan for step in run.steps
                  if run.chain.id == rows.ROW[r["id"]].chain and run.seed in r["seeds"] and step.stage == r["stage"]]
        if not any(metrics for _, metrics in curves):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for seed, metrics in curves:
            draw_curve(ax, metrics, "valid_ppl", label=f"seed {seed}")
        if r["published"]:
            ax.axhline(r["published"]["valid"], linestyle="--", color="k", label=f"published {r['published']['valid']}")
        ax.set(ylabel="validation perplexity", yscale="log", title=r["id"])
        ax.legend()
        save_figure(fig, folder / f"{r['id']}.png", dpi=100)
        images[r["id"]] = f"{folder.name}/{r['id']}.png"
    return images


def expected_hours(plan, folder):
    """GPU hours of the plan's steps not done, from GPU runs in ``folder``'s reports; (None, the steps unmeasured)."""
    measured = {(rows.ROW[r["id"]].chain, s): wall for path in sorted(Path(folder).glob("*.json"))
                for r in (read_json(path) or {}).get("rows", []) if r.get("id") in rows.ROW
                for e in r.get("runs", []) if "cuda" in str(e.get("device"))
                for s, wall in (e.get("steps_wall_s") or {}).items() if wall}
    needed = [(run.chain.id, s.stage) for run in plan for s in run.steps if getattr(s, "state", "run") != "done"]
    missing = sorted({f"{c}:{s}" for c, s in needed if (c, s) not in measured})
    return (None, missing) if missing else (sum(measured[k] for k in needed) / 3600, [])
