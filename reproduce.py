"""Reproduce the paper's tables in one command: each row's chain of runs, several at once, resumable,
compared with the published numbers.

    python reproduce.py ptb --dry                  # the plan: chains, commands, what is done already
    python reproduce.py ptb                        # every 3-layer PTB row (tables: single, ptb, wt2, all)
    python reproduce.py merity-ptb-cache awd-ptb-FD-ft --jobs 2    # rows by id (rows.py, README)
    python reproduce.py single --seeds 1 2 3       # each row per seed: mean and sample std
    python reproduce.py ptb --scale tiny           # the same chains, tiny model and corpus cut: a minute on CPU

Every step is a subprocess of an entry point (main.py, finetune.py, pointer.py, dynamiceval.py), its
output in its own log under --out/CHAIN/seedS/.  Rerunning the same command continues: a step whose
output files are complete is skipped, an interrupted training or fine-tuning continues from its resume
point (the tools' own --resume), and a step whose inputs changed (command, resolved configuration,
corpus, input checkpoint) is refused in one line.  A failing chain is reported with its log and exit
code while the others go on.  The report, written after each chain and at the end, is
``--report_dir/NAME.md`` and ``.json``: published against measured, per row.
"""
import argparse
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import rows
from checkpoint import load_checkpoint, schedule_finished
from runfiles import RunLock, UserError, atomic_write_json, code_commit, cpu_model, run_cli, run_paths
from config import outcome, train_config
from data import SPLITS, content_sha256, write_corpus_cut
from utils import check_device_name

REPO = Path(__file__).resolve().parent
TOOLS = {"train": "main.py", "finetune": "finetune.py", "pointer": "pointer.py", "dyneval": "dynamiceval.py"}
# Per scale: flags added before each row's own, and the corpus cut (lines of train / valid / test).
SCALES = {
    "full": dict(train=(), finetune=(), cut=None),
    "tiny": dict(train=("--emsize", "16", "--nhid", "16", "--epochs", "2", "--batch_size", "4", "--bptt", "10"),
                 finetune=("--epochs", "1", "--batch_size", "4"), pointer=("--bptt", "1000"), cut=(200, 30, 30)),
}
DEFAULT_OUT = {"full": Path("runs/reproduction"), "tiny": Path("runs/reproduction-tiny")}
DEFAULT_REPORT = {"full": Path("results/reproduction"), "tiny": Path("results/reproduction/tiny")}
README_BEGIN = "<!-- rows: written by python reproduce.py --readme from rows.py -->"
README_END = "<!-- end of rows -->"


# ---------------------------------------------------------------- the plan

@dataclass
class Step:
    name: str  # train, finetune, pointer, dyneval
    dir: Path
    command: list  # tool and flags, paths absolute, no --device
    config: dict = None  # main.py's resolved configuration (train)
    upstream: "Step" = None
    state: str = "run"  # done, resume or run

    @property
    def record(self):
        return self.dir / f"{self.name}.step.json"

    @property
    def log(self):
        return self.dir / f"{self.name}.log"

    @property
    def output(self):
        """The file the next step reads (a best checkpoint) or the result (a JSON object)."""
        return self.dir / (f"{self.name}.pt" if self.name in ("train", "finetune") else f"{self.name}.json")

    @property
    def result(self):
        return Path(run_paths(self.output)["final"]) if self.name in ("train", "finetune") else self.output


@dataclass
class ChainRun:
    chain: rows.Chain
    seed: int
    dir: Path
    steps: list
    rows: list
    status: str = "pending"  # pending, running, done, failed
    current: int = 0
    failure: dict = None
    proc: subprocess.Popen = None
    slot: dict = None
    started: float = 0.0
    offset: int = 0
    digest: str = ""  # the corpus's, as the steps read it

    @property
    def label(self):
        return f"{self.chain.id} seed {self.seed}"


def corpus_source(data_root, corpus):
    folder = Path(data_root) / corpus
    missing = [s for s in SPLITS if not (folder / f"{s}.txt").is_file()]
    if missing:
        raise UserError(f"no corpus at {folder} ({', '.join(missing)}.txt missing): run ./getdata.sh or pass "
                        f"--data_root DIR (a folder holding penn/ and wikitext-2/)")
    return folder


