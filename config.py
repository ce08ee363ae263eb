"""Presets (the columns of the paper's experiment table) and the command line built on them.

Every hyper-parameter flag defaults to None; the chosen ``--preset`` fills what the user did not
give, so an explicit flag always wins and ``--help`` can show each preset's value.
"""
import argparse
import math
import os
from typing import Optional, TypedDict, get_type_hints

from checkpoint import run_paths, sidecar
from fraternal import PENALTIES, VARIANTS
from utils import UserError, check_device_name

PRESETS = {
    "single": dict(  # single-layer PTB ablation setup
        data="data/penn", emsize=655, nhid=655, nlayers=1, lr=30.0, clip=0.25, epochs=1000,
        batch_size=64, bptt=35, dropout=0.4, dropouth=0.0, dropouti=0.65, dropoute=0.1, wdrop=0.5,
        seed=321, nonmono=5, alpha=0.0, beta=0.0, wdecay=1.2e-6, optimizer="sgd-anneal",
        locked=False, tied=True, max_seq_len=45, reset_hidden_prob=0.01, patience=20, anneal=3.0,
        min_lr=0.1),
    "awd-ptb": dict(  # 3-layer AWD-LSTM on PTB
        data="data/penn", emsize=400, nhid=1150, nlayers=3, lr=30.0, clip=0.25, epochs=750,
        batch_size=20, bptt=70, dropout=0.4, dropouth=0.3, dropouti=0.4, dropoute=0.1, wdrop=0.5,
        seed=321, nonmono=60, alpha=0.0, beta=0.0, wdecay=1.2e-6, optimizer="asgd-nt",
        locked=True, tied=True, max_seq_len=0, reset_hidden_prob=0.0, patience=20, anneal=3.0,
        min_lr=0.1),
}
PRESETS["awd-wt2"] = dict(PRESETS["awd-ptb"], data="data/wikitext-2", batch_size=40, dropouth=0.2,
                          dropouti=0.65)
# Merity et al.'s own AWD-LSTM runs, the "AWD-LSTM without FD" rows: one preset per source, each beside
# that source's numbers (README "Reproducing the paper").
# merity-*: the paper's text (arXiv 1708.02182, "Experiment details"): NT-ASGD with n = 5, batch 40 (PTB)
#   and 80 (WT2), dropout on word vectors / between layers / final output / embedding 0.4 / 0.3 / 0.4 /
#   0.1, input dropout 0.65 on WT2, weight drop 0.5, AR 2, TAR 1, 750 epochs; except PTB's epochs: 500,
#   the authors' later note (awd-lstm-lm README at 19470c8) on how the paper's PTB model was trained.
#   The paper names no seed: we take the README commands' (141 PTB, 1882 WT2).
# merity-readme-*: awd-lstm-lm's README commands at the paper's commit bf0742c, with their own numbers:
#   PTB batch 20, dropouth 0.25, 500 epochs; WT2 batch 80, dropouth 0.2, 750 epochs; same seeds.
_AWD = dict(nonmono=5, alpha=2.0, beta=1.0)
PRESETS["merity-ptb"] = dict(PRESETS["awd-ptb"], **_AWD, batch_size=40, dropouth=0.3, dropouti=0.4, seed=141,
                             epochs=500)
PRESETS["merity-wt2"] = dict(PRESETS["awd-ptb"], **_AWD, data="data/wikitext-2", batch_size=80, dropouth=0.3,
                             dropouti=0.65, seed=1882, epochs=750)
PRESETS["merity-readme-ptb"] = dict(PRESETS["merity-ptb"], batch_size=20, dropouth=0.25)
PRESETS["merity-readme-wt2"] = dict(PRESETS["merity-wt2"], dropouth=0.2)

# The reference fine-tuning row: batch size, epoch limit and seed per preset (single: ours; the others:
# the same batch as their training, as each source fine-tuned).
FINETUNE = {
    "single": dict(batch_size=64, epochs=500, seed=141),
    "awd-ptb": dict(batch_size=20, epochs=500, seed=141),
    "awd-wt2": dict(batch_size=80, epochs=750, seed=1882),
    "merity-ptb": dict(batch_size=40, epochs=500, seed=141),
    "merity-wt2": dict(batch_size=80, epochs=750, seed=1882),
    "merity-readme-ptb": dict(batch_size=20, epochs=500, seed=141),
    "merity-readme-wt2": dict(batch_size=80, epochs=750, seed=1882),
}


