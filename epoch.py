"""One epoch of training as AWD-LSTM trains: variable-length BPTT, the regularizer's loss (fraternal.py), clipping."""
import math
import os
import time
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

import distributed
from data import get_batch
from fraternal import fraternal_loss
from runfiles import UserError
from scoring import ppl
from utils import progress, repackage_hidden


class NonFiniteLoss(UserError):
    """The ``which`` loss became NaN or infinite; ``best``: the checkpoint that stays intact, if written yet."""

    def __init__(self, which, value, where, best):
        kept = f"the best checkpoint {best} is intact" if os.path.exists(best) else "no checkpoint had been saved yet"
        super().__init__(f"the {which} loss became {value} in {where}; {kept}: retry with a lower --lr or --clip")


@contextmanager
def averaged_weights(model, optimizer):
    """Swap in averaged SGD's running averages (no-op for other optimizers)."""
    state = optimizer.state if isinstance(optimizer, torch.optim.ASGD) else {}
    saved = {p: p.detach().clone() for p in model.parameters() if "ax" in state.get(p, {})}  # not stepped: no average
    with torch.no_grad():
        for p in saved:
            p.copy_(state[p]["ax"])
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value in saved.items():
                p.copy_(value)


def make_optimizer(cfg, schedule, params, device):
    """SGD (or Adam) until averaging starts, then averaged SGD with t0 = 0, lambda = 0."""
    if schedule.averaging:
        return torch.optim.ASGD(params, lr=schedule.lr, t0=0, lambd=0.0, weight_decay=cfg["wdecay"],
                                capturable=device.type == "cuda")
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=schedule.lr, weight_decay=cfg["wdecay"])
    return torch.optim.SGD(params, lr=schedule.lr, weight_decay=cfg["wdecay"])


def draw_seq_len(cfg):
    """AWD-LSTM's variable BPTT: base bptt (p = 0.95) or bptt / 2, then N(base, 5), at least 5."""
    bptt = cfg["bptt"] if np.random.random() < 0.95 else cfg["bptt"] / 2.0
    seq_len = max(5, int(np.random.normal(bptt, 5)))
    return min(seq_len, cfg["max_seq_len"]) if cfg["max_seq_len"] else seq_len


def train_step(model, optimizer, params, data, targets, hidden, reg, cfg, seq_len):
    """One step, lr scaled by seq_len / bptt (as drawn, even where the stream's end cut the batch, as the reference)."""
    lr = optimizer.param_groups[0]["lr"]
    optimizer.param_groups[0]["lr"] = lr * seq_len / cfg["bptt"]
    optimizer.zero_grad(set_to_none=True)
    out = fraternal_loss(model, data, targets, repackage_hidden(hidden), reg)
    out.loss.backward()
    distributed.average_gradients(params)
    if cfg["clip"]:
        torch.nn.utils.clip_grad_norm_(params, cfg["clip"])
    optimizer.step()
    optimizer.param_groups[0]["lr"] = lr
    return out


class EpochState:
    """Where an epoch stands, its loss sums (device tensors, read only at log intervals: host syncs are costly)
    and its hidden state: ``position()`` is all a mid-epoch resume point needs, ``position=`` takes it back."""

    def __init__(self, model, train_data, epoch, position=None):
        self.epoch, self.batch, self.i, self.tokens = epoch, 0, 0, 0
        device = train_data.device
        self.total_ce, self.total_pen, self.interval_ce = (torch.zeros((), device=device) for _ in range(3))
        self.hidden = model.init_hidden(train_data.size(1))
        self.start = self.interval_start = time.time()
        if position is not None:
            self.batch, self.i, self.tokens = position["batch"], position["i"], position["tokens"]
            self.total_ce, self.total_pen, self.interval_ce = (position[k].to(device) for k in distributed.SUMS)
            self.hidden = [tuple(t.to(device) for t in hc) for hc in position["hidden"]]
            self.start -= position["seconds"]

    def position(self):
        return {"epoch": self.epoch, "batch": self.batch, "i": self.i, "tokens": self.tokens,
                "seconds": time.time() - self.start, **{k: getattr(self, k).cpu() for k in distributed.SUMS},
                "hidden": [tuple(t.detach().cpu() for t in hc) for hc in self.hidden]}

    def running_loss(self, cfg, where):
        loss = self.total_ce.item() / max(self.batch, 1)
        if not math.isfinite(loss):
            raise NonFiniteLoss("training", loss, where, cfg["save"])
        return loss

    def summary(self, cfg):
        train_loss = self.running_loss(cfg, f"epoch {self.epoch}")
        seconds = time.time() - self.start
        return {"train_loss": train_loss, "penalty": self.total_pen.item() / max(self.batch, 1), "batches": self.batch,
                "tokens": self.tokens, "seconds": seconds, "tokens_per_s": self.tokens / max(seconds, 1e-9)}


