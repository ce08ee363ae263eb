"""Benchmark: what one training step of main.py costs, per preset and regularizer, on this machine.

Why.  Fraternal dropout (and ELD, PM, R-Drop) runs the network twice per batch, so a step should
cost about twice a baseline step; the FD / baseline ratio below says how close to 2 it really is.
The effective rate (analytic matmul FLOPs of one step divided by its time), set against the dense
float32 matmul rate this machine reaches with ``torch.mm`` at the model's own shapes, says how much
of a step is spent doing useful matrix products and how much in everything else (elementwise
gates, dropout masks, DropConnect weight assembly, softmax, clipping, the optimizer, Python).  The
evaluation rates (batch 10 for validation, batch 1 for test) tell how long the end-of-epoch
evaluations take.  Nothing here is asserted: these are figures to read, not tests.

What is timed is the real step: ``trainer.train_step`` called exactly as ``trainer.train_epoch``
calls it (both passes, dropouts, loss, backward, gradient clipping, optimizer step), on the model
from ``checkpoint.build_model`` and a configuration built by main.py's own parser and
``config.resolve_train_config`` (``--preset P --model M``), so it cannot drift from training.
Batch size and bptt are the preset's, seq_len = bptt (no variable-length draw), inputs are random
token ids of the preset's vocabulary (PTB 10000, WikiText-2 33278).  The optimizer is the one a
run starts with (``trainer.make_optimizer`` with a fresh schedule: SGD, lr scaled by seq_len/bptt).

FLOPs per training step (multiply-adds count as 2 FLOPs; only matrix products are counted):

    flops = passes * 3 * tokens * ( sum_l 2*4*H_l*(I_l + H_l)  +  2*E*V )

    tokens = seq_len * batch_size
    layer sizes: I_1 = emsize, H_l = nhid for the inner layers, the last layer's H = emsize when
                 the weights are tied (else nhid), I_l = H_{l-1}
    2*4*H*(I + H): the four gates' input (I x 4H) and recurrent (H x 4H) products, per token
    2*E*V: the decoder, E = last layer's output size, V = vocabulary size, per token
    3: forward (1) plus backward (2: gradients w.r.t. the inputs and w.r.t. the weights)
    passes: 2 when the regularizer runs a second pass (FD, PM, RD, and ELD, whose eval-mode pass
            is back-propagated through as well), 1 for the baseline

Excluded (elementwise or lookup work, not matrix products): gate nonlinearities and the cell
update, bias adds, dropout masks and their multiplications, the DropConnect product W_hh * mask,
the embedding lookup and its backward, log_softmax / cross-entropy (O(tokens * V) exp and log),
the penalty between the passes, gradient clipping, weight decay and the SGD update.

Effective rate = flops / median step time; "of mm" = effective rate / the best matmul rate
measured (the machine rate).  "x baseline" is the median step time over the baseline's, "x base
(min)" the same with the minima.  The timed steps of one preset's configurations are interleaved
(baseline, FD, baseline, FD, ...) on the same batches, so load from other processes that drifts
during the run weighs on both alike; the minimum is the figure least disturbed by such load.

Peak memory on CPU is ``ru_maxrss`` of this process: process-wide and monotonic, so each row shows
the process peak after that configuration's first timed step, not its own peak (run one
configuration per process, ``--presets P --models M``, for that).  On CUDA it is the largest
``torch.cuda.max_memory_allocated`` over the configuration's steps, reset before each step; it
includes the other configurations' models of the preset, resident at the same time.

The README table comes from this exact command (all three presets, baseline and FD, 1 warm-up and
5 timed steps each; about 4 minutes on an idle 2-core AVX-512 CPU, longer under load):

    python bench.py --out bench.json

``--quick`` times 1 step per configuration after one short untimed warm-up step (seq_len 5, which
pays the first-call costs; the timed step has the full shapes): about a minute on an idle 2-core
CPU for all presets, indicative only.  ``--tiny`` shrinks every shape (for the test).
"""
import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time

import torch

