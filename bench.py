"""Benchmark: what one training step of main.py costs, per preset, for FD against the baseline.

FD runs the network twice per batch, so its step should cost about twice a baseline step (``x base``). Timed is
``epoch.train_step`` on main.py's model with random token ids, a preset's configurations in turn on the same batches
(outside load weighs on all alike; the minimum is least disturbed). "of peak": over ``torch.mm``'s best at the shapes.

    python bench.py --out results/bench.json                 # every preset, baseline and FD
    python bench.py --preset single --model baseline FD RD --overlap --eval
    python bench.py --scale tiny                             # tiny shapes, one timed step: the same code paths
"""
import difflib
import math
import resource
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import torch

from config import PRESETS, VARIANTS, check_flags, train_config
from data import get_batch
from fraternal import Regularizer, overlap_blocker
from fused_loss import chunk_rows
from model import RNNModel
from schedule import Schedule
from scoring import evaluate
from epoch import make_optimizer, train_step
from utils import get_device, set_seed
from runfiles import ArgumentParser, UserError, atomic_write_json, check_output_path, code_commit, cpu_model, run_cli

VOCAB = {"data/penn": 10000, "data/wikitext-2": 33278}  # vocabulary sizes of the presets' corpora
TINY, TINY_VOCAB = ["--emsize", "8", "--nhid", "12", "--batch_size", "3", "--bptt", "5"], 50  # --scale tiny
RSS_UNIT = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss is in bytes on macOS, KiB elsewhere
MM_SECONDS = 0.02  # time short products over repeated calls, so that launch and timer costs vanish


def timed(device, work, reps=1):
    """Seconds per call of ``work()`` over ``reps`` calls, the device's queue drained before and after; its result."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = work()
    sync(device)
    return (time.perf_counter() - t0) / reps, out


def mm_shapes(model, seq_len, batch, device):
    """(m, k, n, a transposed, b transposed) of the step's products: x @ W.t(), G @ W and G.t() @ X per weight."""
    rows = seq_len * batch
    uses = [(w, rows) for rnn in model.rnns for w in (rnn.weight_ih_l0, rnn.weight_hh_l0)]
    uses += [(rnn.weight_hh_l0, batch) for rnn in model.rnns]  # W_hh also one time step at a time
    uses += [(model.decoder.weight, min(rows, chunk_rows(model.ntoken, device)))]  # fused_loss's row chunks
    return sorted({s for w, m in uses for o, i in [w.shape]
                   for s in ((m, i, o, False, True), (m, o, i, False, False), (o, m, i, True, False))})


def time_mm(shapes, best, device):
    """Time each (m, k, n, ta, tb) shape once (repeated calls of about MM_SECONDS); keep the best per call."""
    for key in shapes:
        m, k, n, ta, tb = key
        a = torch.rand((k, m) if ta else (m, k), device=device)
        b = torch.rand((n, k) if tb else (k, n), device=device)
        a, b, c = a.t() if ta else a, b.t() if tb else b, torch.empty(m, n, device=device)
        reps = max(1, min(100, math.ceil(MM_SECONDS / best.get(key, MM_SECONDS))))
        best[key] = min(best.get(key, math.inf), timed(device, lambda: torch.mm(a, b, out=c), reps)[0])


def runner(cfg, vocab, device):
    set_seed(cfg["seed"])
    model = RNNModel.from_config(cfg, vocab).to(device).train()
    return SimpleNamespace(cfg=cfg, times=[], mem=0.0, model=model, params=list(model.parameters()),
                           opt=make_optimizer(cfg, Schedule(cfg), model.parameters(), device),
                           reg=Regularizer.from_config(cfg), hidden=model.init_hidden(cfg["batch_size"]))


