"""A run's files, torch-free for the reporting tools: names, the lock against two writers, atomic writes, provenance."""
import argparse
import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """A problem the user caused and can fix; entry points print it as one line, no traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C ended a run after it saved what it could: not finished, so exit 130 with how to continue."""


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line that points to --help, not a usage dump."""

    def error(self, message):
        print(f"error: {message} (see python {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def sidecar(save, what):
    """Files that live next to the best-model checkpoint ``save``: resume, metrics, final."""
    save = Path(save)
    return Path(f"{save.with_suffix('') if save.suffix == '.pt' else save}.{what}")


RUN_FILES = {"resume": "resume.pt", "metrics": "metrics.jsonl", "final": "final.json", "lock": "lock"}


def run_paths(save):
    return {"best": str(save), **{what: str(sidecar(save, suffix)) for what, suffix in RUN_FILES.items()}}


def read_json(path):
    """A JSON file's value, or None when it is missing, unreadable or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_sha256(path):
    h = hashlib.sha256()  # not hashlib.file_digest: that needs Python 3.11, the rest of the code 3.9
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def check_output_path(path, flag="--save", siblings=()):
    """Fail before any work if ``path`` or the run's other files beside it (``siblings``) cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: give a file path such as {path / 'model.pt'}")
    for other in map(Path, siblings):
        if other.is_dir():
            raise UserError(f"{other} is a folder, where the run of {flag} {path} writes a file: move it away, or "
                            f"choose another {flag}")
    parent, name = path.parent, None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for name in [path.name, *(Path(s).name for s in siblings)]:  # the temp file's name is the longest written
            fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.EEXIST):  # a file where a folder must be
            above = next(a for a in [parent, *parent.parents] if a.exists())
            raise UserError(f"{flag} {path}: {above} is a file, not a folder: choose another {flag}") from None
        if name and e.errno == errno.ENAMETOOLONG:
            raise UserError(f"{flag} {path}: the run's file {name} cannot be created in {parent} (file name "
                            f"too long): choose a shorter {flag}") from None
        raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e}): "
                        f"choose a writable {flag}") from None


def remove_stale_temp_files(path):
    """Temp files a killed atomic write of ``path`` left (``.NAME.`` + mkstemp's 8 random characters + ``.tmp``),
    never another file's: a run saved at NAME.b.pt writes ``.NAME.b.pt.<8 characters>.tmp``."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'[a-z0-9_]' * 8}.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


class RunLock:
    """``fcntl.flock`` on ``path`` so two processes never write the same run; released however the process ends, and
    removed when the run ends, so a lock file left belongs to a run in progress (or a killed one)."""

    def __init__(self, path, flag="--save"):
        self.path, self.flag, self.file = Path(path), flag, None  # flag: the entry point's name for the run's path

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
            if self.holds_path():  # else the run that just ended removed the file we locked: lock the current one
                return self
            self.file.close()

    def holds_path(self):  # the file at path is the one this process locked (not removed, nor another's)
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def verify(self):
        """Before each save: a removed lock file is locked again; if another process got it first, this one stops."""
        if self.file is None or self.holds_path():
            return
        try:
            again = RunLock(self.path, self.flag).__enter__()
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
                with contextlib.suppress(OSError):
                    self.path.unlink()
            self.file.close()


def _disk_full(error):
    """ENOSPC anywhere in the exception chain: torch's zip writer reports it as a RuntimeError, OSError or not."""
    seen, signs = set(), ("file write failed", "No space", "unexpected pos")
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
                or isinstance(error, RuntimeError) and any(k in str(error) for k in signs)):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write(target, write):
    """Write through a temp file in the same folder, then rename: a crash leaves the old file intact."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp, created = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp", False
    try:
        with open(tmp, "xb") as f:  # a new file with the user's usual permissions (mkstemp's are 0600)
            created = True  # from here on the temp file is ours to remove, never another writer's
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        written = tmp.stat().st_size if created and tmp.exists() else 0
        if created:
            tmp.unlink(missing_ok=True)
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


def atomic_write_json(obj, target):
    atomic_write(target, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def atomic_write_text(text, target):
    atomic_write(target, lambda f: f.write(text.encode("utf-8")))


def atomic_write_jsonl(rows, target):
    atomic_write(target, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def code_commit():
    """This checkout's commit for a result's record, ``-dirty`` when a tracked source file (not a result) was edited."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=here,
                              timeout=30, check=True)
        edited = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "*.py", "*.sh"],
                                capture_output=True, text=True, cwd=here, timeout=30)
    except (OSError, subprocess.SubprocessError):  # no git, or not a git checkout
        return "unknown"
    return head.stdout.strip() + ("-dirty" if edited.stdout.strip() else "")


def cpu_model():
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

