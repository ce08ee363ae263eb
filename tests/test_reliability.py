"""Nothing lost, nothing silently wrong: inputs checked before any work, runs that never touch each
other's files, mid-epoch resume points, and one-line errors for every damaged input."""
import json
import shutil

import pytest
import torch

import epoch
import evaluate as evaluate_cli
import finetune as finetune_cli
import generate as generate_cli
import main as main_cli
import trainer
import runfiles
import utils
from conftest import assert_one_line_error, cli, copy_run, rows, snapshot, tiny_args
from utils import atomic_torch_save
from runfiles import RunLock, UserError


# --- resume writes where its run was started -----------------------------------------------------

def test_resume_from_another_folder_writes_where_the_run_started(run_a, tmp_path, monkeypatch):
    """A relative --save is resolved when the run starts, so a resume from any folder writes the run's own files."""
    assert torch.load(run_a.parent / "a.resume.pt", weights_only=True)["config"]["save"] == str(run_a)
    save = copy_run(run_a, tmp_path / "run")
    other = tmp_path / "b"
    other.mkdir()
    (other / "a.resume.pt").write_bytes(b"run B's files")  # same names, another run
    (other / "a.metrics.jsonl").write_text("B\n")
    monkeypatch.chdir(other)
    main_cli.main(["--resume", str(save.parent / "a.resume.pt"), "--epochs", "4", "--device", "cpu"])
    assert (other / "a.resume.pt").read_bytes() == b"run B's files"
    assert (other / "a.metrics.jsonl").read_text() == "B\n"
    assert [r["epoch"] for r in rows(save.parent / "a.metrics.jsonl")] == [1, 2, 3, 4]


def test_a_resume_file_copied_to_another_run_is_refused(run_a, tmp_path):
    copy = tmp_path / "c.resume.pt"
    shutil.copyfile(run_a.parent / "a.resume.pt", copy)
    assert_one_line_error(cli("main.py", "--resume", copy), "belongs to the run saved at", "a.resume.pt")


# --- fine-tuning never replaces its input ---------------------------------------------------------

def test_finetune_out_reaching_the_input_through_a_symlink_is_refused(run_a, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(run_a.parent, target_is_directory=True)
    before = run_a.read_bytes()
    proc = cli("finetune.py", "--save", run_a, "--out", link / "a.pt", "--overwrite", "--device", "cpu")
    assert_one_line_error(proc, "input checkpoint")
    assert run_a.read_bytes() == before


# --- every output path checked before training -----------------------------------------------------

@pytest.mark.parametrize("case", ["parent-is-file", "folder", "read-only"])
def test_unwritable_save_is_found_before_any_training(tiny_corpus, tmp_path, monkeypatch, case):
    if case == "parent-is-file":
        (tmp_path / "f").write_text("x")
        save = tmp_path / "f" / "m.pt"
    elif case == "folder":
        save = tmp_path / "dir.pt"
        save.mkdir()
    else:
        save = tmp_path / "ro" / "m.pt"
        save.parent.mkdir()

        def refuse(*a, **k):  # what a read-only or immutable folder does, even to root
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(runfiles.tempfile, "mkstemp", refuse)
    trained = []
    monkeypatch.setattr(trainer, "train_epoch", lambda *a, **k: trained.append(1))
    with pytest.raises(UserError, match="--save"):
        main_cli.main(tiny_args(tiny_corpus, save, epochs=1))
    assert not trained


def test_unwritable_save_is_one_line_and_exits_non_zero(tmp_path):
    (tmp_path / "f").write_text("x")
    assert_one_line_error(cli("main.py", "--save", tmp_path / "f" / "m.pt", "--data", tmp_path), "is a file")


# --- corpus sizes against batch sizes ---------------------------------------------------------------

@pytest.mark.parametrize("split, flag", [("valid", "--eval_batch_size"), ("test", "--test_batch_size"),
                                         ("train", "--batch_size")])
def test_too_small_split_is_refused_before_training(tiny_corpus, tmp_path, split, flag):
    folder = tmp_path / "small"
    shutil.copytree(tiny_corpus, folder)
    (folder / f"{split}.txt").write_text("" if split != "train" else "a b\n")
    proc = cli("main.py", *tiny_args(folder, tmp_path / "m.pt", epochs=1))
    assert_one_line_error(proc, f"{split} split", flag)
    assert "Configuration" not in proc.stdout or "end of epoch" not in proc.stdout
    assert not (tmp_path / "m.pt").exists()


# --- a full disk ------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")])
def test_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch, error):
    target = tmp_path / "m.pt"
    atomic_torch_save({"v": 1}, target)

    def full(obj, f):
        f.write(b"x" * 1000)
        raise error
    monkeypatch.setattr(utils.torch, "save", full)
    with pytest.raises(UserError, match="no space left on the device to write .*m.pt.*previous m.pt is intact"):
        atomic_torch_save({"v": 2}, target)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left


