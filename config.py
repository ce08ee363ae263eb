"""A run's configuration, declared once (``SETTINGS``), so that command lines, --help, validation and checkpoints
cannot drift apart.  Every flag defaults to None: a flag given wins, then the preset (or variant), then the default."""
import argparse
import difflib
import math
import os
from dataclasses import dataclass

from runfiles import ArgumentParser, UserError, run_paths, sidecar
from fraternal import PENALTIES, VARIANTS, Regularizer
from masks import SITE_RATE, SITES as MASK_SITES
from presets import PRESET, PRESETS, default_kappa, kappa_values
from utils import check_device_name

DROPOUT_FLAGS = tuple(SITE_RATE[s] for s in "ohiew")  # dropout, dropouth, dropouti, dropoute, wdrop

FROM_PRESET, FROM_VARIANT = "<preset>", "<variant>"  # defaults read from the preset / the variant
OVERRIDE = "override the checkpoint's rate"
REG = "regularizer"  # the settings --model decides


@dataclass(frozen=True)
class Setting:
    """``resume``: a resumed run may change it; ``finetune``: finetune.py's help (empty: no flag, True: main.py's);
    ``before``: its value in checkpoints older than it; ``result``: False where it only says where or how a run ran."""
    name: str
    kind: type
    help: str
    default: object = FROM_PRESET
    rule: str = ""
    group: str = "optimization"
    choices: tuple = ()
    flag: bool = True
    resume: bool = False
    finetune: object = ""
    before: object = None
    optional: bool = False
    result: bool = True