from checkpoint import build_model
from config import PRESETS, VARIANTS, build_train_parser, resolve_train_config
from data import batchify, get_batch
from fraternal import Regularizer
from trainer import evaluate, make_optimizer, new_schedule, train_step
from utils import cpu_model, get_device, run_cli, set_seed

VOCAB = {"data/penn": 10000, "data/wikitext-2": 33278}  # vocabulary sizes of the presets' corpora
TINY_VOCAB = 50
TINY_FLAGS = ["--emsize", "8", "--nhid", "12", "--batch_size", "3", "--bptt", "5"]
EVAL_BATCH_SIZES = (10, 1)  # validation, test (config.RUN_DEFAULTS)
SHORT_WARMUP = 5  # quick mode: tokens per column of the (untimed) warm-up steps


# ----------------------------------------------------------------------------------------------
# configuration and the analytic FLOP count


def bench_config(preset, model, tiny=False, extra=()):
    """The configuration main.py would run with ``--preset preset --model model`` (plus tiny shapes
    and any extra main.py flags)."""
    argv = ["--preset", preset, "--model", model] + (TINY_FLAGS if tiny else []) + list(extra)
    return resolve_train_config(build_train_parser().parse_args(argv))


def vocab_size(cfg, tiny=False):
    return TINY_VOCAB if tiny else VOCAB[cfg["data"]]


def layer_sizes(cfg):
    """[(input size, hidden size)] of each LSTM layer, as model.RNNModel builds them."""
    n = cfg["nlayers"]
    sizes = [cfg["emsize"]] + [cfg["nhid"]] * (n - 1) + [cfg["emsize"] if cfg["tied"] else cfg["nhid"]]
    return [(sizes[l], sizes[l + 1]) for l in range(n)]


def passes(cfg):
    return 2 if Regularizer.from_config(cfg).second_pass else 1


def forward_flops_per_token(cfg, vocab):
    lstm = sum(2 * 4 * h * (i + h) for i, h in layer_sizes(cfg))
    decoder = 2 * layer_sizes(cfg)[-1][1] * vocab
    return lstm + decoder


def step_flops(cfg, vocab, seq_len=None, batch_size=None):
    """Matmul FLOPs of one training step (see the module docstring for the formula)."""
    tokens = (seq_len or cfg["bptt"]) * (batch_size or cfg["batch_size"])
    return passes(cfg) * 3 * tokens * forward_flops_per_token(cfg, vocab)


# ----------------------------------------------------------------------------------------------
# timing helpers


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def matmul_shapes(cfgs, tiny=False):
    """(label, m, k, n) shapes of the models' matrix products, plus one square reference shape."""
    shapes = {}
    for cfg in cfgs:
        vocab = vocab_size(cfg, tiny)
        B, T, p = cfg["batch_size"], cfg["bptt"], cfg["preset"]
        E = layer_sizes(cfg)[-1][1]
        I, H = max(layer_sizes(cfg), key=lambda s: s[0] * s[1])
        Hmax = max(h for _, h in layer_sizes(cfg))
        for label, m, k, n in ((f"{p} decoder fwd", T * B, E, vocab),
                               (f"{p} decoder grad-input", T * B, vocab, E),
                               (f"{p} LSTM input projection", T * B, I, 4 * H),
                               (f"{p} LSTM recurrent step", B, Hmax, 4 * Hmax)):
            shapes.setdefault((m, k, n), label)
    sq = 128 if tiny else 2048
    shapes.setdefault((sq, sq, sq), "square reference")
    return [(label, m, k, n) for (m, k, n), label in shapes.items()]


def measure_matmul(shapes, device, budget_s):
    """Best float32 torch.mm rate per shape: repeated until ``budget_s`` is spent (at least 2 timed)."""
    rows = []
    for label, m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        torch.mm(a, b)  # warm-up
        sync(device)
        times, spent = [], 0.0
        while len(times) < 2 or (spent < budget_s and len(times) < 50):
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
        best = min(times)
        flops = 2 * m * k * n
        rows.append({"shape": label, "m": m, "k": k, "n": n, "flops": flops, "best_s": best,
                     "gflops": flops / best / 1e9})
        del a, b
    return rows