# --- every numeric flag validated at parse time -------------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--device", "gpu"], "--device gpu"), (["--device", "mps"], "--device mps"), (["--seed", "-1"], "--seed"),
    (["--wdecay", "-1"], "--wdecay"), (["--log_interval", "0"], "--log_interval"), (["--lr", "nan"], "--lr"),
    (["--clip", "inf"], "--clip"), (["--checkpoint_every", "-1"], "--checkpoint_every"),
])
def test_bad_training_flags_are_refused(flags, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        main_cli.main(["--dry_run", *flags])


@pytest.mark.parametrize("flags, needle", [
    (["--eval_batch_size", "0"], "--eval_batch_size"), (["--test_batch_size", "-2"], "--test_batch_size"),
    (["--bptt", "-5"], "--bptt"), (["--max_batches", "0"], "--max_batches"), (["--mc", "-1"], "--mc"),
    (["--device", "gpu"], "--device"), (["--dropout", "1.5"], "--dropout"),
])
def test_bad_evaluation_flags_are_refused(run_a, flags, needle):
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        evaluate_cli.main(["--save", str(run_a), *flags])


@pytest.mark.parametrize("flags, needle", [
    (["--epochs", "0"], "--epochs"), (["--lr", "nan"], "--lr"), (["--batch_size", "-4"], "--batch_size"),
    (["--seed", "-3"], "--seed"), (["--dropouti", "1"], "--dropouti"), (["--bptt", "0"], "--bptt"),
])
def test_bad_finetune_flags_are_refused_and_leave_no_output(run_a, tmp_path, flags, needle):
    out = tmp_path / "ft.pt"
    with pytest.raises(UserError, match=needle.replace("-", r"\-")):
        finetune_cli.main(["--save", str(run_a), "--out", str(out), "--device", "cpu", *flags])
    assert list(tmp_path.iterdir()) == []


# --- --overwrite starts clean; one process per run ----------------------------------------------------

def test_overwrite_removes_the_old_runs_resume_and_final_files(tiny_corpus, tmp_path, monkeypatch):
    save = tmp_path / "o.pt"
    main_cli.main(tiny_args(tiny_corpus, save, epochs=1))
    old_resume = (tmp_path / "o.resume.pt").read_bytes()

    def killed(*a, **k):  # the new run dies in its first epoch
        raise SystemExit(137)
    monkeypatch.setattr(trainer, "train_epoch", killed)
    with pytest.raises(SystemExit):
        main_cli.main(tiny_args(tiny_corpus, save, "--overwrite", epochs=1))
    for name in ("o.pt", "o.resume.pt", "o.final.json", "o.metrics.jsonl"):
        assert not (tmp_path / name).exists(), name  # nothing of the old run to resume by mistake
    assert old_resume


def test_two_processes_never_run_the_same_save(tiny_corpus, tmp_path):
    save = tmp_path / "l.pt"
    with RunLock(tmp_path / "l.lock"):
        proc = cli("main.py", *tiny_args(tiny_corpus, save, epochs=1))
    assert_one_line_error(proc, "another process", "l.lock")
    assert not save.exists()


# --- hand-made checkpoints --------------------------------------------------------------------------

# --- damaged checkpoints, in every entry point ------------------------------------------------------------

DAMAGE = {  # what is done to a checkpoint file, and what the one line says
    "missing": (None, "no checkpoint at|no resume point at"),
    "truncated": (lambda data, path: path.write_bytes(data[:5000]), "cannot read"),
    "text": (lambda data, path: path.write_bytes(b"hello world\n"), "cannot read checkpoint|not a checkpoint"),
    "empty": (lambda data, path: path.write_bytes(b""), "cannot read checkpoint|not a checkpoint"),
    "fake-zip": (lambda data, path: path.write_bytes(b"PK\x03\x04 not really a zip"), "cannot read checkpoint"),
    "pickled-model": (lambda data, path: torch.save(torch.nn.LSTM(3, 3), path), "pickled"),
    "foreign-dict": (lambda data, path: torch.save({"state_dict": {}}, path), "not a checkpoint of this project"),
}
BLOB_DAMAGE = {  # edits of the checkpoint's contents
    "no-config-key": (lambda blob: blob["config"].pop("nhid"), "bad"),
    "config-not-dict": (lambda blob: blob.update(config=[1, 2]), "bad"),
    "wrong-shape": (lambda blob: (blob["model"].update({"decoder.bias": torch.zeros(7)}), blob.pop("weights_sha256")),
                    "do not fit"),  # hand-made: no weights checksum, as in checkpoints older than it
    "flipped-bit": (lambda blob: blob["model"]["decoder.bias"].__setitem__(3, float("inf")),
                    "do not match the checksum"),
}
ENTRY_POINTS = {
    "main.py --resume": lambda bad, tmp: main_cli.main(["--resume", str(bad), "--device", "cpu"]),
    "finetune.py --save": lambda bad, tmp: finetune_cli.main(["--save", str(bad), "--out", str(tmp / "ft.pt"),
                                                              "--device", "cpu"]),
    "evaluate.py --save": lambda bad, tmp: evaluate_cli.main(["--save", str(bad), "--device", "cpu"]),
    "generate.py --save": lambda bad, tmp: generate_cli.main(["--save", str(bad), "--device", "cpu", "--words", "3"]),
}


@pytest.mark.parametrize("damage", [*DAMAGE, *BLOB_DAMAGE])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_damaged_checkpoint_is_one_line_in_every_entry_point(run_a, tmp_path, entry, damage):
    """Whatever is wrong with the checkpoint an entry point reads, it ends in one UserError naming the problem,
    and writes nothing."""
    source = run_a.parent / "a.resume.pt" if entry.startswith("main") else run_a
    bad = tmp_path / ("bad.resume.pt" if entry.startswith("main") else "bad.pt")
    if damage in DAMAGE:
        make, needle = DAMAGE[damage]
        if make is not None:
            make(source.read_bytes(), bad)
    else:
        edit, needle = BLOB_DAMAGE[damage]
        blob = torch.load(source, weights_only=True)
        edit(blob)
        if entry.startswith("main") and isinstance(blob["config"], dict):
            blob["config"]["save"] = str(tmp_path / "bad.pt")  # the resume point of the run saved beside it
        atomic_torch_save(blob, bad)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=needle):
        ENTRY_POINTS[entry](bad, tmp_path)
    assert snapshot(tmp_path) == before


