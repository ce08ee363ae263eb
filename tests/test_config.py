"""config.py: presets filled under explicit flags, each variant's defaults, the Merity presets,
--help, and the one validation every entry point's configuration goes through (RunConfig's types)."""
import pytest

from config import FROM_PRESET, PRESET, SETTING, SETTINGS, build_config, build_train_parser, validate
from runfiles import UserError


def train_config(*argv):
    return build_config(vars(build_train_parser().parse_args(list(argv))))


# --- configuration ---------------------------------------------------------------------------------

def test_preset_fills_unset_flags_and_explicit_flags_win():
    parse = build_train_parser().parse_args
    cfg = build_config(vars(parse(["--preset", "awd-wt2", "--dropouti", "0.5"])))
    assert (cfg["batch_size"], cfg["dropouth"], cfg["dropouti"], cfg["kappa"]) == (40, 0.2, 0.5, 0.1)
    assert cfg["data"] == "data/wikitext-2" and cfg["optimizer"] == "asgd-nt" and cfg["nonmono"] == 60
    cfg = build_config(vars(parse([])))
    assert (cfg["preset"], cfg["model"], cfg["kappa"], cfg["emsize"], cfg["locked"]) == \
        ("single", "FD", 0.15, 655, False)
    assert (cfg["max_seq_len"], cfg["reset_hidden_prob"], cfg["optimizer"]) == (45, 0.01, "sgd-anneal")
    eld = build_config(vars(parse(["--model", "ELD"])))
    assert (eld["kappa"], eld["eval_auxiliary"], eld["double_target"]) == (0.25, True, False)
    pm = build_config(vars(parse(["--model", "PM", "--kappa", "0.3", "--same_mask_w"])))
    assert (pm["kappa"], pm["double_target"], pm["same_mask"]) == (0.3, False, "w")
    rd = build_config(vars(parse(["--model", "RD"])))
    assert (rd["kappa"], rd["penalty"], rd["double_target"]) == (1.0, "kl", True)


def test_merity_presets_pair_each_source_with_its_recipe():
    """merity-*: the AWD-LSTM paper's stated recipe (PTB's 500 epochs from the authors' later note);
    merity-readme-*: awd-lstm-lm's README commands at bf0742c. Both: AR 2, TAR 1, nonmono 5."""
    parse = build_train_parser().parse_args
    cfgs = {p: build_config(vars(parse(["--preset", p, "--model", "baseline"])))
            for p in ("merity-ptb", "merity-wt2", "merity-readme-ptb", "merity-readme-wt2")}
    for cfg in cfgs.values():
        assert (cfg["alpha"], cfg["beta"], cfg["nonmono"], cfg["optimizer"], cfg["kappa"]) == \
            (2.0, 1.0, 5, "asgd-nt", 0.0)
        assert (cfg["emsize"], cfg["nhid"], cfg["nlayers"], cfg["dropout"], cfg["dropoute"], cfg["wdrop"]) == \
            (400, 1150, 3, 0.4, 0.1, 0.5)
        assert cfg["max_seq_len"] == 0 and cfg["lr"] == 30.0 and cfg["clip"] == 0.25 and cfg["wdecay"] == 1.2e-6
    key = ("data", "batch_size", "dropouth", "dropouti", "seed", "epochs")
    assert tuple(cfgs["merity-ptb"][k] for k in key) == ("data/penn", 40, 0.3, 0.4, 141, 500)
    assert tuple(cfgs["merity-wt2"][k] for k in key) == ("data/wikitext-2", 80, 0.3, 0.65, 1882, 750)
    assert tuple(cfgs["merity-readme-ptb"][k] for k in key) == ("data/penn", 20, 0.25, 0.4, 141, 500)
    assert tuple(cfgs["merity-readme-wt2"][k] for k in key) == ("data/wikitext-2", 80, 0.2, 0.65, 1882, 750)
    fine = {p: build_config({"save": f"runs/{p}.pt"}, "finetune", cfgs[p]) for p in cfgs}
    assert [(fine[p]["batch_size"], fine[p]["epochs"], fine[p]["seed"]) for p in cfgs] == \
        [(40, 500, 141), (80, 750, 1882), (20, 500, 141), (80, 750, 1882)]
    fd = build_config(vars(parse(["--preset", "merity-ptb", "--model", "FD", "--kappa", "0"])))
    assert fd["kappa"] == 0.0 and fd["double_target"]  # kappa 0 is kept: two passes, no penalty


