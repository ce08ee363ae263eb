"""Shared fixtures for the unit tests of the flat modules (data, dropout modules, model).

- ``mirror``: the read-only corpus mirror ($FD_DATA_MIRROR or ../shared/data); a missing mirror
  FAILS the tests that need it (never a silent skip).
- ``tiny_corpus``: a small train/valid/test cut of PTB in a temp folder (session-scoped).
- The corpus cache's user folder ($XDG_CACHE_HOME) points into a session temp dir, so tests never
  write into the real home directory.
"""
import os
import shutil
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