def test_a_damaged_checkpoint_as_a_process_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "t.pt").write_text("not a checkpoint")
    assert_one_line_error(cli("evaluate.py", "--save", tmp_path / "t.pt"), "cannot read")


def test_a_resume_point_without_its_schedule_is_refused_and_old_checkpoints_without_a_checksum_load(run_a, tmp_path):
    resume = torch.load(run_a.parent / "a.resume.pt", weights_only=True)
    del resume["schedule"]
    atomic_torch_save(resume, tmp_path / "bad.resume.pt")
    with pytest.raises(UserError, match="schedule"):
        main_cli.main(["--resume", str(tmp_path / "bad.resume.pt")])
    blob = torch.load(run_a, weights_only=True)
    blob["model"]["decoder.bias"][3] = float("inf")
    del blob["weights_sha256"]  # written before the checksum existed
    atomic_torch_save(blob, tmp_path / "old.pt")
    assert trainer.load_checkpoint(tmp_path / "old.pt", "best")["model"]["decoder.bias"][3] == float("inf")


# --- kills: no dead ends, no stale temp files, metrics never ahead of the resume point ----------------

def test_a_run_killed_before_its_first_resume_point_gives_no_dead_end(tiny_corpus, tmp_path):
    save = tmp_path / "k.pt"
    atomic_torch_save({"x": 1}, save)  # a best checkpoint whose run left no resume file
    (tmp_path / ".k.resume.pt.a1b2c3d4.tmp").write_bytes(b"half a file")  # mkstemp's name
    proc = cli("main.py", *tiny_args(tiny_corpus, save, epochs=1))
    assert_one_line_error(proc, "no resume file", "--overwrite")
    assert "--resume" not in proc.stderr
    main_cli.main(tiny_args(tiny_corpus, save, "--overwrite", epochs=1))
    assert not list(tmp_path.glob(".*.tmp"))  # the killed write's temp file is gone


def test_resume_rewrites_metrics_to_match_its_resume_point(tiny_corpus, tmp_path):
    save = tmp_path / "m.pt"
    main_cli.main(tiny_args(tiny_corpus, save, epochs=1))
    good = rows(tmp_path / "m.metrics.jsonl")
    with open(tmp_path / "m.metrics.jsonl", "a") as f:  # a kill after metrics, before the resume point
        f.write(json.dumps(dict(json.loads((tmp_path / "m.metrics.jsonl").read_text()), epoch=2)) + "\n")
    main_cli.main(["--resume", str(tmp_path / "m.resume.pt"), "--epochs", "1", "--device", "cpu"])
    assert rows(tmp_path / "m.metrics.jsonl") == good


# --- NaN in the first epoch -------------------------------------------------------------------------

def test_non_finite_loss_before_any_checkpoint_says_so(tiny_corpus, tmp_path, monkeypatch):
    real = epoch.fraternal_loss
    monkeypatch.setattr(epoch, "fraternal_loss", lambda *a: real(*a)._replace(ce=torch.tensor(float("nan"))))
    with pytest.raises(epoch.NonFiniteLoss) as e:
        main_cli.main(tiny_args(tiny_corpus, tmp_path / "n.pt", epochs=1))
    assert "no checkpoint had been saved yet" in str(e.value) and "intact" not in str(e.value)


# --- masks all shared ----------------------------------------------------------------------------------

def test_sharing_every_active_mask_is_refused():
    with pytest.raises(UserError, match="penalty is 0"):
        main_cli.main(["--dry_run", *(f"--same_mask_{s}" for s in "eiwo")])
    with pytest.raises(UserError, match="penalty is 0"):
        main_cli.main(["--preset", "awd-ptb", "--dry_run", *(f"--same_mask_{s}" for s in "eihwo")])
    with pytest.raises(UserError, match="penalty is 0"):  # the one site with dropout is shared
        main_cli.main(["--dry_run", "--same_mask_w", "--dropout", "0", "--dropouti", "0", "--dropoute", "0"])


