"""A run of main.py or finetune.py: its checks before it touches a file, then per epoch (epoch.py) validation, the best
model, the schedule's decision, metrics and a resume point, so that a kill at any moment loses minutes, not results."""
from __future__ import annotations  # the X | None fields below on Python 3.9

import json
import math
import os
import tempfile
import time
import uuid
from collections import namedtuple
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from tqdm import tqdm

import distributed
from checkpoint import check_vocab, load_checkpoint, load_weights, save_checkpoint, set_rng_state, vocab_info
from runfiles import (RUN_FILES, Interrupted, RunLock, UserError, atomic_write_json, atomic_write_jsonl,
                      check_output_path, read_json, remove_stale_temp_files, run_paths)
from scoring import evaluate, ppl
from data import Corpus, batchify, check_split_sizes, first_lines
from epoch import NonFiniteLoss, averaged_weights, make_optimizer, train_epoch
from fraternal import Regularizer, overlap_blocker
from model import RNNModel
from schedule import ANNEAL, STOP, SWITCH, Schedule
from utils import DeferredInterrupt, get_device, set_seed

RULE = "-" * 89
Stage = namedtuple("Stage", "name tool flag")  # what the run is called, the tool that continues it, its output's flag
STAGES = {"train": Stage("training", "main.py", "--save"), "finetune": Stage("fine-tuning", "finetune.py", "--out")}


@dataclass
class Run:
    """One training or fine-tuning run.  ``source``: the best model whose weights start it (fine-tuning);
    ``stamp``: what every file of the run carries (its run id, its corpus's hash)."""
    cfg: dict
    paths: dict
    device: torch.device
    corpus: Corpus
    splits: dict
    model: RNNModel
    schedule: Schedule
    stamp: dict
    resume: dict | None = None
    source: dict | None = None
    position: dict | None = None  # a mid-epoch resume point to continue from
    lock: RunLock | None = None  # rank 0's, verified before each save
    optimizer: torch.optim.Optimizer | None = None
    reg: Regularizer | None = None
    written: str = ""  # where the last resume point of this process stands
    result: dict | None = None  # the finished run's final results, once written

    stage = property(lambda self: STAGES[self.cfg.get("stage", "train")])
    dry = property(lambda self: self.cfg["dry_run"])
    vocab = property(lambda self: vocab_info(self.corpus.dictionary))

    def still_ours(self):
        """Collective: a run whose lock another process took stops before it writes again."""
        error = None
        if self.lock is not None:
            try:
                self.lock.verify()
            except UserError as e:
                error = e
        distributed.gate(error)

    def save_best(self, **extra):
        if distributed.is_main():
            save_checkpoint(self.paths["best"], "best", self.model, self.cfg, self.vocab, **extra, **self.stamp)

    def save_resume_point(self, pos=None):
        """Collective: every rank joins, rank 0 writes."""
        pos = distributed.merge_position(pos) if pos is not None else None
        rng = distributed.rng_state()
        self.still_ours()
        if distributed.is_main():
            save_checkpoint(self.paths["resume"], "resume", self.model, self.cfg, self.vocab,
                            schedule=self.schedule.state_dict(), optimizer=self.optimizer.state_dict(), rng=rng,
                            **({"position": pos} if pos else {}), **self.stamp)
        self.written = (f"inside epoch {pos['epoch']}, after batch {pos['batch']}" if pos
                        else f"after epoch {self.schedule.epoch}")
        if pos:
            tqdm.write(f"| resume point written mid-epoch ({self.written}): {self.paths['resume']}")

    def validate(self, max_batches, desc):
        return distributed.agree(evaluate(self.model, self.splits["valid"], self.cfg["bptt"],
                                          self.cfg["eval_batch_size"], max_batches, desc))


