"""One run across the processes ``torchrun`` starts (else every function here is a no-op): each rank trains on an
equal share of every batch's columns and the gradients are averaged, so an update is the single-process one; numpy
(BPTT lengths) is seeded alike everywhere, torch (dropout masks) per rank; rank 0 decides for all and alone writes."""
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

import checkpoint
from utils import get_device
from runfiles import UserError

TIMEOUT = timedelta(minutes=10)  # the longest wait in a collective: a checkpoint write on rank 0
FAREWELL = timedelta(hours=6)  # the other ranks' wait at the end of a run: rank 0's test evaluation
_world = None  # while a session runs: {"rank", "size", "device", "control"}
_ctrl_c = False  # torchrun passed a Ctrl-C (SIGINT) on to this process


def is_main():
    return not _world or _world["rank"] == 0


def size():
    return _world["size"] if _world else 1


def _on_ctrl_c(signum, frame):
    """Remembered, so that a collective broken by a peer that left first reads as the Ctrl-C, not as a failure."""
    global _ctrl_c
    _ctrl_c = True
    signal.default_int_handler(signum, frame)


_on_ctrl_c.deferrable = True  # utils.DeferredInterrupt takes over from it while training


@contextmanager
def session(cfg):
    """The process group around one run, when torchrun started this process (else nothing)."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield
        return
    me, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    own_signals = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if own_signals:
        signal.signal(signal.SIGINT, _on_ctrl_c)
    try:  # every rank has the same configuration, so the same answer: rank 0 says why, once
        if cfg["batch_size"] % size:
            raise UserError(f"--batch_size {cfg['batch_size']} cannot be split into {size} equal shares (one per "
                            f"process): choose a batch size divisible by {size}, or a process count that divides it")
        device = get_device(cfg["device"])
    except UserError as e:
        if me:
            sys.exit(2)
        raise UserError(f"rank 0 of {size}: {e}") from None
    stdout = sys.stdout
    try:  # from here on, whatever ends a rank (torchrun's Ctrl-C during the set-up too) goes through _abort
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        # Small values and decisions go through gloo on the CPU, so agreeing never waits for the GPU's queued work.
        control = dist.new_group(backend="gloo", timeout=TIMEOUT) if device.type == "cuda" else dist.group.WORLD
        _world = {"rank": me, "size": size, "device": device, "control": control}
        if me:
            sys.stdout = open(os.devnull, "w")  # rank 0 alone speaks
        print(f"One run in {size} processes (torchrun, {dist.get_backend()}): each trains on 1/{size} of every "
              f"batch's columns")
        yield
        # Leave together (a rank gone while rank 0 tested was aborted at exit); this barrier takes its own timeout.
        if me and own_signals:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # nothing left to save: torchrun's Ctrl-C ends it silently
        dist.monitored_barrier(group=control, timeout=FAREWELL)
    except BaseException as e:  # noqa: B036 -- any failure must take the whole run down
        try:
            _abort(e, me, size)
        except KeyboardInterrupt as again:  # torchrun's Ctrl-C, pending while a collective a peer left broke
            _abort(again, me, size)
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        if own_signals:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    _world = None
    dist.destroy_process_group()


class _Stopped(Exception):
    """This rank passed its checks, another did not and says why: leave without a word."""


def gate(error):
    """After the checks (``error``: this rank's UserError or None), the lowest failed rank alone says why."""
    if _world:
        first = torch.tensor([_world["rank"] if error is not None else _world["size"]], dtype=torch.int64)
        dist.all_reduce(first, op=dist.ReduceOp.MIN, group=_world["control"])
        if first.item() not in (_world["rank"], _world["size"]):
            raise _Stopped()
    if error is not None:
        raise error


def _abort(error, me, size):
    """Say which rank failed and why, then exit without waiting on peers that may never answer."""
    code = 2  # a UserError, or _Stopped: the rank that failed says why
    if isinstance(error, UserError):
        print(f"error: rank {me} of {size}: {error}", file=sys.stderr)
    elif isinstance(error, KeyboardInterrupt) or _ctrl_c and not isinstance(error, _Stopped):
        code = 130
        if me == 0:  # every rank got torchrun's Ctrl-C: rank 0 says it, once
            said = str(error) if isinstance(error, KeyboardInterrupt) else ""
            print(f"interrupted: {said}" if said else "interrupted", file=sys.stderr)
    elif not isinstance(error, _Stopped):
        traceback.print_exception(error)
        print(f"error: rank {me} of {size} failed ({type(error).__name__}: {error}); the run stops", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def local_device(device):
    """The device this rank computes on: cuda:LOCAL_RANK for a CUDA run, whatever index was named."""
    return _world["device"] if _world else device


def shard(data):
    """This rank's contiguous share of a batchified stream's columns."""
    if not _world:
        return data
    share = data.size(1) // _world["size"]
    return data.narrow(1, _world["rank"] * share, share).contiguous()


def average_gradients(params):
    """One flat all-reduce after backward.  Not DDP: FD runs two forwards per backward, and the fused loss applies
    the decoder outside the module's forward."""
    if not _world:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(_world["size"])
    for g, mean in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(mean.view_as(g))


def agree(value):
    """Rank 0's value on every rank (validation loss, a decision), as the same Python type."""
    if not _world:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.broadcast(t, 0, group=_world["control"])
    return type(value)(t.item())


def average_stats(stats):
    """An epoch's statistics over the whole batch: losses averaged over the equal shares, tokens summed."""
    if not _world:
        return stats
    t = torch.tensor([stats["train_loss"], stats["penalty"], stats["tokens"]], dtype=torch.float64)
    dist.all_reduce(t, group=_world["control"])
    size, tokens = _world["size"], int(t[2].item())
    return dict(stats, train_loss=t[0].item() / size, penalty=t[1].item() / size, tokens=tokens,
                tokens_per_s=tokens / max(stats["seconds"], 1e-9))


def broadcast_model(model):
    if not _world:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t, 0)


def load_best(model, path):
    """Reload the best model (annealing): rank 0 reads it and sends it, so other nodes need no copy."""
    if is_main():
        checkpoint.load_weights(model, checkpoint.load_checkpoint(path, "best"), path)
    broadcast_model(model)


def rng_state():
    """``checkpoint.rng_state()`` plus every rank's dropout RNG under "ranks" (a collective)."""
    state = checkpoint.rng_state()
    if _world:
        own = {"torch": torch.get_rng_state()}
        if _world["device"].type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(_world["device"])
        state["ranks"] = [None] * _world["size"]
        dist.all_gather_object(state["ranks"], own, group=_world["control"])
    return state


SUMS = ("total_ce", "total_pen", "interval_ce")  # a mid-epoch resume point's running loss sums


def merge_position(position):
    """A mid-epoch resume point as one process would have saved it (a collective): any number of ranks continues it."""
    if not _world:
        return position
    parts = [None] * _world["size"]
    dist.all_gather_object(parts, position, group=_world["control"])
    merged = dict(position, tokens=sum(p["tokens"] for p in parts),
                  **{key: sum(p[key] for p in parts) / _world["size"] for key in SUMS})
    merged["shares"] = {key: [p[key] for p in parts] for key in SUMS}  # each rank's own, for a resume as N exactly
    merged["hidden"] = [tuple(torch.cat([p["hidden"][layer][k] for p in parts], dim=1) for k in range(2))
                        for layer in range(len(position["hidden"]))]
    return merged


def own_position(position):
    """This rank's share of a mid-epoch resume point: its own loss sums if as many ranks saved it, else their mean."""
    if not _world or position is None:
        return position
    size, me = _world["size"], _world["rank"]
    own, cols = position.get("shares", {}), position["hidden"][0][0].size(1) // size
    sums = {key: own[key][me] for key in SUMS if len(own.get(key, ())) == size}
    return dict(position, tokens=position["tokens"] // size, **sums,
                hidden=[tuple(t.narrow(1, me * cols, cols) for t in hc) for hc in position["hidden"]])


def prepare(model, cfg, resume=None):
    """Rank 0's weights everywhere; each rank's dropout RNG from a resume point of as many ranks, else its own."""
    if not _world:
        return
    broadcast_model(model)
    saved = resume["rng"].get("ranks") if resume is not None else None
    if saved and len(saved) == _world["size"]:
        mine = saved[_world["rank"]]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and _world["device"].type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], _world["device"])
    elif _world["rank"]:
        epoch = resume["schedule"]["epoch"] if resume is not None else 0
        torch.manual_seed(cfg["seed"] + _world["rank"] + 1_000_003 * epoch)