# --- mid-epoch resume points ------------------------------------------------------------------------------

@pytest.mark.slow
def test_mid_epoch_resume_reproduces_the_uninterrupted_run(tiny_corpus, tmp_path, monkeypatch):
    args = ("--optimizer", "asgd", "--nonmono", "50", "--checkpoint_every", "1e-9")
    main_cli.main(tiny_args(tiny_corpus, tmp_path / "full.pt", *args, epochs=2))
    full = rows(tmp_path / "full.metrics.jsonl")
    real, calls = epoch.train_step, []

    def killed_in_epoch_2(*a, **k):
        calls.append(1)
        if len(calls) == 200:  # epoch 1 has about 140 batches
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(epoch, "train_step", killed_in_epoch_2)
    with pytest.raises(runfiles.Interrupted):
        main_cli.main(tiny_args(tiny_corpus, tmp_path / "cut.pt", *args, epochs=2))
    blob = torch.load(tmp_path / "cut.resume.pt", weights_only=True)
    assert blob["position"]["epoch"] == 2 and blob["position"]["batch"] >= 1
    monkeypatch.setattr(epoch, "train_step", real)
    resumed = main_cli.main(["--resume", str(tmp_path / "cut.resume.pt"), "--device", "cpu"])
    assert rows(tmp_path / "cut.metrics.jsonl") == full
    assert resumed["test_loss"] == json.load(open(tmp_path / "full.final.json"))["test_loss"]


# --- what a new user is told ----------------------------------------------------------------------------

def test_dry_run_says_its_perplexities_mean_nothing(tiny_corpus, capsys):
    main_cli.main(["--preset", "awd-ptb", "--data", str(tiny_corpus), "--emsize", "16", "--nhid", "24", "--nlayers",
                   "2", "--batch_size", "4", "--bptt", "12", "--eval_batch_size", "4", "--device", "cpu", "--dry_run"])
    assert "a dry run trains 2 batches, so perplexities in the thousands or millions are expected" in \
        capsys.readouterr().out


def test_finetune_that_never_improves_says_the_output_holds_the_input(run_a, tmp_path, monkeypatch, capsys):
    import schedule
    monkeypatch.setattr(schedule.Schedule, "improves", lambda self, loss: False)
    out = tmp_path / "ft.pt"
    finetune_cli.main(["--save", str(run_a), "--out", str(out), "--device", "cpu", "--epochs", "1",
                       "--batch_size", "4", "--eval_batch_size", "4"])
    assert "fine-tuning never improved on the input's validation perplexity" in capsys.readouterr().out
    assert torch.equal(torch.load(out, weights_only=True)["model"]["decoder.bias"],
                       torch.load(run_a, weights_only=True)["model"]["decoder.bias"])


# --- runs never mix, damage is found on load ------------------------------------------------------------

@pytest.mark.parametrize("case", ["typo-data", "eval-batch", "finetune-batch"])
def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(run_a, tiny_corpus, tmp_path, case):
    """Every check comes before --overwrite removes anything of the old run."""
    save = copy_run(run_a, tmp_path / "ow")
    before = snapshot(save.parent)
    with pytest.raises(UserError):
        if case == "typo-data":
            main_cli.main(tiny_args(tmp_path / "typo", save, "--overwrite", epochs=1))
        elif case == "eval-batch":
            main_cli.main(tiny_args(tiny_corpus, save, "--overwrite", "--eval_batch_size", "5000", epochs=1))
        else:
            finetune_cli.main(["--save", str(run_a), "--out", str(save), "--overwrite", "--batch_size", "100000",
                               "--device", "cpu"])
    assert snapshot(save.parent) == before


def test_every_file_of_a_run_carries_its_id_and_resume_refuses_another_runs_best(run_a, tmp_path):
    """A resume point of run X never continues run Y's best model at the same path."""
    best = torch.load(run_a, weights_only=True)
    resume = torch.load(run_a.parent / "a.resume.pt", weights_only=True)
    final = json.loads((run_a.parent / "a.final.json").read_text())
    assert best["run"] == resume["run"] == final["run"] and len(best["run"]) == 32
    save = copy_run(run_a, tmp_path / "h3")
    best["run"] = "f" * 32  # what a later run at the same path wrote
    atomic_torch_save(best, save)
    before = snapshot(save.parent)
    with pytest.raises(UserError, match="written by another run"):
        main_cli.main(["--resume", str(save.parent / "a.resume.pt"), "--epochs", "2", "--device", "cpu"])
    assert snapshot(save.parent) == before


def test_resume_refuses_a_changed_corpus_with_the_same_vocabulary(run_a, tiny_corpus, tmp_path):
    """The resume point records its corpus's content hash."""
    changed = tmp_path / "changed"
    shutil.copytree(tiny_corpus, changed)
    with open(changed / "train.txt", "a", encoding="utf-8") as f:
        f.write("the the\n")  # known words only: the vocabulary stays the same
    with pytest.raises(UserError, match="not the one this run trained on"):
        main_cli.main(["--resume", str(run_a.parent / "a.resume.pt"), "--data", str(changed), "--epochs", "2",
                       "--device", "cpu"])