def run_epoch(r, epoch, stop):
    """Train one epoch, validate, save the best model, follow the schedule, write the resume point and metrics."""
    dry, schedule = r.dry, r.schedule
    epoch_start = time.time() - (r.position["seconds"] if r.position else 0.0)
    stats = distributed.average_stats(train_epoch(r.model, r.optimizer, r.splits["train"], r.cfg, r.reg, epoch,
                                                  2 if dry else None, position=r.position,
                                                  checkpoint=None if dry else r.save_resume_point, stop=stop))
    r.position = None
    with averaged_weights(r.model, r.optimizer):
        val_loss = r.validate(5 if dry else None, f"validation, epoch {epoch}")
        if not math.isfinite(val_loss):
            raise NonFiniteLoss("validation", val_loss, f"epoch {epoch}", r.paths["best"])
        r.still_ours()
        improved = schedule.improves(val_loss)
        if improved:
            r.save_best(epoch=epoch, valid_loss=val_loss)
    schedule.elapsed = round(schedule.elapsed + time.time() - epoch_start, 3)  # training and validation so far
    row = {"epoch": epoch, "seconds": round(stats["seconds"], 3), "train_loss": stats["train_loss"],
           "train_ppl": ppl(stats["train_loss"]), "valid_loss": val_loss, "valid_ppl": ppl(val_loss),
           "penalty": stats["penalty"], "lr": schedule.lr, "phase": schedule.phase,
           "tokens_per_s": round(stats["tokens_per_s"], 1), "best": improved, "elapsed": schedule.elapsed}
    weights = "averaged" if schedule.averaging else "raw"
    action = schedule.update(epoch, val_loss)
    print(f"{RULE}\n| end of epoch {epoch:3d} | time: {stats['seconds']:5.2f}s | valid loss {val_loss:5.2f} | "
          f"valid ppl {ppl(val_loss):8.2f} | {weights} weights{' | saved' if improved else ''}\n{RULE}")
    if action == SWITCH:
        print("Switching to ASGD")
        r.optimizer = make_optimizer(r.cfg, schedule, r.model.parameters(), r.device)
    elif action == ANNEAL:
        distributed.load_best(r.model, r.paths["best"])
        for group in r.optimizer.param_groups:
            group["lr"] = schedule.lr
        print(f"Annealing: reloaded the best model (epoch {schedule.best_epoch}), lr now {schedule.lr:g}")
    elif action == STOP:
        print(f"Stopping: the {r.cfg['optimizer']} schedule ended training after epoch {epoch}")
    schedule.metrics.append(row)
    if not dry:  # the resume point first: metrics are never ahead of it
        r.save_resume_point()
    if distributed.is_main():
        atomic_write_jsonl(schedule.metrics, r.paths["metrics"])
    if distributed.agree(stop.requested):  # Ctrl-C during validation: stop after the epoch's resume point
        raise KeyboardInterrupt


