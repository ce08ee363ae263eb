"""Small helpers shared by the entry points: errors a user can fix, seeding, devices, atomic writes."""
import errno
import glob
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


class UserError(Exception):
    """A problem the user caused and can fix; entry points print it as one line, no traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended a run early, once it had saved what it could (and said what): the run is not finished, so
    the entry point exits 130, never 0, with this one line (how to continue)."""


def run_cli(main):
    """Run an entry point; user errors end with one line on stderr and exit code 2, Ctrl-C with exit code 130."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        sys.exit(130)


def repackage_hidden(h):
    """Detach hidden states from their history so backprop stops at the batch boundary."""
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h) if isinstance(h, tuple) else [repackage_hidden(v) for v in h]


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def check_seed(seed, flag="--seed"):
    """Every tool's seed: numpy takes [0, 2**32), so every seed is refused outside it, before any work."""
    if not 0 <= seed < 2**32:
        raise UserError(f"{flag} must be in [0, 2**32), got {seed}")
    return seed


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name):
    if not DEVICE_PATTERN.fullmatch(str(name)):
        raise UserError(f"--device {name} is not a device this code runs on: use auto, cpu, cuda or cuda:N")
    return name


def get_device(name="auto"):
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but this PyTorch sees no CUDA device: use --device cpu")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def check_output_path(path, flag="--save", siblings=()):
    """Fail before any work if ``path`` cannot be written: a folder, a parent that is a file, or a
    folder that refuses new files (read-only, immutable, another user's).  ``siblings``: the other
    files the run writes beside it; each is tried too (a folder in the way, a name too long)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file path such as {path / 'model.pt'}")
    for other in map(Path, siblings):
        if other.is_dir():
            raise UserError(f"{other} is a folder, where the run of {flag} {path} writes a file: move it away, or "
                            f"choose another {flag}")
    parent = path.parent
    for above in [parent, *parent.parents]:
        if above.exists():
            if not above.is_dir():
                raise UserError(f"{flag} {path}: {above} is a file, not a folder: choose another {flag}")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e}): "
                        f"choose a writable {flag}") from None
    for name in [path.name, *(Path(s).name for s in siblings)]:  # the temp file's name is the longest written
        try:
            fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise UserError(f"{flag} {path}: the run's file {name} cannot be created in {parent} (file name "
                                f"too long): choose a shorter {flag}") from None
            raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e}): "
                            f"choose a writable {flag}") from None


def remove_stale_temp_files(path):
    """Temp files an atomic write of ``path`` left when its process was killed: exactly mkstemp's names
    for ``path`` (``.NAME.XXXXXXXX.tmp``), never another file's (``.NAME.b.pt.XXXXXXXX.tmp`` of a run
    saved at NAME.b.pt)."""
    path = Path(path)
    own = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if own.fullmatch(stale.name):
            try:
                stale.unlink()
            except OSError:
                pass


class RunLock:
    """An exclusive lock on a run's files (``fcntl.flock`` on ``path``), so two processes never
    write the same run.  Released when the process ends, however it ends; the file is removed when the
    run ends, so one left beside a run belongs to a run in progress (or a killed one)."""

    def __init__(self, path, flag="--save"):
        self.path = Path(path)
        self.flag = flag  # the entry point's name for the run's path, for the hint
        self.file = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # no flock on this platform: nothing to hold
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.close()
                raise UserError(f"another process is running the run whose lock is {self.path}: wait for it to end, "
                                f"or choose another {self.flag}") from None
            try:  # the file we locked may have been removed by the run that just ended: lock the current one
                if os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino:
                    return self
            except FileNotFoundError:
                pass
            self.file.close()

    def holds_path(self):
        """The file at ``path`` is the one this process locked (not removed, nor replaced by another's)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def verify(self):
        """Before each save of a long run: a lock file removed while the run trains (by hand, by a clean-up
        script) is put back and locked again, so no second process can start the run; if a second one
        already has (it locked a new file at the path), this one stops before writing anything more."""
        if self.file is None or self.holds_path():
            return
        again = RunLock(self.path, self.flag)
        try:
            again.__enter__()
        except UserError:
            raise UserError(f"the lock file {self.path} was removed while this run was in progress, and another "
                            f"process has started the same run since: this process stops without writing anything "
                            f"more (the files are that process's now); never remove a running run's lock file"
                            ) from None
        self.file.close()
        self.file = again.file

    def __exit__(self, *exc):
        if self.file is not None:  # unlinked while still held, so a lock file left means a run in progress
            if self.holds_path():  # never another process's lock
                try:
                    self.path.unlink()
                except OSError:
                    pass
            self.file.close()


PLAIN_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal


def progress(iterable=None, total=None, desc="", unit="batch", enabled=True):
    """Progress of a long step: a tqdm bar with rate and ETA on a terminal; elsewhere (a log file, nohup,
    CI) a plain line every PLAIN_EVERY seconds, since a bar's carriage returns make one endless line
    in a file.  ``enabled=False`` (ranks other than 0) shows nothing."""
    if enabled and sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    if enabled:
        return PlainProgress(iterable, total, desc, unit)
    return tqdm(iterable, total=total, disable=True)


class PlainProgress:
    """tqdm's interface (iterate, ``update``, ``set_postfix``, ``close``) printing plain lines to stderr."""

    def __init__(self, iterable, total, desc, unit):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.postfix = 0, ""
        self.start = self.last = time.time()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.n += n
        now = time.time()
        if now - self.last >= PLAIN_EVERY:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now):
        elapsed = now - self.start
        done = f"{self.n} {self.unit}"
        if self.total:
            done = f"{self.n}/{self.total} {self.unit} ({min(100, 100 * self.n // self.total)}%)"
            if self.n < self.total:
                done += f", ETA {tqdm.format_interval(elapsed * (self.total - self.n) / self.n)}"
        return f"{self.desc}: {done}, {tqdm.format_interval(elapsed)} elapsed{self.postfix}"

    def set_postfix(self, **values):
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class DeferredInterrupt:
    """From creation until ``restore()``, Ctrl-C prints ``message`` and sets ``.requested`` instead of
    raising, so a loop can stop where its state is consistent and save it; a second Ctrl-C raises at
    once.  Outside the main thread, or where SIGINT is not Python's default handler (ignored, or taken
    by a host program) nor one marked ``deferrable`` (distributed.py's), it changes nothing.
    ``say=False``: a process that must not print (torchrun's ranks other than 0, which get the same
    Ctrl-C) defers it without a word."""

    def __init__(self, message, say=True):
        self.message, self.requested, self.say = message, False, say
        self.previous = signal.getsignal(signal.SIGINT)
        ours = self.previous is signal.default_int_handler or getattr(self.previous, "deferrable", False)
        self.installed = threading.current_thread() is threading.main_thread() and ours
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.say:
            print(f"\nCtrl-C: {self.message} (Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def restore(self):
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)
            self.installed = False