def bench_preset(preset, models, args, device, ceiling_tf32):
    """Rows of one preset: rounds of (matmul shapes, then one step of each model), the first ``warmup`` untimed."""
    tiny = args.scale == "tiny"
    argv = [["--preset", preset, "--model", m, "--device", args.device] + TINY * tiny
            + shlex.split(args.train_flags) for m in models]
    cfgs = [train_config(a) for a in argv]
    if args.overlap:  # each two-pass model once more, pass 2 on a second CUDA stream
        cfgs += [train_config(a + ["--overlap_passes"]) for a, c in zip(argv, cfgs)
                 if Regularizer.from_config(c).second_pass]
    vocab = TINY_VOCAB if tiny else VOCAB[cfgs[0]["data"]]
    runners = [runner(c, vocab, device) for c in cfgs]
    B, T = cfgs[0]["batch_size"], cfgs[0]["bptt"]
    shapes, best = mm_shapes(runners[0].model, T, B, device), {}
    lengths = [min(T, 5) if tiny else T] * args.warmup + [T] * args.steps
    source = torch.randint(vocab, (sum(lengths) + 1, B), device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    for r, length in enumerate(lengths):
        torch.backends.cuda.matmul.allow_tf32 = ceiling_tf32
        time_mm(shapes, best, device)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        data, targets = get_batch(source, sum(lengths[:r]), length)
        for run in runners:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, out = timed(device, lambda: train_step(run.model, run.opt, run.params, data, targets, run.hidden,
                                                            run.reg, run.cfg, length))
            run.hidden = out.hidden
            if r >= args.warmup:  # memory: CUDA's allocator peak since its reset, else the process's max RSS
                run.times.append(seconds)
                run.mem = max(run.mem, torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
                              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / RSS_UNIT)
    peak = max(2 * m * k * n / t for (m, k, n, _, _), t in best.items())
    rows, base = [], runners[models.index("baseline")] if "baseline" in models else None
    sequential = {run.cfg["model"]: run for run in runners[:len(models)]}
    for run in runners:
        passes = 2 if run.reg.second_pass else 1  # FLOPs: 2 per weight per token, x3 (forward, both gradients)
        weights = sum(w.numel() for rnn in run.model.rnns for w in (rnn.weight_ih_l0, rnn.weight_hh_l0))
        flops = passes * 3 * 2 * T * B * (weights + run.model.decoder.weight.numel())
        med, low = statistics.median(run.times), min(run.times)
        seq = sequential[run.cfg["model"]] if run.reg.overlap else None
        fallback = overlap_blocker(run.reg, device) if run.reg.overlap else None
        rows.append({"preset": preset, "model": run.cfg["model"], "overlap": run.reg.overlap,
                     "overlap_active": run.reg.overlap and fallback is None, "overlap_fallback": fallback,
                     "batch_size": B, "seq_len": T, "vocab": vocab, "passes": passes,
                     "flops_per_step": flops, "times_s": run.times, "median_s": med, "min_s": low,
                     "tokens_per_s": T * B / med, "gflops": flops / med / 1e9, "peak_gflops": peak / 1e9,
                     "of_peak": flops / med / peak, "of_peak_min": flops / low / peak, "peak_mem_mb": run.mem,
                     **{f"x_{name}{end}": f(run.times) / f(other.times) if other else None  # vs baseline, sequential
                        for name, other in (("base", base if run is not base else None), ("sequential", seq))
                        for end, f in (("", statistics.median), ("_min", min))}})
    mm = [{"m": m, "k": k, "n": n, "a_t": ta, "b_t": tb, "gflops": 2 * m * k * n / t / 1e9}
          for (m, k, n, ta, tb), t in best.items()]
    return rows, mm, eval_rates(runners[0], preset, vocab, device, 2 if tiny else 5) if args.eval else []


def eval_rates(run, preset, vocab, device, batches):
    """Tokens per second of ``scoring.evaluate`` at the validation (10) and test (1) batch sizes."""
    out, bptt = [], run.cfg["bptt"]
    for bsz in (10, 1):
        source = torch.randint(vocab, (bptt * batches + 1, bsz), device=device)
        evaluate(run.model, source, bptt, bsz, max_batches=1)  # warm-up
        seconds, _ = timed(device, lambda: evaluate(run.model, source, bptt, bsz))
        out.append({"preset": preset, "batch_size": bsz, "tokens_per_s": bptt * batches * bsz / seconds})
    run.model.train()
    return out


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).rjust(w) for x, w in zip(r, widths)) for r in [header, *rows])