def fit(r):
    """Epochs until the limit or the schedule stops; Ctrl-C ends at the end of the batch (or validation) under way,
    writes a resume point and raises runfiles.Interrupted with the line that says how to continue."""
    r.optimizer = make_optimizer(r.cfg, r.schedule, r.model.parameters(), r.device)
    if r.resume is not None:
        try:
            r.optimizer.load_state_dict(r.resume["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"the optimizer state in the resume checkpoint does not fit the model ({e}): "
                            f"use an intact resume checkpoint written by main.py") from None
    stop = DeferredInterrupt("stopping at the end of this batch (or of this validation) and writing a resume point",
                             say=distributed.is_main())
    try:
        while not r.schedule.stopped and r.schedule.epoch < r.cfg["epochs"]:
            run_epoch(r, r.schedule.epoch + 1, stop)
    except KeyboardInterrupt:  # say what Ctrl-C left, in full; the exception carries the one line for the exit
        print(f"{RULE}\nExiting from training early")
        if r.dry:
            print("A dry run writes no resume point.")
            raise Interrupted("a dry run writes no resume point") from None
        if not (r.written or os.path.exists(r.paths["resume"])):
            print("No resume point was written yet.")
            raise Interrupted("no resume point was written yet: start the run again") from None
        command = f"python {r.stage.tool} --resume {r.paths['resume']}"
        print(f"Resume point{f' ({r.written})' if r.written else ''}: {r.paths['resume']}\nContinue with: {command}")
        raise Interrupted(f"continue with: {command}") from None
    finally:
        stop.restore()


def final_evaluation(r, interrupted):
    """Score the best model on validation and test (``interrupted``: by a Ctrl-C, after r.schedule.epoch epochs)."""
    blob = load_checkpoint(r.paths["best"], "best")
    load_weights(r.model, blob, r.paths["best"])
    short, cfg, label = 5 if r.dry else None, r.cfg, r.stage.name
    valid = evaluate(r.model, r.splits["valid"], cfg["bptt"], cfg["eval_batch_size"], short, "validation, best model")
    test = evaluate(r.model, r.splits["test"], cfg["bptt"], cfg["test_batch_size"], short, "test, best model")
    end = (f"test loss {test:5.2f}" if label == "training" else f"valid ppl {ppl(valid):8.2f}")
    print(f"{RULE}\n| End of {label} | {end} | test ppl {ppl(test):8.2f} |\n{RULE}")
    done = f"was interrupted after {r.schedule.epoch} epoch{'s' * (r.schedule.epoch != 1)}" if interrupted else ""
    if label == "fine-tuning" and blob.get("epoch") == 0:
        print(f"Note: {label} {done + ', before it improved' if done else 'never improved'} on the input's "
              f"validation perplexity, so {r.paths['best']} holds the input's weights.")
    elif done:
        print(f"Note: {label} {done}: this is its best model so far (epoch {blob.get('epoch')}), not a finished "
              f"run's.")
    if r.dry:
        print("Note: a dry run trains 2 batches, so perplexities in the thousands or millions are expected.")
    result = {"valid_loss": valid, "valid_ppl": ppl(valid), "test_loss": test, "test_ppl": ppl(test),
              "best_epoch": blob.get("epoch"), "checkpoint": str(r.paths["best"]), **r.stamp}
    r.result = None if interrupted else result
    atomic_write_json(result, r.paths["final"])
    return result


def load_resume(path, tool):
    """A resume point, or one line saying what to run where there is none at ``path``."""
    path = str(path)
    if os.path.isfile(path):
        return load_checkpoint(path, "resume")
    best = path[:-len(".resume.pt")] + ".pt" if path.endswith(".resume.pt") else "runs/NAME.pt"
    hint = (f"its run's best model is there: evaluate it with python evaluate.py --save {best}" if os.path.isfile(best)
            else f"start the run with python main.py --save {best}" if tool == "main.py"
            else f"start the fine-tuning with python finetune.py --save TRAINED.pt --out {best}")
    raise UserError(f"no resume point at {path} (a run writes NAME.resume.pt beside its best model NAME.pt): check "
                    f"the path, or {hint}")


def check_run_paths(cfg, paths, flag, source):
    """Every file the run will write can be written, and none is a file of another run's set."""
    best, reserved = str(paths["best"]), [f".{suffix}" for suffix in RUN_FILES.values()]
    for what, suffix in RUN_FILES.items():
        if best.endswith(f".{suffix}"):
            raise UserError(f"{flag} {best} ends in .{suffix}, the name of another run's {what} file: choose a "
                            f"name that ends in none of {', '.join(reserved)}")
    if source is not None and cfg.get("finetuned_from"):
        theirs = {os.path.realpath(p) for p in run_paths(cfg["finetuned_from"]).values()}
        shared = [p for p in paths.values() if os.path.realpath(p) in theirs]
        if shared:
            raise UserError(f"{flag} {best} would write {shared[0]}, a file of the input's own run: fine-tuning never "
                            f"touches its input's files, choose another {flag}")
    check_output_path(paths["best"], flag, siblings=[p for k, p in paths.items() if k != "best"])


def earlier_run_files(paths, overwrite):
    """An earlier run's files here: refused, or returned for removal, so a later --resume never mixes two runs."""
    existing = [p for k, p in paths.items() if k != "lock" and os.path.exists(p)]
    if existing and not overwrite:
        hint = (f"continue that run with --resume {paths['resume']}, " if os.path.exists(paths["resume"])
                else "its run left no resume file; ")
        raise UserError(f"{existing[0]} already exists: {hint}choose another output path, or pass --overwrite")
    return existing


def check_own_files(paths, resume):
    """A resume point continues only its own run's files: the best model beside it must carry its run id."""
    own = resume.get("run")
    if own is not None and os.path.exists(paths["best"]):
        theirs = load_checkpoint(paths["best"], "best").get("run")
        if theirs != own:
            raise UserError(f"{paths['best']} was written by another run than the one {paths['resume']} continues "
                            f"(run {theirs or 'without an id'}, not {own}): move one of them away; a resume point "
                            f"never continues another run's files")


def run(cfg, resume=None, source=None, overwrite=False):
    """Everything main.py and finetune.py do (``source``: the best model that starts a fine-tuning run); every check
    comes before any file is touched, and an earlier run's files (``overwrite``) go only once this one can start."""
    if cfg["dry_run"] and cfg.get("save") is None:
        with tempfile.TemporaryDirectory(prefix="fd-dry-run-") as tmp:
            print(f"A dry run writes to a temporary folder, removed at its end: {tmp}")
            return run(dict(cfg, save=os.path.join(tmp, "model.pt")), resume, source, overwrite)
    if resume is None:  # --data resolved now, as --save is, so a resume from any folder reads the same corpus
        cfg = dict(cfg, data=os.path.abspath(cfg["data"]))
    paths, flag = run_paths(cfg["save"]), STAGES[cfg.get("stage", "train")].flag
    r = error = old = lock = None
    try:
        with ExitStack() as held:
            try:
                if resume is not None and overwrite:
                    raise UserError("--overwrite has no effect with --resume, which continues the run's own files: "
                                    "drop --overwrite (or start a new run with it, without --resume)")
                device = distributed.local_device(get_device(cfg["device"]))
                if distributed.is_main():  # rank 0 checks, locks and claims the run's files for every rank
                    check_run_paths(cfg, paths, flag, source)
                    lock = held.enter_context(RunLock(paths["lock"], flag))
                    for path in paths.values():
                        remove_stale_temp_files(path)
                    old = earlier_run_files(paths, overwrite) if resume is None else check_own_files(paths, resume)
                r = prepare(cfg, device, paths, resume, source, lock)
            except UserError as e:
                error = e
            distributed.gate(error)  # a failed check ends every process, said once
            for path in old or ():  # the earlier run goes only now that this one can start
                os.unlink(path)
            return train(r)
    except KeyboardInterrupt as e:
        if r is None or r.result is None or isinstance(e, Interrupted) or read_json(paths["final"]) != r.result:
            raise
        raise Interrupted(f"Ctrl-C came after the end: the run is complete, its results are in {paths['final']}"
                          ) from None


def read_corpus(cfg, resume, source):
    """The run's corpus, checked against the checkpoints it continues or starts from, cut to --train_fraction."""
    corpus = Corpus(cfg["data"])
    for blob, what in ((resume, "the resume checkpoint"), (source, "the input checkpoint")):
        if blob is not None:
            check_vocab(blob, corpus.dictionary, what, cfg["data"])
    if resume is not None and resume.get("corpus_sha256") not in (None, corpus.sha256):
        raise UserError(f"the corpus at {cfg['data']} is not the one this run trained on (same vocabulary, other "
                        f"text: a file changed, or --data names another corpus): resume with the run's own, "
                        f"unchanged corpus")
    if cfg["train_fraction"] < 1:  # cut in memory: the corpus folder and the vocabulary stay the whole corpus's
        eos = corpus.dictionary.word2idx["<eos>"]
        lines, tokens = int((corpus.train == eos).sum()), corpus.train.numel()
        corpus.train = first_lines(corpus.train, cfg["train_fraction"], eos)
        print(f"Training on the first {int((corpus.train == eos).sum())} of the training text's {lines} lines "
              f"({corpus.train.numel()} of {tokens} tokens; --train_fraction {cfg['train_fraction']:g})")
    check_split_sizes(corpus, cfg)
    return corpus


def prepare(cfg, device, paths, resume, source, lock):
    """Everything that can refuse the run (corpus, sizes, model, resume state), touching no file; first its files."""
    print("Configuration: " + json.dumps(cfg, sort_keys=True))
    every = cfg.get("checkpoint_every", 0)
    resume_point = ("none (a dry run)" if cfg["dry_run"] else
                    f"{paths['resume']} (after each epoch{f' and every {every:g} min' if every else ''}; continue "
                    f"with: python {STAGES[cfg.get('stage', 'train')].tool} --resume {paths['resume']})")
    print(f"Files of this run:\n"
          f"  best model     {paths['best']} (rewritten at each new best validation loss)\n"
          f"  resume point   {resume_point}\n"
          f"  metrics        {paths['metrics']} (one JSON line per epoch)\n"
          f"  final results  {paths['final']} (validation and test of the best model, at the end)\n"
          f"  lock           {paths['lock']} (only while the run is in progress)")
    set_seed(cfg["seed"])
    corpus = read_corpus(cfg, resume, source)
    splits = {"train": distributed.shard(batchify(corpus.train, cfg["batch_size"], device)),
              "valid": batchify(corpus.valid, cfg["eval_batch_size"], device),
              "test": batchify(corpus.test, cfg["test_batch_size"], device)}
    model = RNNModel.from_config(cfg, len(corpus.dictionary)).to(device)
    stamp = {"run": (resume or {}).get("run") or uuid.uuid4().hex, "corpus_sha256": corpus.sha256}
    r = Run(cfg, paths, device, corpus, splits, model, Schedule(cfg), stamp, resume, source, lock=lock)
    if resume is not None:
        load_weights(model, resume, "the resume checkpoint")
        r.schedule = Schedule(cfg).load_state_dict(resume["schedule"])
        done = r.schedule.epoch
        if cfg["epochs"] < done:
            raise UserError(f"--epochs {cfg['epochs']} is below the {done} epochs this run has already trained: give "
                            f"--epochs {done + 1} or more to train on (its best model is {paths['best']})")
        r.position = distributed.own_position(resume.get("position"))
        set_rng_state(resume["rng"])
    elif source is not None:
        load_weights(model, source, "the input checkpoint")
    return r


def train(r):
    """Say where the run starts (a fine-tuning run scores its input first, the loss to beat), train, then score the
    best model (rank 0); after Ctrl-C too, then raise: an interrupted run is not finished."""
    if r.resume is not None:
        if not r.dry and distributed.is_main():
            atomic_write_jsonl(r.schedule.metrics, r.paths["metrics"])  # exactly the resume point's epochs
        where = f", inside epoch {r.position['epoch']} at batch {r.position['batch']}" if r.position else ""
        print(f"Resuming after epoch {r.schedule.epoch}{where} (best so far: epoch {r.schedule.best_epoch})")
    elif r.source is not None:
        loss = r.validate(5 if r.dry else None, "validation, input model")
        print(f"Starting from valid ppl {ppl(loss):.2f}")
        r.save_best(epoch=0, valid_loss=loss)
        r.schedule = Schedule(r.cfg, best_val=loss)
    print(f"Model total parameters: {sum(p.numel() for p in r.model.parameters())}")
    print(f"Device: {r.device}; tokens: train {r.corpus.train.numel()}, valid {r.corpus.valid.numel()}, "
          f"test {r.corpus.test.numel()}; vocabulary {len(r.corpus.dictionary)}")
    distributed.prepare(r.model, r.cfg, r.resume)
    r.reg = Regularizer.from_config(r.cfg)
    if r.cfg.get("overlap_passes"):
        reason = overlap_blocker(r.reg, r.device)
        print("--overlap_passes: " + (f"the two passes run one after the other here: {reason}" if reason
                                      else "pass 2 runs on a second CUDA stream beside pass 1"))
    interrupted = None
    try:
        fit(r)
    except Interrupted as e:
        interrupted = e
    if interrupted is not None and distributed.size() > 1:  # torchrun kills its processes 30 s after a Ctrl-C
        if distributed.is_main() and os.path.exists(r.paths["best"]):
            print(f"No test evaluation after Ctrl-C under torchrun; the best model so far: python evaluate.py --save "
                  f"{r.paths['best']}")
        raise interrupted
    if not distributed.is_main():  # the test evaluation is rank 0's alone
        return None
    if not os.path.exists(r.paths["best"]) and r.dry:  # a dry run's temporary best: the weights as they are
        r.save_best(epoch=r.schedule.epoch)
    result = final_evaluation(r, interrupted is not None) if os.path.exists(r.paths["best"]) else None
    if result is None:
        if os.path.exists(r.paths["final"]):  # an earlier final.json would describe a model that is gone
            os.unlink(r.paths["final"])
        print("No best model was saved by this run, so there is nothing to evaluate on test.")
    if interrupted is not None:  # not a finished run, whatever it evaluated: the exit code says so
        raise interrupted
    return result