OPTIMIZERS = ("sgd-anneal", "asgd-nt", "sgd", "asgd", "adam")
DROPOUT_FLAGS = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")
MASK_SITES = {"e": "embedding rows (dropoute)", "i": "embedding output (dropouti)",
              "h": "between layers (dropouth)", "w": "W_hh DropConnect (wdrop)",
              "o": "last layer output (dropout)"}


def per_preset(key, table=PRESETS):
    return "; ".join(f"{p}: {table[p][key]}" for p in table)


def kappa_defaults():
    return "; ".join(f"{name} {v.kappa:g}" + "".join(f", {p} {k:g}" for p, k in v.preset_kappa)
                     for name, v in VARIANTS.items())


def add_flags(group, specs, table=PRESETS):
    """Flags given as (name, type, help); with a ``table``, the help ends with each preset's value."""
    for name, kind, text in specs:
        group.add_argument(f"--{name}", type=kind, help=f"{text} ({per_preset(name, table)})" if table else text)


MODEL_FLAGS = [
    ("emsize", int, "word embedding size"), ("nhid", int, "hidden units per LSTM layer"),
    ("nlayers", int, "number of LSTM layers"), ("dropout", float, "dropout on the last layer's output"),
    ("dropouth", float, "dropout between LSTM layers"), ("dropouti", float, "dropout on the embedding output"),
    ("dropoute", float, "dropout of whole embedding rows"), ("wdrop", float, "DropConnect on every W_hh")]
OPTIMIZATION_FLAGS = [
    ("lr", float, "initial learning rate"), ("clip", float, "gradient norm clipping"),
    ("wdecay", float, "weight decay"), ("epochs", int, "upper epoch limit"),
    ("batch_size", int, "training batch size"), ("bptt", int, "base sequence length"),
    ("max_seq_len", int, "cap on the drawn sequence length, 0 for none"),
    ("reset_hidden_prob", float, "probability of zeroing the hidden state before a batch"),
    ("nonmono", int, "non-monotone interval of NT-ASGD"),
    ("patience", int, "sgd-anneal: epochs without a new best before annealing"),
    ("anneal", float, "sgd-anneal: divide lr by this"), ("min_lr", float, "sgd-anneal: stop once lr falls below"),
    ("seed", int, "random seed")]
EVAL_BATCH_FLAGS = [("eval_batch_size", int, "validation batch size (10)"), ("test_batch_size", int, "test batch size (1)")]


def add_model_args(p):
    """Architecture and dropout flags."""
    g = p.add_argument_group("model (default: the preset's value)")
    add_flags(g, MODEL_FLAGS)
    g.add_argument("--locked", action=argparse.BooleanOptionalAction,
                   help=f"one dropout mask per sequence, reused over time; --no-locked draws full-shape masks "
                        f"({per_preset('locked')})")
    g.add_argument("--tied", action=argparse.BooleanOptionalAction,
                   help=f"tie embedding and softmax weights ({per_preset('tied')})")
    return g


