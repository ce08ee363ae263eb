"""reproduce.py end to end at the tiny scale: the plan, two chains at once beside a failing one, the
report against the runs' own result files, a rerun that redoes nothing, changed inputs refused, and a
kill in the middle followed by a rerun that ends where an uninterrupted run does."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reproduce
import rows
from runfiles import UserError

REPO = Path(__file__).resolve().parent.parent
# A chain that fails at run time (main.py finds the corpus cut too small for its batch), not at plan time.
BROKEN = rows.Chain("broken", "penn", ("--preset", "single", "--model", "FD", "--batch_size", "100000"), None)
BROKEN_ROW = rows.Row("broken", "broken", "train", "a chain that fails", (1.0, 1.0), "this test")


def argv(mirror, out, *names, jobs=1):
    return [*names, "--scale", "tiny", "--device", "cpu", "--jobs", str(jobs), "--data_root", str(mirror),
            "--out", str(out / "runs"), "--report_dir", str(out / "report")]


def records(out, chain="merity-ptb", seed=141):
    folder = out / "runs" / chain / f"seed{seed}"
    return {p.name.split(".")[0]: json.loads(p.read_text()) for p in folder.glob("*.step.json")}


@pytest.fixture(scope="module")
def first(mirror, tmp_path_factory):
    """One uninterrupted run: the merity-ptb chain up to the cache pointer, beside the broken chain."""
    out = tmp_path_factory.mktemp("reproduce")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setitem(rows.CHAIN, "broken", BROKEN)
        mp.setitem(rows.ROW, "broken", BROKEN_ROW)
        mp.setattr(rows, "ROWS", rows.ROWS + [BROKEN_ROW])
        with pytest.raises(SystemExit) as exit_:
            reproduce.main(argv(mirror, out, "merity-ptb-cache", "broken", jobs=2))
    report = json.loads((out / "report" / "merity-ptb-cache+broken.json").read_text())
    return out, exit_.value.code, {r["id"]: r for r in report["rows"]}


def test_plan(mirror, tmp_path, capsys):
    reproduce.main(["ptb", "wt2", "--scale", "tiny", "--dry", "--seeds", "1", "2", "--data_root", str(mirror),
                    "--out", str(tmp_path / "runs")])
    plan = capsys.readouterr().out
    lines = plan.splitlines()
    for chain in ("awd-ptb-FD", "merity-ptb", "merity-readme-ptb", "awd-wt2-FD", "merity-wt2", "merity-readme-wt2"):
        for seed in (1, 2):
            assert f"{chain} seed {seed} ->" in plan
            assert any(f"--preset {chain.replace('-FD', '')} " in line and f"--seed {seed} " in line for line in lines)
    pointer = {line.split("/seed")[0].rsplit("/", 1)[1]: line for line in lines if "pointer.py" in line}
    assert "--window 2000 --theta 1.0 --lambdasm 0.1 " in pointer["merity-ptb"]
    assert "--window 500 --theta 1.0 --lambdasm 0.1 " in pointer["merity-readme-ptb"]
    for chain in ("merity-wt2", "merity-readme-wt2"):
        assert "--window 3785 --theta 0.662 --lambdasm 0.1279 " in pointer[chain]
    assert sum("dynamiceval.py" in line for line in lines) == 4  # merity-ptb and merity-wt2, two seeds each
    assert sum("finetune.py" in line for line in lines) == 12 and "[to run]" in plan
    assert "Expected GPU hours: unmeasured" in plan
    assert not (tmp_path / "runs").exists()  # a plan writes nothing
    selected, _ = rows.select(["single"])
    assert [r.id for r in selected] == ["single-FD", "single-FD-samew"]
    with pytest.raises(UserError, match="neither a table"):
        reproduce.main(["ptb3", "--dry"])


def test_two_chains_at_once_and_a_failing_one(first):
    out, code, report = first
    assert code == 1
    broken, = report["broken"]["failures"]
    assert report["broken"]["status"] == "failed" and broken["rc"] == 2 and broken["step"] == "train"
    assert Path(broken["log"]).is_file() and "too few for --batch_size 100000" in broken["last_line"]
    assert all(report[r]["status"] == "done" for r in ("merity-ptb", "merity-ptb-ft", "merity-ptb-cache"))
    starts, ends = [], []
    for chain, seed in (("merity-ptb", 141), ("broken", 321)):
        attempt = records(out, chain, seed)["train"]["attempts"][0]
        starts.append(attempt["t0"])
        ends.append(attempt["t0"] + attempt["wall_s"])
    assert max(starts) < min(ends)  # both ran at once
    md = (out / "report" / "merity-ptb-cache+broken.md").read_text()
    assert "`broken` seed 321, step train: exit code 2" in md and broken["log"] in md


def test_report_numbers_are_the_result_files(first):
    out, _, report = first
    folder = out / "runs" / "merity-ptb" / "seed141"
    md = (out / "report" / "merity-ptb-cache+broken.md").read_text()
    for row, result in (("merity-ptb", "train.final.json"), ("merity-ptb-ft", "finetune.final.json"),
                        ("merity-ptb-cache", "pointer.json")):
        run, = report[row]["runs"]
        assert Path(run["result_file"]) == folder / result
        measured = json.loads((folder / result).read_text())
        assert (run["valid_ppl"], run["test_ppl"]) == (measured["valid_ppl"], measured["test_ppl"])
        assert report[row]["measured"]["valid"] == measured["valid_ppl"] and report[row]["seeds"] == [141]
        published = rows.ROW[row].published
        assert report[row]["difference"]["test"] == pytest.approx(measured["test_ppl"] - published[1])
        assert f"| {measured['valid_ppl']:.2f} | {measured['test_ppl']:.2f} |" in md
    assert report["merity-ptb-ft"]["runs"][0]["epochs"] == {"train": 2, "finetune": 1}


def test_rerun_redoes_nothing_and_refuses_changed_inputs(first, mirror, monkeypatch):
    out, _, _ = first
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = out / "runs" / "merity-ptb" / "seed141"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".pt", ".json", ".jsonl")}
    report = reproduce.main(argv(mirror, out, "merity-ptb-cache"))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name in before} == before
    assert all(len(r["attempts"]) == 1 for r in records(out).values())
    assert [r["status"] for r in report["rows"]] == ["done"] * 3
    chain = rows.CHAIN["merity-ptb"]
    monkeypatch.setitem(rows.CHAIN, "merity-ptb", rows.Chain(chain.id, chain.corpus, chain.train + ("--dropouth", "0.1"),
                                                             chain.table))
    with pytest.raises(UserError, match="the train step in .* ran with another command"):
        reproduce.main(argv(mirror, out, "merity-ptb-cache"))
    with pytest.raises(UserError, match="holds results at scale tiny"):
        reproduce.main(["merity-ptb", "--out", str(out / "runs"), "--data_root", str(mirror), "--dry"])


def test_kill_then_rerun_ends_as_an_uninterrupted_run(first, mirror, tmp_path, monkeypatch):
    uninterrupted, _, _ = first
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = tmp_path / "runs" / "merity-ptb" / "seed141"
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *argv(mirror, tmp_path, "merity-ptb-ft")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (folder / "train.resume.pt").exists() and proc.poll() is None:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # reproduce and its running step, mid-chain
    except ProcessLookupError:
        pass
    finally:
        proc.wait()
    trained = (folder / "train.final.json").exists()
    reproduce.main(argv(mirror, tmp_path, "merity-ptb-ft"))
    attempts = records(tmp_path)["train"]["attempts"]
    if trained:  # the kill came after training: it is not redone
        assert len(attempts) == 1
    else:  # it came inside training: the rerun continued from the resume point
        assert len(attempts) == 2 and attempts[1]["command"][:2] == ["main.py", "--resume"]
    done = uninterrupted / "runs" / "merity-ptb" / "seed141"
    for name in ("train.metrics.jsonl", "train.final.json", "finetune.final.json"):
        ours, theirs = (folder / name).read_text(), (done / name).read_text()
        if name.endswith(".jsonl"):
            strip = lambda text: [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "elapsed",
                                   "tokens_per_s")} for line in text.splitlines()]
            ours, theirs = strip(ours), strip(theirs)
        else:
            ours, theirs = ({k: json.loads(t)[k] for k in ("valid_ppl", "test_ppl", "best_epoch")} for t in (ours, theirs))
        assert ours == theirs


def test_readme_table_is_the_registry():
    text = (REPO / "README.md").read_text()
    block = text.split(reproduce.README_BEGIN, 1)[1].split(reproduce.README_END, 1)[0]
    assert block.strip() == rows.readme_table().strip(), "run python reproduce.py --readme"