def known(given, names, flag):
    """``given`` as ``names`` spell them (any case will do); else one line naming the closest."""
    lower = {n.lower(): n for n in names}
    for name in (n for n in given if n.lower() not in lower):
        close = difflib.get_close_matches(name.lower(), lower, 1)
        raise UserError(f"unknown {flag} {name!r}" + (f" (did you mean {lower[close[0]]}?)" if close else "")
                        + f": choose from {', '.join(names)}")
    return [lower[n.lower()] for n in given]


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", default=list(PRESETS), help=f"presets (default all: {' '.join(PRESETS)})")
    p.add_argument("--model", nargs="+", default=["baseline", "FD"],
                   help=f"of {', '.join(VARIANTS)} (default baseline FD)")
    p.add_argument("--scale", choices=("full", "tiny"), default="full",
                   help="full: the presets' shapes; tiny: tiny shapes, 1 timed step, short warm-up (for the test)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: PyTorch's choice)")
    p.add_argument("--steps", type=int, help="timed steps per configuration (default 3, at --scale tiny 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--eval", action="store_true", help="also tokens/s of scoring.evaluate at batch 10 and 1")
    p.add_argument("--overlap", action="store_true", help="also step every two-pass model with --overlap_passes "
                   "(pass 2 on a second CUDA stream; off CUDA those rows run the sequential path and say so)")
    p.add_argument("--train_flags", default="", help="extra main.py flags, e.g. --train_flags='--same_mask_w'")
    p.add_argument("--out", help="write every figure as JSON here")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    presets, models = known(args.preset, list(PRESETS), "preset"), known(args.model, list(VARIANTS), "model")
    args.steps = args.steps if args.steps is not None else (1 if args.scale == "tiny" else 3)
    check_flags(vars(args), {"steps": "positive_int", "warmup": "count", "threads": "positive_int"})
    if args.out:
        check_output_path(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    cuda = device.type == "cuda"  # the ceiling uses TF32 wherever a kernel of the step (cuDNN's LSTM) may use it
    tf32 = cuda and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    header = {"torch": torch.__version__, "device": str(device), "gpu": torch.cuda.get_device_name(device)
              if cuda else None, "cpu": cpu_model(), "threads": torch.get_num_threads(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": code_commit(),
              "command": shlex.join(["python", "bench.py", *argv]), "steps": args.steps, "warmup": args.warmup,
              "mm_tf32": tf32 if cuda else None}
    print("  ".join(f"{k}: {v}" for k, v in header.items() if v is not None), flush=True)
    rows, evals, matmul = [], [], {}
    for preset in presets:
        r, matmul[preset], e = bench_preset(preset, models, args, device, tf32)
        rows, evals = rows + r, evals + e
        print(f"{preset}: " + ", ".join(f"{x['model']}{' overlapped' if x['overlap'] else ''} "
                                        f"{x['median_s'] * 1e3:.1f} ms" for x in r), flush=True)
    print("\n" + table(
        ["preset", "model", "overlap", "batch x seq", "GFLOP", "median ms", "min ms", "tokens/s", "GFLOP/s",
         "peak GFLOP/s", "of peak", "x base", "x base min", "x seq", "x seq min",
         "peak MiB" if cuda else "max RSS MiB"],
        [[r["preset"], r["model"], ("on" if r["overlap_active"] else "sequential") if r["overlap"] else "-",
          f"{r['batch_size']}x{r['seq_len']}", f"{r['flops_per_step'] / 1e9:.4g}",
          f"{r['median_s'] * 1e3:.1f}", f"{r['min_s'] * 1e3:.1f}", f"{r['tokens_per_s']:.0f}", f"{r['gflops']:.1f}",
          f"{r['peak_gflops']:.1f}", f"{r['of_peak']:.0%}", *(f"{r[k]:.2f}" if r[k] else "-" for k in
          ("x_base", "x_base_min", "x_sequential", "x_sequential_min")), f"{r['peak_mem_mb']:.0f}"] for r in rows]))
    if device.type == "cpu":
        print("(max RSS is the whole process's high-water mark so far, not the configuration's own)")
    for reason in sorted({r["overlap_fallback"] for r in rows if r["overlap_fallback"]}):
        print(f"(overlap 'sequential': --overlap_passes ran the passes one after the other: {reason})")
    if evals:
        print("\n" + table(["preset", "eval batch", "tokens/s"],
                           [[e["preset"], e["batch_size"], f"{e['tokens_per_s']:.0f}"] for e in evals]))
    if args.out:
        atomic_write_json({"header": header, "train": rows, "eval": evals, "matmul": matmul}, args.out)
    return rows


if __name__ == "__main__":
    run_cli(main)
