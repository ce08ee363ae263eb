"""End to end: main.py, finetune.py and evaluate.py on a tiny PTB cut (tiny models, CPU), resume
equivalence, checkpoints, user errors, and a dry run of every preset on the real corpora."""
import json
import os

import pytest
import torch

import evaluate as evaluate_cli
import finetune as finetune_cli
import main as main_cli
from model import RNNModel
import epoch
import trainer
from checkpoint import weights_sha256
from config import build_config, train_config
from utils import atomic_torch_save
from conftest import TRAINED_FLAGS, assert_one_line_error, cli, rows, tiny_args

def test_run_writes_best_resume_metrics_and_final(trained):
    save, result = trained
    for suffix in ("a.pt", "a.resume.pt", "a.metrics.jsonl", "a.final.json"):
        assert (save.parent / suffix).is_file(), suffix
    best = torch.load(save, weights_only=True)
    assert best["kind"] == "best" and best["config"]["model"] == "FD" and best["config"]["kappa"] == 0.1
    assert set(best["model"]) >= {"encoder.weight", "rnns.0.weight_hh_l0", "decoder.bias"}
    resume = torch.load(save.parent / "a.resume.pt", weights_only=True)
    assert {"optimizer", "schedule", "rng"} <= set(resume) and resume["schedule"]["epoch"] == 3
    assert "ax" in next(iter(resume["optimizer"]["state"].values()))
    metrics = [json.loads(l) for l in open(save.parent / "a.metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert {"seconds", "train_ppl", "valid_ppl", "lr", "phase", "tokens_per_s"} <= set(metrics[0])
    assert all(m["phase"] == "asgd" for m in metrics)
    final = json.load(open(save.parent / "a.final.json"))
    assert final["test_ppl"] == pytest.approx(result["test_ppl"])
    best_epoch = min(metrics, key=lambda m: m["valid_loss"])["epoch"]
    assert final["best_epoch"] == best_epoch == best["epoch"]
    assert final["valid_loss"] == pytest.approx(min(m["valid_loss"] for m in metrics), rel=1e-6)


def assert_saved_weights_are_asgd_averages(best_path, resume_path):
    best = torch.load(best_path, weights_only=True)
    resume = torch.load(resume_path, weights_only=True)
    model = RNNModel.from_config(best["config"], best["vocab"]["size"])
    for i, (name, _) in enumerate(model.named_parameters()):  # optimizer state is indexed in this order
        ax = resume["optimizer"]["state"][i]["ax"]
        assert torch.equal(best["model"][name], ax), name
        assert not torch.equal(resume["model"][name], ax), name  # the raw weights differ


def test_resume_reproduces_the_uninterrupted_run_and_seed_is_deterministic(trained, tiny_corpus, tmp_path):
    save, result = trained
    main_cli.main(tiny_args(tiny_corpus, tmp_path / "r.pt", *TRAINED_FLAGS, epochs=1))
    first = rows(tmp_path / "r.metrics.jsonl")
    assert first[0]["best"]
    assert_saved_weights_are_asgd_averages(tmp_path / "r.pt", tmp_path / "r.resume.pt")
    full = rows(save.parent / "a.metrics.jsonl")
    assert first == full[:1]  # same seed, same metrics
    resumed = main_cli.main(["--resume", str(tmp_path / "r.resume.pt"), "--epochs", "3", "--device", "cpu"])
    assert rows(tmp_path / "r.metrics.jsonl") == full
    assert resumed["test_loss"] == result["test_loss"]


def test_dry_run_of_a_resumed_run_touches_none_of_its_files(trained, capsys):
    save, _ = trained
    files = sorted(save.parent.iterdir())
    before = {f: f.read_bytes() for f in files}
    main_cli.main(["--resume", str(save.parent / "a.resume.pt"), "--dry_run", "--device", "cpu"])
    assert "| end of epoch   4 |" in capsys.readouterr().out
    assert sorted(save.parent.iterdir()) == files
    assert all(f.read_bytes() == data for f, data in before.items())


def test_ctrl_c_still_evaluates_the_best_model(tiny_corpus, tmp_path, monkeypatch, capsys):
    real = trainer.train_epoch

    def interrupted(model, optimizer, train_data, cfg, reg, epoch, max_batches=None, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(model, optimizer, train_data, cfg, reg, epoch, max_batches, **kw)

    monkeypatch.setattr(trainer, "train_epoch", interrupted)
    with pytest.raises(trainer.Interrupted, match="continue with"):  # exit code 130: not a finished run
        main_cli.main(tiny_args(tiny_corpus, tmp_path / "c.pt", epochs=5))
    out = capsys.readouterr().out
    assert "Exiting from training early" in out and "| End of training | test loss" in out
    assert "interrupted after 1 epoch: this is its best model so far (epoch 1)" in out
    assert json.loads((tmp_path / "c.final.json").read_text())["best_epoch"] == 1


def test_non_finite_loss_stops_and_leaves_the_best_checkpoint_intact(tiny_corpus, tmp_path, monkeypatch):
    real_loss, real_eval = epoch.fraternal_loss, trainer.evaluate
    state = {"evaluated": 0, "snapshot": None}

    def counting_eval(*a, **k):
        state["evaluated"] += 1
        return real_eval(*a, **k)

    def poisoned(*a):
        out = real_loss(*a)
        if state["evaluated"]:
            if state["snapshot"] is None:
                state["snapshot"] = (tmp_path / "n.pt").read_bytes()
            out = out._replace(ce=out.ce * float("inf"))
        return out

    monkeypatch.setattr(trainer, "evaluate", counting_eval)
    monkeypatch.setattr(epoch, "fraternal_loss", poisoned)
    with pytest.raises(epoch.NonFiniteLoss, match="intact"):
        main_cli.main(tiny_args(tiny_corpus, tmp_path / "n.pt", epochs=3))
    assert (tmp_path / "n.pt").read_bytes() == state["snapshot"]
    assert torch.load(tmp_path / "n.pt", weights_only=True)["epoch"] == 1


def test_atomic_write_leaves_the_previous_file_when_interrupted(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": 1}, target)

    class Boom:
        def __reduce__(self):
            raise KeyboardInterrupt  # interrupted in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"v": 2, "x": torch.zeros(1000), "boom": Boom()}, target)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


# --- user errors as the user sees them ------------------------------------------------------------

def test_missing_corpus_is_one_line(tmp_path):
    proc = cli("main.py", "--data", tmp_path / "nowhere", "--save", tmp_path / "x.pt")
    assert_one_line_error(proc, "nowhere", "getdata.sh")
    assert not (tmp_path / "x.pt").exists()


def test_bad_combination_is_one_line(tmp_path):
    assert_one_line_error(cli("main.py", "--model", "baseline", "--kappa", "0.2"), "baseline", "--kappa")


def test_existing_checkpoint_is_never_overwritten(trained, tiny_corpus):
    save, _ = trained
    before = save.read_bytes()
    proc = cli("main.py", *tiny_args(tiny_corpus, save, epochs=1))
    assert_one_line_error(proc, "already exists", "--resume")
    assert save.read_bytes() == before


def test_resume_refuses_to_change_the_configuration(trained):
    save, _ = trained
    proc = cli("main.py", "--resume", save.parent / "a.resume.pt", "--lr", "1")
    assert_one_line_error(proc, "--lr")
    assert_one_line_error(cli("main.py", "--resume", save), "'best' checkpoint")


def test_checkpoint_with_another_vocabulary_is_refused(trained, tmp_path):
    save, _ = trained
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"{split}.txt").write_text("a b c\nb c d\n")
    assert_one_line_error(cli("evaluate.py", "--save", save, "--data", other), "vocabulary", "--data")
    assert_one_line_error(cli("finetune.py", "--save", save, "--data", other, "--out", tmp_path / "f.pt"),
                          "vocabulary")
    assert not (tmp_path / "f.pt").exists()


# --- fine-tuning -----------------------------------------------------------------------------------

def test_finetune_leaves_its_input_untouched_and_saves_averaged_weights(trained, tmp_path, capsys):
    blob = torch.load(trained[0], weights_only=True)
    # skew the output bias so that one epoch of fine-tuning surely improves on the input
    blob["model"]["decoder.bias"] = blob["model"]["decoder.bias"] + 3.0 * (torch.arange(blob["vocab"]["size"]) % 2)
    blob["weights_sha256"] = weights_sha256(blob["model"])  # a deliberate edit, so its checksum is renewed
    save = tmp_path / "input.pt"
    atomic_torch_save(blob, save)
    before = save.read_bytes()
    out = tmp_path / "ft.pt"
    result = finetune_cli.main(["--save", str(save), "--out", str(out), "--device", "cpu", "--epochs", "1",
                                "--batch_size", "4",
                                "--eval_batch_size", "4", "--dropouti", "0.05"])
    assert save.read_bytes() == before
    assert "| End of fine-tuning | valid ppl" in capsys.readouterr().out
    cfg, trained_cfg = torch.load(out, weights_only=True)["config"], blob["config"]
    assert (cfg["optimizer"], cfg["kappa"], cfg["double_target"], cfg["eval_auxiliary"]) == ("asgd", 0.0, False, False)
    assert (cfg["alpha"], cfg["beta"], cfg["nonmono"], cfg["seed"]) == (2.0, 1.0, 5, 141)
    assert cfg["dropouti"] == 0.05  # explicit flag wins
    assert cfg["dropout"] == trained_cfg["dropout"] and cfg["wdrop"] == trained_cfg["wdrop"]  # kept
    assert cfg["finetuned_from"] == str(save)
    assert trained_cfg["max_seq_len"] == 0 and cfg["max_seq_len"] == cfg["bptt"] + 10  # the reference's cap
    metrics = [json.loads(l) for l in open(tmp_path / "ft.metrics.jsonl")]
    assert metrics[0]["phase"] == "asgd" and metrics[0]["penalty"] == 0.0  # no FD term
    assert metrics[0]["best"], "one epoch of fine-tuning is expected to improve on this tiny model"
    assert_saved_weights_are_asgd_averages(out, tmp_path / "ft.resume.pt")
    assert result["test_ppl"] == pytest.approx(json.load(open(tmp_path / "ft.final.json"))["test_ppl"])


def test_finetune_default_output_and_no_overwrite(trained, tmp_path):
    save, _ = trained
    assert build_config(vars(finetune_cli.build_parser().parse_args(["--save", str(save)])), "finetune",
                        torch.load(save, weights_only=True)["config"])["save"] == str(save.parent / "a.finetune.pt")
    proc = cli("finetune.py", "--save", save, "--out", save)
    assert_one_line_error(proc, "never overwrites its input")
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"precious")
    proc = cli("finetune.py", "--save", save, "--out", existing)
    assert_one_line_error(proc, "already exists", "--overwrite")
    assert existing.read_bytes() == b"precious"


# --- evaluation ------------------------------------------------------------------------------------

def test_evaluate_matches_the_end_of_training_and_prints_json(trained):
    save, result = trained
    proc = cli("evaluate.py", "--save", save, "--json", "--eval_batch_size", "4")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["test_ppl"] == pytest.approx(result["test_ppl"], rel=1e-9)
    assert got["valid_ppl"] == pytest.approx(result["valid_ppl"], rel=1e-9)


def test_mc_with_dropout_off_equals_deterministic_and_mask_variance(trained):
    save, _ = trained
    off = ["--dropout", "0", "--dropouth", "0", "--dropouti", "0", "--dropoute", "0", "--wdrop", "0"]
    res = evaluate_cli.main(["--save", str(save), "--device", "cpu", "--mc", "1", "--mask_variance", "--max_batches",
                             "6", *off])
    assert res["mc_valid_loss"] == pytest.approx(res["valid_loss"], rel=1e-6)
    assert res["mc_test_loss"] == pytest.approx(res["test_loss"], rel=1e-6)
    assert res["mask_variance"] == 0.0
    on = evaluate_cli.main(["--save", str(save), "--device", "cpu", "--mc", "3", "--mc_batch", "2", "--mask_variance",
                            "--max_batches", "6"])
    assert on["mask_variance"] > 0 and on["mc_valid_loss"] != pytest.approx(on["valid_loss"], rel=1e-6)
    assert on["valid_loss"] == pytest.approx(res["valid_loss"], rel=1e-9)  # deterministic part unchanged


# --- the real corpora ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset, corpus", [("single", "penn"), ("awd-ptb", "penn"), ("awd-wt2", "wikitext-2")])
def test_dry_run_of_each_preset_on_the_real_corpus(preset, corpus, mirror, capsys):
    """The preset's model has the paper's size; its dry run on the real corpus runs every step (at 24 units,
    so the CPU suite stays short: the full-size dry runs are .ci/gpu_check.sh's)."""
    vocab = {"penn": 10000, "wikitext-2": 33278}[corpus]
    size = sum(p.numel() for p in RNNModel.from_config(train_config(["--preset", preset]), vocab).parameters())
    assert size == {"single": 9997440, "awd-ptb": 24221600, "awd-wt2": 33556078}[preset]
    result = main_cli.main(["--preset", preset, "--dry_run", "--data", str(mirror / corpus), "--device", "cpu",
                            "--emsize", "24", "--nhid", "24"])
    out = capsys.readouterr().out
    assert f"vocabulary {vocab}" in out and "| End of training | test loss" in out and result["test_ppl"] > 0


def test_finetune_resumes_where_it_stopped(trained, tmp_path):
    save, _ = trained
    out = tmp_path / "ft.pt"
    args = ["--save", str(save), "--out", str(out), "--batch_size", "4", "--eval_batch_size", "4", "--device", "cpu"]
    finetune_cli.main(args + ["--epochs", "2"])
    full = rows(tmp_path / "ft.metrics.jsonl")
    out2 = tmp_path / "again.pt"
    finetune_cli.main(["--save", str(save), "--out", str(out2), "--device", "cpu", "--batch_size", "4",
                       "--eval_batch_size", "4",
                       "--epochs", "1"])
    finetune_cli.main(["--resume", str(tmp_path / "again.resume.pt"), "--epochs", "2", "--device", "cpu"])
    assert rows(tmp_path / "again.metrics.jsonl") == full
    assert torch.load(save, weights_only=True)["kind"] == "best"  # the input is still the trained model