SETTINGS = (
    Setting("preset", str, "experiment setup whose hyper-parameters fill every flag not given: " + ", ".join(PRESET),
            "single", "choice", "run", tuple(PRESETS)),
    Setting("model", str, "regularizer: FD fraternal dropout, ELD expectation-linear dropout, PM Pi-model, RD R-Drop "
            "(symmetric KL), baseline (one pass)", "FD", "choice", "run", tuple(VARIANTS)),
    Setting("data", str, "corpus folder with train/valid/test.txt", group="run", resume=True,
            finetune="corpus folder (default: the one recorded in the checkpoint)", result=False),
    Setting("train_fraction", float, "train on the first FRACTION of the training text's lines (as ablation.py); "
            "validation, test and the vocabulary stay whole, so every other tool reads the same --data", 1.0,
            "fraction", "run", before=1.0),
    Setting("save", str, "best-model checkpoint (default runs/<preset>_<model>.pt); metrics, final results and the "
            "resume checkpoint are written beside it", None, "", "running", result=False),
    Setting("emsize", int, "word embedding size", rule="positive_int", group="model"),
    Setting("nhid", int, "hidden units per LSTM layer", rule="positive_int", group="model"),
    Setting("nlayers", int, "number of LSTM layers", rule="positive_int", group="model"),
    Setting("dropout", float, "dropout on the top layer output", rule="probability", group="model", finetune=OVERRIDE),
    Setting("dropouth", float, "dropout between LSTM layers", rule="probability", group="model", finetune=OVERRIDE),
    Setting("dropouti", float, "dropout on the embedding output", rule="probability", group="model", finetune=OVERRIDE),
    Setting("dropoute", float, "dropout of whole embedding rows", rule="probability", group="model", finetune=OVERRIDE),
    Setting("wdrop", float, "DropConnect on every W_hh", rule="probability", group="model", finetune=OVERRIDE),
    Setting("locked", bool, "one dropout mask per sequence, reused over time; --no-locked draws full-shape masks",
            group="model"),
    Setting("locked_mask", str, "sequence: one mask per sequence (awd-lstm-lm since 2017-09-01); timestep: a new mask "
            "each step, shared across the batch (its tag PyTorch==0.1.12)", "sequence", "choice", "model",
            ("sequence", "timestep"), before="sequence"),
    Setting("tied", bool, "tie embedding and softmax weights", group="model"),
    Setting("kappa", float, "weight of the penalty between the two passes; 0 keeps FD's two passes and averaged target "
            "(the reference reset kappa <= 0 to the default)", FROM_VARIANT, "non_negative", REG),
    Setting("double_target", bool, "average both passes' target loss (on for FD, RD)", FROM_VARIANT, "", REG),
    Setting("eval_auxiliary", bool, "pass 2 in eval mode, no dropout (on for ELD)", FROM_VARIANT, "", REG),
    Setting("penalty", str, "penalty between the passes", FROM_VARIANT, "choice", REG, tuple(PENALTIES), flag=False),
    Setting("same_mask", str, "mask sites pass 2 reuses from pass 1", "", "mask_sites", REG, flag=False),
    Setting("batch_passes", bool, "with --same_mask_w, run both passes as one forward of twice the batch (same "
            "values, faster where the batch is small); on by default", True, group=REG, before=True),
    Setting("fused_loss", bool, "decoder, cross-entropies and penalty in cache-sized chunks, gradients formed in the "
            "forward (fused_loss.py): same values, less memory traffic", True, "", REG, before=True, result=False),
    Setting("overlap_passes", bool, "run the second pass on a second CUDA stream beside the first (same values). CUDA "
            "only: on a CPU, with --same_mask_* or ELD the passes run in turn (the run says so). Off by default: "
            "its speed is not measured on a GPU", False, "", REG, before=False, result=False),
    Setting("alpha", float, "activation regularization (AR) weight", rule="non_negative", group=REG,
            finetune="AR weight (2)"),
    Setting("beta", float, "temporal activation regularization (TAR) weight", rule="non_negative",
            group=REG, finetune="TAR weight (1)"),
    Setting("optimizer", str, "sgd-anneal: SGD, lr / --anneal after more than --patience epochs without a new best "
            "(reloading the best model), stop below --min_lr; asgd-nt: SGD, then averaged SGD (from the initial lr) "
            "by the non-monotone rule; sgd; asgd: averaged SGD, stopping by that rule; adam", rule="choice",
            choices=("sgd-anneal", "asgd-nt", "sgd", "asgd", "adam")),
    Setting("lr", float, "initial learning rate", rule="positive", finetune="averaged SGD's lr (the run's, 30)"),
    Setting("clip", float, "gradient norm clipping", rule="positive", finetune="gradient norm clipping (the run's)"),
    Setting("wdecay", float, "weight decay", rule="non_negative", finetune="weight decay (the training run's)"),
    Setting("epochs", int, "upper epoch limit", rule="positive_int", resume=True, finetune=True),
    Setting("batch_size", int, "training batch size", rule="positive_int", finetune=True),
    Setting("bptt", int, "base sequence length", rule="positive_int", finetune="base sequence length (the run's)"),
    Setting("max_seq_len", int, "cap on the drawn sequence length, 0 for none", rule="seq_cap"),
    Setting("reset_hidden_prob", float, "probability of zeroing the hidden state before a batch", rule="probability"),
    Setting("nonmono", int, "non-monotone interval of NT-ASGD", rule="positive_int",
            finetune="stop once the averaged validation loss breaks the non-monotone rule over this many epochs (5)"),
    Setting("patience", int, "sgd-anneal: epochs without a new best before annealing", rule="positive_int"),
    Setting("anneal", float, "sgd-anneal: divide lr by this", rule="positive"),
    Setting("min_lr", float, "sgd-anneal: stop once lr falls below", rule="non_negative"),
    Setting("seed", int, "random seed", rule="seed", finetune=True),
    Setting("eval_batch_size", int, "validation batch size", 10, "positive_int", finetune=True),
    Setting("test_batch_size", int, "test batch size", 1, "positive_int", finetune=True),
    Setting("device", str, "auto (CUDA when present, else CPU), cpu, cuda or cuda:N", "auto", "device", "running",
            resume=True, finetune=True, result=False),
    Setting("log_interval", int, "batches between progress lines", 200, "positive_int", "running", resume=True,
            finetune=True, result=False),
    Setting("checkpoint_every", float, "minutes between mid-epoch resume points written beside the checkpoint, 0 for "
            "none", 10.0, "non_negative", "running", resume=True, finetune=True, before=0.0, result=False),
    Setting("dry_run", bool, "two training batches and a short validation and test, then exit (smoke test)", False,
            group="running", resume=True),
    Setting("stage", str, "finetune for a fine-tuning run", "train", flag=False, optional=True),
    Setting("finetuned_from", str, "the checkpoint a fine-tuning run started from", None, flag=False, optional=True),
)
SETTING = {s.name: s for s in SETTINGS}
RESUME_OVERRIDES = tuple(s.name for s in SETTINGS if s.resume)


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# rule: (test, what the value must be)
RULES = {
    "positive_int": (lambda v, s: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer"),
    "count": (lambda v, s: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
    "positive": (lambda v, s: _finite(v) and v > 0, "a finite number > 0"),
    "non_negative": (lambda v, s: _finite(v) and v >= 0, "a finite number >= 0"),
    "probability": (lambda v, s: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    "fraction": (lambda v, s: _finite(v) and 0 < v <= 1, "in (0, 1]"),
    "weight": (lambda v, s: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    "seed": (lambda v, s: 0 <= v < 2**32, "in [0, 2**32)"),
    "seq_cap": (lambda v, s: v == 0 or v >= 5, "0 (no cap) or at least 5"),
    "choice": (lambda v, s: v in s.choices, "one of {choices}"),
    "mask_sites": (lambda v, s: not set(v) - set(MASK_SITES), "a subset of " + "".join(MASK_SITES)),
    "device": (lambda v, s: check_device_name(v) is not None, "a device"),
    "": (lambda v, s: True, ""),
}


def choice(s):
    """A choice flag's type: the name in any case; else one line with the valid names and the closest one."""
    options = {option.lower(): option for option in s.choices}

    def parse(value):
        if value.lower() in options:
            return options[value.lower()]
        close = difflib.get_close_matches(value, s.choices, 1, 0.0)[0]  # cutoff 0: always the closest one
        raise argparse.ArgumentTypeError(f"unknown {s.name} {value!r}: choose from {', '.join(s.choices)}; "
                                         f"did you mean {close}?")
    parse.__name__ = s.name
    return parse


def add_flag(group, s, text=None):
    """``s`` as a flag defaulting to None: the help says where its value comes from when not given."""
    if text is None:
        text = s.help + (f" ({kappa_values()})" if s.name == "kappa" else "")
        if s.default not in (FROM_PRESET, FROM_VARIANT, None, False) and "default" not in text:
            text += f" (default {s.default})"
    names = [f"--{s.name}"] + ([f"--{s.name.replace('_', '-')}"] if s.name == "log_interval" else [])
    if s.kind is bool:
        parse = dict(action="store_true" if s.name == "dry_run" else argparse.BooleanOptionalAction, default=None)
    elif s.choices:
        parse = dict(type=choice(s), metavar=s.name.upper() if len(s.choices) > 5 else "{" + ",".join(s.choices) + "}")
    else:
        parse = dict(type=s.kind)
    group.add_argument(*names, dest=s.name, help=text, **parse)


def build_train_parser():
    p = ArgumentParser(prog="main.py", description="Train an LSTM language model with fraternal dropout (or a "
                       "comparison regularizer).")
    groups = {"run": p, "model": p.add_argument_group("model (default: the preset's value)"),
              "regularizer": p.add_argument_group("regularizer (default: set by --model)"),
              "optimization": p.add_argument_group("optimization (default: the preset's value)"),
              "running": p.add_argument_group("running")}
    for s in SETTINGS:
        if s.flag:
            add_flag(groups[s.group], s)
        if s.name == "eval_auxiliary":
            for site, what in MASK_SITES.items():
                groups["regularizer"].add_argument(f"--same_mask_{site}", action="store_true", default=None,
                                                   help=f"second pass reuses the first pass's mask at the {what}")
    g = groups["running"]
    g.add_argument("--resume", help="continue the interrupted run whose resume checkpoint is at this path")
    g.add_argument("--overwrite", action="store_true", help="allow --save to replace an existing checkpoint")
    return p


def build_finetune_parser(doc):
    """finetune.py's command line: the settings a fine-tuning run may change, with the reference's row."""
    p = ArgumentParser(prog="finetune.py", description=doc.split("\n\n")[0])
    p.add_argument("--save", help="the trained best-model checkpoint to fine-tune (never modified)")
    p.add_argument("--out", help="where the fine-tuned best model goes (default: <save stem>.finetune.pt)")
    p.add_argument("--overwrite", action="store_true", help="allow --out to replace an existing file")
    g = p.add_argument_group("fine-tuning (defaults: the reference's fine-tuning row of the checkpoint's preset)")
    for s in SETTINGS:
        if s.finetune:
            add_flag(g, s, None if s.finetune is True else s.finetune)
    g.add_argument("--resume", help="continue an interrupted fine-tuning from its .resume.pt checkpoint")
    g.add_argument("--dry_run", action="store_true", default=None, help="two batches, a short validation and test")
    return p


def build_config(flags, stage="train", base=None):
    """A run's plain-dict configuration, validated once, here: for "train" from the preset, the variant and the flags;
    for "finetune" and "resume" from the trained run's config ``base`` (``blob``) and the flags it allows."""
    cfg = {"train": _train_config, "finetune": _finetune_config, "resume": _resume_config}[stage](flags, base)
    validate(cfg)
    return cfg


def train_config(argv):
    """The configuration ``python main.py ARGV`` would train with (the study, the benchmark, tests)."""
    return build_config(vars(build_train_parser().parse_args(argv)))


def _train_config(flags, _base):
    given = {k: v for k, v in flags.items() if v is not None}
    preset = given.get("preset") or SETTING["preset"].default
    model = given.get("model") or SETTING["model"].default
    variant = VARIANTS[model]
    defaults = {**PRESETS[preset], "kappa": default_kappa(preset, model), "double_target": variant.double_target,
                "eval_auxiliary": variant.second_pass == "eval", "penalty": variant.penalty}
    cfg = {s.name: given[s.name] if s.flag and s.name in given else defaults.get(s.name, s.default)
           for s in SETTINGS if not s.optional}
    cfg["same_mask"] = "".join(site for site in MASK_SITES if given.get(f"same_mask_{site}"))
    if model == "baseline":  # flags that would silently do nothing
        bad = [f"--kappa {given['kappa']}"] if given.get("kappa") else []
        bad += [f"--{k}" for k in ("double_target", "eval_auxiliary", "overlap_passes") if given.get(k)]
        bad += [f"--same_mask_{s}" for s in cfg["same_mask"]]
        if bad:
            raise UserError(f"--model baseline runs no second pass, so {' '.join(bad)} would do nothing: "
                            f"drop it or choose --model FD, ELD, PM or RD")
    return _output(cfg, given, "save", f"runs/{preset}_{model}.pt")


def _output(cfg, given, flag, default):
    """A dry run trains one epoch, in a temporary folder unless told where; a resumed run writes here from anywhere."""
    cfg["dry_run"] = bool(given.get("dry_run"))
    if cfg["dry_run"]:
        cfg["epochs"] = 1
    out = given.get(flag) or (None if cfg["dry_run"] else default)
    cfg["save"] = os.path.abspath(out) if out is not None else None
    return cfg


# What fine-tuning changes in the trained run's configuration (the reference's finetune.py).
FINETUNE_RECIPE = dict(alpha=2.0, beta=1.0, nonmono=5, optimizer="asgd", kappa=0.0, double_target=False,
                       eval_auxiliary=False, same_mask="", overlap_passes=False, stage="finetune")


def _finetune_config(flags, trained):
    given = {k: v for k, v in flags.items() if v is not None and v is not False}
    source = flags["save"]
    preset = trained.get("preset", "awd-ptb")
    if preset not in PRESET:
        raise UserError(f"{source} was trained with an unknown preset {preset!r}: fine-tune a checkpoint written "
                        f"by main.py")
    cfg = with_settings_added_since(trained)
    fresh = {s.name: s.default for s in SETTINGS if s.finetune is True and s.default != FROM_PRESET}  # not inherited
    cfg.update(**PRESET[preset].finetune, **FINETUNE_RECIPE, finetuned_from=str(source), **fresh)
    cfg.update({s.name: given[s.name] for s in SETTINGS if s.finetune and s.name in given})
    cfg["max_seq_len"] = cfg["bptt"] + 10  # the reference's fine-tuning capped every drawn length
    _output(cfg, given, "out", str(sidecar(source, "finetune.pt")))
    if cfg["save"] is not None and any(os.path.exists(p) and os.path.samefile(p, source)
                                       for p in run_paths(cfg["save"]).values()):
        raise UserError("--out names the input checkpoint (or a file of its run); fine-tuning never overwrites "
                        "its input: choose another --out")
    return cfg


def with_settings_added_since(cfg):
    """A checkpoint's config with every setting added since, at the value that keeps its meaning."""
    return {**cfg, **{s.name: s.before for s in SETTINGS if s.before is not None and s.name not in cfg}}


def outcome(cfg):
    """The settings a run's numbers depend on, so the study and reproduce.py may reuse one run for another."""
    return {k: v for k, v in with_settings_added_since(cfg).items() if k not in SETTING or SETTING[k].result}


def _resume_config(flags, blob):
    """A resume file continues only its own run, where it started or, if its folder moved, beside the resume file."""
    cfg = with_settings_added_since(blob["config"])
    given = os.path.abspath(flags["resume"])
    own = run_paths(cfg["save"])["resume"]
    if not (os.path.exists(own) and os.path.samefile(own, given)):
        here = os.path.join(os.path.dirname(given), os.path.basename(cfg["save"]))  # the run's best model, if moved
        if run_paths(here)["resume"] != given:
            raise UserError(f"{flags['resume']} belongs to the run saved at {cfg['save']}, whose resume file is "
                            f"named {os.path.basename(own)}: resume from {own}, or, if the run's folder moved, from "
                            f"its {os.path.basename(own)} there (a resume file cannot continue another run's files)")
        cfg["save"] = here  # the folder moved: the run's files are the ones beside its resume file
    for key, value in flags.items():
        if value is None or value is False or key in ("resume", "overwrite"):
            continue
        if key not in RESUME_OVERRIDES:
            raise UserError(f"--resume continues a run with its saved configuration, so --{key} cannot change; "
                            f"only {', '.join('--' + k for k in RESUME_OVERRIDES)} can (start a new run instead)")
        cfg[key] = os.path.abspath(value) if key == "data" else value
    if cfg.get("dry_run"):  # a smoke test of the resumed run, in a temporary folder: the run's files stay as they are
        cfg["epochs"] = blob["schedule"]["epoch"] + 1
        cfg["save"] = None
    return cfg


def _has_type(value, s):
    if value is None:
        return s.name in ("save", "finetuned_from")
    kinds = (int, float) if s.kind is float else s.kind  # an int is a float, a bool is no number
    return isinstance(value, kinds) and (s.kind is bool or not isinstance(value, bool))


def validate(cfg):
    """The one place where a bad setting, from any entry point, becomes a one-line error before any work."""
    missing = [s.name for s in SETTINGS if s.name not in cfg and not s.optional]
    if missing:
        raise UserError(f"the run's configuration lacks {', '.join(missing)} (a damaged or hand-made checkpoint?): "
                        f"use a checkpoint written by main.py or finetune.py")
    for s in [s for s in SETTINGS if s.name in cfg]:
        value = cfg[s.name]
        if not _has_type(value, s):
            raise UserError(f"--{s.name} must be of type {s.kind.__name__}, got {value!r}")
        test, what = RULES[s.rule]
        if value is not None and not test(value, s):
            raise UserError({"choice": f"--{s.name} {value!r} is unknown: choose from {', '.join(s.choices)}",
                             "mask_sites": f"unknown mask sites {value!r}: {what}"}.get(
                                 s.rule, f"--{s.name} must be {what}, got {value}"))
    if cfg["eval_auxiliary"] and cfg["same_mask"]:
        raise UserError("the eval-mode second pass (--eval_auxiliary, ELD) has no dropout masks to share: "
                        "drop the --same_mask_* flags or --eval_auxiliary")
    if "h" in cfg["same_mask"] and cfg["nlayers"] < 2:
        raise UserError("--same_mask_h needs at least 2 layers (there is no dropout between layers)")
    active = {s for s, rate in SITE_RATE.items() if cfg[rate] > 0 and (s != "h" or cfg["nlayers"] > 1)}
    if Regularizer.from_config(cfg).second_pass and not cfg["eval_auxiliary"] and active <= set(cfg["same_mask"]):
        raise UserError(f"--same_mask_{' --same_mask_'.join(sorted(cfg['same_mask']) or ['*'])} shares every "
                        f"active dropout mask, so the second pass repeats the first and the penalty is 0: "
                        f"leave at least one site with its own mask")


def check_flags(values, rules):
    """The numeric flags of tools without a run configuration, checked by the same ``RULES``; None is not checked."""
    for key, rule in rules.items():
        value = values[key]
        for v in value if isinstance(value, (list, tuple)) else [value]:
            test, what = RULES[rule]
            if v is not None and not test(v, None):
                raise UserError(f"--{key} must be {what}, got {v}")
