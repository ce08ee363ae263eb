"""checkpoint.py: weights_only round trips, the run's file names, checks on load, RNG states, and what
every evaluation tool opens (a best model, never a resume point unless asked; --help names --save)."""
import random

import numpy as np
import pytest
import torch

import dynamiceval
import evaluate
import generate
import pointer
from checkpoint import (FORMAT, MODEL_KEYS, load_checkpoint, load_weights, model_from_checkpoint, model_keys,
                        rng_state, save_checkpoint, set_rng_state, vocab_info)
from config import SETTINGS, Setting, build_config, build_train_parser
from data import Corpus
from model import RNNModel
from runfiles import UserError, run_paths

TOOLS = {"evaluate.py": evaluate, "dynamiceval.py": dynamiceval, "pointer.py": pointer, "generate.py": generate}

VOCAB = {"size": 30, "sha256": "0" * 64}


def small_config():
    return build_config(vars(build_train_parser().parse_args(
        ["--preset", "awd-ptb", "--emsize", "8", "--nhid", "12", "--nlayers", "2", "--save", "/tmp/x/m.pt"])))


def test_round_trip_loads_weights_only_and_rebuilds_the_same_model(tmp_path):
    cfg = small_config()
    torch.manual_seed(0)
    model = RNNModel.from_config(cfg, VOCAB["size"]).eval()
    save_checkpoint(tmp_path / "m.pt", "best", model, cfg, VOCAB, epoch=3)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled classes
    assert blob["format"] == FORMAT and blob["config"] == cfg and blob["epoch"] == 3
    again = model_from_checkpoint(load_checkpoint(tmp_path / "m.pt", "best"), torch.device("cpu")).eval()
    data = torch.randint(0, VOCAB["size"], (5, 2))
    with torch.no_grad():
        assert torch.equal(model(data, model.init_hidden(2))[0], again(data, again.init_hidden(2))[0])


def test_run_files_sit_beside_the_best_checkpoint():
    paths = run_paths("/runs/a.pt")
    assert paths == {"best": "/runs/a.pt", "resume": "/runs/a.resume.pt", "metrics": "/runs/a.metrics.jsonl",
                     "final": "/runs/a.final.json", "lock": "/runs/a.lock"}


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b.update(kind="other"), "kind"), (lambda b: b.pop("vocab"), "no vocab"),
    (lambda b: b["config"].pop("nhid"), "lacks nhid"), (lambda b: b["vocab"].pop("sha256"), "vocab sha256"),
    (lambda b: b["model"].update(x=[1, 2]), "not all tensors"), (lambda b: b.pop("optimizer"), "no optimizer"),
])
def test_damaged_or_hand_made_checkpoints_are_refused_on_load(tmp_path, damage, needle):
    cfg = small_config()
    save_checkpoint(tmp_path / "r.pt", "resume", RNNModel.from_config(cfg, 30), cfg, VOCAB, schedule={}, optimizer={}, rng={})
    blob = torch.load(tmp_path / "r.pt", weights_only=True)
    damage(blob)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=needle):
        load_checkpoint(tmp_path / "bad.pt")


def test_kind_mismatch_says_which_file_to_pass(tmp_path):
    cfg = small_config()
    save_checkpoint(tmp_path / "m.pt", "best", RNNModel.from_config(cfg, 30), cfg, VOCAB)
    with pytest.raises(UserError, match="'best' checkpoint, a 'resume' one is needed"):
        load_checkpoint(tmp_path / "m.pt", "resume")


def test_weights_that_do_not_fit_are_one_line():
    cfg = small_config()
    model = RNNModel.from_config(cfg, 30)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decoder.bias"] = torch.zeros(31)
    with pytest.raises(UserError, match="do not fit the model"):
        load_weights(model, {"model": state})


def test_rng_state_round_trip_repeats_every_stream():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = rng_state()
    first = (random.random(), np.random.normal(), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), np.random.normal(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_atomic_writes_take_the_umask_of_the_moment_without_changing_it(tmp_path):
    """Files get the user's usual permissions (mkstemp alone makes 0600), read when written, not at import."""
    import os
    import stat

    from runfiles import atomic_write_text
    old = os.umask(0o027)
    try:
        atomic_write_text("x", tmp_path / "a.txt")
        assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
        assert os.umask(0o027) == 0o027  # still the caller's
    finally:
        os.umask(old)


def test_an_atomic_write_never_removes_a_temp_file_it_did_not_create(tmp_path, monkeypatch):
    """Two writers drawing the same temp name: the second fails, and the first writer's temp file stays."""
    import secrets

    from runfiles import atomic_write_text
    monkeypatch.setattr(secrets, "token_hex", lambda n: "ab12cd34")
    theirs = tmp_path / ".a.txt.ab12cd34.tmp"
    theirs.write_text("another writer's")
    with pytest.raises(FileExistsError):
        atomic_write_text("x", tmp_path / "a.txt")
    assert theirs.read_text() == "another writer's" and not (tmp_path / "a.txt").exists()


def test_model_keys_come_from_the_settings_declarations(tmp_path):
    """A new model setting is required of every checkpoint without a second list to edit; one with a
    ``before`` value (locked_mask) is not, and a checkpoint written before it existed still rebuilds its model."""
    extra = Setting("new_width", int, "a model setting added later", group="model")
    assert model_keys(SETTINGS + (extra,)) == MODEL_KEYS[:-3] + ("new_width",) + MODEL_KEYS[-3:]
    assert {"emsize", "locked", "tied", "bptt", "data", "preset"} <= set(MODEL_KEYS)
    assert "locked_mask" not in MODEL_KEYS
    cfg = small_config()
    model = RNNModel.from_config(cfg, VOCAB["size"])
    cfg.pop("locked_mask", None)
    save_checkpoint(tmp_path / "old.pt", "best", model, cfg, VOCAB)
    assert model_from_checkpoint(load_checkpoint(tmp_path / "old.pt", "best"), torch.device("cpu")).nlayers == 2


@pytest.fixture(scope="module")
def resume_point(tiny_corpus, tmp_path_factory):
    cfg = dict(small_config(), data=str(tiny_corpus))
    path = tmp_path_factory.mktemp("run") / "r.finetune.resume.pt"
    save_checkpoint(path, "resume", RNNModel.from_config(cfg, len(Corpus(tiny_corpus).dictionary)), cfg,
                    vocab_info(Corpus(tiny_corpus).dictionary), schedule={}, optimizer={}, rng={})
    return path


@pytest.mark.parametrize("tool", TOOLS)
def test_a_resume_point_is_never_scored_as_the_model_unless_asked(resume_point, tool):
    """It holds the last epoch's raw weights, not the run's best (averaged) model: one line naming the file."""
    want = f"{resume_point} is a resume point .* pass --save {resume_point.parent / 'r.finetune.pt'}, or --allow"
    with pytest.raises(UserError, match=want):
        TOOLS[tool].main(["--save", str(resume_point), "--device", "cpu"])


def test_a_resume_point_is_scored_when_asked(resume_point):
    res = evaluate.main(["--save", str(resume_point), "--device", "cpu", "--max_batches", "1", "--allow_resume_point"])
    assert res["valid_ppl"] > 1 and res["test_ppl"] > 1


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_says_what_save_is(tool, capsys):
    with pytest.raises(SystemExit):
        TOOLS[tool].main(["--help"])
    assert "--save SAVE the checkpoint to read" in " ".join(capsys.readouterr().out.split())
