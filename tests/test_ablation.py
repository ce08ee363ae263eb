"""ablation.py --quick on a tiny corpus: every variant trained through trainer.run, the table, CSV,
plot (when matplotlib is there) and study.json written, and a rerun reuses the finished runs."""
import csv
import importlib.util
import json

import ablation


def test_quick_study_writes_table_csv_plot_and_reuses_finished_runs(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--quick", "--data", str(tiny_corpus), "--out", str(out), "--train_fraction", "1", "--epochs", "2"]
    summaries = ablation.main(argv)
    variants = ["baseline", "FD", "ELD", "PM", "RD"]
    assert [s["variant"] for s in summaries] == variants
    table = (out / "results.md").read_text()
    for v in variants:
        assert f"| {v} |" in table
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(variants) and {r["variant"] for r in rows} == set(variants)
    study = json.load(open(out / "study.json"))
    assert study["study"]["emsize"] == 32 and len(study["runs"]) == 5
    by = {r["variant"]: r for r in study["runs"]}
    assert by["baseline"]["kappa"] == 0 and by["FD"]["kappa"] == 0.15 and by["ELD"]["kappa"] == 0.25
    assert all(r["mask_variance"] > 0 and r["test_ppl"] > 1 for r in study["runs"])
    # the study trains through main.py's code: each run left main.py's files
    for v in variants:
        assert (out / "runs" / f"{v}_seed321.final.json").is_file()
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    assert (out / "curves.png").is_file() == has_mpl
    capsys.readouterr()
    again = ablation.main(argv)
    assert capsys.readouterr().out.count("Reusing the finished run") == 5
    assert [s["test_ppl"] for s in again] == [s["test_ppl"] for s in summaries]