def scale_args(scale, stage, corpus):
    """The scale's flags for a step.  A corpus cut has its own vocabulary, by which dynamiceval.py cannot
    recognize the corpus, so at the tiny scale its published settings for that corpus are passed."""
    if stage == "dyneval" and SCALES[scale]["cut"]:
        import dynamiceval
        d = dynamiceval.DEFAULTS[{"penn": "ptb", "wikitext-2": "wt2"}[corpus]]
        return ("--lr", repr(d["lr"]), "--lamb", repr(d["lamb"]), "--epsilon", repr(d["epsilon"]))
    return SCALES[scale].get(stage, ())


def plan_chains(selected, seeds, scale, out, data_root):
    """One ChainRun per chain and seed, with the steps its selected rows need, states not yet read."""
    spec, out = SCALES[scale], Path(out).resolve()
    needed = {}
    for row in selected:
        needed.setdefault(row.chain, []).append(row)
    plan = []
    for chain_id, chain_rows in needed.items():
        chain = rows.CHAIN[chain_id]
        data = out / "corpus" / chain.corpus if spec["cut"] else Path(data_root).resolve() / chain.corpus
        last = max(rows.STAGES.index(r.stage) for r in chain_rows)
        default_seed = train_config(list(spec["train"]) + list(chain.train))["seed"]
        for seed in dict.fromkeys(seeds or [default_seed]):  # a seed named twice runs once
            where = out / chain.id / f"seed{seed}"
            train = Step("train", where, [TOOLS["train"], *spec["train"], *chain.train, "--seed", str(seed),
                                          "--data", str(data), "--save", str(where / "train.pt")])
            train.config = train_config(train.command[1:])
            steps = [train]
            if last >= 1:
                steps.append(Step("finetune", where, [TOOLS["finetune"], "--save", str(train.output), "--out",
                                                      str(where / "finetune.pt"), "--data", str(data),
                                                      *spec["finetune"]], upstream=train))
            for row in chain_rows:
                if row.stage in ("pointer", "dyneval"):
                    steps.append(Step(row.stage, where, [TOOLS[row.stage], "--save", str(steps[1].output), "--data",
                                                         str(data), *scale_args(scale, row.stage, chain.corpus),
                                                         *row.args, "--json"], upstream=steps[1]))
            plan.append(ChainRun(chain, seed, where, steps, chain_rows))
    return plan


def step_key(step, data_digest):
    key = {"command": step.command, "data": data_digest}
    if step.config is not None:
        key["config"] = outcome(step.config)
    return json.loads(json.dumps(key))


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def step_done(step):
    """Validated, not just present: a finite result, and for training the whole schedule run."""
    result = read_json(step.result)
    if not isinstance(result, dict) or not all(isinstance(result.get(k), (int, float)) and not math.isnan(result[k])
                                               for k in ("valid_ppl", "test_ppl")):
        return False
    if step.name in ("train", "finetune"):
        paths = run_paths(step.output)
        record = read_json(step.record) or {}
        epochs = record.get("epochs")
        return os.path.exists(paths["best"]) and epochs is not None and schedule_finished(paths["resume"], epochs)
    return True


def resumable(step):
    resume = run_paths(step.output)["resume"] if step.name in ("train", "finetune") else None
    if resume is None or not os.path.exists(resume):
        return False
    try:
        load_checkpoint(resume, "resume")
    except UserError:
        return False
    return True


def read_states(plan):
    """Each step's state.  A step with something to keep (a result, a resume point) whose recorded
    inputs differ from the plan's is refused in one line; one with nothing to keep just runs anew."""
    for run in plan:
        for step in run.steps:
            step.state = "done" if step_done(step) else "resume" if resumable(step) else "run"
            record = read_json(step.record)
            if record is None or step.state == "run":
                continue
            old, new = dict(record.get("key", {})), step_key(step, run.digest)
            if isinstance(old.get("config"), dict):  # recorded by an older checkout: compare what it computed
                old["config"] = outcome(old["config"])
            if old != new:
                what = next((k for k in ("command", "config", "data") if old.get(k) != new.get(k)), "command")
                which = {"command": "command", "config": "resolved configuration (a preset changed?)",
                         "data": "corpus"}[what]
                raise UserError(f"{run.label}: the {step.name} step in {step.dir} ran with another {which}; "
                                f"delete {step.dir} to run it anew, or choose another --out")
            if step.upstream is not None and (step.upstream.state != "done" or record.get("input") != content_sha256(
                    [step.upstream.output])):
                raise UserError(f"{run.label}: the {step.name} step in {step.dir} was computed from another "
                                f"{step.upstream.name} result than the one there now; delete {step.dir} to run "
                                f"the chain anew, or choose another --out")
        if all(s.state == "done" for s in run.steps):
            run.status = "done"


