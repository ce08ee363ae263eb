"""Reproduce the paper's tables in one command: each row's chain of runs, several at once, resumable,
compared with the published numbers.

    python reproduce.py ptb --dry                  # the plan: chains, commands, what is done already
    python reproduce.py ptb                        # every 3-layer PTB row (tables: single, ptb, wt2, all)
    python reproduce.py merity-ptb-cache awd-ptb-FD-ft --jobs 2    # rows by id (rows.py, README)
    python reproduce.py single --seeds 1 2 3       # each row per seed: mean and sample std
    python reproduce.py ptb --scale tiny           # the same chains, tiny model and corpus cut, on a CPU

Each step (main.py, finetune.py, pointer.py, dynamiceval.py) logs under --out/CHAIN/seedS/ and, once it succeeds,
writes its record (STAGE.step.json): a rerun never runs a recorded step again unless asked (--redo), and a failing
chain fails alone.  The report (--report_dir/NAME.md, .json) gives each number with its commit, date and device.
"""
import argparse
import shlex
import sys
from pathlib import Path

import plan as planning
import report
import rows
from runfiles import Interrupted, RunLock, UserError, atomic_write_json, check_output_path, read_json, run_cli

REPO = Path(__file__).resolve().parent
DEFAULT_OUT = {"full": Path("runs/reproduction"), "tiny": Path("runs/reproduction-tiny")}
DEFAULT_REPORT = {"full": Path("results/reproduction"), "tiny": Path("runs/reproduction-tiny/report")}
README_BEGIN = "<!-- rows: written by python reproduce.py --readme from rows.py -->"
README_END = "<!-- end of rows -->"
TABLES = f"tables ({', '.join(rows.TABLES)}, all)"


