"""Tests for data.py: corpora, tokenization, the content-keyed cache, batchify / get_batch."""
import os
import shutil
from pathlib import Path

import pytest
import torch

import data
from data import Corpus, batchify, get_batch
from runfiles import UserError

CACHE_GLOB = ".corpus-cache-*.pt"

REAL = {
    "penn": ((929_589, 73_760, 82_430), 10_000),
    "wikitext-2": ((2_088_628, 217_646, 245_569), 33_278),
}


def _refuse_writes_under(monkeypatch, root):
    """Guard: any write below ``root`` fails the way it would for a normal user.

    The mirror's folders are mode r-x, which data.py respects even for root; this makes sure a
    regression there cannot pollute the shared mirror while the test runs."""
    root = Path(root).resolve()
    real_save = data.atomic_torch_save

    def guarded(obj, target):
        target = Path(target).resolve()
        if target == root or root in target.parents:
            raise PermissionError(13, "Permission denied (read-only mirror)", str(target))
        return real_save(obj, target)

    monkeypatch.setattr(data, "atomic_torch_save", guarded)


def _forbid_tokenizing(monkeypatch):
    def boom(self, files):
        raise AssertionError("Corpus re-tokenized although a valid cache exists")
    monkeypatch.setattr(Corpus, "_tokenize", boom)


def _same_corpus(a, b):
    assert a.dictionary.idx2word == b.dictionary.idx2word
    assert a.dictionary.word2idx == b.dictionary.word2idx
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(a, split), getattr(b, split)), split


# ----------------------------------------------------------------------------- real corpora

@pytest.mark.parametrize("name", sorted(REAL))
def test_real_corpus_counts_and_user_cache(name, mirror, tmp_path, monkeypatch):
    (n_train, n_valid, n_test), n_vocab = REAL[name]
    folder = mirror / name
    user_cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
    _refuse_writes_under(monkeypatch, mirror)
    before = set(folder.glob(CACHE_GLOB))

    corpus = Corpus(folder)
    assert [len(corpus.train), len(corpus.valid), len(corpus.test)] == [n_train, n_valid, n_test]
    assert len(corpus.dictionary) == n_vocab
    for split in ("train", "valid", "test"):
        t = getattr(corpus, split)
        assert t.dtype == torch.long and t.dim() == 1
        assert int(t.min()) >= 0
    assert int(torch.cat([corpus.train, corpus.valid, corpus.test]).max()) == n_vocab - 1
    assert int(corpus.train[0]) == 0  # ids in order of first appearance
    assert "<eos>" in corpus.dictionary.word2idx

    # read-only data folder: the cache lands in the user cache dir, nothing beside the data
    cached = list((user_cache / "fraternal-dropout").glob(CACHE_GLOB))
    assert len(cached) == 1, f"expected one cache file in the user cache dir, found {cached}"
    assert set(folder.glob(CACHE_GLOB)) == before

    # second load comes from that cache (tokenizing is forbidden) and is identical
    _forbid_tokenizing(monkeypatch)
    again = Corpus(folder)
    _same_corpus(corpus, again)


# ----------------------------------------------------------------------------- tokenization

def _write_corpus(folder, train, valid, test):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in zip(("train", "valid", "test"), (train, valid, test)):
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("use_cache", [False, True])
def test_tokenization_rule(tmp_path, use_cache):
    folder = _write_corpus(tmp_path / "c",
                           train=" the cat sat \n\nthe  dog\n",
                           valid="a cat\tran\n",
                           test="zebra the")  # last line without newline still ends with <eos>
    corpus = Corpus(folder, use_cache=use_cache)
    expected_vocab = ["the", "cat", "sat", "<eos>", "dog", "a", "ran", "zebra"]
    assert corpus.dictionary.idx2word == expected_vocab
    d = corpus.dictionary.word2idx
    as_ids = lambda words: [d[w] for w in words]  # noqa: E731
    assert corpus.train.tolist() == as_ids("the cat sat <eos> <eos> the dog <eos>".split())
    assert corpus.valid.tolist() == as_ids("a cat ran <eos>".split())
    assert corpus.test.tolist() == as_ids("zebra the <eos>".split())


def test_dictionary_first_appearance_across_splits(tmp_path):
    # a word first seen in test gets an id after every word of train and valid
    folder = _write_corpus(tmp_path / "c", train="b a\n", valid="c a\n", test="d b\n")
    corpus = Corpus(folder, use_cache=False)
    assert corpus.dictionary.idx2word == ["b", "a", "<eos>", "c", "d"]
    assert corpus.test.tolist() == [4, 0, 2]