def _umask():
    """The process's umask: read from /proc where there is one (setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(error):
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(error, RuntimeError) and ("file write failed" in str(error) or "No space" in str(error))


def _atomic_write(target, write):
    """Write through a temp file in the same folder, then rename: a crash leaves the old file intact."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the user's usual permissions
        os.replace(tmp, target)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(e):
            free = shutil.disk_usage(target.parent).free
            kept = f"the previous {target.name} is intact" if target.exists() else f"{target.name} was not written"
            raise UserError(f"no space left on the device to write {target} ({size_text(free)} free; it ran out after "
                            f"{size_text(written)}); {kept}: free some space and rerun") from None
        raise


def size_text(n):
    """Bytes as a person reads them: 0 bytes, 812 bytes, 3.4 KiB, 120 MiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def atomic_torch_save(obj, target):
    _atomic_write(target, lambda f: torch.save(obj, f))


def atomic_write_json(obj, target):
    _atomic_write(target, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def atomic_write_text(text, target):
    _atomic_write(target, lambda f: f.write(text.encode("utf-8")))


def atomic_write_jsonl(rows, target):
    _atomic_write(target, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def code_commit():
    """The commit of this checkout's code, ``-dirty`` when a tracked source file (not a result) was edited,
    for the record of a result; "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=here,
                              timeout=30)
        edited = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py", "*.sh"],
                                capture_output=True, text=True, cwd=here, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if edited.stdout.strip() else "")


def cpu_model():
    """The CPU's model name, for reports of measured speed."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