# ---------------------------------------------------------------- running

def make_slots(jobs, device):
    """Where chains run: CPU slots share the cores; GPU slots spread over the visible devices (one per
    device by default: no peak memory of concurrent chains has been measured)."""
    check_device_name(device)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        n = jobs or 1
        env = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
        return [{"device": "cpu", "env": env, "name": f"cpu ({cpu_model()})"} for _ in range(n)]
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but this PyTorch sees no CUDA device: use --device cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    index = list(range(len(ids)))
    if ":" in device:
        k = int(device.split(":")[1])
        if k >= len(ids):
            raise UserError(f"--device {device}: {len(ids)} CUDA device(s) visible, use cuda:0 .. cuda:{len(ids) - 1}")
        index = [k]
    n = jobs or len(index)
    return [{"device": "cuda", "env": {"CUDA_VISIBLE_DEVICES": ids[index[k % len(index)]]},
             "name": f"cuda:{index[k % len(index)]} ({torch.cuda.get_device_name(index[k % len(index)])})"}
            for k in range(n)]


def launch(run, slot):
    """Start the chain's next step that is not done; False when none is left."""
    while run.current < len(run.steps) and run.steps[run.current].state == "done":
        run.current += 1
    if run.current == len(run.steps):
        return False
    step = run.steps[run.current]
    argv = list(step.command)
    if step.state == "resume":
        argv = [step.command[0], "--resume", run_paths(step.output)["resume"]]
    elif step.name in ("train", "finetune") and any(
            os.path.exists(p) for k, p in run_paths(step.output).items() if k != "lock"):
        argv.append("--overwrite")  # this step's own files, left by a run killed before its first resume point
    argv += ["--device", slot["device"]]
    step.dir.mkdir(parents=True, exist_ok=True)
    key, record = step_key(step, run.digest), read_json(step.record)
    if record is None or record.get("key") != key:  # a step with nothing to keep starts a new record
        record = {"key": key, "attempts": []}
    if step.upstream is not None:
        record["input"] = content_sha256([step.upstream.output])
    if step.name == "finetune":  # its epoch limit, for validating it later
        record["epochs"] = finetune_epochs(step)
    elif step.name == "train":
        record["epochs"] = step.config["epochs"]
    record["attempts"].append({"command": argv, "device": slot["name"], "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "t0": time.time()})
    atomic_write_json(record, step.record)
    with open(step.log, "a", encoding="utf-8") as log:
        log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} python {shlex.join(argv)}\n")
        run.offset = log.tell()
        run.proc = subprocess.Popen([sys.executable, "-u", *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1", **slot["env"]})
    run.started, run.status, run.slot = time.time(), "running", slot
    return True


def finetune_epochs(step):
    """The fine-tuning's epoch limit, as finetune.py resolves it from the trained checkpoint and its flags."""
    import finetune
    from config import build_config
    args = finetune.build_parser().parse_args(step.command[1:])
    return build_config(vars(args), "finetune", load_checkpoint(step.upstream.output, "best")["config"])["epochs"]


def finish(run):
    """The running step ended: record it, validate its output, and mark the chain failed if it failed."""
    step, rc = run.steps[run.current], run.proc.returncode
    record = read_json(step.record)
    record["attempts"][-1].update(rc=rc, wall_s=round(time.time() - run.started, 3))
    reason = None
    if rc != 0:
        reason = f"exit code {rc}"
    elif step.name in ("pointer", "dyneval"):
        with open(step.log, encoding="utf-8", errors="replace") as f:
            f.seek(run.offset)
            lines = [line for line in f.read().splitlines() if line.strip()]
        try:
            result = json.loads(lines[-1])
            atomic_write_json(result, step.output)
        except (IndexError, ValueError):
            reason = "exit code 0 but no JSON result on its last line"
    atomic_write_json(record, step.record)
    if reason is None and not step_done(step):
        reason = "exit code 0 but its schedule did not run to its end (interrupted?)" if step.name in (
            "train", "finetune") else "exit code 0 but an incomplete result"
    run.proc = None
    if reason:
        run.status = "failed"
        run.failure = {"step": step.name, "reason": reason, "rc": rc, "log": shown(step.log),
                       "last_line": last_line(step.log)}
        return
    step.state = "done"
    run.current += 1
    run.status = "pending" if run.current < len(run.steps) else "done"


def shown(path):
    """A path as the report shows it: relative to the working folder when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def last_line(path):
    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def chain_progress(run, clock=True):
    """row, seed, stage, epoch, last validation perplexity and an ETA at the epoch limit; ``clock``
    adds the step's running time (a terminal's line, not a log's)."""
    step = run.steps[run.current]
    text = f"{run.label} | {step.name}"
    metrics = run_paths(step.output)["metrics"] if step.name in ("train", "finetune") else None
    epochs = (read_json(step.record) or {}).get("epochs")
    if metrics and os.path.exists(metrics):
        with open(metrics, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        if lines:
            last = lines[-1]
            text += f" | epoch {last['epoch']}/{epochs} | valid ppl {last['valid_ppl']:.2f}"
            if epochs and last["elapsed"] > 0:
                left = (epochs - last["epoch"]) * last["elapsed"] / last["epoch"]
                text += f" | ETA at most {format_seconds(left)} (epoch limit)"
            return text
    return text + (f" | running {format_seconds(time.time() - run.started)}" if clock else "")


def format_seconds(s):
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


class Progress:
    """One line per running chain: updated in place in a terminal, plain lines (on change) otherwise."""

    def __init__(self, slots):
        self.tty = sys.stdout.isatty()
        self.bars = [tqdm(total=0, position=k, bar_format="{desc}", leave=False) if self.tty else None
                     for k in range(len(slots))]
        self.last = {}

    def show(self, k, text):
        if self.tty:
            self.bars[k].set_description_str(text)
        elif self.last.get(k) != text:
            print(text, flush=True)
        self.last[k] = text

    def note(self, text):
        (tqdm.write if self.tty else print)(text)

    def close(self):
        for bar in self.bars:
            if bar is not None:
                bar.close()


TERMINATED = threading.Event()
STOP_GRACE = 120  # seconds a stopped step gets to finish its batch and write its resume point


def interrupt(signum, frame):
    """SIGTERM ends reproduce as Ctrl-C does: running steps stopped, their resume points kept."""
    TERMINATED.set()
    raise KeyboardInterrupt


def execute(plan, slots, on_chain_end, poll=0.2):
    """Run the chains, at most one per slot, until every one is done or failed."""
    queue = [r for r in plan if r.status == "pending"]
    free = list(range(len(slots)))
    running = {}
    progress = Progress(slots)
    try:
        while queue or running:
            while queue and free:
                run = queue.pop(0)
                k = free.pop(0)
                if launch(run, slots[k]):
                    running[k] = run
                    progress.note(f"started {run.label}: {run.steps[run.current].name} on {slots[k]['name']}")
                else:
                    free.insert(0, k)
            for k, run in list(running.items()):
                if run.proc.poll() is None:
                    progress.show(k, chain_progress(run, clock=progress.tty))
                    continue
                step = run.steps[run.current].name
                finish(run)
                if run.status == "pending" and launch(run, slots[k]):
                    progress.note(f"{run.label}: {step} done, {run.steps[run.current].name} started")
                    continue
                if run.status == "pending":
                    run.status = "done"
                del running[k]
                free.append(k)
                if run.status == "failed":
                    f = run.failure
                    progress.note(f"FAILED {run.label}, step {f['step']}: {f['reason']}; log {f['log']}")
                else:
                    progress.note(f"finished {run.label}")
                on_chain_end()
            if running:
                time.sleep(poll)
    except BaseException:
        # A step stops as on Ctrl-C: at the end of its batch, writing a resume point that a rerun continues.
        # A terminal's Ctrl-C reached the steps already (one process group; a second one would stop them
        # at once, before that write); a SIGTERM to reproduce.py is passed on to them as SIGINT.
        for run in running.values():
            if TERMINATED.is_set() and run.proc.poll() is None:
                run.proc.send_signal(signal.SIGINT)
        for run in running.values():
            try:
                run.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:  # its resume point is written by now; what follows is not needed
                run.proc.kill()
        raise
    finally:
        progress.close()


# ---------------------------------------------------------------- the report

def mean_sd(values):
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def epochs_run(step):
    metrics = run_paths(step.output)["metrics"]
    if not os.path.exists(metrics):
        return None, None
    with open(metrics, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return len(lines), (lines[-1]["elapsed"] if lines else 0.0)


def step_wall(step):
    """Training and fine-tuning: the run's own clock (training and validation, across resumes);
    evaluations: the attempt that produced the result."""
    if step.name in ("train", "finetune"):
        return epochs_run(step)[1] or 0.0
    attempts = (read_json(step.record) or {}).get("attempts", [])
    return attempts[-1].get("wall_s", 0.0) if attempts else 0.0


def row_report(row, runs):
    entries, failures, running = [], [], 0
    for run in runs:
        steps = {s.name: s for s in run.steps}
        step = steps[row.stage]
        upto = run.steps[:run.steps.index(step) + 1]
        if step.state == "done":
            result = read_json(step.result)
            attempts = (read_json(step.record) or {}).get("attempts", [])
            entries.append({"seed": run.seed, "valid_ppl": result["valid_ppl"], "test_ppl": result["test_ppl"],
                            "result_file": shown(step.result),
                            "epochs": {s.name: epochs_run(s)[0] for s in upto if s.name in ("train", "finetune")},
                            "wall_s": round(sum(step_wall(s) for s in upto), 1),
                            "device": attempts[-1]["device"] if attempts else None})
        elif run.status == "failed":
            failure = dict(run.failure, seed=run.seed)
            if failure["step"] != row.stage:
                failure["reason"] = f"not run: its chain's {failure['step']} step failed ({failure['reason']})"
            failures.append(failure)
        else:
            running += 1
    valid, valid_sd = mean_sd([e["valid_ppl"] for e in entries])
    test, test_sd = mean_sd([e["test_ppl"] for e in entries])
    published = {"valid": row.published[0], "test": row.published[1]} if row.published else None
    status = ("done" if not running and not failures else "failed" if failures and not running
              else "partial" if entries else "pending")
    return {"id": row.id, "what": row.what, "source": row.source, "stage": row.stage, "published": published,
            "status": status, "seeds": [e["seed"] for e in entries], "runs": entries, "failures": failures,
            "measured": {"valid": valid, "valid_sd": valid_sd, "test": test, "test_sd": test_sd} if entries else None,
            "difference": {"valid": valid - published["valid"], "test": test - published["test"]}
            if entries and published else None}


def cell(mean, sd):
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def write_report(plan, selected, meta, report_dir, name, plots=False):
    by_chain = {}
    for run in plan:
        by_chain.setdefault(run.chain.id, []).append(run)
    table = [row_report(row, by_chain[row.chain]) for row in selected]
    partial = any(r["status"] in ("partial", "pending") for r in table)
    report = {**meta, "name": name, "partial": partial, "written": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": table}
    report_dir.mkdir(parents=True, exist_ok=True)
    images = draw_plots(plan, selected, report_dir / name) if plots else {}
    lines = [f"# Reproduction: {name}{' (partial: chains still to run)' if partial else ''}", "",
             f"Command: `{meta['command']}`  ",
             f"Written {report['written']}; scale {meta['scale']}; commit {meta['commit']}; torch {meta['torch']}; "
             f"devices: {', '.join(meta['devices'])}.", "",
             "Measured: each row's step result file (final.json of main.py / finetune.py, the JSON line of "
             "pointer.py / dynamiceval.py), mean ± sample std over seeds. Difference: measured minus published "
             "(negative is better than published). Wall time: per seed, the chain's steps up to the row's "
             "(training and validation by the run's own clock, plus evaluations).", "",
             "| row | published valid / test | measured valid | measured test | difference valid / test | seeds "
             "| epochs (train + fine-tune) | wall time | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        pub = f"{r['published']['valid']} / {r['published']['test']}" if r["published"] else "none published"
        m = r["measured"] or {}
        diff = f"{r['difference']['valid']:+.2f} / {r['difference']['test']:+.2f}" if r["difference"] else "-"
        epochs = "; ".join(" + ".join(str(v) for v in e["epochs"].values()) for e in r["runs"]) or "-"
        wall = "; ".join(format_seconds(e["wall_s"]) for e in r["runs"]) or "-"
        seeds = " ".join(str(s) for s in r["seeds"]) or "-"
        lines.append(f"| `{r['id']}` {r['what']} | {pub} | {cell(m.get('valid'), m.get('valid_sd'))} | "
                     f"{cell(m.get('test'), m.get('test_sd'))} | {diff} | {seeds} | {epochs} | {wall} | {r['status']} |")
    failures = [(r["id"], f) for r in table for f in r["failures"]]
    if failures:
        lines += ["", "Failed:", ""]
        lines += [f"- `{rid}` seed {f['seed']}, step {f['step']}: {f['reason']}; log `{f['log']}`"
                  + (f" (last line: `{f['last_line']}`)" if f["last_line"] else "") for rid, f in failures]
    if images:
        lines += ["", "Validation perplexity per epoch, published validation perplexity as a dashed line:", ""]
        lines += [f"![{rid}]({path})" for rid, path in images.items()]
    elif plots:
        lines += ["", meta.get("plots", "")]
    atomic_write_json(report, report_dir / f"{name}.json")
    (report_dir / f"{name}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def draw_plots(plan, selected, folder):
    """A validation curve per row with a training stage (matplotlib optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    images = {}
    for row in selected:
        if row.stage not in ("train", "finetune"):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        drawn = False
        for run in (r for r in plan if r.chain.id == row.chain):
            step = next(s for s in run.steps if s.name == row.stage)
            metrics = run_paths(step.output)["metrics"]
            if os.path.exists(metrics):
                with open(metrics, encoding="utf-8") as f:
                    lines = [json.loads(line) for line in f if line.strip()]
                ax.plot([m["epoch"] for m in lines], [m["valid_ppl"] for m in lines], label=f"seed {run.seed}")
                drawn = drawn or bool(lines)
        if row.published:
            ax.axhline(row.published[0], linestyle="--", color="k", label=f"published {row.published[0]}")
        ax.set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title=row.id)
        ax.legend()
        if drawn:
            folder.mkdir(parents=True, exist_ok=True)
            fig.savefig(folder / f"{row.id}.png", dpi=100, bbox_inches="tight")
            images[row.id] = f"{folder.name}/{row.id}.png"
        plt.close(fig)
    return images


# ---------------------------------------------------------------- command line

def update_readme(path=REPO / "README.md"):
    """Rewrite README's table of rows (between its markers) from rows.py."""
    text = path.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise UserError(f"{path} has no rows markers ({README_BEGIN} ... {README_END}): add them where the table goes")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(f"{head}{README_BEGIN}\n{rows.readme_table()}{README_END}{tail}", encoding="utf-8")
    print(f"Wrote the table of rows in {path}")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("tables", nargs="*", metavar="TABLE",
                   help=f"tables ({', '.join(rows.TABLES)}, all) or row ids: {' '.join(rows.ROW)}")
    p.add_argument("--seeds", nargs="+", type=int, help="run each chain once per seed (default: each preset's seed)")
    p.add_argument("--jobs", type=int, help="chains at once (default: 1 on CPU; one per visible GPU)")
    p.add_argument("--device", default="auto", help="auto (every visible GPU, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--scale", choices=list(SCALES), default="full",
                   help="full: the published recipes; tiny: 16 units, 2 epochs (fine-tuning 1), the first "
                        "200 / 30 / 30 lines of each split, end to end on a CPU in minutes")
    p.add_argument("--data_root", default="data", help="folder holding penn/ and wikitext-2/ (default data)")
    p.add_argument("--out", help="runs, logs and step records (default runs/reproduction, with --scale tiny "
                                 "runs/reproduction-tiny)")
    p.add_argument("--report_dir", help="where NAME.md / NAME.json and the plots go (default results/reproduction, "
                                        "with --scale tiny results/reproduction/tiny)")
    p.add_argument("--dry", action="store_true", help="print the plan (chains, commands, states) and exit")
    p.add_argument("--readme", action="store_true", help="rewrite README's table of rows from rows.py and exit")
    return p


def check_folder_scale(folder, scale, marker):
    """One scale per folder: a tiny run never mixes with (or writes over) a full one."""
    held = read_json(folder / marker) if marker.endswith(".json") else None
    if held is not None and held.get("scale") != scale:
        raise UserError(f"{folder} holds results at scale {held.get('scale')}; this run is at scale {scale}: "
                        f"choose another {'--out' if marker == 'reproduce.json' else '--report_dir'}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.readme:
        return update_readme()
    if not args.tables:
        raise UserError(f"name a table ({', '.join(rows.TABLES)}, all) or row ids, e.g. python reproduce.py ptb --dry")
    selected, unknown = rows.select(args.tables)
    if unknown:
        raise UserError(f"{unknown!r} is neither a table ({', '.join(rows.TABLES)}, all) nor a row id: "
                        f"see python reproduce.py --help")
    if args.jobs is not None and args.jobs <= 0:
        raise UserError(f"--jobs must be a positive integer, got {args.jobs}")
    if "dyneval" in {r.stage for r in selected} and not (REPO / TOOLS["dyneval"]).is_file():
        raise UserError(f"{TOOLS['dyneval']} is not in this checkout, so the dynamic-evaluation rows cannot run: "
                        f"update the checkout or leave those rows out")
    scale = args.scale
    out = Path(args.out or DEFAULT_OUT[scale])
    report_dir = Path(args.report_dir or DEFAULT_REPORT[scale])
    name = "+".join(args.tables) + (f"-seeds{'-'.join(map(str, args.seeds))}" if args.seeds else "")
    check_folder_scale(out, scale, "reproduce.json")
    check_folder_scale(report_dir, scale, f"{name}.json")
    plan = plan_chains(selected, args.seeds, scale, out, args.data_root)
    digests = {}
    for corpus in {run.chain.corpus for run in plan}:
        source = corpus_source(args.data_root, corpus)
        digests[corpus] = content_sha256([source / f"{s}.txt" for s in SPLITS]) + (
            f"-cut{SCALES[scale]['cut']}" if SCALES[scale]["cut"] else "")
    for run in plan:
        run.digest = digests[run.chain.corpus]
    read_states(plan)
    if args.dry:
        return print_plan(plan, scale, out)
    slots = make_slots(args.jobs, args.device)
    command = "python reproduce.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command, "scale": scale, "commit": code_commit(), "torch": torch.__version__,
            "devices": sorted({s["name"] for s in slots}), "plots": ""}
    with lock(out):
        atomic_write_json({"scale": scale}, out / "reproduce.json")
        if SCALES[scale]["cut"]:
            for corpus in {run.chain.corpus for run in plan}:
                write_corpus_cut(corpus_source(args.data_root, corpus), out.resolve() / "corpus" / corpus,
                                     dict(zip(SPLITS, SCALES[scale]["cut"])))
        print(f"{len(plan)} chains on {len(slots)} slot(s) ({', '.join(meta['devices'])}); logs in {out}/CHAIN/seedS/")
        previous = signal.signal(signal.SIGTERM, interrupt)
        try:
            execute(plan, slots, lambda: write_report(plan, selected, meta, report_dir, name))
        except KeyboardInterrupt:
            write_report(plan, selected, meta, report_dir, name)
            raise UserError(f"interrupted: rerun the same command to continue (partial report in {report_dir / name}.md)") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            meta["plots"] = "matplotlib is not installed, so no plots were drawn: pip install matplotlib"
        report = write_report(plan, selected, meta, report_dir, name, plots=True)
    print(f"Report: {report_dir / name}.md and .json")
    failed = [run for run in plan if run.status == "failed"]
    for run in failed:
        f = run.failure
        print(f"FAILED {run.label}, step {f['step']}: {f['reason']}; log {f['log']}", file=sys.stderr)
    if failed:
        sys.exit(1)
    return report


@contextmanager
def lock(out):
    """One reproduce.py per --out (each step's own run lock guards its files too)."""
    try:
        held = RunLock(out / "reproduce.lock").__enter__()
    except UserError:
        raise UserError(f"another reproduce.py is running with --out {out}: wait for it to end, or choose "
                        f"another --out") from None
    try:
        yield
    finally:
        held.__exit__(None, None, None)


def print_plan(plan, scale, out):
    print(f"{len(plan)} chains, scale {scale}, runs in {out}:")
    for run in plan:
        print(f"\n{run.label} -> rows {', '.join(r.id for r in run.rows)}")
        for step in run.steps:
            state = {"done": "done, skipped", "resume": "continues from its resume point", "run": "to run"}[step.state]
            print(f"  [{state}] python {shlex.join(step.command)}")
    print("\nExpected GPU hours: unmeasured (no committed measurement of whole chains; README, On a GPU, has "
          "the first epochs measured on one H100).")
    return plan


if __name__ == "__main__":
    run_cli(main)