# ----------------------------------------------------------------------------- cache

@pytest.fixture
def writable_corpus(tiny_corpus, tmp_path):
    dest = tmp_path / "tiny"
    shutil.copytree(tiny_corpus, dest)
    for stale in dest.glob(CACHE_GLOB):
        stale.unlink()
    return dest


def test_cache_written_beside_writable_data(writable_corpus, tmp_path, monkeypatch):
    user_cache = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
    first = Corpus(writable_corpus)
    beside = list(writable_corpus.glob(CACHE_GLOB))
    assert len(beside) == 1
    assert not list(user_cache.rglob(CACHE_GLOB))
    assert len(first.train) > 5000 and len(first.valid) > 1000 and len(first.test) > 1000

    _forbid_tokenizing(monkeypatch)
    _same_corpus(first, Corpus(writable_corpus))


def test_cache_keyed_on_content(writable_corpus, monkeypatch):
    first = Corpus(writable_corpus)
    n_valid, n_vocab = len(first.valid), len(first.dictionary)
    with open(writable_corpus / "valid.txt", "a", encoding="utf-8") as f:
        f.write("zzyzx the\n")
    edited = Corpus(writable_corpus)
    assert len(edited.valid) == n_valid + 3
    assert len(edited.dictionary) == n_vocab + 1
    assert "zzyzx" not in first.dictionary.word2idx and "zzyzx" in edited.dictionary.word2idx
    assert edited.valid[-3:].tolist() == [edited.dictionary.word2idx[w] for w in ("zzyzx", "the", "<eos>")]
    _same_corpus(edited, Corpus(writable_corpus, use_cache=False))

    # an edit that keeps every length (same-size word swap) is not served stale either
    text = (writable_corpus / "test.txt").read_text(encoding="utf-8")
    words = text.split()
    a, b = words[0], next(w for w in words if w != words[0] and len(w) == len(words[0]))
    swapped = text.replace(a, "\0").replace(b, a).replace("\0", b)
    (writable_corpus / "test.txt").write_text(swapped, encoding="utf-8")
    fresh = Corpus(writable_corpus, use_cache=False)
    assert not torch.equal(fresh.test, edited.test)
    _same_corpus(fresh, Corpus(writable_corpus))


def test_corrupted_cache_is_ignored_and_rebuilt(writable_corpus, monkeypatch):
    reference = Corpus(writable_corpus, use_cache=False)
    Corpus(writable_corpus)
    (cache,) = writable_corpus.glob(CACHE_GLOB)
    cache.write_bytes(b"this is not a torch file")
    _same_corpus(reference, Corpus(writable_corpus))
    blob = torch.load(cache, weights_only=True)  # rebuilt: a valid cache again
    assert blob["idx2word"] == reference.dictionary.idx2word
    assert torch.equal(blob["valid"], reference.valid)

    # a cache that loads but lacks a split is not trusted either
    torch.save({"idx2word": ["x"], "train": torch.zeros(3, dtype=torch.long)}, cache)
    _same_corpus(reference, Corpus(writable_corpus))


# ----------------------------------------------------------------------------- missing corpus

def test_missing_corpus_raises_user_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError) as exc:
        Corpus(missing)
    msg = str(exc.value)
    assert str(missing) in msg
    assert "getdata.sh" in msg


def test_partly_missing_corpus_names_the_file(tmp_path):
    folder = _write_corpus(tmp_path / "c", train="a\n", valid="b\n", test="c\n")
    (folder / "valid.txt").unlink()
    with pytest.raises(UserError) as exc:
        Corpus(folder)
    assert "valid.txt" in str(exc.value) and str(folder) in str(exc.value)
    assert "getdata.sh" in str(exc.value)


# ----------------------------------------------------------------------------- batching

def test_batchify_layout():
    out = batchify(torch.arange(23), 4)
    expected = torch.tensor([[0, 5, 10, 15],
                             [1, 6, 11, 16],
                             [2, 7, 12, 17],
                             [3, 8, 13, 18],
                             [4, 9, 14, 19]])
    assert out.shape == (5, 4)
    assert torch.equal(out, expected)
    assert out.is_contiguous()


def test_get_batch_inputs_and_shifted_targets():
    source = batchify(torch.arange(23), 4)
    data_, target = get_batch(source, 1, 2)
    assert torch.equal(data_, source[1:3])
    assert target.dim() == 1
    assert torch.equal(target, source[2:4].reshape(-1))
    assert torch.equal(target, (data_ + 1).reshape(-1))  # each column is a contiguous stretch