def test_seeds_and_tiny_temperatures_in_the_tools(run_a, tmp_path):
    """Seeds range-checked everywhere; a temperature that underflows still samples."""
    import generate as generate_cli
    with pytest.raises(UserError, match="--seed"):
        generate_cli.main(["--save", str(run_a), "--seed", "99999999999999999999"])
    with pytest.raises(UserError, match="--seed"):
        evaluate_cli.main(["--save", str(run_a), "--seed", "4294967296"])
    text = generate_cli.main(["--save", str(run_a), "--device", "cpu", "--words", "5", "--temperature", "1e-300"])
    assert len(text.split()) >= 1


def test_generate_never_writes_text_over_a_run_and_a_full_disk_is_one_line(run_a, tmp_path, monkeypatch):
    """Generate.py never writes its text over a file of a run, and a full disk ends in one line."""
    import generate as generate_cli
    before = run_a.read_bytes()
    for outf, needle in ((run_a, "checkpoint or a file of a run"), (run_a.parent / "a.final.json", "file of a run"),
                         (tmp_path, "is a folder")):
        with pytest.raises(UserError, match=needle):
            generate_cli.main(["--save", str(run_a), "--device", "cpu", "--words", "3", "--outf", str(outf),
                               "--overwrite"])
    assert run_a.read_bytes() == before

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runfiles.os, "fsync", full)
    with pytest.raises(UserError, match="no space left"):
        generate_cli.main(["--save", str(run_a), "--device", "cpu", "--words", "3", "--outf", str(tmp_path / "s.txt")])
    assert list(tmp_path.iterdir()) == []  # no temp file left


@pytest.mark.parametrize("case", ["long-name", "lock-folder", "final-folder"])
def test_every_file_name_of_the_run_is_tried_before_training(tiny_corpus, tmp_path, monkeypatch, case):
    """A name too long for the resume point's temp file, a folder where the lock or final.json goes."""
    save = tmp_path / ("x" * 236 + ".pt" if case == "long-name" else "m.pt")
    if case != "long-name":
        (tmp_path / f"m.{case.split('-')[0]}{'.json' if case == 'final-folder' else ''}").mkdir()
    trained = []
    monkeypatch.setattr(trainer, "train_epoch", lambda *a, **k: trained.append(1))
    with pytest.raises(UserError, match="too long|is a folder"):
        main_cli.main(tiny_args(tiny_corpus, save, epochs=1))
    assert not trained


def test_the_annealing_reload_of_a_mismatched_best_is_one_line(run_a, tmp_path):
    """The best model reloaded during training goes through the tidy weight check."""
    import distributed
    from model import RNNModel
    cfg = torch.load(run_a, weights_only=True)["config"]
    other = RNNModel.from_config(dict(cfg, nhid=cfg["nhid"] + 2), 50)
    with pytest.raises(UserError, match="do not fit"):
        distributed.load_best(other, run_a)


@pytest.mark.parametrize("save", ["c2/a.resume.pt", "c2/a.metrics.jsonl", "c2/a.lock"])
def test_a_save_named_like_another_runs_file_is_refused(tiny_corpus, tmp_path, save):
    """--save c2/a.resume.pt would write over the resume point of the run saved at c2/a.pt."""
    with pytest.raises(UserError, match="name of another run's"):
        main_cli.main(tiny_args(tiny_corpus, tmp_path / save, epochs=1))
    assert not (tmp_path / "c2").exists() or not list((tmp_path / "c2").iterdir())


def test_temp_file_clean_up_touches_only_the_runs_own(tmp_path):
    """The run saved at tmpx/a leaves alone the temp file of the run writing tmpx/a.b.pt."""
    theirs, mine = tmp_path / ".a.b.pt.k3j4h5g6.tmp", tmp_path / ".a.q1w2e3r4.tmp"
    theirs.write_bytes(b"another run's write in progress")
    mine.write_bytes(b"left by a killed write")
    runfiles.remove_stale_temp_files(tmp_path / "a")
    assert theirs.exists() and not mine.exists()


@pytest.mark.parametrize("out", ["{stem}.resume.pt", "{stem}"])
def test_finetune_out_never_reaches_a_file_of_its_inputs_run(run_a, tmp_path, out):
    """--out <input>.resume.pt, or the input's stem (whose resume point is the input's), even with --overwrite."""
    save = copy_run(run_a, tmp_path / "ft")
    before = snapshot(save.parent)
    with pytest.raises(UserError, match="another run's|input's own run"):
        finetune_cli.main(["--save", str(save), "--out", out.format(stem=save.with_suffix("")), "--overwrite",
                           "--device", "cpu", "--batch_size", "4", "--eval_batch_size", "4"])
    assert snapshot(save.parent) == before


