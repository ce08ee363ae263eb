"""Running the plan: a process per step, chains on slots, signals passed on. A step is done when its record
(STAGE.step.json) is complete and its output matches the record's digest; outputs are replaced only on --redo."""
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from config import outcome, train_config
from report import epoch_rows, seconds
from runfiles import UserError, atomic_write_json, code_commit, cpu_model, file_sha256, read_json

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
            return next((line for line in reversed(f.read().splitlines()) if line.strip()), "")
    except OSError:
        return ""


def now():
    return time.strftime("%Y-%m-%d %H:%M:%S")


class Runner:
    def __init__(self, out, data, digests, redo=()):
        self.out, self.data, self.digests, self.redo = Path(out).resolve(), data, digests, set(redo)
        self.commit, self.keys, self.shas = code_commit(), {}, {}

    def record(self, step):
        return read_json(self.out / step.path("record"))

    def sha(self, path):
        """Hashed once per version (size, mtime): the report asks after every chain, and checkpoints are large."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self.shas:
            self.shas[key] = file_sha256(path)
        return self.shas[key]

    def argv(self, step):
        return [a.replace("{out}", str(self.out)).replace("{data}", str(self.data[step.corpus])) for a in step.template]

    def key(self, step):
        if step not in self.keys:
            key = {"command": step.template, "data": self.digests[step.corpus]}
            if step.stage == "train":
                key["config"] = outcome(train_config(self.argv(step)[1:]))
            self.keys[step] = json.loads(json.dumps(key))
        return self.keys[step]

    def check_keys(self, plan):
        """A recorded step whose key differs from the plan's is refused before anything runs."""
        which = {"command": "command", "config": "resolved configuration (a preset changed?)", "data": "corpus"}
        for step, old in ((s, self.record(s)) for run in plan for s in run.steps if s not in self.redo):
            if not isinstance(old, dict):
                continue
            old, new = dict(old.get("key", {})), self.key(step)
            if isinstance(old.get("config"), dict):  # recorded by an older checkout: compare what it computes
                old["config"] = outcome(old["config"])
            if what := next((which[k] for k in which if old.get(k) != new.get(k)), None):
                raise UserError(f"{step.chain} seed {step.seed}: the {step.stage} step in {self.out / step.dir} ran "
                                f"with another {what}: pass --redo {step.id} to discard it, or choose another --out")

    def inputs(self, step):
        return {} if step.upstream is None else (self.record(step.upstream) or {}).get("outputs")

    def state(self, step):
        """(state, detail): done, run, resume, redo (detail: the files it discards), or refused (detail: why)."""
        files = [p for p in step.files() if (self.out / p).exists()]
        if step in self.redo:
            return "redo", files
        record, inputs = self.record(step), self.inputs(step)
        if isinstance(record, dict) and "outputs" in record:
            if bad := [n for n, sha in record["outputs"].items() if self.sha(self.out / step.dir / n) != sha]:
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
        from checkpoint import load_checkpoint
        try:
            return step.kind.trains and bool(load_checkpoint(self.out / step.path("resume.pt"), "resume"))
        except UserError:
            return False

    def finished(self, step):
        return self.record(step) if self.state(step)[0] == "done" else None

    def fail(self, run, step, reason, rc=None):
        log, run.proc = self.out / step.path("log"), None
        run.failure = {"step": step.stage, "reason": reason, "rc": rc, "log": str(log),
                       "last_line": last_line(log)[:200] if rc is not None else ""}

    def launch(self, run, slot):
        while run.failure is None and run.current < len(run.steps):
            step = run.steps[run.current]
            try:
                state, detail = self.state(step)
                if state == "refused":
                    return self.fail(run, step, detail)
                if state != "done":
                    return self.start(run, step, state, detail, slot)
            except (UserError, OSError) as e:  # a launch that cannot start fails its own chain only
                return self.fail(run, step, f"could not start: {e}")
            run.current += 1

    def start(self, run, step, state, detail, slot):
        argv = self.argv(step)
        if state == "resume":
            argv = [argv[0], "--resume", str(self.out / step.path("resume.pt"))]
        elif state == "redo" and detail and step.kind.trains:
            argv.append("--overwrite")  # asked for: the step's earlier files go once the new run can start
        argv += ["--device", slot["device"]]
        self.redo.discard(step)
        record = self.record(step) if state == "resume" else {"key": self.key(step), "inputs": self.inputs(step),
                                                              "attempts": []}
        record["attempts"].append({"command": argv, "device": slot["name"], "started": now(), "t0": time.time()})
        atomic_write_json(record, self.out / step.path("record"))
        with open(self.out / step.path("log"), "a", encoding="utf-8") as log:
            log.write(f"=== {now()} python {' '.join(argv)}\n")
            run.offset = log.tell()
            # SIGINT as Python expects it, even when inherited as ignored (a runner started with & from a script)
            run.proc = subprocess.Popen([sys.executable, "-u", *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1", **slot["env"]},
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        run.started, run.slot = time.time(), slot

    def finish(self, run):
        """The running step ended: complete its record if it gave a finite result, else fail the chain."""
        step, rc = run.steps[run.current], run.proc.returncode
        record, wall = self.attempt_ended(run)
        line, result, reason = last_line(self.out / step.path("log"), run.offset), None, f"exit code {rc}"
        if rc == 0:
            try:
                found = read_json(self.out / step.path("final.json")) if step.kind.trains else json.loads(line)
                result = finite_result(found)
                reason = None if result else f"a result that is not a finite perplexity: {line[:120]}"
            except ValueError:
                reason = "exit code 0 but no JSON result on its last line"
        if reason:
            return self.fail(run, step, reason, rc)
        output, epochs = self.out / step.path("output"), epoch_rows(self.out / step.path("metrics.jsonl"))
        if not step.kind.trains:
            atomic_write_json(found, output)
        record.update(outputs={output.name: self.sha(output)}, result=result, commit=self.commit, date=now(),
                      machine=platform.node(), device=run.slot["name"], epochs=len(epochs) or None,
                      wall_s=epochs[-1]["elapsed"] if epochs else wall)  # training's own clock, across resumes
        atomic_write_json(record, self.out / step.path("record"))
        run.current, run.proc = run.current + 1, None

    def attempt_ended(self, run):
        step, wall = run.steps[run.current], round(time.time() - run.started, 3)
        record = self.record(step)
        record["attempts"][-1].update(rc=run.proc.returncode, wall_s=wall)
        atomic_write_json(record, self.out / step.path("record"))
        return record, wall

    def execute(self, plan, slots, on_chain_end, poll=0.2):
        """Run the chains, at most one per slot (a chain keeps its slot), until each is done or failed."""
        queue, free, running = list(plan), list(range(len(slots))), {}
        previous = signal.signal(signal.SIGTERM, terminate)
        try:
            while queue or running:
                while queue and free:
                    run, k = queue.pop(0), free.pop(0)
                    self.launch(run, slots[k])
                    if run.proc is not None:
                        running[k] = run
                        print(f"{run.label}: {run.steps[run.current].stage} started on {slots[k]['name']}", flush=True)
                        continue
                    free.insert(0, k)
                    print(run.summary(), flush=True)
                    on_chain_end()
                for k, run in list(running.items()):
                    if run.proc.poll() is None:
                        self.progress(run)
                        continue
                    self.finish(run)
                    free.insert(0, k)  # the chain's next step goes on the same slot
                    queue.insert(0, running.pop(k))
                if running:
                    time.sleep(poll)
        except BaseException:
            stop([run.proc for run in running.values()])
            for run in running.values():
                self.attempt_ended(run)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)

    def progress(self, run):
        """Print, when it changed: chain, step, epoch (of its limit), last validation perplexity, ETA at the limit."""
        step = run.steps[run.current]
        text, epochs = f"{run.label} | {step.stage}", epoch_rows(self.out / step.path("metrics.jsonl"))
        limit = self.keys.get(step, {}).get("config", {}).get("epochs")
        if epochs:
            last = epochs[-1]
            text += f" | epoch {last['epoch']}{f'/{limit}' if limit else ''} | valid ppl {last['valid_ppl']:.2f}"
            if limit and last["epoch"] > 0:
                text += f" | ETA at most {seconds((limit - last['epoch']) * last['elapsed'] / last['epoch'])}"
        if text != getattr(run, "shown", None):
            print(text, flush=True)
            run.shown = text


def terminate(signum, frame):
    """SIGTERM ends the runner as Ctrl-C does: running steps stopped, their resume points kept."""
    TERMINATED.append(signum)
    raise KeyboardInterrupt


def stop(procs):
    """Let the steps write their resume points: SIGTERM goes on as SIGINT (Ctrl-C reached them; a second cuts it)."""
    for proc in procs:
        if TERMINATED and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:  # its resume point is written by now; what follows is not needed
            proc.kill()


def make_slots(jobs, device):
    """CPU slots share the cores; one GPU slot per visible device by default (concurrent chains' memory unmeasured)."""
    import torch
    from utils import get_device
    if get_device(device).type == "cpu":
        threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (jobs or 1))))
        return [{"device": "cpu", "env": {"OMP_NUM_THREADS": threads}, "name": f"cpu ({cpu_model()})"}] * (jobs or 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(torch.cuda.device_count())))
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    index = [int(device.split(":")[1])] if ":" in device else list(range(len(ids)))
    return [{"device": "cuda", "env": {"CUDA_VISIBLE_DEVICES": ids[i]},
             "name": f"cuda:{i} ({torch.cuda.get_device_name(i)})"}
            for i in (index[k % len(index)] for k in range(jobs or len(index)))]