def random_stream(vocab, rows, batch_size, device):
    return torch.randint(vocab, (rows, batch_size), device=device)


class Runner:
    """One configuration's model, optimizer and hidden state, stepped by ``trainer.train_step``."""

    def __init__(self, cfg, vocab, device):
        set_seed(cfg["seed"])
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg, vocab).to(device)
        self.model.train()
        self.params = list(self.model.parameters())
        self.optimizer = make_optimizer(cfg, new_schedule(cfg), self.model.parameters(), device)
        self.reg = Regularizer.from_config(cfg)
        self.hidden = self.model.init_hidden(cfg["batch_size"])
        self.times, self.peak_mb, self.loss = [], 0.0, float("nan")

    def step(self, data, targets, seq_len):
        """Seconds of one ``train_step``, called exactly as ``trainer.train_epoch`` calls it."""
        sync(self.device)
        t0 = time.perf_counter()
        out = train_step(self.model, self.optimizer, self.params, data, targets, self.hidden, self.reg,
                         self.cfg, seq_len)
        sync(self.device)
        dt = time.perf_counter() - t0
        self.hidden = out.hidden
        self.loss = float(out.loss.detach())
        return dt


def time_training(cfgs, vocab, device, warmup, steps, warmup_seq_len=None):
    """Median and min seconds of ``trainer.train_step`` for each of ``cfgs`` (one preset, several
    regularizers), on the same random batches.

    The timed steps are interleaved (baseline, FD, baseline, FD, ...) so that a load that drifts
    during the run (other processes) weighs on every configuration alike and their ratio holds.
    Warm-up steps (untimed, each configuration in turn) have ``warmup_seq_len`` tokens per column
    when given (quick mode: a short step pays the first-call costs of kernels and allocator)."""
    B, seq_len = cfgs[0]["batch_size"], cfgs[0]["bptt"]
    lengths = [min(warmup_seq_len or seq_len, seq_len)] * warmup + [seq_len] * steps
    source = random_stream(vocab, sum(lengths) + 1, B, device)
    batches, offset = [], 0
    for length in lengths:
        batches.append(get_batch(source, offset, length) + (length,))
        offset += length
    runners = []
    for cfg in cfgs:
        runners.append(Runner(cfg, vocab, device))
        for data, targets, length in batches[:warmup]:
            runners[-1].step(data, targets, length)
    for s, (data, targets, length) in enumerate(batches[warmup:]):
        for r in runners:
            reset_peak_memory(device)
            r.times.append(r.step(data, targets, length))
            if device.type == "cuda" or s == 0:  # CPU: the process peak after its first timed step
                r.peak_mb = max(r.peak_mb, peak_memory_mb(device))
    return [(r.model, {"times_s": r.times, "median_s": statistics.median(r.times), "min_s": min(r.times),
                       "last_loss": r.loss, "peak_mem_mb": r.peak_mb}) for r in runners]


def time_evaluation(model, cfg, vocab, device, eval_tokens, eval_batches):
    """Tokens per second of ``trainer.evaluate`` at batch 10 and batch 1 on random data."""
    rows = []
    bptt = cfg["bptt"]
    stream = torch.randint(vocab, (eval_tokens,))
    for bsz in EVAL_BATCH_SIZES:
        source = batchify(stream, bsz, device)
        evaluate(model, source, bptt, bsz, max_batches=1)  # warm-up
        n_rows = source.size(0)
        tokens = 0
        for k, i in enumerate(range(0, n_rows - 1, bptt)):  # what evaluate() will process
            if eval_batches is not None and k >= eval_batches:
                break
            tokens += min(bptt, n_rows - 1 - i) * bsz
        sync(device)
        t0 = time.perf_counter()
        evaluate(model, source, bptt, bsz, max_batches=eval_batches)
        sync(device)
        dt = time.perf_counter() - t0
        rows.append({"preset": cfg["preset"], "batch_size": bsz, "bptt": bptt, "tokens": tokens,
                     "seconds": dt, "tokens_per_s": tokens / dt})
    model.train()
    return rows


