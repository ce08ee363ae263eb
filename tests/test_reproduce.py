"""reproduce.py end to end at the tiny scale: the plan, two chains at once beside a failing one, the
report against the steps' records, a rerun that redoes nothing, changed inputs refused, a kill in the
middle followed by a rerun that ends where an uninterrupted run does, and a finished step never lost:
side files damaged, a moved folder, records gone, a damaged checkpoint, a diverging result, SIGTERM."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import report
import reproduce
import rows
import runner
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
    assert all("--awd_scoring" in line for line in pointer.values())  # scored as the published numbers were
    assert "merity-tag" not in plan and "Krause" in rows.ROW["merity-ptb-dyneval"].source
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
    monkeypatch.setitem(rows.CHAIN, "merity-ptb", rows.Chain(chain.id, chain.corpus,
                                                             chain.train + ("--dropouth", "0.1"),
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
            ours, theirs = ({k: json.loads(t)[k] for k in ("valid_ppl", "test_ppl", "best_epoch")}
                            for t in (ours, theirs))
        assert ours == theirs


def test_readme_table_is_the_registry():
    text = (REPO / "README.md").read_text()
    block = text.split(reproduce.README_BEGIN, 1)[1].split(reproduce.README_END, 1)[0]
    assert block.strip() == rows.readme_table().strip(), "run python reproduce.py --readme"


def copy_of(first, tmp_path):
    """The first run's --out folder, moved elsewhere (a finished folder is recognized wherever it lies)."""
    shutil.copytree(first[0] / "runs", tmp_path / "runs", symlinks=True)
    return tmp_path / "runs" / "merity-ptb" / "seed141"


def test_side_files_lost_or_damaged_never_redo_a_finished_step(first, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = copy_of(first, tmp_path)
    (folder / "train.resume.pt").unlink()
    (folder / "finetune.resume.pt").write_bytes(b"damaged")
    (folder / "train.final.json").write_text('{"valid_ppl": 7')
    (folder / "train.metrics.jsonl").write_text((folder / "train.metrics.jsonl").read_text()[:-9])
    record = json.loads((folder / "train.step.json").read_text())
    (folder / "train.step.json").write_text(json.dumps(dict(record, commit="0000000")))
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    done = reproduce.main(argv(mirror, tmp_path, "merity-ptb-cache"))
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name in kept} == kept
    assert all(len(r["attempts"]) == 1 for r in records(tmp_path).values())
    assert [r["status"] for r in done["rows"]] == ["done"] * 3
    assert done["rows"][0]["runs"][0]["valid_ppl"] == record["result"]["valid_ppl"]  # from the record
    md = (tmp_path / "report" / "merity-ptb-cache.md").read_text()
    assert "train.metrics.jsonl line 2 is not JSON" in md and "train.final.json is missing or damaged" in md
    assert "| 0000000 †, " in md and f"| {done['commit']}, " in md  # each number's own commit
    assert report.TINY_NOTE in md