def test_resume_flags_that_would_do_nothing_are_refused(run_a):
    """--epochs below the epochs done, and --overwrite with --resume, are refused."""
    resume = str(run_a.parent / "a.resume.pt")
    before = snapshot(run_a.parent)
    with pytest.raises(UserError, match="--overwrite has no effect"):
        main_cli.main(["--resume", resume, "--overwrite", "--device", "cpu"])
    blob = torch.load(resume, weights_only=True)  # run_a may have done only 1 epoch, and --epochs 0 is refused
    done = blob["schedule"]["epoch"]               # by the flag's own check: the configuration is given directly
    with pytest.raises(UserError, match=f"below the {done} epochs"):
        trainer.run(dict(blob["config"], epochs=done - 1), resume=blob)
    assert snapshot(run_a.parent) == before


def test_words_of_the_messages(tmp_path, monkeypatch):
    """The words of the vocabulary mismatch, of finetune's lock (naming --out) and of sizes under a MiB."""
    from checkpoint import check_vocab
    from data import Dictionary
    blob = {"vocab": {"size": 2, "sha256": Dictionary(["a", "b"]).fingerprint()}}
    with pytest.raises(UserError) as e:
        check_vocab(blob, Dictionary(["a", "c"]), "the resume checkpoint", "data/x")
    assert str(e.value).startswith("the resume checkpoint was trained on a vocabulary of 2 words, the corpus at "
                                   "data/x has other words of the same count")
    with RunLock(tmp_path / "f.lock"):
        with pytest.raises(UserError, match="choose another --out"):
            with RunLock(tmp_path / "f.lock", "--out"):
                pass
    assert runfiles.size_text(0) == "0 bytes" and runfiles.size_text(3 << 10) == "3 KiB"


def test_resume_without_its_best_model_leaves_no_stale_final_json(run_a, tmp_path):
    """A resumed run whose best model is gone leaves no final.json describing it."""
    save = copy_run(run_a, tmp_path / "l5")
    save.unlink()
    done = str(torch.load(save.parent / "a.resume.pt", weights_only=True)["schedule"]["epoch"])
    assert main_cli.main(["--resume", str(save.parent / "a.resume.pt"), "--epochs", done, "--device", "cpu"]) is None
    assert not (save.parent / "a.final.json").exists()


def test_a_dry_run_of_a_resume_reaches_the_test(run_a):
    """The resumed dry run's short epoch rarely beats the run's best, and it still evaluates."""
    before = snapshot(run_a.parent)
    result = main_cli.main(["--resume", str(run_a.parent / "a.resume.pt"), "--dry_run", "--device", "cpu"])
    assert result is not None and result["test_ppl"] > 0
    assert snapshot(run_a.parent) == before  # in a temporary folder


def test_a_run_folder_moved_as_a_whole_resumes_from_its_new_place(run_a, tmp_path):
    """The resume file's own location decides; a renamed resume file is refused, naming the fix."""
    moved = tmp_path / "moved"
    shutil.copytree(run_a.parent, moved)  # the run's folder elsewhere (its old place stays, untouched)
    before = snapshot(run_a.parent)
    done = torch.load(moved / "a.resume.pt", weights_only=True)["schedule"]["epoch"]
    main_cli.main(["--resume", str(moved / "a.resume.pt"), "--epochs", str(done + 1), "--device", "cpu"])
    assert snapshot(run_a.parent) == before
    assert [r["epoch"] for r in rows(moved / "a.metrics.jsonl")] == list(range(1, done + 2))
    assert torch.load(moved / "a.resume.pt", weights_only=True)["config"]["save"] == str(moved / "a.pt")
    (moved / "a.resume.pt").rename(moved / "b.resume.pt")
    with pytest.raises(UserError, match="from its a.resume.pt there"):
        main_cli.main(["--resume", str(moved / "b.resume.pt"), "--device", "cpu"])


def test_a_relative_data_folder_still_reads_from_another_folder(tiny_corpus, tmp_path, monkeypatch):
    """--data (data/penn by default) resolved when the run starts; an older resume point's relative path
    still reads from the folder it was started in."""
    monkeypatch.chdir(tiny_corpus.parent)
    main_cli.main(tiny_args(tiny_corpus.name, tmp_path / "r.pt", epochs=1))
    assert torch.load(tmp_path / "r.resume.pt", weights_only=True)["config"]["data"] == str(tiny_corpus)
    monkeypatch.chdir(tmp_path)
    assert main_cli.main(["--resume", str(tmp_path / "r.resume.pt"), "--epochs", "1", "--device", "cpu"])
    old = torch.load(tmp_path / "r.resume.pt", weights_only=True)
    old["config"]["data"] = tiny_corpus.name  # as written before --data was resolved
    atomic_torch_save(old, tmp_path / "r.resume.pt")
    monkeypatch.chdir(tiny_corpus.parent)
    assert main_cli.main(["--resume", str(tmp_path / "r.resume.pt"), "--epochs", "1", "--device", "cpu"])