def test_get_batch_cut_at_end_of_stream():
    source = batchify(torch.arange(23), 4)  # 5 rows
    data_, target = get_batch(source, 2, 10)  # seq_len clipped to 5 - 1 - 2 = 2
    assert data_.shape == (2, 4)
    assert torch.equal(data_, source[2:4])
    assert torch.equal(target, source[3:5].reshape(-1))
    data_, target = get_batch(source, 3, 35)  # last possible start: one row
    assert torch.equal(data_, source[3:4]) and torch.equal(target, source[4])


def test_cache_key_separates_files(tmp_path):
    folder = _write_corpus(tmp_path / "c", train="a\n", valid="valid.txtb\n", test="z\n")
    first = Corpus(folder)
    # the same bytes in sequence, but the boundary between train.txt and valid.txt moved
    _write_corpus(folder, train="a\nvalid.txt", valid="b\n", test="z\n")
    fresh = Corpus(folder, use_cache=False)
    assert len(fresh.train) != len(first.train)  # the corpus really changed
    _same_corpus(Corpus(folder), fresh)


def test_folder_marked_read_only_gets_no_cache_even_for_root(tmp_path, monkeypatch):
    folder = _write_corpus(tmp_path / "ro", train="a b\n", valid="b c\n", test="c a\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder.chmod(0o555)
    try:
        Corpus(folder)
        assert not list(folder.glob(CACHE_GLOB))
        assert len(list((tmp_path / "xdg" / "fraternal-dropout").glob(CACHE_GLOB))) == 1
    finally:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- a cache proves what it is

def _cache_blob(folder):
    (cache,) = folder.glob(CACHE_GLOB)
    return cache, torch.load(cache, weights_only=True)


@pytest.mark.parametrize("damage", ["flipped-id", "float-ids", "id-out-of-range", "other-corpus"])
def test_a_cache_that_is_not_its_corpus_is_rebuilt(writable_corpus, tmp_path, damage, capsys):
    """A loadable cache is used only if its source hash, dtypes, id range and checksum hold."""
    reference = Corpus(writable_corpus, use_cache=False)
    Corpus(writable_corpus)
    cache, blob = _cache_blob(writable_corpus)
    if damage == "flipped-id":
        blob["valid"][7] ^= 1
    elif damage == "float-ids":
        blob["train"] = blob["train"].float()
    elif damage == "id-out-of-range":
        blob["test"][0] = 10**6
    else:  # another corpus's valid cache under this one's name
        other = _write_corpus(tmp_path / "other", train="a b\n", valid="b\n", test="a\n")
        Corpus(other)
        _, blob = _cache_blob(other)
    torch.save(blob, cache)
    _same_corpus(reference, Corpus(writable_corpus))
    assert "rebuilding it" in capsys.readouterr().err
    assert torch.equal(_cache_blob(writable_corpus)[1]["valid"], reference.valid)  # the cache rewritten whole


def test_a_full_disk_for_the_cache_runs_without_it(writable_corpus, monkeypatch, capsys):
    """The cache is optional; no place for it is said once, and the corpus is read all the same."""
    def full(obj, target):
        raise UserError(f"no space left on the device to write {target}")
    monkeypatch.setattr(data, "atomic_torch_save", full)
    first, second = Corpus(writable_corpus), Corpus(writable_corpus)
    _same_corpus(first, second)
    assert capsys.readouterr().err.count("running without it") == 1


def test_a_new_cache_replaces_the_folders_old_ones_and_old_temp_files(writable_corpus):
    """Caches of earlier contents and temp files of killed cache writes do not pile up."""
    stale = writable_corpus / ".corpus-cache-0123456789abcdef01234567.pt"
    stale.write_bytes(b"an old cache")
    killed = writable_corpus / "..corpus-cache-v2-x.pt.abcd1234.tmp"
    killed.write_bytes(b"half a cache")
    os.utime(killed, (0, 0))
    Corpus(writable_corpus)
    assert [p.name for p in writable_corpus.glob(".*")] == [next(writable_corpus.glob(CACHE_GLOB)).name]


def test_a_non_utf8_corpus_names_the_file_and_line(tmp_path):
    """A corpus file that is not UTF-8 ends in one line naming the file and its first bad line."""
    folder = _write_corpus(tmp_path / "c", train="a b\nc d\n", valid="b\n", test="a\n")
    (folder / "valid.txt").write_bytes(b"fine\nstill fine\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"valid.txt line 3 is not UTF-8"):
        Corpus(folder)
