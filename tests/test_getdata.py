"""Tests for getdata.sh, the corpus fetcher.

They run the real script against a local mirror of the corpora, so nothing is
downloaded: the mirror comes from $FD_DATA_MIRROR or ../shared/data next to
the repository. The download path is exercised offline through a throwaway
HTTP proxy on localhost that serves a tarball built from the mirror.
"""

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "getdata.sh"
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
CORPORA = ("penn", "wikitext-2")
SPLITS = ("train", "valid", "test")
FILES = tuple(f"{c}/{s}.txt" for c in CORPORA for s in SPLITS)
ERROR_PREFIX = "getdata.sh: error:"
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(scope="session")
def mirror_sums(mirror):
    """The mirror's SHA256SUMS; a mirror made by getdata.sh itself (data/) has none, so hash its files."""
    if not (mirror / "SHA256SUMS").is_file():
        return {f: sha256(mirror / f) for f in FILES}
    sums = {}
    for line in (mirror / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.lstrip("*")] = digest
    assert set(sums) == set(FILES), f"unexpected entries in {mirror}/SHA256SUMS"
    return sums


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(dest, names):
    """Content hash plus inode and mtime, so a rewrite with equal bytes shows too."""
    out = {}
    for name in names:
        st = (dest / name).stat()
        out[name] = (sha256(dest / name), st.st_ino, st.st_mtime_ns)
    return out


def run(args, env=None, cwd=None, script=SCRIPT, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if k != "FD_DATA_MIRROR"}
    full_env.update(env or {})
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