def train_epoch(model, optimizer, train_data, cfg, reg, epoch, max_batches=None, position=None, checkpoint=None,
                stop=None):
    """One pass over the training stream from ``position``; ``checkpoint(position)`` runs every --checkpoint_every
    minutes, so a kill costs minutes, not an epoch, and once more on Ctrl-C (``stop``) before KeyboardInterrupt."""
    model.train()
    params = list(model.parameters())
    state = EpochState(model, train_data, epoch, position)
    log_every = cfg["log_interval"]
    check_every = log_every if train_data.device.type == "cuda" else min(10, log_every)  # host syncs are costly on GPU
    resume_every, last_resume_point = cfg.get("checkpoint_every", 0) * 60, time.time()
    approx = max(1, len(train_data) // cfg["bptt"])
    with progress(total=approx if max_batches is None else max_batches, desc=f"epoch {epoch}",
                  enabled=distributed.is_main()) as bar:
        while state.i < train_data.size(0) - 1 - 1 and (max_batches is None or state.batch < max_batches):
            seq_len = draw_seq_len(cfg)
            lr = optimizer.param_groups[0]["lr"]
            if cfg["reset_hidden_prob"] and np.random.random() < cfg["reset_hidden_prob"]:
                state.hidden = model.init_hidden(train_data.size(1))
            data, targets = get_batch(train_data, state.i, seq_len)
            out = train_step(model, optimizer, params, data, targets, state.hidden, reg, cfg, seq_len)
            state.hidden = out.hidden
            state.total_ce += out.ce
            state.total_pen += out.penalty
            state.interval_ce += out.ce
            state.batch, state.i, state.tokens = state.batch + 1, state.i + seq_len, state.tokens + targets.numel()
            bar.update(1)
            # 1: a resume point is due, 2: Ctrl-C (rank 0's word, so every rank joins the same collective write)
            due = distributed.agree(int(bool(resume_every) and time.time() - last_resume_point >= resume_every)
                                    + 2 * int(stop is not None and stop.requested))
            if checkpoint is not None and due:
                checkpoint(state.position())
                last_resume_point = time.time()
            if due >= 2:
                raise KeyboardInterrupt
            if state.batch % check_every == 0 or state.batch % log_every == 0:
                running = state.running_loss(cfg, f"epoch {epoch} (batch {state.batch}, lr {lr:g})")
                bar.set_postfix(loss=f"{running:.3f}", tok_s=f"{state.tokens / (time.time() - state.start):.0f}")
            if state.batch % log_every == 0:  # the reference's progress line over the last log_every batches
                cur = state.interval_ce.item() / log_every
                ms = (time.time() - state.interval_start) * 1000 / log_every
                tqdm.write(f"| epoch {epoch:3d} | {state.batch:5d}/{max(approx, state.batch):5d} batches | lr "
                           f"{lr:05.5f} | ms/batch {ms:5.2f} | loss {cur:5.2f} | ppl {ppl(cur):8.2f}")
                state.interval_ce.zero_()
                state.interval_start = time.time()
    return state.summary(cfg)
