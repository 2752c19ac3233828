"""Config validation and overrides; corpus resolution, split and the fixed evaluation set."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import SHARED_CORPUS

from nanoact.config import RunConfig, apply_overrides, from_dict
from nanoact.data import KNOWN_CORPORA, CharDataset, resolve_corpus
from nanoact.errors import ConfigError, DataError


def test_overrides_are_typed_and_checked():
    cfg = apply_overrides(RunConfig(), ["train.lr=3e-4", "model.bias=true", "model.n_layer=6"])
    assert cfg.train.lr == 3e-4 and cfg.model.bias is True and cfg.model.n_layer == 6
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        apply_overrides(RunConfig(), ["train.lrr=1"])
    with pytest.raises(ConfigError, match="model.n_layer: expected int"):
        apply_overrides(RunConfig(), ["model.n_layer=2.5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(RunConfig(), ["train.lr"])
    with pytest.raises(ConfigError, match="dropout"):
        apply_overrides(RunConfig(), ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match="unknown section"):
        from_dict({"optim": {"lr": 1}})
    with pytest.raises(ConfigError, match="expected true/false"):
        apply_overrides(RunConfig(), {"model.bias": 1})


def test_defaults_are_nanogpt_cpu_recipe():
    c = RunConfig()
    assert (c.model.n_layer, c.model.n_head, c.model.n_embd, c.model.block_size) == (4, 4, 128, 64)
    assert (c.train.batch_size, c.train.max_iters, c.train.lr_decay_iters, c.model.dropout) == (12, 2000, 2000, 0.0)
    assert (c.train.lr, c.train.min_lr, c.train.warmup_iters, c.train.beta2) == (1e-3, 1e-4, 100, 0.99)
    assert (c.train.eval_iters, c.train.weight_decay, c.train.grad_clip) == (20, 0.1, 1.0)


def test_flat_config_roundtrip():
    cfg = RunConfig()
    flat = cfg.flat()
    assert flat["model.name"] == "minigpt" and flat["train.lr"] == 1e-3
    assert apply_overrides(RunConfig(), flat) == cfg


def test_resolve_explicit_path(corpus_file):
    assert resolve_corpus(str(corpus_file)) == corpus_file


def test_missing_corpus_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as e:
        resolve_corpus("tinyshakespeare", tmp_path / "cache", download=False)
    msg = str(e.value)
    assert str(tmp_path / "cache" / "tinyshakespeare.txt") in msg and "https://" in msg
    assert "\n" not in msg


def test_cached_corpus_with_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(DataError, match="checksum mismatch"):
        resolve_corpus("tinyshakespeare", tmp_path, download=False)


def test_not_a_file_and_not_known(tmp_path):
    with pytest.raises(DataError, match="neither a known corpus"):
        resolve_corpus(str(tmp_path / "nope.txt"))


def test_non_utf8_corpus(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xff\xfe" * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        CharDataset.from_config(str(p))


@pytest.mark.skipif(not SHARED_CORPUS.exists(), reason="the shared corpus is not beside the checkout")
def test_tinyshakespeare_split_matches_nanogpt():
    path = resolve_corpus("tinyshakespeare", SHARED_CORPUS.parent, download=False)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == KNOWN_CORPORA["tinyshakespeare"][2]
    ds = CharDataset.from_config("tinyshakespeare", str(SHARED_CORPUS.parent))
    assert ds.vocab.size == 65
    assert (len(ds.train), len(ds.val)) == (1_003_854, 111_540)
    assert ds.sha256 == KNOWN_CORPORA["tinyshakespeare"][2]


def test_batches_come_from_their_own_generator(tiny_data):
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    x1, y1 = tiny_data.get_batch("train", 4, 8, g1)
    torch.manual_seed(123)  # the global RNG must not matter
    x2, y2 = tiny_data.get_batch("train", 4, 8, g2)
    assert torch.equal(x1, x2) and torch.equal(y1[:, :-1], x1[:, 1:])


def test_eval_set_fixed_and_hashed(tiny_data):
    a = tiny_data.eval_set(50, 16, seed=0)
    b = tiny_data.eval_set(50, 16, seed=0)
    c = tiny_data.eval_set(50, 16, seed=1)
    assert a.sha256 == b.sha256 and torch.equal(a.contexts, b.contexts)
    assert a.sha256 != c.sha256
    assert a.contexts.shape == (50, 16) and a.targets.shape == (50,)
    # the target is the character after each context, in the validation split
    val = tiny_data.val
    for i in range(5):
        ctx = a.contexts[i]
        starts = [s for s in range(len(val) - 16) if torch.equal(val[s : s + 16], ctx)]
        assert any(val[s + 16] == a.targets[i] for s in starts)