# ----------------------------------------------------------------------------------------------
# report


def table(header, rows):
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cols) for j in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cols[1:]]
    return "\n".join(lines)


def ratio(table_, row):
    value = table_.get(row["preset"], {}).get(row["model"])
    return "-" if value is None else f"{value:.2f}"


def split_list(values):
    out = []
    for v in values:
        out += [x for x in v.split(",") if x]
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=list(PRESETS),
                   help=f"presets to time, space- or comma-separated (default: {' '.join(PRESETS)})")
    p.add_argument("--models", nargs="+", default=["baseline", "FD"],
                   help=f"regularizers to time, any of {' '.join(VARIANTS)} (default: baseline FD)")
    p.add_argument("--steps", type=int, help="timed training steps per configuration (default 5, quick 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps before them (default 1; quick: 1 short step of seq_len 5)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--eval-tokens", type=int, default=4000, help="random tokens for the evaluation rates")
    p.add_argument("--eval-batches", type=int,
                   help="at most this many bptt-long batches per evaluation (default 5, quick 2)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation rates")
    p.add_argument("--quick", action="store_true", help="fewer steps (same shapes): 1 timed step after 1 short warm-up step")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (for the test), same code paths")
    p.add_argument("--out", "--json", dest="out", help="also write every figure as JSON to this path")
    p.add_argument("--train_flags", default="", help="extra main.py flags for every configuration, given with '=', e.g. "
                                                     "--train_flags='--same_mask_w --no-batch_passes'")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    presets, models = split_list(args.presets), split_list(args.models)
    for p in presets:
        if p not in PRESETS:
            raise SystemExit(f"error: unknown preset {p!r} (choose from {', '.join(PRESETS)})")
    for m in models:
        if m not in VARIANTS:
            raise SystemExit(f"error: unknown model {m!r} (choose from {', '.join(VARIANTS)})")
    steps = args.steps if args.steps is not None else (1 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    warmup_seq_len = SHORT_WARMUP if args.quick else None
    eval_batches = args.eval_batches if args.eval_batches is not None else (2 if args.quick else 5)
    if steps < 1 or warmup < 0:
        raise SystemExit("error: --steps must be at least 1 and --warmup at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)

    command = shlex.join(["python", "bench.py", *argv])
    header = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "device": str(device), "command": command,
              "steps": steps, "warmup": warmup,
              "warmup_seq_len": warmup_seq_len or "bptt", "tiny": args.tiny, "python": platform.python_version()}
    if device.type == "cuda":
        header["gpu"] = torch.cuda.get_device_name(device)
        header["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    for k, v in header.items():
        print(f"{k + ':':15s} {v}")
    print()

    extra = shlex.split(args.train_flags)
    cfgs = {(p, m): bench_config(p, m, args.tiny, extra) for p in presets for m in models}
    for cfg in cfgs.values():
        cfg["device"] = args.device

    shapes = matmul_shapes([cfgs[(p, models[0])] for p in presets], args.tiny)
    mm = measure_matmul(shapes, device, budget_s=0.3 if args.quick else 1.0)
    machine = max(r["gflops"] for r in mm)
    print(f"dense float32 torch.mm, best of several runs per shape (machine rate = best: {machine:.1f} GFLOP/s)")
    print(table(["shape", "m x k x n", "GFLOP", "ms", "GFLOP/s"],
                [[r["shape"], f"{r['m']}x{r['k']}x{r['n']}", f"{r['flops'] / 1e9:.4g}", f"{r['best_s'] * 1e3:.3g}",
                  f"{r['gflops']:.1f}"] for r in mm]))
    print(flush=True)

    train_rows, eval_rows = [], []
    for p in presets:
        pcfgs = [cfgs[(p, m)] for m in models]
        vocab = vocab_size(pcfgs[0], args.tiny)
        timed = time_training(pcfgs, vocab, device, warmup, steps, warmup_seq_len)
        for m, cfg, (model, t) in zip(models, pcfgs, timed):
            flops = step_flops(cfg, vocab)
            tokens = cfg["bptt"] * cfg["batch_size"]
            row = {"preset": p, "model": m, "passes": passes(cfg), "batch_size": cfg["batch_size"],
                   "seq_len": cfg["bptt"], "vocab": vocab, "emsize": cfg["emsize"], "nhid": cfg["nhid"],
                   "nlayers": cfg["nlayers"], "tokens_per_step": tokens, "flops_per_step": flops, **t,
                   "tokens_per_s": tokens / t["median_s"], "effective_gflops": flops / t["median_s"] / 1e9,
                   "effective_gflops_min": flops / t["min_s"] / 1e9}
            row["fraction_of_matmul"] = row["effective_gflops"] / machine
            row["fraction_of_matmul_min"] = row["effective_gflops_min"] / machine
            train_rows.append(row)
            print(f"  {p:8s} {m:8s} median {t['median_s'] * 1e3:9.1f} ms  min {t['min_s'] * 1e3:9.1f} ms  "
                  f"{row['effective_gflops']:6.1f} GFLOP/s ({row['fraction_of_matmul']:.0%} of mm)", flush=True)
        if not args.no_eval:
            eval_rows += time_evaluation(timed[-1][0], pcfgs[-1], vocab, device, args.eval_tokens, eval_batches)
        del timed

    ratios, ratios_min = {}, {}  # step time of each regularizer / the baseline's, per preset
    for p in presets:
        rows = {r["model"]: r for r in train_rows if r["preset"] == p}
        if "baseline" in rows:
            base = rows["baseline"]
            ratios[p] = {m: r["median_s"] / base["median_s"] for m, r in rows.items() if m != "baseline"}
            ratios_min[p] = {m: r["min_s"] / base["min_s"] for m, r in rows.items() if m != "baseline"}

    print()
    mem = "peak GPU MiB" if device.type == "cuda" else "process max RSS MiB"
    wu = f"{warmup} warm-up" + (f" of seq_len {warmup_seq_len}" if warmup_seq_len and warmup else "")
    print(f"training step (trainer.train_step; {wu}, {steps} timed; rate = analytic matmul FLOPs "
          f"/ median time)")
    print(table(["preset", "model", "batch x seq", "GFLOP/step", "median ms", "min ms", "tokens/s",
                 "GFLOP/s", "of mm", "x baseline", "x base (min)", mem],
                [[r["preset"], r["model"], f"{r['batch_size']}x{r['seq_len']}", f"{r['flops_per_step'] / 1e9:.4g}",
                  f"{r['median_s'] * 1e3:.1f}", f"{r['min_s'] * 1e3:.1f}", f"{r['tokens_per_s']:.0f}",
                  f"{r['effective_gflops']:.1f}", f"{r['fraction_of_matmul']:.1%}",
                  ratio(ratios, r), ratio(ratios_min, r), f"{r['peak_mem_mb']:.0f}"] for r in train_rows]))
    if device.type == "cpu":
        print("(max RSS is process-wide and never decreases: each row is the process peak after that "
              "configuration's first timed step)")
    if eval_rows:
        print()
        print("evaluation (trainer.evaluate, eval mode, random tokens)")
        print(table(["preset", "batch", "bptt", "tokens", "seconds", "tokens/s"],
                    [[r["preset"], r["batch_size"], r["bptt"], r["tokens"], f"{r['seconds']:.3f}",
                      f"{r['tokens_per_s']:.0f}"] for r in eval_rows]))

    result = {"header": header, "matmul": {"shapes": mm, "machine_gflops": machine}, "train": train_rows,
              "ratios": ratios, "ratios_min": ratios_min, "eval": eval_rows,
              "flops_formula": "passes * 3 * seq_len * batch * (sum_l 2*4*H_l*(I_l+H_l) + 2*E*V)"}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    run_cli(main)