def update_readme(path=REPO / "README.md"):
    head, begin, rest = path.read_text(encoding="utf-8").partition(README_BEGIN)
    if not begin or README_END not in rest:
        raise UserError(f"{path} has no rows markers ({README_BEGIN} ... {README_END}): add them where the table goes")
    path.write_text(f"{head}{README_BEGIN}\n{rows.readme_table()}{README_END}{rest.split(README_END, 1)[1]}", "utf-8")
    print(f"Wrote the table of rows in {path}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="*", metavar="TABLE", help=f"{TABLES} or row ids: {' '.join(rows.ROW)}")
    p.add_argument("--seeds", nargs="+", type=int, help="run each chain once per seed (default: each preset's seed)")
    p.add_argument("--jobs", type=int, help="chains at once (default: 1 on CPU; one per visible GPU)")
    p.add_argument("--device", default="auto", help="auto (every visible GPU, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--scale", choices=list(planning.SCALES), default="full", help="full: the published recipes; tiny: "
                   "16 units, 2 epochs, 200 / 30 / 30 lines of each split, on a CPU (40 s on one EPYC core)")
    p.add_argument("--data_root", default="data", help="folder holding penn/ and wikitext-2/ (default data)")
    p.add_argument("--out", help="runs, logs and step records (default runs/reproduction, or runs/reproduction-tiny)")
    p.add_argument("--report_dir", help="NAME.md, NAME.json, plots (default results/reproduction; tiny: "
                   "runs/reproduction-tiny/report)")
    p.add_argument("--redo", nargs="+", default=[], metavar="STEP", help="compute these finished steps anew, and the "
                   "steps computed from them: CHAIN:STAGE (merity-ptb:finetune) or CHAIN; --dry shows what it discards")
    p.add_argument("--dry", action="store_true", help="print the plan (chains, commands, states) and exit")
    p.add_argument("--readme", action="store_true", help="rewrite README's table of rows from rows.py and exit")
    return p


def corpora(plan, data_root, out, scale):
    """Each corpus's folder as the steps read it, and its digest (with the cut at a small scale)."""
    from data import SPLITS, content_sha256
    folders, digests, cut = {}, {}, planning.SCALES[scale]["cut"]
    for corpus in {run.chain.corpus for run in plan}:
        source = Path(data_root) / corpus
        if missing := [s for s in SPLITS if not (source / f"{s}.txt").is_file()]:
            raise UserError(f"no corpus at {source} ({', '.join(missing)}.txt missing): run ./getdata.sh or pass "
                            f"--data_root DIR (a folder holding penn/ and wikitext-2/)")
        folders[corpus] = (Path(out).resolve() / "corpus" / corpus) if cut else source.resolve()
        digests[corpus] = content_sha256([source / f"{s}.txt" for s in SPLITS]) + (f"-cut{cut}" if cut else "")
    return folders, digests


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.readme:
        return update_readme()
    if not args.tables:
        raise UserError(f"name {TABLES} or row ids, e.g. python reproduce.py ptb --dry")
    selected, unknown = rows.select(args.tables)
    if unknown:
        raise UserError(f"{unknown!r} is neither a table ({', '.join(rows.TABLES)}, all) nor a row id: see --help")
    from config import check_flags, train_config
    check_flags(vars(args), {"jobs": "positive_int"})
    scale, cut = args.scale, planning.SCALES[args.scale]["cut"]
    out, report_dir = Path(args.out or DEFAULT_OUT[scale]), Path(args.report_dir or DEFAULT_REPORT[scale])
    name = "+".join(args.tables) + (f"-seeds{'-'.join(map(str, args.seeds))}" if args.seeds else "")
    for path, flag in ((out / "reproduce.json", "--out"), (report_dir / f"{name}.json", "--report_dir")):
        held = read_json(path)  # a tiny run never mixes with (or writes over) a full one
        if isinstance(held, dict) and held.get("scale") != scale:
            raise UserError(f"{path.parent} holds results at scale {held.get('scale')}; this run is at scale {scale}: "
                            f"choose another {flag}")
        if not args.dry:  # an unwritable folder is refused before any step
            check_output_path(path, flag)
    plan = planning.plan_chains(selected, args.seeds, scale, lambda chain: train_config(
        list(planning.SCALES[scale].get("train", ())) + list(chain.train))["seed"])
    from runner import Runner, make_slots
    runner = Runner(out, *corpora(plan, args.data_root, out, scale), planning.redo_set(plan, args.redo))
    runner.check_keys(plan)
    if args.dry:
        return print_plan(plan, runner, scale)
    slots = make_slots(args.jobs, args.device)
    import torch
    from data import SPLITS, write_corpus_cut
    meta = {"command": "python reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "scale": scale, "commit": runner.commit, "torch": torch.__version__,
            "devices": sorted({s["name"] for s in slots}), "name": name}
    written = lambda plots=False: report.write(plan, selected, runner.out, runner.finished, meta, report_dir, plots)
    with RunLock(out / "reproduce.lock", "--out"):
        atomic_write_json({"scale": scale}, runner.out / "reproduce.json")
        for corpus, folder in runner.data.items() if cut else ():
            write_corpus_cut(Path(args.data_root) / corpus, folder, dict(zip(SPLITS, cut)))
        print(f"{len(plan)} chains on {len(slots)} slot(s) ({', '.join(meta['devices'])}); "
              f"logs in {runner.out}/CHAIN/seedS/")
        try:
            runner.execute(plan, slots, written)
        except KeyboardInterrupt:
            written()
            raise Interrupted(f"rerun the same command to continue (partial report: {report_dir / name}.md)") from None
        written(plots=True)
    print(f"Report: {report_dir / name}.md and .json")
    failed = [run.summary() for run in plan if run.failure]
    if failed:
        print(*failed, sep="\n", file=sys.stderr)
        sys.exit(1)
    return read_json(report_dir / f"{name}.json")


def print_plan(plan, runner, scale):
    print(f"{len(plan)} chains, scale {scale}, runs in {runner.out}:")
    for run in plan:
        print(f"\n{run.label} -> rows {', '.join(r.id for r in run.rows)}")
        for step in run.steps:
            step.state, detail = runner.state(step)
            text = {"done": "done, skipped", "resume": "continues from its resume point", "run": "to run",
                    "redo": f"redo, discards {', '.join(detail or []) or 'nothing'}", "refused": f"refused: {detail}"}
            print(f"  [{text[step.state]}] python {shlex.join(runner.argv(step))}")
    hours, missing = report.expected_hours(plan, REPO / "results" / "reproduction")
    print(f"\nExpected GPU hours: {hours:.1f} (steps measured on a GPU in results/reproduction)" if hours is not None
          else f"\nExpected GPU hours: unmeasured (no GPU measurement in results/reproduction of "
               f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''})")


if __name__ == "__main__":
    run_cli(main)