def test_nothing_trusted_without_its_record_and_redo_on_request(first, mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = copy_of(first, tmp_path)
    for record in folder.glob("*.step.json"):
        record.unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(SystemExit) as exit_:
        reproduce.main(argv(mirror, tmp_path, "merity-ptb-ft"))
    assert exit_.value.code == 1 and {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == kept
    failure, = json.loads((tmp_path / "report" / "merity-ptb-ft.json").read_text())["rows"][0]["failures"]
    assert "files of a step without its finished record are in the way: merity-ptb/seed141/train.pt" in failure[
        "reason"] and "--redo merity-ptb:train" in failure["reason"]
    capsys.readouterr()
    reproduce.main(argv(mirror, tmp_path, "merity-ptb-ft", "--dry", "--redo", "merity-ptb"))
    plan = capsys.readouterr().out
    assert "[redo, discards merity-ptb/seed141/train.pt, " in plan
    assert "[redo, discards merity-ptb/seed141/finetune.pt" in plan
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == kept  # a plan discards nothing
    with pytest.raises(UserError, match="--redo nothing: no such step"):
        reproduce.main(argv(mirror, tmp_path, "merity-ptb-ft", "--dry", "--redo", "nothing"))


def test_redo_computes_a_finished_step_anew_and_only_it(first, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    folder = copy_of(first, tmp_path)
    trained = (folder / "finetune.pt").stat().st_mtime_ns
    reproduce.main(argv(mirror, tmp_path, "merity-ptb-cache", "--redo", "merity-ptb:pointer"))
    attempts = {name: len(r["attempts"]) for name, r in records(tmp_path).items()}
    assert attempts == {"train": 1, "finetune": 1, "pointer": 1}
    assert (folder / "finetune.pt").stat().st_mtime_ns == trained
    assert records(tmp_path)["pointer"]["attempts"][0]["command"][2].startswith(str(tmp_path))  # run in its new place


DIVERGING = rows.Row("diverging", "broken", "pointer", "a pointer that diverges", None, "this test",
                     ("--window", "5", "--theta", "1", "--lambdasm", "1"))


def test_each_chain_fails_alone_damaged_checkpoint_and_infinite_result(first, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setitem(rows.CHAIN, "broken", rows.Chain("broken", "penn", rows.CHAIN["merity-ptb"].train, None))
    monkeypatch.setitem(rows.ROW, "diverging", DIVERGING)
    monkeypatch.setattr(rows, "ROWS", rows.ROWS + [DIVERGING])
    folder = copy_of(first, tmp_path)
    for name in ("finetune.pt", "finetune.step.json", "finetune.final.json", "finetune.resume.pt",
                 "finetune.metrics.jsonl"):
        (folder / name).unlink()
    (folder / "train.pt").write_bytes((folder / "train.pt").read_bytes()[:-100])
    with pytest.raises(SystemExit):
        reproduce.main(argv(mirror, tmp_path, "merity-ptb-ft", "diverging"))
    table = {r["id"]: r for r in json.loads((tmp_path / "report" / "merity-ptb-ft+diverging.json").read_text())["rows"]}
    assert "merity-ptb/seed141/train.pt no longer matches its record" in table["merity-ptb-ft"]["failures"][0]["reason"]
    assert table["merity-ptb"]["status"] == "failed" and (folder / "train.pt").exists()
    diverged, = table["diverging"]["failures"]
    assert diverged["step"] == "pointer" and ("exit code 2" in diverged["reason"] or "finite" in diverged["reason"])
    assert runner.finite_result({"valid_ppl": float("inf"), "test_ppl": 1.0}) is None  # a failed step, not a number
    assert runner.finite_result({"valid_ppl": float("nan"), "test_ppl": 1.0}) is None
    assert "outputs" in records(tmp_path, "broken", 141)["finetune"]  # the other chain went on
    assert "outputs" not in records(tmp_path, "broken", 141)["pointer"]


def test_unwritable_output_folders_are_refused_before_any_step(mirror, tmp_path):
    (tmp_path / "file").write_text("")
    for flag in ("--out", "--report_dir"):
        args = argv(mirror, tmp_path, "merity-ptb") + [flag, str(tmp_path / "file" / "below")]
        with pytest.raises(UserError, match=f"{flag} .*file is a file, not a folder"):
            reproduce.main(args)
    assert not (tmp_path / "runs" / "merity-ptb").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", str(reproduce.DEFAULT_REPORT["tiny"])], cwd=REPO)
    assert ignored.returncode == 0  # the README's tiny command leaves the committed evidence alone


def test_sigterm_stops_steps_that_inherited_an_ignored_sigint(mirror, tmp_path):
    """Started in the background from a script, the runner and its steps begin with SIGINT ignored: a
    SIGTERM still stops the running step at a batch boundary, its resume point written, and exits 130."""
    folder = tmp_path / "runs" / "merity-ptb" / "seed141"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(REPO / "reproduce.py"), *argv(mirror, tmp_path, "merity-ptb-ft")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    while not (folder / "train.metrics.jsonl").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=100)
    attempts = [a for r in records(tmp_path).values() for a in r["attempts"]]
    if any("rc" not in a for a in attempts) or not all(a.get("rc") == 0 for a in attempts):
        assert proc.returncode == 130 and b"interrupted" in err
        assert attempts[-1]["rc"] == 130 and any(folder.glob("*.resume.pt"))


def test_expected_gpu_hours_from_a_measured_report(tmp_path):
    plan = reproduce.planning.plan_chains(rows.select(["merity-ptb-ft"])[0], None, "full", lambda chain: 141)
    assert report.expected_hours(plan, tmp_path) == (None, ["merity-ptb:finetune", "merity-ptb:train"])
    run = {"device": "cuda:0 (NVIDIA H100)", "steps_wall_s": {"train": 5400.0, "finetune": 1800.0}}
    (tmp_path / "ptb.json").write_text(json.dumps({"rows": [{"id": "merity-ptb-ft", "runs": [run]}]}))
    assert report.expected_hours(plan, tmp_path) == (2.0, [])
