"""Configs: one dataclass per concern, defaults in exactly one place, names instead of objects.

``RunConfig`` is what one training run needs. It is built from defaults, a sweep file and ``--set key=value``
overrides; every key is checked, so an unknown key or a value of the wrong type is an error naming the key
(nothing is silently ignored: a knob that does nothing would make an ablation claim something that never ran).

The defaults are nanoGPT's CPU recipe for ``shakespeare_char`` (``config/train_shakespeare_char.py`` in
github.com/karpathy/nanoGPT) on ``minigpt``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from nanoact.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "minigpt"
    """Model name from the model registry (``nanoact.models``)."""
    activation: str = "gelu"
    """Activation spec (``relu``, ``smelu(beta=0.5)``, ...) or one per layer, comma-separated."""
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = False
    """Biases in Linear and LayerNorm layers (nanoGPT: False is a bit better and faster)."""


@dataclass
class TrainConfig:
    seed: int = 1337
    """Default for the three source seeds below (each -1 takes this value)."""
    init_seed: int = -1
    """Seed of the initial weights; -1: ``train.seed``."""
    data_seed: int = -1
    """Seed of the training batch order; -1: ``train.seed``."""
    dropout_seed: int = -1
    """Seed of dropout and any other draw from torch's global generator; -1: ``train.seed``."""
    max_iters: int = 2000
    batch_size: int = 12
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    """Cosine decay from lr to min_lr ends here; set equal to max_iters for a full cosine."""
    decay_lr: bool = True
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    """Clip the global grad norm at this value; 0 disables clipping."""
    eval_interval: int = 250
    eval_iters: int = 20
    """Fixed batches per split for train/val loss and accuracy at each eval step."""
    eval_batch_seed: int = 1234
    device: str = "auto"
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    dtype: str = "auto"
    """``auto`` (bfloat16 autocast on a CUDA device with native bf16, else float32), ``float32`` or ``bfloat16``
    (autocast, CUDA only). The dtype a run used is logged as the param ``train.dtype_resolved``."""
    tf32: bool = False
    """TF32 matmuls for float32 on CUDA (Ampere or newer). Under bf16 autocast (``dtype`` auto on such a GPU) the
    matmuls already run in bf16, so it has nothing left to speed up there."""
    compile: bool = False
    deterministic: bool = False
    """Use deterministic algorithms; on CPU a rerun is then bit-identical."""
    threads: int = 0
    """torch intra-op threads; 0 leaves torch's default."""
    predictions: bool = True
    """Log predictions on the fixed evaluation set at each eval step."""
    log_interval: int = 10
    """Log the training loss of the current batch and the learning rate every this many iterations (0: only at
    eval steps)."""
    checkpoint: bool = True

    def source_seeds(self) -> tuple[int, int, int]:
        """(init, data order, dropout) seeds, each defaulting to ``seed``: unset, a run is what it always was."""
        return tuple(self.seed if s == -1 else s for s in (self.init_seed, self.data_seed, self.dropout_seed))


@dataclass
class DataConfig:
    corpus: str = "tinyshakespeare"
    """``tinyshakespeare`` (downloaded and checksummed, or found in the cache) or a path to a UTF-8 text file."""
    cache_dir: str = ""
    """Where downloaded corpora live; empty means ``$NANOACT_DATA_DIR`` or the user cache dir."""
    train_fraction: float = 0.9


@dataclass
class EvalConfig:
    n_contexts: int = 2048
    """Size of the fixed evaluation set that predictions and PD are computed on."""
    seed: int = 0
    """Seed of the evaluation set draw, independent of the training seed."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{"model.n_layer": 4, ...}``: what MLflow params hold."""
        return {f"{s}.{k}": v for s, sub in self.to_dict().items() for k, v in sub.items()}

    def copy(self) -> RunConfig:
        return copy.deepcopy(self)


DTYPES = ("auto", "float32", "bfloat16")
SECTIONS = {f.name: f.type for f in fields(RunConfig)}
MAX_VALUE_LEN = 64
"""Longest text accepted for a number or bool from the command line (``--set``)."""


def _section_fields(cfg: RunConfig, section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(getattr(cfg, section))}


def coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` (a python value or a string from the command line) to the type of ``default``."""
    typ = type(default)
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        if typ is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        if len(text) > MAX_VALUE_LEN:  # the parser recurses per operator: 5,000 '-' would overflow the stack
            raise ConfigError(f"{key}: expected {typ.__name__}, got a {len(text)}-character value "
                              f"({text[:20]!r}...); numbers are at most {MAX_VALUE_LEN} characters")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}") from None
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite float, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {typ.__name__}")  # pragma: no cover


def valid_keys() -> list[str]:
    return sorted(RunConfig().flat())


def set_key(cfg: RunConfig, key: str, value: Any) -> None:
    """Set ``section.name`` on ``cfg`` in place, with type checking; unknown keys are errors."""
    from nanoact.errors import did_you_mean

    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, valid_keys())}; keys look like 'train.lr' "
                          f"(sections: {', '.join(SECTIONS)})")
    fs = _section_fields(cfg, section)
    if name not in fs:
        raise ConfigError(
            f"unknown config key {key!r}{did_you_mean(key, valid_keys())}; valid keys in [{section}]: "
            f"{', '.join(sorted(fs))}"
        )
    sub = getattr(cfg, section)
    setattr(sub, name, coerce(key, value, getattr(sub, name)))


def apply_overrides(cfg: RunConfig, overrides: Mapping[str, Any] | list[str] | tuple[str, ...]) -> RunConfig:
    """Return a copy of ``cfg`` with overrides applied: a mapping, or ``key=value`` strings."""
    cfg = cfg.copy()
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for s in overrides:
            key, eq, value = s.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"bad override {s!r}; expected key=value, e.g. train.lr=3e-4")
            items.append((key.strip(), value))
    for key, value in items:
        set_key(cfg, key, value)
    validate(cfg)
    return cfg


def from_dict(d: Mapping[str, Any], base: RunConfig | None = None, where: str = "config") -> RunConfig:
    """Build a config from nested ``{"model": {...}, ...}`` (e.g. a TOML table); unknown keys are errors."""
    cfg = (base or RunConfig()).copy()
    for section, sub in d.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; valid: {', '.join(SECTIONS)}")
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for name, value in sub.items():
            set_key(cfg, f"{section}.{name}", value)
    validate(cfg)
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; anything wrong with it is a one-line ``ConfigError`` naming the file.

    Besides syntax errors this catches what ``tomllib`` leaves as a crash: a file nested thousands of levels
    deep (RecursionError), one too large for memory, and text that is not UTF-8.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it ({e.strerror or e})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to parse (tables or arrays within each other thousands of "
                          "levels deep); a sweep file needs two levels") from None
    except MemoryError:
        raise ConfigError(f"{p}: too large to parse ({len(text):,} characters)") from None


MAX_SEED = 2**32 - 1  # seeds are 32-bit unsigned, the range torch, numpy and most tools take
MAX_LAYERS = 4096
MAX_LAYER_WEIGHTS = 10**9  # n_layer * n_embd**2 bound: about 1.2e10 parameters, far beyond a small character LM


def validate(cfg: RunConfig) -> None:
    """Range checks that a type check cannot make. Names (model, activation) are checked where they resolve."""
    m, t, e, d = cfg.model, cfg.train, cfg.eval, cfg.data

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(m.n_layer >= 1, "model.n_layer must be >= 1")
    need(m.n_head >= 1, "model.n_head must be >= 1")
    need(m.n_embd >= 1, "model.n_embd must be >= 1")
    need(m.block_size >= 1, "model.block_size must be >= 1")
    need(0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)")
    need(t.max_iters >= 0, "train.max_iters must be >= 0")
    need(t.batch_size >= 1, "train.batch_size must be >= 1")
    need(t.lr > 0, "train.lr must be > 0")
    need(0 <= t.min_lr <= t.lr, "train.min_lr must be in [0, train.lr]")
    need(t.warmup_iters >= 0, "train.warmup_iters must be >= 0")
    need(t.lr_decay_iters >= t.warmup_iters, "train.lr_decay_iters must be >= train.warmup_iters")
    need(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    need(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
    need(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)")
    need(t.eval_interval >= 1, "train.eval_interval must be >= 1")
    need(t.eval_iters >= 1, "train.eval_iters must be >= 1")
    need(t.dtype in DTYPES, "train.dtype must be 'auto', 'float32' or 'bfloat16'")
    need(t.threads >= 0, "train.threads must be >= 0")
    need(t.log_interval >= 0, "train.log_interval must be >= 0 (0: log only at eval steps)")
    for name in ("init_seed", "data_seed", "dropout_seed"):
        need(-1 <= getattr(t, name) <= MAX_SEED, f"train.{name} must be in [0, {MAX_SEED}], or -1 to use train.seed")
    for name, v in (("train.seed", t.seed), ("train.eval_batch_seed", t.eval_batch_seed), ("eval.seed", e.seed)):
        need(0 <= v <= MAX_SEED, f"{name} must be in [0, {MAX_SEED}] (got {v})")
    need(m.n_layer <= MAX_LAYERS,
         f"model.n_layer must be <= {MAX_LAYERS} (got {m.n_layer}): nanoact trains small models")
    need(m.n_layer * m.n_embd**2 <= MAX_LAYER_WEIGHTS,
         f"model.n_layer * model.n_embd**2 = {m.n_layer * m.n_embd**2:.3g} is beyond {MAX_LAYER_WEIGHTS:.0e} (about "
         f"{12 * MAX_LAYER_WEIGHTS:.0e} parameters): nanoact trains small models; check n_layer ({m.n_layer}) and "
         f"n_embd ({m.n_embd})")
    need(m.block_size <= 2**20 and m.n_head <= m.n_embd, "model.block_size must be <= 1048576 and model.n_head <= "
         "model.n_embd")
    need(e.n_contexts >= 1, "eval.n_contexts must be >= 1")
    need(0.5 <= d.train_fraction < 1.0, "data.train_fraction must be in [0.5, 1)")
    need(bool(d.corpus.strip()), "data.corpus must not be empty")