def tool_parser(doc, data_help="corpus folder (default: the one recorded in the checkpoint)"):
    """The command line every tool that reads a checkpoint starts from."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--save", required=True, help="checkpoint written by main.py or finetune.py")
    p.add_argument("--data", help=data_help)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def add_run_args(p):
    g = p.add_argument_group("running")
    g.add_argument("--device", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default auto)")
    g.add_argument("--log-interval", "--log_interval", dest="log_interval", type=int,
                   help="batches between progress lines (default 200)")
    g.add_argument("--checkpoint_every", type=float,
                   help="minutes between mid-epoch resume points written beside the checkpoint, 0 for none "
                        "(default 10)")
    return g


def build_train_parser():
    p = argparse.ArgumentParser(
        prog="main.py", description="Train an LSTM language model with fraternal dropout (or a comparison regularizer).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS),
                   help="experiment setup whose hyper-parameters fill every flag not given (default single)")
    p.add_argument("--model", choices=list(VARIANTS),
                   help="regularizer: FD fraternal dropout, ELD expectation-linear dropout, PM Pi-model, "
                        "RD R-Drop (symmetric KL), baseline (one pass) (default FD)")
    p.add_argument("--data", help=f"corpus folder with train/valid/test.txt ({per_preset('data')})")
    p.add_argument("--train_fraction", type=float,
                   help="train on the first FRACTION of the training text's lines, as ablation.py cuts it; validation "
                        "and test stay whole, and so does the vocabulary, so finetune.py, evaluate.py, pointer.py "
                        "and generate.py read the same --data (default 1)")
    add_model_args(p)
    g = p.add_argument_group("regularizer (default: set by --model)")
    g.add_argument("--kappa", type=float,
                   help=f"weight of the penalty between the two passes ({kappa_defaults()}). 0 keeps FD's two "
                        f"passes and averaged target without a penalty (the reference reset kappa <= 0 to the "
                        f"default)")
    g.add_argument("--double_target", action=argparse.BooleanOptionalAction,
                   help="average the target loss of both passes (on for FD and RD)")
    g.add_argument("--eval_auxiliary", action=argparse.BooleanOptionalAction,
                   help="run the second pass in eval mode, without dropout (on for ELD)")
    for site, what in MASK_SITES.items():
        g.add_argument(f"--same_mask_{site}", action="store_true", default=None,
                       help=f"second pass reuses the first pass's mask at the {what}")
    g.add_argument("--batch_passes", action=argparse.BooleanOptionalAction,
                   help="with --same_mask_w, run both passes as one forward of twice the batch (same values, "
                        "faster where the batch is small); on by default")
    g.add_argument("--fused_loss", action=argparse.BooleanOptionalAction,
                   help="decoder, cross-entropies and penalty in cache-sized chunks with gradients formed in the "
                        "forward (fused_loss.py): the plain loss's values, less memory traffic; on by default")
    g.add_argument("--overlap_passes", action=argparse.BooleanOptionalAction,
                   help="run the second pass on a second CUDA stream beside the first, so that their kernels "
                        "overlap (same masks and values as one pass after the other). CUDA only: on a CPU, with "
                        "--same_mask_* and with ELD's eval-mode pass the passes run one after the other (the run "
                        "says so). Off by default: its speed has not been measured on a GPU")
    g.add_argument("--alpha", type=float, help=f"activation regularization (AR) weight ({per_preset('alpha')})")
    g.add_argument("--beta", type=float, help=f"temporal activation regularization (TAR) weight ({per_preset('beta')})")
    g = p.add_argument_group("optimization (default: the preset's value)")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="sgd-anneal: SGD, lr / --anneal after more than --patience epochs without a new best "
                        "(reloading the best model), stop below --min_lr; asgd-nt: SGD switching to averaged "
                        "SGD by the non-monotone rule; sgd: plain SGD; asgd: averaged SGD from the start, "
                        f"stopping by the non-monotone rule; adam ({per_preset('optimizer')})")
    add_flags(g, OPTIMIZATION_FLAGS)
    add_flags(g, EVAL_BATCH_FLAGS, table=None)
    g = add_run_args(p)
    g.add_argument("--save", help="best-model checkpoint (default runs/<preset>_<model>.pt); metrics, final "
                                  "results and the resume checkpoint are written beside it")
    g.add_argument("--resume", help="continue the interrupted run whose resume checkpoint is at this path")
    g.add_argument("--overwrite", action="store_true", help="allow --save to replace an existing checkpoint")
    g.add_argument("--dry_run", action="store_true",
                   help="two training batches and a short validation and test, then exit (smoke test)")
    return p


# Flags a resumed run may change: they do not alter what the run computes.
RESUME_OVERRIDES = ("epochs", "device", "log_interval", "dry_run", "data", "checkpoint_every")
RUN_DEFAULTS = dict(eval_batch_size=10, test_batch_size=1, device="auto", log_interval=200, checkpoint_every=10.0)


def build_config(flags, stage="train", base=None):
    """The run's complete configuration, for every entry point: a plain dict (it goes into every
    checkpoint), validated once, here.

    ``flags``: the command line's values (None where not given).  ``stage``:
    - "train" (main.py): the preset's values, the variant's defaults, then the flags;
    - "finetune" (finetune.py): the trained run's config ``base``, the reference's fine-tuning row,
      then the flags (the trained dropout rates are kept unless overridden);
    - "resume": the interrupted run's config ``base`` with the few flags a resumed run may change.
    """
    if stage == "train":
        cfg, given = _train_config(flags)
    elif stage == "finetune":
        cfg, given = _finetune_config(flags, base)
    elif stage == "resume":
        cfg, given = _resume_config(flags, base)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    check_train_config(cfg, given)
    return cfg


def train_config(argv):
    """The configuration ``python main.py ARGV`` would train with (the study, the benchmark, tests)."""
    return build_config(vars(build_train_parser().parse_args(argv)))


def _train_config(flags):
    given = {k: v for k, v in flags.items() if v is not None}
    preset, model = given.get("preset") or "single", given.get("model") or "FD"
    cfg = dict(PRESETS[preset], preset=preset, model=model, **RUN_DEFAULTS)
    cfg.update({k: v for k, v in given.items() if k in cfg})
    variant = VARIANTS[model]
    cfg["kappa"] = given.get("kappa", variant.default_kappa(preset))
    cfg["double_target"] = given.get("double_target", variant.double_target)
    cfg["eval_auxiliary"] = given.get("eval_auxiliary", variant.second_pass == "eval")
    cfg["penalty"] = variant.penalty
    cfg["fused_loss"] = given.get("fused_loss", True)
    cfg["same_mask"] = "".join(s for s in MASK_SITES if given.get(f"same_mask_{s}"))
    cfg["batch_passes"] = given.get("batch_passes", True)
    cfg["train_fraction"] = given.get("train_fraction", 1.0)
    cfg["overlap_passes"] = given.get("overlap_passes", False)
    cfg["dry_run"] = bool(given.get("dry_run"))
    # A dry run writes to a temporary folder unless told where.
    cfg["save"] = given.get("save") or (None if cfg["dry_run"] else f"runs/{preset}_{model}.pt")
    if cfg["save"] is not None:  # resolved now, so a resumed run writes here from any folder
        cfg["save"] = os.path.abspath(cfg["save"])
    if cfg["dry_run"]:
        cfg["epochs"] = 1
    return cfg, given


# What fine-tuning changes in the trained run's configuration (the reference's finetune.py).
FINETUNE_RECIPE = dict(alpha=2.0, beta=1.0, nonmono=5, optimizer="asgd", kappa=0.0, double_target=False,
                       eval_auxiliary=False, same_mask="", overlap_passes=False, stage="finetune")
FINETUNE_FLAGS = ("data", "batch_size", "epochs", "seed", "alpha", "beta", "nonmono", "lr", "clip", "wdecay", "bptt",
                  "eval_batch_size", "test_batch_size", "device", "log_interval", "checkpoint_every", *DROPOUT_FLAGS)


def _finetune_config(flags, trained):
    given = {k: v for k, v in flags.items() if v is not None and v is not False}
    source = flags["save"]
    preset = trained.get("preset", "awd-ptb")
    if preset not in FINETUNE:
        raise UserError(f"{source} was trained with an unknown preset {preset!r}: fine-tune a checkpoint written "
                        f"by main.py")
    cfg = dict(trained, **FINETUNE[preset], **FINETUNE_RECIPE, finetuned_from=str(source), **RUN_DEFAULTS)
    cfg.setdefault("train_fraction", 1.0)  # fine-tuning keeps the trained run's cut of the training text
    cfg.update({k: given[k] for k in FINETUNE_FLAGS if k in given})
    cfg["max_seq_len"] = cfg["bptt"] + 10  # the reference's fine-tuning capped every drawn length
    cfg["dry_run"] = bool(given.get("dry_run"))
    if cfg["dry_run"]:
        cfg["epochs"] = 1
    out = given.get("out") or (None if cfg["dry_run"] else str(sidecar(source, "finetune.pt")))
    cfg["save"] = os.path.abspath(out) if out is not None else None
    if cfg["save"] is not None:
        own = run_paths(cfg["save"]).values()
        if os.path.realpath(cfg["save"]) == os.path.realpath(source) or any(
                os.path.exists(p) and os.path.samefile(p, source) for p in own):
            raise UserError("--out names the input checkpoint (or a file of its run); fine-tuning never overwrites "
                            "its input: choose another --out")
    return cfg, {}


def _resume_config(flags, blob):
    """A resume file continues only the run it belongs to, writing where that run was started."""
    cfg = dict(blob["config"])
    own = run_paths(cfg["save"])["resume"]
    if not (os.path.exists(own) and os.path.samefile(own, flags["resume"])):
        raise UserError(f"{flags['resume']} belongs to the run saved at {cfg['save']}, whose resume file is {own}: "
                        f"resume from that path (a resume file cannot continue another run's files)")
    for key, value in flags.items():
        if value is None or value is False or key in ("resume", "overwrite"):
            continue
        if key not in RESUME_OVERRIDES:
            raise UserError(f"--resume continues a run with its saved configuration, so --{key} cannot change; "
                            f"only {', '.join('--' + k for k in RESUME_OVERRIDES)} can (start a new run instead)")
        cfg[key] = value
    for key, value in (("checkpoint_every", 0.0), ("fused_loss", True), ("batch_passes", True),
                       ("overlap_passes", False), ("train_fraction", 1.0)):
        cfg.setdefault(key, value)  # settings added since older checkpoints were written
    if cfg.get("dry_run"):  # a smoke test of the resumed run, in a temporary folder: the run's files stay as they are
        cfg["epochs"] = blob["schedule"]["epoch"] + 1
        cfg["save"] = None
    return cfg, {}


def check_train_config(cfg, given):
    """Variant-specific combinations that would silently do nothing, then every value (``validate``)."""
    model = cfg.get("model")
    if model == "baseline":
        bad = [f"--{k} {given[k]}" for k in ("kappa",) if given.get(k)]
        bad += [f"--{k}" for k in ("double_target", "eval_auxiliary", "overlap_passes") if given.get(k)]
        bad += [f"--same_mask_{s}" for s in cfg["same_mask"]]
        if bad:
            raise UserError(f"--model baseline runs no second pass, so {' '.join(bad)} would do nothing: "
                            f"drop it or choose --model FD, ELD, PM or RD")
    validate(cfg)


class RunConfig(TypedDict, total=False):
    """Every setting of a run and its type: what ``build_config`` returns, ``validate`` checks and every
    checkpoint stores (a plain dict, so checkpoints load with ``weights_only=True``)."""
    preset: str  # a key of PRESETS
    model: str  # a key of fraternal.VARIANTS
    data: str  # corpus folder
    train_fraction: float  # the first fraction of the training text's lines that the run trains on
    save: Optional[str]  # best-model checkpoint, absolute; None for a dry run's temporary folder
    # model
    emsize: int
    nhid: int
    nlayers: int
    dropout: float
    dropouth: float
    dropouti: float
    dropoute: float
    wdrop: float
    locked: bool  # one mask per sequence (3-layer) or full-shape masks (single-layer)
    tied: bool
    # regularizer
    kappa: float
    double_target: bool
    eval_auxiliary: bool
    penalty: str  # a key of fraternal.PENALTIES
    same_mask: str  # sites of pass 1's masks that pass 2 reuses, a subset of "eihwo"
    batch_passes: bool
    fused_loss: bool
    overlap_passes: bool  # pass 2 on a second CUDA stream (fraternal.overlap_blocker says where it applies)
    alpha: float
    beta: float
    # optimization
    optimizer: str  # one of OPTIMIZERS
    lr: float
    clip: float
    wdecay: float
    epochs: int
    batch_size: int
    bptt: int
    max_seq_len: int  # 0 for no cap
    reset_hidden_prob: float
    nonmono: int
    patience: int
    anneal: float
    min_lr: float
    seed: int
    eval_batch_size: int
    test_batch_size: int
    # running
    device: str
    log_interval: int
    checkpoint_every: float  # minutes; 0 for no mid-epoch resume points
    dry_run: bool
    # fine-tuning only
    stage: str
    finetuned_from: str


OPTIONAL = ("stage", "finetuned_from")


POSITIVE_INT = ("emsize", "nhid", "nlayers", "batch_size", "bptt", "epochs", "eval_batch_size", "test_batch_size",
                "log_interval", "nonmono", "patience")
POSITIVE = ("lr", "clip", "anneal")
NON_NEGATIVE = ("kappa", "alpha", "beta", "wdecay", "min_lr", "checkpoint_every")
PROBABILITY = ("dropout", "dropouth", "dropouti", "dropoute", "wdrop", "reset_hidden_prob")
SITE_RATE = {"e": "dropoute", "i": "dropouti", "h": "dropouth", "w": "wdrop", "o": "dropout"}

def check_numbers(values, positive_ints=(), optional_positive_ints=(), non_negative_ints=()):
    """Numeric flags of the evaluation tools (which build no training configuration)."""
    for key in positive_ints:
        if values[key] is None or values[key] <= 0:
            raise UserError(f"--{key} must be a positive integer, got {values[key]}")
    for key in optional_positive_ints:
        if values[key] is not None and values[key] <= 0:
            raise UserError(f"--{key} must be a positive integer, got {values[key]}")
    for key in non_negative_ints:
        if values[key] < 0:
            raise UserError(f"--{key} must be >= 0, got {values[key]}")


def _has_type(value, kind):
    if kind is Optional[str]:
        return value is None or isinstance(value, str)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def validate(cfg):
    """Every value of a run's configuration, for every entry point (training, fine-tuning, resume):
    the one place where a bad setting becomes a one-line error before any work."""
    def bad(key, rule):
        raise UserError(f"--{key} must be {rule}, got {cfg[key]}")

    missing = [k for k in RunConfig.__annotations__ if k not in cfg and k not in OPTIONAL]
    if missing:
        raise UserError(f"the run's configuration lacks {', '.join(missing)} (a damaged or hand-made checkpoint?): "
                        f"use a checkpoint written by main.py or finetune.py")
    for key, kind in get_type_hints(RunConfig).items():
        if key in cfg and not _has_type(cfg[key], kind):
            raise UserError(f"--{key} must be of type {getattr(kind, '__name__', kind)}, got {cfg[key]!r}")
    for key, allowed in (("preset", PRESETS), ("model", VARIANTS), ("optimizer", OPTIMIZERS),
                         ("penalty", PENALTIES)):
        if cfg[key] not in allowed:
            raise UserError(f"--{key} {cfg[key]!r} is unknown: choose from {', '.join(allowed)}")
    if set(cfg["same_mask"]) - set(MASK_SITES):
        raise UserError(f"unknown mask sites {cfg['same_mask']!r}: a subset of {''.join(MASK_SITES)}")

    for key in POSITIVE_INT:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] <= 0:
            bad(key, "a positive integer")
    for key in POSITIVE + NON_NEGATIVE + PROBABILITY:
        value = cfg.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            bad(key, "a finite number")
    for key in POSITIVE:
        if cfg[key] <= 0:
            bad(key, "positive")
    for key in NON_NEGATIVE:
        if cfg.get(key, 0.0) < 0:
            bad(key, ">= 0")
    for key in PROBABILITY:
        if not 0.0 <= cfg[key] < 1.0:
            bad(key, "in [0, 1)")
    if not 0 < cfg["train_fraction"] <= 1:
        bad("train_fraction", "in (0, 1]")
    if not 0 <= cfg["seed"] < 2**32:
        bad("seed", "in [0, 2**32)")
    if cfg["max_seq_len"] and cfg["max_seq_len"] < 5:
        bad("max_seq_len", "0 (no cap) or at least 5")
    check_device_name(cfg["device"])
    if cfg["eval_auxiliary"] and cfg["same_mask"]:
        raise UserError("the eval-mode second pass (--eval_auxiliary, ELD) has no dropout masks to share: "
                        "drop the --same_mask_* flags or --eval_auxiliary")
    if "h" in cfg["same_mask"] and cfg["nlayers"] < 2:
        raise UserError("--same_mask_h needs at least 2 layers (there is no dropout between layers)")
    active = {s for s, rate in SITE_RATE.items() if cfg[rate] > 0 and (s != "h" or cfg["nlayers"] > 1)}
    second_pass = cfg["kappa"] > 0 or cfg["double_target"]
    if second_pass and not cfg["eval_auxiliary"] and active <= set(cfg["same_mask"]):
        raise UserError(f"--same_mask_{' --same_mask_'.join(sorted(cfg['same_mask']) or ['*'])} shares every "
                        f"active dropout mask, so the second pass repeats the first and the penalty is 0: "
                        f"leave at least one site with its own mask")
