"""ablation.py and its report (study_report.py) on a tiny corpus at --quick scale: runs through
trainer.run, committed summaries reused without checkpoints, --quick kept out of results/, the run
specs' configurations, and the seed aggregation on known numbers."""
import csv
import importlib.util
import json
import tempfile

import pytest

import ablation
import study_report
from utils import UserError


def quick(tiny_corpus, out, *extra):
    return ["--quick", "--data", str(tiny_corpus), "--out", str(out), "--train_fraction", "1", "--threads", "1",
            *extra]


def test_study_writes_tables_and_reuses_committed_summaries_without_checkpoints(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "study"
    argv = quick(tiny_corpus, out, "--study", "seeds", "--variants", "baseline", "FD", "ELD", "PM", "RD")
    summaries = ablation.main(argv)
    variants = ["baseline", "FD", "ELD", "PM", "RD"]
    assert [s["variant"] for s in summaries] == variants
    assert all(s["mask_variance"] > 0 and s["test_ppl"] > 1 and s["epochs"] == 2 for s in summaries)
    table = (out / "results.md").read_text()
    assert all(f"| {v} |" in table for v in variants) and "Command: `python ablation.py" in table
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(variants) and {r["run"] for r in rows} == {f"{v}_seed321" for v in variants}
    study = json.load(open(out / "study.json"))
    assert study["study"]["emsize"] == 32 and len(study["runs"]) == 5
    assert (out / "curves.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    md = (out / "STUDY.md").read_text()
    assert study_report.BEGIN in md and "FD minus baseline, paired by seed" in md and "torch " in md
    # What git keeps: summaries, metrics, final results; the checkpoints are ignored, so drop them.
    for p in (out / "runs").glob("*.pt"):
        p.unlink()
    (out / "STUDY.md").write_text("# Notes kept\n\n" + md + "\nWritten by hand.\n")
    capsys.readouterr()
    again = ablation.main(argv)
    assert capsys.readouterr().out.count("Reusing the committed summary") == 5
    assert not list((out / "runs").glob("*.pt"))
    assert [s["test_ppl"] for s in again] == [s["test_ppl"] for s in summaries]
    md = (out / "STUDY.md").read_text()
    assert md.startswith("# Notes kept") and md.endswith("Written by hand.\n") and md.count(study_report.BEGIN) == 1
    # A summary whose configuration differs does not stand for the run: refused, or trained again with --retrain.
    path = out / "runs" / "PM_seed321.summary.json"
    changed = json.loads(path.read_text())
    changed["config"]["lr"] = 20.0
    path.write_text(json.dumps(changed))
    with pytest.raises(UserError, match="differs in lr"):
        ablation.main(quick(tiny_corpus, out, "--runs", "PM_seed321"))
    assert json.loads(path.read_text())["config"]["lr"] == 20.0
    ablation.main(quick(tiny_corpus, out, "--runs", "PM_seed321", "--retrain"))
    assert "configuration differs in lr" in capsys.readouterr().out
    assert json.loads(path.read_text())["config"]["lr"] == 30.0


def test_quick_defaults_to_a_temporary_folder_and_never_touches_results(tiny_corpus, tmp_path, monkeypatch):
    committed = tmp_path / "checkout" / "results" / "ablation"
    committed.mkdir(parents=True)
    (committed / "study.json").write_text(json.dumps({"study": ablation.DEFAULTS}))
    (committed / "results.md").write_text("the real study\n")
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    before = {p: p.read_bytes() for p in committed.rglob("*")}
    ablation.main(["--quick", "--data", str(tiny_corpus), "--train_fraction", "1", "--runs", "baseline_seed321"])
    assert {p: p.read_bytes() for p in committed.rglob("*")} == before
    assert not (tmp_path / "checkout" / "results" / "STUDY.md").exists()
    assert list((tmp_path / "tmp").glob("ablation-quick-*/runs/baseline_seed321.summary.json"))
    # Pointing --quick at a folder of another scale is refused: one folder, one configuration.
    with pytest.raises(UserError, match="another scale"):
        ablation.main(["--quick", "--data", str(tiny_corpus), "--out", "results/ablation", "--runs", "FD_seed321"])
    assert {p: p.read_bytes() for p in committed.rglob("*")} == before


def test_kappa_and_mask_specs_give_the_right_configurations(tmp_path):
    study = ablation.QUICK
    plan = ablation.build_plan(ablation.build_parser().parse_args(["--study", "kappa"]))
    names = [ablation.run_name(s) for s in plan]
    # kappa 0.15 is FD's default: the sweep's point is the plain FD run, reused, not rerun
    assert names == ["FD_kappa0_seed321", "FD_kappa0.05_seed321", "FD_seed321", "FD_kappa0.5_seed321",
                     "FD_kappa1.5_seed321"]
    cfgs = [ablation.run_config(s, study, tmp_path, tmp_path / "x.pt", "cpu") for s in plan]
    assert [c["kappa"] for c in cfgs] == [0.0, 0.05, 0.15, 0.5, 1.5]
    assert all(c["double_target"] and c["model"] == "FD" and c["same_mask"] == "" for c in cfgs)
    plan = ablation.build_plan(ablation.build_parser().parse_args(["--study", "masks", "--seeds", "7"]))
    assert [ablation.run_name(s) for s in plan] == ["FD_seed7", "FD_samee_seed7", "FD_samei_seed7",
                                                   "FD_samew_seed7", "FD_sameo_seed7"]
    cfgs = [ablation.run_config(s, study, tmp_path, tmp_path / "x.pt", "cpu") for s in plan]
    assert [c["same_mask"] for c in cfgs] == ["", "e", "i", "w", "o"]
    assert all(c["kappa"] == 0.15 and c["seed"] == 7 for c in cfgs)
    for name in ("FD_kappa0.5_samew_seed3", "baseline_seed324", "RD_seed1"):
        assert ablation.run_name(ablation.parse_run(name)) == name
    assert ablation.run_name(ablation.parse_run("FD_kappa0.15_seed321")) == "FD_seed321"
    full = [ablation.run_name(s) for s in ablation.build_plan(ablation.build_parser().parse_args([]))]
    assert len(full) == len(set(full)) == 25 and full[:4] == ["baseline_seed321", "FD_seed321",
                                                             "baseline_seed322", "FD_seed322"]
    # --seeds alone means the seeds study (every variant), as before the other studies existed
    plan = ablation.build_plan(ablation.build_parser().parse_args(["--seeds", "5"]))
    assert [ablation.run_name(s) for s in plan] == [f"{v}_seed5" for v in ("baseline", "FD", "ELD", "PM", "RD")]
    with pytest.raises(UserError, match="has its own"):
        ablation.build_plan(ablation.build_parser().parse_args(["--study", "full", "--seeds", "5"]))
    with pytest.raises(UserError, match="cannot read run name"):
        ablation.parse_run("FD-seed1")
    with pytest.raises(UserError, match="runs no second pass"):
        ablation.run_config(ablation.parse_run("baseline_kappa0.2_seed1"), study, tmp_path, tmp_path / "x.pt", "cpu")


def fake(variant, seed, valid, test, mvar, kappa=None, same=""):
    kappa = study_report.default_kappa(variant) if kappa is None else kappa
    return {"name": f"{variant}_{seed}", "variant": variant, "seed": seed, "kappa": kappa, "same_mask": same,
            "best_valid_ppl": valid, "test_ppl": test, "mask_variance": mvar}


def test_seed_aggregation_and_paired_differences_on_known_numbers():
    runs = [fake("baseline", 1, 100.0, 90.0, 0.5), fake("FD", 1, 95.0, 92.0, 0.3),
            fake("baseline", 2, 110.0, 100.0, 0.6), fake("FD", 2, 101.0, 93.0, 0.4),
            fake("baseline", 3, 120.0, 110.0, 0.7), fake("FD", 3, 118.0, 105.0, 0.5),
            fake("FD", 4, 50.0, 50.0, 0.1),  # no baseline on seed 4: not paired
            fake("FD", 1, 10.0, 10.0, 0.1, kappa=1.5), fake("FD", 1, 10.0, 10.0, 0.1, same="w")]  # not default
    mean, sd = study_report.mean_sd([100.0, 110.0, 120.0])
    assert mean == 110.0 and sd == pytest.approx(10.0)
    assert study_report.mean_sd([5.0]) == (5.0, None)
    assert study_report.fmt([100.0, 110.0, 120.0], 2) == "110.00 ± 10.00" and study_report.fmt([3.0], 1) == "3.0"
    valid = study_report.paired(runs, "best_valid_ppl")
    assert [r[0] for r in valid["rows"]] == [1, 2, 3]
    assert [r[3] for r in valid["rows"]] == [-5.0, -9.0, -2.0]
    assert valid["mean"] == pytest.approx(-16 / 3) and valid["sd"] == pytest.approx(3.5118845842842)
    assert (valid["wins"], valid["n"]) == (3, 3)
    test = study_report.paired(runs, "test_ppl")
    assert [r[3] for r in test["rows"]] == [2.0, -7.0, -5.0] and (test["wins"], test["n"]) == (2, 3)
    assert test["mean"] == pytest.approx(-10 / 3)
    groups = study_report.kappa_rows(runs)
    # the sweep covers seed 1 only, so every kappa averages seed 1 alone
    assert {k: [s["seed"] for s in g] for k, g in groups.items()} == {0.15: [1], 1.5: [1]}


def test_same_mask_table_and_plot_cover_the_sweep_seeds_only(tmp_path):
    runs = [fake("FD", 1, 95.0, 92.0, 0.3), fake("FD", 2, 99.0, 96.0, 0.4), fake("FD", 1, 97.0, 93.0, 0.5, same="w"),
            fake("FD", 1, 98.0, 94.0, 0.6, same="i"), fake("baseline", 1, 120.0, 110.0, 0.7)]
    table, seeds = study_report.mask_runs(runs)
    assert seeds == "1" and sorted((s["same_mask"], s["seed"]) for s in table) == [("", 1), ("i", 1), ("w", 1)]
    assert study_report.mask_runs([r for r in runs if not r["same_mask"]]) == ([], "")
    drawn = study_report.plot_masks(runs, tmp_path / "masks.png", "tiny")
    assert drawn == (importlib.util.find_spec("matplotlib") is not None) == (tmp_path / "masks.png").is_file()
