"""Word-level corpora tokenized exactly as AWD-LSTM did (whitespace, ``<eos>`` per line, one dictionary over the
three splits in order of first appearance).  Tokenizing WikiText-2 takes seconds, so the result is cached under
the files' hash, and a cache is used only once it proves to be that corpus."""
import contextlib
import functools
import hashlib
import os
import stat
import sys
import time
from pathlib import Path

import torch

from utils import atomic_torch_save, weights_sha256
from runfiles import UserError

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 3


class Dictionary:
    def __init__(self, idx2word=()):
        self.idx2word = list(idx2word)
        self.word2idx = {w: i for i, w in enumerate(self.idx2word)}

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return self.word2idx[word]

    __len__ = lambda self: len(self.idx2word)  # noqa: E731

    def fingerprint(self):
        """Identifies the vocabulary (words and their ids) so checkpoints can refuse a different one."""
        return hashlib.sha256("\n".join(self.idx2word).encode("utf-8")).hexdigest()


def content_sha256(paths):
    """What a resume point records to refuse a changed corpus, and the cache's key."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        text = p.read_bytes()
        h.update(f"{p.name}:{len(text)}\n".encode() + text)  # sizes keep file boundaries apart
    return h.hexdigest()


def _checksum(words, splits):
    """Of the vocabulary and the id tensors: a cache must match it to be used."""
    return Dictionary(words).fingerprint() + weights_sha256({name: splits[name] for name in SPLITS})


def _cache_candidates(path, digest):
    """(cache file, glob of the caches it supersedes): beside the data (one corpus per folder) unless the folder is
    marked read-only (root writes anywhere, but a read-only mirror stays untouched), then in the user cache."""
    key = f"v{CACHE_VERSION}-{digest[:24]}"
    folder = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fraternal-dropout"
    places = [(user / f".corpus-cache-{folder}-{key}.pt", f".corpus-cache-{folder}-*.pt")]
    if os.access(path, os.W_OK) and os.stat(path).st_mode & stat.S_IWUSR:
        places.insert(0, (path / f".corpus-cache-{key}.pt", ".corpus-cache-*.pt"))
    return places


def _cache_problem(blob, digest):
    """Why a loaded cache is not the corpus it claims to be, or None (a malformed one raises).  Only the tokenizer
    writes caches, so its checksum (of the words, the ids' values, dtype and shape) proves the rest."""
    if not isinstance(blob, dict) or blob.get("version") != CACHE_VERSION:
        return "not a cache of this version"
    if blob.get("corpus_sha256") != digest:
        return "made from other files"
    return "checksum mismatch" if blob.get("checksum") != _checksum(blob["idx2word"], blob) else None


@functools.cache  # each note is said once
def _note_once(message):
    print(f"note: {message}", file=sys.stderr)


class Corpus:
    """``path/{train,valid,test}.txt`` as ``.dictionary``, LongTensors ``.train`` ``.valid`` ``.test``, ``.sha256``."""

    def __init__(self, path, use_cache=True):
        self.path = Path(path)
        files = [self.path / f"{s}.txt" for s in SPLITS]
        if missing := [f.name for f in files if not f.is_file()]:
            raise UserError(f"no corpus at {self.path} ({', '.join(missing)} missing): "
                            f"run ./getdata.sh (or ./getdata.sh --from MIRROR) or pass --data DIR")
        try:
            self.sha256 = content_sha256(files)
            if not (use_cache and self._load_cache(self.sha256)):
                self._tokenize(files)
                if use_cache:
                    self._save_cache(self.sha256)
        except OSError as e:
            raise UserError(f"cannot read the corpus at {self.path} ({e}): re-run ./getdata.sh to restore it") from None

    def _tokenize(self, files):
        self.dictionary = Dictionary()
        for split, f in zip(SPLITS, files):
            try:
                with open(f, encoding="utf-8") as lines:
                    ids = [self.dictionary.add_word(w) for line in lines for w in line.split() + ["<eos>"]]
            except UnicodeDecodeError as e:
                with open(f, "rb") as raw:  # valid UTF-8, and only that, survives decoding and encoding unchanged
                    number = next(n for n, line in enumerate(raw, 1) if line.decode("utf-8", "ignore").encode() != line)
                raise UserError(f"{f} line {number} is not UTF-8 text ({e.reason}): re-run ./getdata.sh to restore "
                                f"the corpus, or convert the file to UTF-8") from None
            setattr(self, split, torch.tensor(ids, dtype=torch.long))

    def _load_cache(self, digest):
        for cand, _ in _cache_candidates(self.path, digest):
            if not cand.is_file():
                continue
            try:
                blob = torch.load(cand, weights_only=True)
                problem = _cache_problem(blob, digest)
            except Exception as e:  # noqa: BLE001 -- whatever is wrong with it, the cache is rebuilt
                problem = f"unreadable or malformed: {type(e).__name__}"
            if problem:
                _note_once(f"the corpus cache {cand} is not usable ({problem}): rebuilding it from the text files")
                continue
            self.dictionary = Dictionary(blob["idx2word"])
            for split in SPLITS:
                setattr(self, split, blob[split])
            return True
        return False

    def _save_cache(self, digest):
        splits = {s: getattr(self, s) for s in SPLITS}
        blob = {"version": CACHE_VERSION, "corpus_sha256": digest, "idx2word": self.dictionary.idx2word,
                "checksum": _checksum(self.dictionary.idx2word, splits), **splits}
        reasons = []
        for cand, superseded in _cache_candidates(self.path, digest):
            try:
                atomic_torch_save(blob, cand)
            except (OSError, RuntimeError, UserError) as e:  # read-only or full: try the next place
                reasons.append(f"{cand.parent}: {getattr(e, 'strerror', None) or str(e).split(':')[0]}")
                continue
            old = time.time() - 3600  # the caches this one supersedes, and temp files of writes killed an hour ago
            for path in [*cand.parent.glob(superseded), *cand.parent.glob(f".{superseded}.*.tmp")]:
                with contextlib.suppress(OSError):
                    if path != cand and (path.suffix != ".tmp" or path.stat().st_mtime < old):
                        path.unlink()
            return
        _note_once(f"the corpus cache could not be written ({'; '.join(reasons)}): running without it")


def write_corpus_cut(source, dest, keep):
    """The first ``keep[split]`` lines (None: all) of each split of ``source`` in ``dest``, for the studies' small
    scales; a file that already holds its text is left alone.  Returns each split's text."""
    dest.mkdir(parents=True, exist_ok=True)
    texts = {}
    for split in SPLITS:
        text = (Path(source) / f"{split}.txt").read_text(encoding="utf-8")
        if keep.get(split) is not None:
            text = "".join(text.splitlines(keepends=True)[:keep[split]])
        target = dest / f"{split}.txt"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
        texts[split] = text
    return texts


def first_lines(tokens, fraction, eos):
    """The first round(lines * fraction) lines (at least one), as ablation.py cuts the training text."""
    ends = (tokens == eos).nonzero().flatten()
    if fraction >= 1 or not len(ends):
        return tokens
    return tokens[:ends[max(1, round(len(ends) * fraction)) - 1] + 1]


def check_split_sizes(corpus, cfg):
    """Every split gives a batch at its batch size (training 3 rows, evaluation 2), before hours of work."""
    for split, key in zip(SPLITS, ("batch_size", "eval_batch_size", "test_batch_size")):
        n, bsz, rows = getattr(corpus, split).numel(), cfg[key], 3 if split == "train" else 2
        if n // bsz < rows:
            raise UserError(f"the {split} split of {corpus.path} has {n} tokens, too few for --{key} {bsz} "
                            f"(at least {rows * bsz} needed): use a smaller --{key} or a bigger corpus")


def batchify(data, bsz, device=None):
    """Lay the token stream out as ``bsz`` columns (remainder trimmed): shape (nbatch, bsz)."""
    return data.narrow(0, 0, data.size(0) // bsz * bsz).view(bsz, -1).t().contiguous().to(device)


def get_batch(source, i, seq_len):
    """Inputs are rows ``i .. i+seq_len`` and targets the next rows, flattened; cut at the stream's end."""
    seq_len = min(seq_len, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


def windows(source, bptt, max_batches=None):
    """Every evaluation's windows: (inputs, targets) of ``bptt`` rows, the last shorter; at most ``max_batches``."""
    for i in range(0, source.size(0) - 1, bptt)[:max_batches]:
        yield get_batch(source, i, bptt)


def count_windows(source, bptt, max_batches=None):
    return len(range(0, source.size(0) - 1, bptt)[:max_batches])