def test_a_lock_file_removed_while_the_run_trains_is_put_back_and_a_takeover_stops_the_run(tiny_corpus, tmp_path,
                                                                                          monkeypatch):
    """The run verifies its lock before each save: removed, it is locked again (a second --resume is
    refused); if a second process got in first, this run stops before writing anything more."""
    save, lock = tmp_path / "l.pt", tmp_path / "l.lock"
    real, seen, other = trainer.train_epoch, [], []

    def epoch_of_three_batches(model, optimizer, train_data, cfg, reg, epoch, max_batches=None, **kw):
        if epoch == 2:
            lock.unlink()  # a clean-up script
        if epoch == 3:
            with pytest.raises(UserError, match="another process is running"):
                RunLock(lock).__enter__()  # the run locked it again at epoch 2's saves
            seen.append(torch.load(tmp_path / "l.resume.pt", weights_only=True)["schedule"]["epoch"])
            lock.unlink()
            other.append(RunLock(lock).__enter__())  # a second --resume, started now
        return real(model, optimizer, train_data, cfg, reg, epoch, 3, **kw)

    monkeypatch.setattr(trainer, "train_epoch", epoch_of_three_batches)
    with pytest.raises(UserError, match="another process has started the same run"):
        main_cli.main(tiny_args(tiny_corpus, save, "--checkpoint_every", "0", epochs=3))
    assert seen == [2]
    assert torch.load(tmp_path / "l.resume.pt", weights_only=True)["schedule"]["epoch"] == 2  # nothing written since
    assert other[0].holds_path()  # the second process's lock is left alone
    other[0].__exit__(None, None, None)


def test_ctrl_c_exits_130_with_one_line_saying_how_to_continue(capsys):
    """An interrupted run is not a finished one, whatever it saved: never exit 0."""
    def interrupted():
        raise runfiles.Interrupted("continue with: python main.py --resume runs/x.resume.pt")
    with pytest.raises(SystemExit) as e:
        runfiles.run_cli(interrupted)
    assert e.value.code == 130
    assert capsys.readouterr().err == "interrupted: continue with: python main.py --resume runs/x.resume.pt\n"


def test_finetune_interrupted_in_its_first_epoch_says_so(run_a, tmp_path, monkeypatch, capsys):
    """Not "never improved on the input": it was interrupted before it could."""
    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "train_epoch", ctrl_c)
    out = tmp_path / "ft.pt"
    with pytest.raises(runfiles.Interrupted, match="no resume point was written yet"):
        finetune_cli.main(["--save", str(run_a), "--out", str(out), "--device", "cpu", "--batch_size", "4",
                           "--eval_batch_size", "4"])
    text = capsys.readouterr().out
    assert (f"Note: fine-tuning was interrupted after 0 epochs, before it improved on the input's validation "
            f"perplexity, so {out} holds the input's weights.") in text
    assert "never improved" not in text


def test_ctrl_c_under_torchrun_is_one_line_from_one_process_and_no_test_evaluation(tiny_corpus, tmp_path,
                                                                                   monkeypatch, capsys):
    """Torchrun sends every process the Ctrl-C and kills them 30 s later, so after the resume point no
    test evaluation (it can take longer); ranks other than 0 say nothing, rank 0 one line, exit code 130."""
    import signal

    import distributed
    quiet = utils.DeferredInterrupt("stopping", say=False)
    try:
        signal.raise_signal(signal.SIGINT)
    finally:
        quiet.restore()
    assert quiet.requested and capsys.readouterr().err == ""

    def leave(code):
        raise SystemExit(code)
    monkeypatch.setattr(distributed.os, "_exit", leave)
    for rank, said in ((1, ""), (0, "interrupted: continue with: python main.py --resume x\n")):
        with pytest.raises(SystemExit) as e:
            distributed._abort(runfiles.Interrupted("continue with: python main.py --resume x"), rank, 2)
        assert e.value.code == 130 and capsys.readouterr().err == said

    real = trainer.train_epoch

    def ctrl_c_in_epoch_2(model, optimizer, train_data, cfg, reg, epoch, max_batches=None, **kw):
        if epoch == 2:
            raise KeyboardInterrupt
        return real(model, optimizer, train_data, cfg, reg, epoch, 3, **kw)
    monkeypatch.setattr(trainer, "train_epoch", ctrl_c_in_epoch_2)
    monkeypatch.setattr(distributed, "size", lambda: 2)  # rank 0 of 2 (the collectives are no-ops in one process)
    with pytest.raises(runfiles.Interrupted, match="continue with: python main.py --resume"):
        main_cli.main(tiny_args(tiny_corpus, tmp_path / "t.pt", epochs=3))
    out = capsys.readouterr().out
    assert f"python evaluate.py --save {tmp_path / 't.pt'}" in out and "End of training" not in out
    assert not (tmp_path / "t.final.json").exists()


# --- odd inputs and late interruptions, each said in one line ----------------------------------------------

def test_a_tiny_train_fraction_says_what_it_trains_on(tiny_corpus, tmp_path, capsys):
    """The lines and tokens it really trains on, not the fraction asked for."""
    main_cli.main(tiny_args(tiny_corpus, tmp_path / "f.pt", "--train_fraction", "1e-9", "--dry_run", epochs=1))
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("Training on the first"))
    first = (tiny_corpus / "train.txt").read_text().splitlines()[0].split()
    assert line.startswith(f"Training on the first 1 of the training text's 300 lines ({len(first) + 1} of "), line


