"""Small torch-side helpers shared by the entry points: seeding, devices, progress, Ctrl-C, saving tensors."""
import hashlib
import random
import re
import signal
import sys
import threading
import time

import numpy as np
import torch
from tqdm import tqdm

from runfiles import UserError, atomic_write


def repackage_hidden(h):
    """Detach hidden states from their history so backprop stops at the batch boundary."""
    return h.detach() if isinstance(h, torch.Tensor) else type(h)(repackage_hidden(v) for v in h)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def check_device_name(name):
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(name)):
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


PLAIN_EVERY = 60.0  # seconds between progress lines when stderr is not a terminal


def progress(iterable=None, total=None, desc="", unit="batch", enabled=True):
    """A tqdm bar on a terminal; elsewhere (a log file, CI) a plain line every PLAIN_EVERY seconds, since a bar's
    carriage returns make one endless line in a file.  ``enabled=False`` (ranks other than 0): nothing."""
    if enabled and not sys.stderr.isatty():
        return PlainProgress(iterable, total, desc, unit)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, disable=not enabled)


class PlainProgress(tqdm):
    """A tqdm that draws no bar but prints plain lines to stderr."""

    def __init__(self, iterable, total, desc, unit):
        super().__init__(iterable, total=total, disable=True)
        self.desc, self.unit, self.postfix, self.last = desc, unit, "", 0.0  # last: seconds in at the last line
        self.start = time.time()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def update(self, n=1):
        self.n += n
        elapsed = time.time() - self.start
        if elapsed - self.last < PLAIN_EVERY:
            return
        self.last, done = elapsed, f"{self.n} {self.unit}"
        if self.total:  # variable BPTT may take more batches than the estimate: never "21/20"
            total = max(self.total, self.n)
            done = f"{self.n}/{total} {self.unit} ({100 * self.n // total}%)"
            if self.n < total:
                done += f", ETA {tqdm.format_interval(elapsed * (total - self.n) / self.n)}"
        print(f"{self.desc}: {done}, {tqdm.format_interval(elapsed)} elapsed{self.postfix}", file=sys.stderr,
              flush=True)

    def set_postfix(self, **values):
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())


class DeferredInterrupt:
    """Until ``restore()``, Ctrl-C sets ``.requested`` (and prints ``message`` unless ``say=False``) so a loop stops
    where its state can be saved; a second one raises.  Main thread only, over the default or a deferrable handler."""

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


def weights_sha256(state):
    """Of named tensors, stored with them (checkpoints, the corpus cache): a flipped bit is found on load."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_torch_save(obj, target):
    atomic_write(target, lambda f: torch.save(obj, f))