def error_line(proc):
    """The run failed with a single getdata.sh error line last on stderr."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines, "no error message on stderr"
    assert lines[-1].startswith(ERROR_PREFIX), proc.stderr
    return lines[-1]


def entries(dest):
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


def copy_mirror(src, dst):
    """A writable copy (the shared mirror is read-only) that tests may damage."""
    for name in FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)
    return dst


def test_copies_from_mirror_and_second_run_is_a_no_op(mirror, mirror_sums, tmp_path):
    dest = tmp_path / "data"
    first = run(["--from", mirror, "--dest", dest])
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert first.stdout.splitlines() == [
        f"{c}: copied from {mirror}, checksums OK" for c in CORPORA]
    for name in FILES:
        assert sha256(dest / name) == mirror_sums[name], name
    assert entries(dest) == sorted(CORPORA), "temporary directory left behind"
    before = snapshot(dest, FILES)

    second = run(["--from", mirror, "--dest", dest])
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert len(lines) == 2
    for corpus, line in zip(CORPORA, lines):
        assert line.startswith(f"{corpus}: already present"), line
    assert snapshot(dest, FILES) == before
    assert entries(dest) == sorted(CORPORA)


def test_corrupted_mirror_fails_and_installs_nothing(mirror, tmp_path):
    bad = copy_mirror(mirror, tmp_path / "bad")
    with open(bad / "penn" / "valid.txt", "ab") as f:
        f.write(b"x")
    dest = tmp_path / "data"
    proc = run(["--from", bad, "--dest", dest])
    line = error_line(proc)
    assert "valid.txt" in line and "checksum" in line, line
    assert sha256(bad / "penn" / "valid.txt") in line
    assert proc.stdout == ""
    assert entries(dest) == [], "half-installed corpus or temporary directory left behind"


def test_failed_run_leaves_installed_corpus_intact(mirror, mirror_sums, tmp_path):
    dest = tmp_path / "data"
    good = run(["--from", mirror, "--dest", dest, "--corpus", "wikitext-2"])
    assert good.returncode == 0, good.stderr
    wt2 = [n for n in FILES if n.startswith("wikitext-2/")]
    before = snapshot(dest, wt2)

    bad = copy_mirror(mirror, tmp_path / "bad")
    with open(bad / "penn" / "valid.txt", "ab") as f:
        f.write(b"x")
    error_line(run(["--from", bad, "--dest", dest]))
    assert snapshot(dest, wt2) == before
    assert all(before[n][0] == mirror_sums[n] for n in wt2)
    assert entries(dest) == ["wikitext-2"]


def test_failed_repair_keeps_the_good_files_it_found(mirror, tmp_path):
    dest = tmp_path / "data"
    assert run(["--from", mirror, "--dest", dest, "--corpus", "penn"]).returncode == 0
    (dest / "penn" / "test.txt").unlink()
    kept = ["penn/train.txt", "penn/valid.txt"]
    before = snapshot(dest, kept)

    bad = copy_mirror(mirror, tmp_path / "bad")
    with open(bad / "penn" / "valid.txt", "ab") as f:
        f.write(b"x")
    error_line(run(["--from", bad, "--dest", dest, "--corpus", "penn"]))
    assert snapshot(dest, kept) == before
    assert entries(dest / "penn") == ["train.txt", "valid.txt"]
    assert entries(dest) == ["penn"]


def test_a_rerun_removes_the_work_folders_of_killed_runs_only(mirror, tmp_path):
    """A run killed with -9 cannot clean up its work folder (.getdata. + mktemp's 6 random characters, 11 MB); the next run does, but never
    the folder of a run still in progress (its owner alive) nor one another machine's run may be filling."""
    dest = tmp_path / "data"
    assert run(["--from", mirror, "--dest", dest, "--corpus", "penn"]).returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename
    owners = {".getdata.Dead01": f"{host} {dead.pid}", ".getdata.Live01": f"{host} {os.getpid()}",
              ".getdata.Other1": f"another-machine {dead.pid}", ".getdata.NoOwnr": None}
    for name, owner in owners.items():
        (dest / name / "penn").mkdir(parents=True)
        (dest / name / "penn" / "train.txt").write_bytes(b"half a corpus")
        if owner is not None:
            (dest / name / "owner").write_text(owner + "\n")
    old = time.time() - 600
    os.utime(dest / ".getdata.NoOwnr", (old, old))  # killed before it could write its owner
    proc = run(["--from", mirror, "--dest", dest, "--corpus", "penn"])
    assert proc.returncode == 0, proc.stderr
    assert entries(dest) == [".getdata.Live01", ".getdata.Other1", "penn"]


def test_missing_mirror_file(mirror, tmp_path):
    partial = copy_mirror(mirror, tmp_path / "partial")
    (partial / "penn" / "test.txt").unlink()
    dest = tmp_path / "data"
    line = error_line(run(["--from", partial, "--dest", dest]))
    assert "penn/test.txt" in line and "missing" in line, line
    assert entries(dest) == []


def test_missing_mirror_directory(tmp_path):
    line = error_line(run(["--from", tmp_path / "nowhere", "--dest", tmp_path / "data"]))
    assert "nowhere" in line and "--from" in line, line


def test_unknown_option_prints_usage(tmp_path):
    proc = run(["--bogus", "--dest", tmp_path])
    line = error_line(proc)
    assert "--bogus" in line
    assert "Usage:" in proc.stderr
    assert entries(tmp_path) == []


def test_help():
    proc = run(["--help"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("Usage:")
    assert "--from" in proc.stdout and "--dest" in proc.stdout and "--corpus" in proc.stdout
    assert proc.stderr == ""


def test_mirror_from_environment_and_corpus_selection(mirror, mirror_sums, tmp_path):
    dest = tmp_path / "data"
    proc = run(["--dest", dest, "--corpus", "penn"], env={"FD_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"penn: copied from {mirror} (FD_DATA_MIRROR), checksums OK"
    assert entries(dest) == ["penn"]
    for split in SPLITS:
        assert sha256(dest / "penn" / f"{split}.txt") == mirror_sums[f"penn/{split}.txt"]


def test_default_destination_is_next_to_the_script(mirror, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    script = checkout / "getdata.sh"
    shutil.copy2(SCRIPT, script)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run(["--from", mirror, "--corpus", "penn"], cwd=elsewhere, script=script)
    assert proc.returncode == 0, proc.stderr
    assert entries(checkout / "data" / "penn") == ["test.txt", "train.txt", "valid.txt"]
    assert entries(elsewhere) == []


def offline_env(proxy):
    env = {k: "" for k in PROXY_VARS}
    env.update({k: proxy for k in PROXY_VARS[:4]})
    env.update(FD_DOWNLOAD_RETRIES="0", FD_CONNECT_TIMEOUT="3")
    return env


def test_offline_without_mirror_points_to_from(tmp_path):
    dest = tmp_path / "data"
    # Port 9 (discard) refuses connections, so every download fails at once.
    start = time.monotonic()
    proc = run(["--dest", dest], env=offline_env("http://127.0.0.1:9"), timeout=60)
    assert time.monotonic() - start < 20
    line = error_line(proc)
    assert proc.stderr.strip() == line, "expected a single error line"
    assert "--from" in line, line
    assert entries(dest) == []


def ptb_tarball(mirror, damage=None):
    """simple-examples.tgz as Mikolov ships it, for the splits we need."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for split in SPLITS:
            if damage == "drop" and split == "test":
                continue
            data = (mirror / "penn" / f"{split}.txt").read_bytes()
            if damage == "corrupt" and split == "valid":
                data = data[:-1]
            info = tarfile.TarInfo(f"./simple-examples/data/ptb.{split}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def fake_proxy():
    """Plain-HTTP proxy on localhost answering only the PTB URL."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = server.payload if self.path == PTB_URL else None
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.payload = b""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


needs_downloader = pytest.mark.skipif(
    not (shutil.which("curl") or shutil.which("wget")), reason="needs curl or wget")


@needs_downloader
def test_download_path_unpacks_and_verifies(mirror, mirror_sums, fake_proxy, tmp_path):
    fake_proxy.payload = ptb_tarball(mirror)
    dest = tmp_path / "data"
    proxy = f"http://127.0.0.1:{fake_proxy.server_port}"
    proc = run(["--dest", dest, "--corpus", "penn"], env=offline_env(proxy), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"penn: downloaded from {PTB_URL}, checksums OK"
    for split in SPLITS:
        assert sha256(dest / "penn" / f"{split}.txt") == mirror_sums[f"penn/{split}.txt"]
    assert entries(dest) == ["penn"], "temporary directory left behind"


@needs_downloader
@pytest.mark.parametrize("damage, expected", [
    ("corrupt", ["checksum", "penn/valid.txt", "download"]),
    ("drop", ["unpack", "ptb.test.txt"]),
])
def test_bad_download_fails_cleanly(mirror, fake_proxy, tmp_path, damage, expected):
    fake_proxy.payload = ptb_tarball(mirror, damage)
    dest = tmp_path / "data"
    proxy = f"http://127.0.0.1:{fake_proxy.server_port}"
    line = error_line(run(["--dest", dest, "--corpus", "penn"], env=offline_env(proxy),
                          timeout=60))
    for word in expected:
        assert word in line, line
    assert entries(dest) == []
