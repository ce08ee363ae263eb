"""Shared fixtures and helpers of the test suite.

- ``mirror``: the read-only corpus mirror ($FD_DATA_MIRROR or ../shared/data); a missing mirror
  FAILS the tests that need it (never a silent skip).
- ``tiny_corpus``: a small train/valid/test cut of PTB in a temp folder (session-scoped).
- ``trained`` / ``run_a``: the one tiny trained run the entry-point tests read (session-scoped).
- The corpus cache's user folder ($XDG_CACHE_HOME) points into a session temp dir, so tests never
  write into the real home directory.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="session", autouse=True)
def _isolated_user_cache(tmp_path_factory):
    """Point the corpus cache's user folder at a temp dir for the whole session."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def _mirror_path():
    """$FD_DATA_MIRROR, else ../shared/data beside the checkout, else this checkout's data/ (getdata.sh)."""
    if os.environ.get("FD_DATA_MIRROR"):
        return Path(os.environ["FD_DATA_MIRROR"])
    for cand in (REPO.parent / "shared" / "data", REPO / "data"):
        if (cand / "penn" / "train.txt").is_file():
            return cand
    return REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """A read-only copy of the corpora's text files, whatever state the source folder is in: tests
    never write into the user's data folder, and caches already there never change what they see."""
    path = _mirror_path()
    missing = [f"{c}/{s}.txt" for c in ("penn", "wikitext-2") for s in SPLITS
               if not (path / c / f"{s}.txt").is_file()]
    if missing:
        pytest.fail(f"corpus mirror not found at {path} (missing: {', '.join(missing)}): "
                    f"set FD_DATA_MIRROR=DIR to a folder holding penn/ and wikitext-2/ "
                    f"provide ../shared/data next to the repository, or run ./getdata.sh", pytrace=False)
    copy = tmp_path_factory.mktemp("mirror")
    folders = [copy / c for c in ("penn", "wikitext-2")]
    for folder in folders:
        folder.mkdir()
        for s in SPLITS:
            shutil.copyfile(path / folder.name / f"{s}.txt", folder / f"{s}.txt")
    for folder in folders + [copy]:
        folder.chmod(0o555)
    yield copy
    for folder in folders + [copy]:
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def tiny_corpus(mirror, tmp_path_factory):
    """The first 300 / 60 / 60 lines of PTB's train / valid / test files, in a writable folder."""
    dest = tmp_path_factory.mktemp("tiny-ptb")
    for split, n in zip(SPLITS, (300, 60, 60)):
        with open(mirror / "penn" / f"{split}.txt", encoding="utf-8") as f:
            lines = [next(f) for _ in range(n)]
        (dest / f"{split}.txt").write_text("".join(lines), encoding="utf-8")
    return dest


# --- helpers shared by the tests of the entry points ------------------------------------------------------

def tiny_args(data, save, *extra, epochs=2):
    """main.py's flags for a tiny 2-layer model on the tiny corpus, on the CPU."""
    return ["--preset", "awd-ptb", "--data", str(data), "--emsize", "16", "--nhid", "24", "--nlayers", "2",
            "--batch_size", "4", "--bptt", "12", "--eval_batch_size", "4", "--epochs", str(epochs),
            "--log-interval", "50", "--save", str(save), "--device", "cpu", *extra]


def rows(path):
    """The numbers of each epoch's metrics line (not its timings)."""
    keep = ("epoch", "train_loss", "valid_loss", "penalty", "lr", "phase", "best")
    with open(path) as f:
        return [{k: json.loads(line)[k] for k in keep} for line in f]


def cli(script, *args, **kw):
    """An entry point as the user runs it, on the CPU (test_cuda.py checks the GPU)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          cwd=kw.get("cwd", REPO), stdin=subprocess.DEVNULL, timeout=300, env=env)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def copy_run(save, folder, name="a"):
    """The files of the run saved at ``save`` under ``folder``, as the run saved at folder/NAME.pt (its resume
    point re-pointed there)."""
    import torch
    from utils import atomic_torch_save
    folder.mkdir(exist_ok=True)
    stem = save.with_suffix("")
    for suffix in (".pt", ".metrics.jsonl", ".final.json"):
        shutil.copyfile(f"{stem}{suffix}", folder / f"{name}{suffix}")
    resume = torch.load(f"{stem}.resume.pt", weights_only=True)
    resume["config"]["save"] = str(folder / f"{name}.pt")
    atomic_torch_save(resume, folder / f"{name}.resume.pt")
    return folder / f"{name}.pt"


TRAINED_FLAGS = ("--optimizer", "asgd", "--nonmono", "50")


@pytest.fixture(scope="session")
def trained(tiny_corpus, tmp_path_factory):
    """The suite's one trained run, which tests only read (copy_run it to change it): a tiny FD model trained
    3 epochs with averaged SGD (so its optimizer state has averages), started in its own folder with a
    relative --save a.pt.  Returns (path of a.pt, the run's final results)."""
    import main as main_cli
    folder = tmp_path_factory.mktemp("trained")
    old = os.getcwd()
    os.chdir(folder)
    try:
        result = main_cli.main(tiny_args(tiny_corpus, "a.pt", *TRAINED_FLAGS, epochs=3))
    finally:
        os.chdir(old)
    return folder / "a.pt", result


@pytest.fixture(scope="session")
def run_a(trained):
    return trained[0]