def test_ctrl_c_after_the_end_of_training_says_the_run_is_complete(tiny_corpus, tmp_path, monkeypatch, capsys):
    """Ctrl-C once final.json is written: exit 130 with a sentence saying the run is complete and where its results
    are."""
    real = trainer.atomic_write_json

    def then_ctrl_c(obj, target):
        real(obj, target)
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "atomic_write_json", then_ctrl_c)
    with pytest.raises(SystemExit) as e:
        runfiles.run_cli(lambda: main_cli.main(tiny_args(tiny_corpus, tmp_path / "e.pt", epochs=1)))
    assert e.value.code == 130
    final = tmp_path / "e.final.json"
    assert capsys.readouterr().err.strip().endswith(f"the run is complete, its results are in {final}")
    assert json.loads(final.read_text())["best_epoch"] == 1


@pytest.mark.parametrize("tool, suggested", [("main.py", "python main.py --save {x}.pt"),
                                             ("finetune.py", "python finetune.py --save TRAINED.pt --out {x}.pt")])
def test_a_missing_resume_point_suggests_a_command_that_works(tmp_path, tool, suggested):
    x = tmp_path / "x"
    proc = cli(tool, "--resume", f"{x}.resume.pt")
    assert_one_line_error(proc, f"no resume point at {x}.resume.pt", suggested.format(x=x))
    assert f"--save {x}.resume.pt" not in proc.stderr
    (tmp_path / "x.pt").write_bytes(b"a finished run's best model")
    assert_one_line_error(cli(tool, "--resume", f"{x}.resume.pt"), f"python evaluate.py --save {x}.pt")


@pytest.mark.parametrize("flag, value, closest", [("--preset", "awd-pbt", "awd-ptb"), ("--preset", "nosuch", None),
                                                  ("--model", "FDD", "FD"), ("--optimizer", "asgd-tn", "asgd-nt")])
def test_a_mistyped_name_is_one_line_with_the_valid_names_and_the_closest(flag, value, closest, capsys):
    from config import build_train_parser
    with pytest.raises(SystemExit) as e:
        build_train_parser().parse_args([flag, value])
    out = capsys.readouterr()
    assert e.value.code == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1, out.err
    assert out.err.startswith(f"error: argument {flag}: unknown") and "(see python main.py --help)" in out.err
    if flag == "--preset":
        assert "merity-tag-wt2" in out.err
    if closest:
        assert f"did you mean {closest}?" in out.err


def test_names_are_case_insensitive():
    from config import train_config
    assert [train_config(["--model", m])["model"] for m in ("fd", "Baseline", "eld")] == ["FD", "baseline", "ELD"]
    assert train_config(["--preset", "AWD-PTB"])["preset"] == "awd-ptb"


def test_argument_errors_are_one_line_without_a_usage_dump():
    for tool, args in (("main.py", ["--epochs", "x"]), ("finetune.py", ["--bogus"])):
        proc = cli(tool, *args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "usage:" not in proc.stderr and f"(see python {tool} --help)" in proc.stderr


def disk_full_on_save(monkeypatch, module, at):
    """Torch's zip writer after an ENOSPC: RuntimeError "unexpected pos" raised while handling the OSError, on the
    ``at``-th checkpoint save."""
    import checkpoint
    real, calls = checkpoint.atomic_torch_save, []

    def full(f):
        f.write(b"x" * 4096)
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4096") from None

    def save(obj, target):
        calls.append(target)
        if len(calls) == at:
            return runfiles.atomic_write(target, full)
        return real(obj, target)
    monkeypatch.setattr(checkpoint, "atomic_torch_save", save)
    return calls


@pytest.mark.parametrize("tool", ["main.py", "finetune.py"])
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_loses_nothing(run_a, tiny_corpus, tmp_path,
                                                                             monkeypatch, capsys, tool):
    """The run stops with one line naming the file (in its folder) and how much it wrote; what was saved stays."""
    save = tmp_path / "d.pt"
    if tool == "main.py":  # epoch 1: best, resume point; epoch 2: best
        calls = disk_full_on_save(monkeypatch, main_cli, 3)
        argv = tiny_args(tiny_corpus, save, "--checkpoint_every", "0", epochs=2)
    else:  # the input copied as the best model, then epoch 1's resume point
        calls = disk_full_on_save(monkeypatch, finetune_cli, 2)
        argv = ["--save", str(run_a), "--out", str(save), "--device", "cpu", "--batch_size", "4",
                "--eval_batch_size", "4", "--epochs", "2", "--checkpoint_every", "0"]
    kept, real_epoch = {}, trainer.run_epoch

    def remember(r, epoch, stop):
        kept.clear()
        kept.update(snapshot(tmp_path))
        return real_epoch(r, epoch, stop)
    monkeypatch.setattr(trainer, "run_epoch", remember)
    with pytest.raises(SystemExit) as e:
        runfiles.run_cli(lambda: (main_cli if tool == "main.py" else finetune_cli).main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the device to write {calls[-1]} ("), err
    assert "it ran out after 4 KiB" in err[0] and "free some space and rerun" in err[0]
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "d.lock"} == {k: v for k, v in kept.items() if k != "d.lock"}
    assert not list(tmp_path.glob(".*.tmp"))
