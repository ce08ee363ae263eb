"""Small helpers shared by the entry points: errors a user can fix, seeding, devices, atomic writes."""
import json
import os
import platform
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


class UserError(Exception):
    """A problem the user caused and can fix; entry points print it as one line, no traceback."""


def run_cli(main):
    """Run an entry point; user errors end with one line on stderr and exit code 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
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


def get_device(name="auto"):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but this PyTorch sees no CUDA device: use --device cpu")
    return torch.device(name)


_UMASK = os.umask(0)
os.umask(_UMASK)


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
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the user's usual permissions
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, target):
    _atomic_write(target, lambda f: torch.save(obj, f))


def atomic_write_json(obj, target):
    _atomic_write(target, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def atomic_write_jsonl(rows, target):
    _atomic_write(target, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def dropout_mask(like, shape, p):
    """Inverted-dropout mask {0, 1/(1-p)} drawn on ``like``'s device and dtype (no host copy).
    Thresholding uniform draws is twice as fast as ``bernoulli_`` on CPU, with the same law."""
    return torch.rand(shape, device=like.device, dtype=like.dtype).ge_(p).mul_(1.0 / (1.0 - p))


def check_dropout_p(p):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return float(p)


def stored_mask(module, shape):
    """The mask of ``module``'s previous training forward, for reuse by a second pass."""
    mask = module.mask
    if mask is None:
        raise RuntimeError(f"{type(module).__name__}: reuse asked for, but no training forward drew a mask yet")
    if tuple(mask.shape) != tuple(shape):
        raise RuntimeError(f"{type(module).__name__}: stored mask has shape {tuple(mask.shape)}, "
                           f"this call needs {tuple(shape)}")
    return mask


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