def test_every_preset_is_one_complete_declaration():
    """Each preset names a value for every setting whose default is the preset's, only known settings, a valid
    value for each, a fine-tuning row, known variants for its kappa, a cache-pointer source and its own source."""
    from fraternal import VARIANTS
    needed = {s.name for s in SETTINGS if s.default == FROM_PRESET}
    for name, p in PRESET.items():
        assert needed <= set(p.values) <= set(SETTING), name
        assert set(p.finetune) == {"batch_size", "epochs", "seed"} and set(p.kappa) <= set(VARIANTS), name
        assert p.pointer in ("paper", "readme", "tag") and p.source and p.corpus in ("ptb", "wt2"), name
        cfg = train_config("--preset", name, "--model", "baseline")
        assert all(cfg[k] == v for k, v in p.values.items()), name
        fine = build_config({"save": f"runs/{name}.pt"}, "finetune", cfg)
        assert {k: fine[k] for k in p.finetune} == p.finetune, name


def test_tag_presets_follow_the_tag_readme_recipes():
    """merity-tag-*: awd-lstm-lm's tag PyTorch==0.1.12 exact-reproduction commands, with its per-time-step mask."""
    key = ("data", "batch_size", "dropout", "dropouth", "dropouti", "dropoute", "wdrop", "lr", "wdecay", "nonmono",
           "alpha", "beta", "seed", "epochs", "locked_mask")
    ptb, wt2 = (train_config("--preset", p, "--model", "baseline") for p in ("merity-tag-ptb", "merity-tag-wt2"))
    assert tuple(ptb[k] for k in key) == ("data/penn", 20, 0.4, 0.3, 0.4, 0.1, 0.5, 30.0, 1.2e-6, 5, 2.0, 1.0, 28,
                                          300, "timestep")
    assert tuple(wt2[k] for k in key) == ("data/wikitext-2", 80, 0.4, 0.3, 0.65, 0.1, 0.5, 30.0, 1.2e-6, 5, 2.0,
                                          1.0, 20923, 750, "timestep")
    assert (PRESET["merity-tag-ptb"].finetune, PRESET["merity-tag-wt2"].finetune) == (
        dict(batch_size=20, epochs=300, seed=28), dict(batch_size=80, epochs=750, seed=1111))
    assert train_config()["locked_mask"] == "sequence"
    assert train_config("--preset", "merity-tag-ptb", "--locked_mask", "sequence")["locked_mask"] == "sequence"


def test_help_is_short_and_names_every_flag_and_preset():
    """--help lists the presets once and gives each flag a help text, without each preset's value in each flag."""
    p = build_train_parser()
    text = p.format_help()
    assert len(text.splitlines()) < 160 and "(single:" not in text
    assert ", ".join(PRESET) in "".join(" ".join(text.split()).split("\n"))
    assert all(a.help for a in p._actions), [a.dest for a in p._actions if not a.help]
    for flag in ("--same_mask_w", "--nonmono", "--kappa", "--wdrop", "--locked_mask"):
        assert flag in text


@pytest.mark.parametrize("argv, needle", [
    (["--model", "baseline", "--kappa", "0.2"], "--kappa 0.2"),
    (["--model", "baseline", "--same_mask_w"], "--same_mask_w"),
    (["--model", "ELD", "--same_mask_i"], "--eval_auxiliary"),
    (["--same_mask_h"], "2 layers"),
    (["--dropout", "1.0"], "--dropout"),
    (["--kappa", "-1"], "--kappa"),
])
def test_contradictory_flags_are_refused(argv, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        build_config(vars(build_train_parser().parse_args(argv)))


def test_every_run_config_has_exactly_the_typed_keys():
    for preset in ("single", "awd-ptb", "merity-wt2"):
        cfg = train_config("--preset", preset, "--model", "RD")
        assert set(cfg) == {s.name for s in SETTINGS if not s.optional}


@pytest.mark.parametrize("key, value, needle", [
    ("emsize", 400.0, "type int"), ("tied", 1, "type bool"), ("lr", "30", "type float"), ("save", 3, "type"),
    ("optimizer", "rmsprop", "unknown"), ("penalty", "kld", "unknown"), ("model", "XD", "unknown"),
    ("same_mask", "x", "mask sites"), ("epochs", 0, "positive integer"), ("dropouth", -0.1, "[0, 1)"),
])
def test_validate_refuses_wrong_types_and_values(key, value, needle):
    cfg = dict(train_config("--preset", "awd-ptb"), **{key: value})
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        validate(cfg)


def test_validate_names_missing_keys():
    cfg = train_config()
    del cfg["nonmono"], cfg["bptt"]
    with pytest.raises(UserError, match="lacks bptt, nonmono"):
        validate(cfg)
