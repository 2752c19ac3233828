"""Corpus resolution, the character vocabulary, the train/val split, seeded batches and the fixed evaluation set.

Corpus resolution order (``resolve_corpus``):
  1. an explicit path (``data.corpus = "/path/to/file.txt"``);
  2. the cache directory (``data.cache_dir``, else ``$NANOACT_DATA_DIR``, else ``~/.cache/nanoact``);
  3. a download from the canonical URL, verified against its SHA-256 before it is moved into the cache.

The fixed evaluation set is what predictions and PD are computed on: ``n_contexts`` windows of the validation
split, drawn with their own seed, identical for every run that shares (corpus, split, block size, size, seed),
and identified by the SHA-256 of its token indices.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nanoact.errors import DataError

# name -> (file name in the cache, canonical URL, SHA-256)
KNOWN_CORPORA: dict[str, tuple[str, str, str]] = {
    "tinyshakespeare": (
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


def default_cache_dir() -> Path:
    env = os.environ.get("NANOACT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nanoact"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    """Download to a temporary file, verify, then move into place: a failed download leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        got = sha256_file(Path(tmp))
        if got != sha256:
            raise DataError(f"checksum mismatch for download from {url}: expected sha256 {sha256}, got {got}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def corpus_source(corpus: str) -> tuple[str, str]:
    """(name, where it comes from) of a corpus, for tracking: a known corpus's public URL, or a file's path."""
    if corpus in KNOWN_CORPORA:
        return corpus, KNOWN_CORPORA[corpus][1]
    path = Path(corpus).expanduser().resolve()
    return path.stem, str(path)


def resolve_corpus(corpus: str, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Find the corpus file (see module docstring); raise ``DataError`` saying where to put it if absent."""
    if corpus not in KNOWN_CORPORA:
        path = Path(corpus).expanduser()
        if path.is_file():
            return path
        known = ", ".join(sorted(KNOWN_CORPORA))
        raise DataError(f"corpus {corpus!r} is neither a known corpus ({known}) nor an existing file")
    fname, url, sha = KNOWN_CORPORA[corpus]
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = cache / fname
    if path.is_file():
        got = sha256_file(path)
        if got != sha:
            raise DataError(
                f"checksum mismatch for {path}: expected sha256 {sha}, got {got}; delete it or replace it with "
                f"the file from {url}"
            )
        return path
    if download:
        try:
            _download(url, path, sha)
            return path
        except (urllib.error.URLError, OSError, TimeoutError):
            pass
    raise DataError(
        f"corpus {corpus!r} not found at {path} and could not be downloaded; put the file from {url} there "
        f"(or set NANOACT_DATA_DIR / data.cache_dir to a folder holding {fname}, or data.corpus to a file path)"
    )


@dataclass
class CharVocab:
    """Sorted set of characters, as nanoGPT's ``shakespeare_char/prepare.py``."""

    chars: list[str]

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> np.ndarray:
        stoi = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.fromiter((stoi[c] for c in s), dtype=np.int64, count=len(s))
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the vocabulary") from None


@dataclass
class EvalSet:
    """The fixed evaluation set: contexts (N, T) and their next characters (N,)."""

    contexts: torch.Tensor
    targets: torch.Tensor
    sha256: str

    def __len__(self) -> int:
        return len(self.targets)


class CharDataset:
    """A corpus split 90/10 into train and val, with seeded batch sampling."""

    def __init__(self, text: str, train_fraction: float = 0.9, data_sha256: str | None = None):
        if len(text) < 16:
            raise DataError(f"corpus is too short ({len(text)} characters)")
        self.vocab = CharVocab.from_text(text)
        ids = torch.from_numpy(self.vocab.encode(text))
        n = int(len(ids) * train_fraction)  # nanoGPT: data[:int(n*0.9)]
        self.train = ids[:n]
        self.val = ids[n:]
        self.sha256 = data_sha256 or hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_config(cls, corpus: str, cache_dir: str = "", train_fraction: float = 0.9) -> CharDataset:
        path = resolve_corpus(corpus, cache_dir or None)
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"corpus {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        return cls(text, train_fraction, hashlib.sha256(raw).hexdigest())

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"unknown split {name!r}")
        return self.train if name == "train" else self.val

    def get_batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows (B, T) and their shifted targets, drawn from ``generator`` only."""
        data = self.split(split)
        if len(data) <= block_size:
            raise DataError(f"{split} split has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}")
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        offsets = torch.arange(block_size)
        x = data[ix[:, None] + offsets]
        y = data[ix[:, None] + offsets + 1]
        return x, y

    def fixed_batches(
        self, split: str, n_batches: int, batch_size: int, block_size: int, seed: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same ``n_batches`` batches every time (and for every run): loss/acc are paired across runs."""
        g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1_000_003))
        return [self.get_batch(split, batch_size, block_size, g) for _ in range(n_batches)]

    def eval_set(self, n_contexts: int, block_size: int, seed: int) -> EvalSet:
        """``n_contexts`` validation windows of ``block_size`` tokens and the character after each one."""
        data = self.val
        if len(data) <= block_size:
            raise DataError(f"val split has {len(data)} tokens, fewer than block_size+1 = {block_size + 1}")
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(len(data) - block_size, (n_contexts,), generator=g)
        contexts = data[starts[:, None] + torch.arange(block_size)]
        targets = data[starts + block_size]
        h = hashlib.sha256()
        h.update(f"{n_contexts}x{block_size}|vocab={''.join(self.vocab.chars)}|".encode())
        h.update(contexts.numpy().astype("<i8").tobytes())
        h.update(targets.numpy().astype("<i8").tobytes())
        return EvalSet(contexts, targets, h.hexdigest())
