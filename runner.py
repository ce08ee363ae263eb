"""Running the plan: a process per step, chains on slots, signals passed on, and each step's record.

A step's record (--out/CHAIN/seedS/STAGE.step.json), written at launch with its key (command, resolved
configuration, corpus) and inputs (upstream outputs' digests), is completed atomically once the step gave a
finite result: its primary output's digest, the result, commit, date, machine, device.  Done = completed
record, output matching it, inputs its upstream's outputs; resume points, metrics and final.json are side
files.  A finished output is replaced only on request (--redo); files of a step without a completed record
are continued from their resume point, or refused in one line, never deleted.
"""
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from report import seconds
from runfiles import UserError, atomic_write_json, code_commit, file_sha256, read_json

REPO = Path(__file__).resolve().parent
STOP_GRACE = 120  # seconds a stopped step gets to finish its batch and write its resume point
TERMINATED = []


def finite_result(result):
    ok = isinstance(result, dict) and all(isinstance(result.get(k), (int, float)) and math.isfinite(result[k])
                                          for k in ("valid_ppl", "test_ppl"))
    return {k: result[k] for k in ("valid_ppl", "test_ppl")} if ok else None


def last_line(path, offset=0):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            lines = [line for line in f.read().splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def metrics(path, keys=("epoch", "valid_ppl", "elapsed")):
    """A run's epoch rows; none when damaged (the report names it)."""
    from results import read_metrics
    try:
        return read_metrics(path, keys)
    except UserError:
        return []


def now():
    return time.strftime("%Y-%m-%d %H:%M:%S")


class Runner:
    def __init__(self, out, data, digests, redo=()):
        self.out, self.data, self.digests, self.redo = Path(out).resolve(), data, digests, set(redo)
        self.commit, self.keys = code_commit(), {}

    def file(self, step, what):
        return self.out / step.path(what)

    def key(self, step, corpus):
        if step not in self.keys:
            key = {"command": step.template, "data": self.digests[corpus]}
            if step.stage == "train":
                from config import outcome, train_config
                key["config"] = outcome(train_config(step.argv(self.out, self.data[corpus])[1:]))
            self.keys[step] = json.loads(json.dumps(key))
        return self.keys[step]

    def check_keys(self, plan):
        """A recorded step whose key differs from the plan's is refused before anything runs."""
        from config import outcome
        for run in plan:
            for step in run.steps:
                old = read_json(self.file(step, "record"))
                if not isinstance(old, dict) or step in self.redo:
                    continue
                old, new = dict(old.get("key", {})), self.key(step, run.chain.corpus)
                if isinstance(old.get("config"), dict):  # recorded by an older checkout: compare what it computes
                    old["config"] = outcome(old["config"])
                what = next((k for k in ("command", "config", "data") if old.get(k) != new.get(k)), None)
                if what:
                    which = {"command": "command", "config": "resolved configuration (a preset changed?)",
                             "data": "corpus"}[what]
                    raise UserError(f"{run.label}: the {step.stage} step in {self.out / step.dir} ran with another "
                                    f"{which}: pass --redo {step.id} to discard it, or choose another --out")

    def inputs(self, step):
        """The upstream outputs' digests (None while the upstream has no completed record)."""
        return {} if step.upstream is None else (read_json(self.file(step.upstream, "record")) or {}).get("outputs")

    def state(self, step):
        """(state, detail): done, run, resume, redo (detail: the files it discards), or refused (detail: why)."""
        files = [p for p in step.files() if (self.out / p).exists()]
        if step in self.redo:
            return "redo", files
        record, inputs = read_json(self.file(step, "record")), self.inputs(step)
        if isinstance(record, dict) and "outputs" in record:
            bad = [n for n, sha in record["outputs"].items() if file_sha256(self.out / step.dir / n) != sha]
            if bad:
                return "refused", (f"{step.dir}/{bad[0]} no longer matches its record (damaged or replaced): "
                                   f"--redo {step.id} computes it anew")
            if record.get("inputs") != inputs:
                return "refused", (f"{step.path('record')} was computed from another {step.upstream.stage} output "
                                   f"than the recorded one: --redo {step.id} computes it anew")
            return "done", None
        if isinstance(record, dict) and record.get("inputs") == inputs and self.resumable(step):
            return "resume", None
        if files:
            return "refused", (f"files of a step without its finished record are in the way: {', '.join(files)}; "
                               f"move them away, or pass --redo {step.id} to discard them")
        return "run", None

    def resumable(self, step):
        resume = self.file(step, "resume.pt")
        if not step.kind.trains or not resume.exists():
            return False
        from checkpoint import load_checkpoint
        try:
            load_checkpoint(resume, "resume")
        except UserError:
            return False
        return True

    def fail(self, run, step, reason, rc=None):
        log = self.file(step, "log")
        run.status, run.proc = "failed", None
        run.failure = {"step": step.stage, "reason": reason, "rc": rc, "log": str(log),
                       "last_line": last_line(log)[:200] if rc is not None else ""}

    def launch(self, run, slot):
        """Start the chain's next step that is not done; False when none is left or the chain failed."""
        while run.current < len(run.steps):
            step = run.steps[run.current]
            try:
                state, detail = self.state(step)
                if state == "done":
                    run.current += 1
                    continue
                if state == "refused":
                    self.fail(run, step, detail)
                    return False
                self.start(run, step, state, detail, slot)
                return True
            except (UserError, OSError) as e:  # a launch that cannot start fails its own chain only
                self.fail(run, step, f"could not start: {e}")
                return False
        run.status = "done"
        return False

    def start(self, run, step, state, detail, slot):
        data = self.data[run.chain.corpus]
        argv = step.argv(self.out, data)
        if state == "resume":
            argv = [argv[0], "--resume", str(self.file(step, "resume.pt"))]
        elif state == "redo" and detail and step.kind.trains:
            argv.append("--overwrite")  # asked for: the step's earlier files go once the new run can start
        argv += ["--device", slot["device"]]
        self.redo.discard(step)
        record = read_json(self.file(step, "record")) if state == "resume" else None
        record = record or {"key": self.key(step, run.chain.corpus), "inputs": self.inputs(step), "attempts": []}
        record["attempts"].append({"command": argv, "device": slot["name"], "started": now(), "t0": time.time()})
        atomic_write_json(record, self.file(step, "record"))
        with open(self.file(step, "log"), "a", encoding="utf-8") as log:
            log.write(f"=== {now()} python {' '.join(argv)}\n")
            run.offset = log.tell()
            run.proc = subprocess.Popen([sys.executable, "-u", *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **slot["env"]},
                                        preexec_fn=default_sigint)
        run.started, run.status, run.slot = time.time(), "running", slot

    def finish(self, run):
        """The running step ended: complete its record if it succeeded with a finite result, else fail the chain."""
        step, rc = run.steps[run.current], run.proc.returncode
        record, wall = self.attempt_ended(run)
        result = reason = None
        if rc != 0:
            reason = f"exit code {rc}"
        elif step.kind.trains:
            result = finite_result(read_json(self.file(step, "final.json")))
        else:
            try:
                result = finite_result(json.loads(last_line(self.file(step, "log"), run.offset)))
                if result is not None:
                    atomic_write_json(json.loads(last_line(self.file(step, "log"), run.offset)),
                                      self.file(step, "output"))
            except ValueError:
                reason = "exit code 0 but no JSON result on its last line"
        if reason is None and result is None:
            reason = f"a result that is not a finite perplexity: {last_line(self.file(step, 'log'), run.offset)[:120]}"
        if reason is None:  # the run's own clock for training (across resumes), else the attempt's
            output = self.file(step, "output")
            rows = metrics(self.file(step, "metrics.jsonl")) if step.kind.trains else []
            record.update(outputs={output.name: file_sha256(output)}, result=result, commit=self.commit, date=now(),
                          machine=platform.node(), device=run.slot["name"], epochs=len(rows) if rows else None,
                          wall_s=rows[-1]["elapsed"] if rows else wall)
        atomic_write_json(record, self.file(step, "record"))
        if reason:
            return self.fail(run, step, reason, rc)
        run.current, run.proc = run.current + 1, None
        run.status = "pending" if run.current < len(run.steps) else "done"

    def attempt_ended(self, run):
        record, wall = read_json(self.file(run.steps[run.current], "record")), round(time.time() - run.started, 3)
        record["attempts"][-1].update(rc=run.proc.returncode, wall_s=wall)
        atomic_write_json(record, self.file(run.steps[run.current], "record"))
        return record, wall

    def finished(self, step):
        """The step's completed record when it is done, else None (what the report reads)."""
        return read_json(self.file(step, "record")) if self.state(step)[0] == "done" else None

    def execute(self, plan, slots, on_chain_end, poll=0.2):
        """Run the chains, at most one per slot, until each is done or failed."""
        queue, free, running, shown = [r for r in plan if r.status == "pending"], list(range(len(slots))), {}, {}
        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            while queue or running:
                while queue and free:
                    run, k = queue.pop(0), free.pop(0)
                    if self.launch(run, slots[k]):
                        running[k] = run
                        print(f"started {run.label}: {run.steps[run.current].stage} on {slots[k]['name']}", flush=True)
                    else:
                        free.insert(0, k)
                        self.ended(run, on_chain_end)
                for k, run in list(running.items()):
                    if run.proc.poll() is None:
                        line = self.progress(run)
                        if shown.get(k) != line:
                            print(line, flush=True)
                            shown[k] = line
                        continue
                    stage = run.steps[run.current].stage
                    self.finish(run)
                    if run.status == "pending" and self.launch(run, slots[k]):
                        print(f"{run.label}: {stage} done, {run.steps[run.current].stage} started", flush=True)
                        continue
                    del running[k]
                    free.append(k)
                    self.ended(run, on_chain_end)
                if running:
                    time.sleep(poll)
        except BaseException:
            stop([run.proc for run in running.values()])
            for run in running.values():
                self.attempt_ended(run)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def ended(self, run, on_chain_end):
        f = run.failure
        print(f"FAILED {run.label}, step {f['step']}: {f['reason']}; log {f['log']}" if f else f"finished {run.label}",
              flush=True)
        on_chain_end()

    def progress(self, run):
        """Chain, step, epoch (of its limit, for training), last validation perplexity, an ETA at the limit."""
        step = run.steps[run.current]
        text = f"{run.label} | {step.stage}"
        rows = metrics(self.file(step, "metrics.jsonl")) if step.kind.trains else []
        limit = self.keys.get(step, {}).get("config", {}).get("epochs")
        if rows:
            last = rows[-1]
            text += f" | epoch {last['epoch']}{f'/{limit}' if limit else ''} | valid ppl {last['valid_ppl']:.2f}"
            if limit and last["epoch"] > 0:
                text += f" | ETA at most {seconds((limit - last['epoch']) * last['elapsed'] / last['epoch'])}"
        return text


def default_sigint():
    """In a step's process before it starts: SIGINT as Python expects it, even where the runner was started
    with SIGINT ignored (in the background from a script), so a forwarded SIGINT stops it at a batch end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def terminate(signum, frame):
    """SIGTERM ends the runner as Ctrl-C does: running steps stopped, their resume points kept."""
    TERMINATED.append(signum)
    raise KeyboardInterrupt


def stop(procs):
    """Stop the running steps at the end of their batch, each writing its resume point.  A terminal's Ctrl-C
    reached them already (a second SIGINT would stop them before that write); a SIGTERM is passed on."""
    for proc in procs:
        if TERMINATED and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:  # its resume point is written by now; what follows is not needed
            proc.kill()


def make_slots(jobs, device):
    """Where chains run: CPU slots share the cores; GPU slots spread over the visible devices (one per device
    by default: no peak memory of concurrent chains has been measured)."""
    import torch
    from runfiles import cpu_model
    from utils import check_device_name
    check_device_name(device)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        threads = str(max(1, (os.cpu_count() or 1) // (jobs or 1)))
        env = {} if "OMP_NUM_THREADS" in os.environ else {"OMP_NUM_THREADS": threads}
        return [{"device": "cpu", "env": env, "name": f"cpu ({cpu_model()})"}] * (jobs or 1)
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but this PyTorch sees no CUDA device: use --device cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in (visible or ",".join(map(str, range(torch.cuda.device_count())))).split(",") if d.strip()]
    index = [int(device.split(":")[1])] if ":" in device else list(range(len(ids)))
    if index[0] >= len(ids):
        raise UserError(f"--device {device}: {len(ids)} CUDA device(s) visible, use cuda:0 .. cuda:{len(ids) - 1}")
    return [{"device": "cuda", "env": {"CUDA_VISIBLE_DEVICES": ids[i]},
             "name": f"cuda:{i} ({torch.cuda.get_device_name(i)})"}
            for i in (index[k % len(index)] for k in range(jobs or len(index)))]
