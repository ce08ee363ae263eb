"""Word-level corpora (PTB, WikiText-2) tokenized exactly as AWD-LSTM / fraternal dropout did.

Each line is split on whitespace and gets an ``<eos>`` token; one dictionary spans train, valid
and test, ids in order of first appearance.  Tokenizing WikiText-2 takes seconds, so the result
is cached under a key derived from the files' bytes (an edited file is never served stale).
"""
import hashlib
import os
import stat
from pathlib import Path

import torch

from utils import UserError, atomic_torch_save

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1


class Dictionary:
    def __init__(self, idx2word=()):
        self.idx2word = list(idx2word)
        self.word2idx = {w: i for i, w in enumerate(self.idx2word)}

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)

    def fingerprint(self):
        """Identifies the vocabulary (words and their ids) so checkpoints can refuse a different one."""
        return hashlib.sha256("\n".join(self.idx2word).encode("utf-8")).hexdigest()


def _tokenize_lines(path):
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            yield line.split() + ["<eos>"]


def _files_digest(paths):
    h = hashlib.sha256(f"corpus-cache-v{CACHE_VERSION}".encode())
    for p in paths:
        h.update(f"{Path(p).name}:{os.path.getsize(p)}\n".encode())  # sizes keep file boundaries apart
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:24]


def _user_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fraternal-dropout"


def _writable(folder):
    """Writable, and not marked read-only: root may write anywhere, but a shared read-only mirror
    (mode r-x) should stay untouched even then."""
    return os.access(folder, os.W_OK) and bool(os.stat(folder).st_mode & stat.S_IWUSR)


def _cache_candidates(path, digest):
    name = f".corpus-cache-{digest}.pt"
    beside = [Path(path) / name] if _writable(path) else []
    return beside + [_user_cache_dir() / name]


class Corpus:
    """``Corpus(path)`` reads ``path/{train,valid,test}.txt``; exposes ``.dictionary`` and the splits
    as 1-D LongTensors ``.train``, ``.valid``, ``.test``."""

    def __init__(self, path, use_cache=True):
        self.path = Path(path)
        files = [self.path / f"{s}.txt" for s in SPLITS]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(
                f"no corpus at {self.path} ({', '.join(missing)} missing): "
                f"run ./getdata.sh (or ./getdata.sh --from MIRROR) or pass --data DIR")
        try:
            digest = _files_digest(files)
            cached = self._load_cache(digest) if use_cache else None
            if cached is None:
                self._tokenize(files)
                if use_cache:
                    self._save_cache(digest)
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the corpus at {self.path} ({e}): "
                            f"re-run ./getdata.sh to restore it") from None

    def _tokenize(self, files):
        self.dictionary = Dictionary()
        for f in files:
            for words in _tokenize_lines(f):
                for w in words:
                    self.dictionary.add_word(w)
        w2i = self.dictionary.word2idx
        for split, f in zip(SPLITS, files):
            ids = [w2i[w] for words in _tokenize_lines(f) for w in words]
            setattr(self, split, torch.tensor(ids, dtype=torch.long))

    def _load_cache(self, digest):
        for cand in _cache_candidates(self.path, digest):
            if not cand.is_file():
                continue
            try:
                blob = torch.load(cand, weights_only=True)
                self.dictionary = Dictionary(blob["idx2word"])
                for split in SPLITS:
                    setattr(self, split, blob[split])
                return True
            except Exception:
                continue  # a damaged cache is rebuilt, never trusted
        return None

    def _save_cache(self, digest):
        blob = {"idx2word": self.dictionary.idx2word, **{s: getattr(self, s) for s in SPLITS}}
        for cand in _cache_candidates(self.path, digest):
            try:
                atomic_torch_save(blob, cand)
                return
            except OSError:
                continue  # read-only data folder: fall back to the user cache


def check_split_sizes(corpus, cfg):
    """Every split must give at least one batch at its batch size (training needs 3 rows, an
    evaluation 2), or a run would train nothing or divide by zero after hours of work."""
    for split, key, rows in (("train", "batch_size", 3), ("valid", "eval_batch_size", 2),
                             ("test", "test_batch_size", 2)):
        n, bsz = getattr(corpus, split).numel(), cfg[key]
        if n // bsz < rows:
            raise UserError(f"the {split} split of {corpus.path} has {n} tokens, too few for --{key} {bsz} "
                            f"(at least {rows * bsz} needed): use a smaller --{key} or a bigger corpus")


def batchify(data, bsz, device=None):
    """Lay the token stream out as ``bsz`` columns (remainder trimmed): shape (nbatch, bsz)."""
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    data = data.view(bsz, -1).t().contiguous()
    return data.to(device) if device is not None else data


def get_batch(source, i, seq_len):
    """Inputs are rows ``i .. i+seq_len`` and targets the next rows, flattened; cut at the stream's end."""
    seq_len = min(seq_len, len(source) - 1 - i)
    data = source[i:i + seq_len]
    target = source[i + 1:i + 1 + seq_len].reshape(-1)
    return data, target


def windows(source, bptt, max_batches=None):
    """The evaluation windows of a stream: (inputs, targets) of ``bptt`` rows each, in order, the last
    one shorter; at most ``max_batches`` of them.  Every evaluation loop walks the stream this way."""
    starts = range(0, source.size(0) - 1, bptt)
    for k, i in enumerate(starts):
        if max_batches is not None and k >= max_batches:
            return
        yield get_batch(source, i, bptt)


def count_windows(source, bptt, max_batches=None):
    n = len(range(0, source.size(0) - 1, bptt))
    return n if max_batches is None else min(n, max_batches)
