"""Experiment definitions: a base config plus grid axes, validated before anything runs. No Optuna here.

A sweep file (``sweeps/<name>.toml``) holds ``name``, ``description``, ``study``, a ``[config]`` table (the base
config) and a ``[grid]`` table whose keys are config keys and whose values are lists. Every cell of the grid is
checked before the first one trains: names resolve through the registries, values convert to the key's type,
and two values that mean the same thing after conversion (``42`` and ``"42 "``, ``"swish"`` and
``"swish(beta=1.0)"``) are an error, not two trainings of one cell.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from nanoact.config import RunConfig, apply_overrides, from_dict, load_toml, set_key, valid_keys
from nanoact.errors import ConfigError, NanoactError

GRID_VALUE_TYPES = (str, int, float, bool)
SWEEP_KEYS = {"name", "description", "study", "config", "grid", "seeds"}
SEEDS_KEYS = {"start", "step", "max", "target"}
SEED_AXIS = "train.seed"  # the axis a [seeds] rule grows
# where and how fast a cell runs, not what it computes: may change between resumed invocations
NOT_FINGERPRINTED = {"train.threads", "train.device", "train.compile", "train.log_interval"}
# keys added after studies existed: at these values they change nothing a cell computes, so they stay out of the
# fingerprint and older studies still resume
NEUTRAL = {"train.init_seed": -1, "train.data_seed": -1, "train.dropout_seed": -1}
# keys whose default changed after studies existed: the new default is fingerprinted as the old one, so an older
# study still resumes. train.dtype: "auto" computes what "float32" did everywhere but on a bf16-capable GPU (there
# a resumed float32 study would get bf16 cells, which the report refuses to mix; --set train.dtype=float32 keeps it)
FORMER_DEFAULTS = {"train.dtype": ("auto", "float32")}


@dataclass(frozen=True)
class Cell:
    """One grid point: its canonical key and the config values it sets."""

    key: str
    values: dict[str, Any]


MAX_CELLS = 10_000  # a grid larger than this is run only when the user insists (``nanoact sweep --large-grid``)


@dataclass(frozen=True)
class SweepSpec:
    """An experiment definition: a base config plus grid axes (any config keys). Never changed in place:
    ``with_study`` and ``with_overrides`` return new specs."""

    name: str
    base: RunConfig
    grid: dict[str, list[Any]]
    description: str = ""
    study: str = ""
    source: str = ""
    seed_rule: Any = None  # a ``nanoact.sweep.seeds.SeedRule``: train.seed grows in rounds (then ``seed_pool`` holds
    seed_pool: tuple[int, ...] = ()  # every seed it may use, in order; the grid holds the first n of them)
    _cells: list[Cell] = field(default_factory=list, repr=False, compare=False)

    @property
    def study_name(self) -> str:
        return self.study or self.name

    def cells(self) -> list[Cell]:
        if not self._cells:
            out: list[dict[str, Any]] = [{}]
            for k in sorted(self.grid):
                out = [{**c, k: v} for c in out for v in self.grid[k]]
            self._cells.extend(Cell(grid_key(v), v) for v in out)
        return list(self._cells)

    def cell_config(self, cell: Cell) -> RunConfig:
        return apply_overrides(self.base, cell.values)

    def fingerprinted(self) -> dict[str, Any]:
        """What the fingerprint covers: the base config (less the keys that do not change results) and the grid.
        A study records it, so that a dry run can say how another config differs."""
        base = {k: v for k, v in self.base.flat().items()
                if k not in NOT_FINGERPRINTED and not (k in NEUTRAL and v == NEUTRAL[k])}
        for k, (new, old) in FORMER_DEFAULTS.items():
            if base.get(k) == new:
                base[k] = old
        if self.seed_rule is None:
            return {"base": base, "grid": self.grid}
        # a growing seed axis: the fingerprint covers the rule and every seed it may use, not the round reached
        return {"base": base, "grid": {**self.grid, SEED_AXIS: list(self.seed_pool)}, "seeds": self.seed_rule.to_dict()}

    def fingerprint(self) -> str:
        """Identifies the base config and grid: a study must not silently mix two different experiments."""
        payload = json.dumps(self.fingerprinted(), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def n_seeds(self) -> int:
        return len(self.grid.get(SEED_AXIS, ()))

    def with_seed_count(self, n: int) -> SweepSpec:
        """The spec at a round of its seed rule: the first ``n`` seeds of the pool."""
        if self.seed_rule is None or n == self.n_seeds:
            return self
        if not self.seed_rule.start <= n <= len(self.seed_pool):
            raise ConfigError(f"{n} seeds is outside the rule's {self.seed_rule.start}..{len(self.seed_pool)}")
        return replace(self, grid={**self.grid, SEED_AXIS: list(self.seed_pool[:n])}, _cells=[])

    def with_seed_rule(self, targets: Mapping[str, float] | None, max_seeds: int | None) -> SweepSpec:
        """The command line's ``--until METRIC=HALF_WIDTH`` and ``--max-seeds N``: they set or replace the sweep
        file's targets and maximum (start and step stay the file's, else 3 and 2)."""
        from nanoact.sweep.seeds import SeedRule

        if not targets and max_seeds is None:
            return self
        old = self.seed_rule
        if old is None and not targets:
            raise ConfigError("--max-seeds needs a target: --until METRIC=HALF_WIDTH, or a [seeds] table in the file")
        listed = self.grid.get(SEED_AXIS) if old is None else list(self.seed_pool[:old.start])
        start = old.start if old else min(3, len(listed)) if listed else 3
        step = old.step if old else 2
        top = max_seeds if max_seeds is not None else (old.max if old else len(listed) if listed else None)
        if top is None:
            raise ConfigError("--until needs --max-seeds when the grid lists no train.seed")
        rule = SeedRule(start, step, top, dict(targets) if targets else dict(old.targets))
        return _apply_rule(replace(self, seed_rule=None), rule, listed, self.source or "command line")

    def with_study(self, study: str | None) -> SweepSpec:
        if not study:
            return self
        check_name(study, "study")
        return replace(self, study=study, _cells=[])

    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> SweepSpec:
        keys = overrides.keys() if isinstance(overrides, Mapping) else [o.partition("=")[0].strip() for o in overrides]
        for axis in self.grid:
            if axis in keys:
                raise ConfigError(f"--set {axis}=... would be overwritten by the grid axis {axis!r}; change the "
                                  "grid instead")
        try:
            base = apply_overrides(self.base, overrides)
        except NanoactError as e:  # the mistake is in --set, not in the sweep file
            raise ConfigError(f"--set: {e}") from None
        return replace(self, base=base, _cells=[])


def grid_key(values: Mapping[str, Any]) -> str:
    return "|".join(f"{k}={values[k]}" for k in sorted(values))


def check_name(name: Any, what: str, where: str = "sweep") -> str:
    """Experiment and study names become MLflow experiment names and folder names: keep them plain."""
    if (not isinstance(name, str) or not name or name.strip(".") == "" or len(name) > 100
            or not all(c.isalnum() or c in "-_." for c in name) or name.startswith(".")):
        raise ConfigError(f"{where}: {what} {name!r} must be 1-100 letters, digits, '-', '_' or '.', not starting "
                          "with '.'")
    return name


def builtin_sweeps_dir() -> Path:
    """The built-in experiments: ``sweeps/`` of the checkout, or ``nanoact/sweeps/`` of an installed wheel."""
    installed = Path(str(resources.files("nanoact"))) / "sweeps"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "sweeps"


def experiments(cwd: str | Path | None = None) -> dict[str, Path]:
    """Experiment name -> sweep file: the built-ins, and the user's own ``./sweeps/*.toml``, which win."""
    found = {p.stem: p for p in builtin_sweeps_dir().glob("*.toml")}
    local = Path(cwd or Path.cwd()) / "sweeps"
    if local.is_dir():
        found.update({p.stem: p for p in local.glob("*.toml")})
    return dict(sorted(found.items()))


BUILTIN_EXPERIMENTS = ("adaptive", "cpu", "full", "partial", "smoke", "sources", "zoo")  # the sweep files nanoact ships


def is_builtin(path: Path) -> bool:
    """A sweep file nanoact ships: one of ``BUILTIN_EXPERIMENTS`` in the built-in folder (in a checkout that folder
    is also ``./sweeps/`` of the repository root, where a user's own file is not built-in)."""
    return path.resolve().parent == builtin_sweeps_dir().resolve() and path.stem in BUILTIN_EXPERIMENTS


def experiment_names() -> list[str]:
    return list(experiments())


def load_sweep(name: str | None = None, path: str | Path | None = None,
               overrides: Iterable[str] | Mapping[str, Any] = (), check_names: bool = True,
               on_count: Callable[[int, Mapping[str, list]], None] | None = None) -> SweepSpec:
    """Load experiment ``name`` (``./sweeps/<name>.toml`` if there, else the built-in one) or the file ``path``,
    validate it, and apply ``--set`` overrides to its base. ``check_names=False`` skips resolving model and
    activation names (which imports PyTorch): enough to list experiments, not to run one. ``on_count`` gets the
    number of cells and the grid as soon as they are known, before the cells are checked (it may raise to refuse
    an absurd grid)."""
    if (name is None) == (path is None):
        raise ConfigError("give exactly one of an experiment name or a sweep file")
    if path is None:
        known = experiments()
        if name not in known:
            raise ConfigError(f"unknown experiment {name!r}; valid experiments: {', '.join(known)} (or put your own "
                              f"in ./sweeps/{name}.toml)")
        p = known[name]
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"sweep file {str(p)!r} does not exist")
    spec = parse_sweep(load_toml(p), where=str(p), default_name=p.stem, check_names=check_names, on_count=on_count)
    return spec.with_overrides(overrides) if overrides else spec


def parse_sweep(raw: Mapping[str, Any], where: str = "sweep", default_name: str = "",
                check_names: bool = True, on_count: Callable[[int, Mapping[str, list]], None] | None = None
                ) -> SweepSpec:
    """Validate a parsed sweep table; every bad key or value is an error that names the file and the key."""
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys: {', '.join(sorted(SWEEP_KEYS))}")
    name = check_name(raw.get("name", default_name), "'name'", where)
    study = raw.get("study", "")
    if study != "":
        check_name(study, "'study'", where)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")
    config = raw.get("config", {})
    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: [config] must be a table")
    try:
        base = from_dict(config, where=where)
    except NanoactError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, Mapping) or not grid_raw:
        raise ConfigError(f"{where}: [grid] must be a table with at least one axis, e.g. \"model.activation\" = [...]")
    grid = {key: _axis(base, key, values, where, check_names) for key, values in _flatten_grid(grid_raw).items()}
    if on_count is not None:
        on_count(math.prod(len(v) for v in grid.values()), grid)
    spec = SweepSpec(name=name, base=base, grid=grid, description=description, study=study, source=where)
    if "seeds" in raw:
        spec = _apply_rule(spec, _parse_rule(raw["seeds"], grid, where), grid.get(SEED_AXIS), where)
    if check_names:
        _check_cells(spec, where)
    return spec


def _parse_rule(raw: Any, grid: Mapping[str, list], where: str):
    """The ``[seeds]`` table: start (default 3), step (default 2), max (default: the listed train.seed values),
    target (required: metric -> 95% half-width)."""
    from nanoact.sweep.seeds import SeedRule

    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: [seeds] must be a table with start, step, max and target")
    unknown = set(raw) - SEEDS_KEYS
    if unknown:
        raise ConfigError(f"{where}: [seeds]: unknown key {sorted(unknown)[0]!r}; valid keys: "
                          f"{', '.join(sorted(SEEDS_KEYS))}")
    target = raw.get("target")
    if not isinstance(target, Mapping):
        raise ConfigError(f"{where}: [seeds] needs target = {{ final_val_loss = 0.005, pd_tv = 0.002 }} (95% CI "
                          "half-widths)")
    listed = grid.get(SEED_AXIS)
    top = raw.get("max", len(listed) if listed else None)
    if top is None:
        raise ConfigError(f"{where}: [seeds] needs max (or list the seeds in [grid] {SEED_AXIS})")
    try:
        return SeedRule(raw.get("start", 3), raw.get("step", 2), top, dict(target))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _apply_rule(spec: SweepSpec, rule, listed: list | None, where: str) -> SweepSpec:
    """The spec at the rule's first round: the seed pool is the listed train.seed values, continued by the
    integers after the largest of them (or train.seed, train.seed + 1, ... of the base config) up to ``max``."""
    other = [k for k in spec.grid if k != SEED_AXIS and _independent(k)]
    if other:
        raise ConfigError(f"{where}: a seed rule grows {SEED_AXIS}; it cannot be combined with the grid axis "
                          f"{other[0]}")
    pool = [int(s) for s in listed] if listed else [spec.base.train.seed]
    if len(pool) > rule.max:
        pool = pool[:rule.max]
    while len(pool) < rule.max:
        pool.append(max(pool) + 1)
    return replace(spec, grid={**spec.grid, SEED_AXIS: pool[:rule.start]}, seed_rule=rule, seed_pool=tuple(pool),
                   _cells=[])


def _axis(base: RunConfig, key: str, values: Any, where: str, check_names: bool = True) -> list[Any]:
    """One grid axis: known key, non-empty list, every value converts, no two values the same after conversion."""
    if key not in valid_keys():
        raise ConfigError(f"{where}: unknown grid axis {key!r}; axes are config keys such as model.activation")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: grid axis {key!r} must be a non-empty list")
    seen: dict[str, Any] = {}
    for v in values:
        if not isinstance(v, GRID_VALUE_TYPES):
            raise ConfigError(f"{where}: grid axis {key!r}: value {v!r} must be a string, number or bool")
        probe = base.copy()
        try:
            set_key(probe, key, v)
        except NanoactError as e:
            raise ConfigError(f"{where}: grid axis {key!r}: {e}") from None
        ident = _identity(key, probe, check_names)
        if ident in seen:
            raise ConfigError(f"{where}: grid axis {key!r} has duplicate values {seen[ident]!r} and {v!r} (the "
                              "same after conversion)")
        seen[ident] = v
    return list(values)


def _identity(key: str, cfg: RunConfig, canonicalise: bool = True) -> str:
    """What a converted grid value means: its canonical spelling for activations, else its typed value."""
    section, _, name = key.partition(".")
    value = getattr(getattr(cfg, section), name)
    if key == "model.activation" and canonicalise:
        from nanoact.activations import canonical, split_layer_spec

        try:
            return ",".join(canonical(s) for s in split_layer_spec(value))
        except NanoactError:
            return repr(value)  # reported as an unknown activation by _check_cells, with the cell's key
    return repr(value)


def _independent(key: str) -> bool:
    """Seeds constrain no other key: each value is valid or not on its own."""
    return key.endswith("seed")


def _check_cells(spec: SweepSpec, where: str) -> None:
    """Every cell must be a valid config, checked before anything runs (by registry lookup and arithmetic: no
    model is built). A cell whose other values were checked with every one of its seeds already is skipped, so a
    grid of many seeds costs about as much as one of one seed."""
    from nanoact.models import validate_model_config

    seen: set[tuple] = set()
    rests: set[tuple] = set()
    seeds: set[tuple] = set()
    for cell in spec.cells():
        rest = tuple((k, v) for k, v in cell.values.items() if not _independent(k))
        own = [(k, v) for k, v in cell.values.items() if _independent(k)]
        if rest in rests and all(s in seeds for s in own):
            continue
        rests.add(rest)
        seeds.update(own)
        cfg = spec.cell_config(cell)  # validates the whole config
        sig = tuple(sorted(cfg.model.__dict__.items()))
        if sig in seen:
            continue
        seen.add(sig)
        try:
            validate_model_config(cfg.model, 8)
        except NanoactError as e:
            raise ConfigError(f"{where}: cell {cell.key}: {e}") from None


def _flatten_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # accepts both "model.activation" = [...] and [grid.model] activation = [...]
    out: dict[str, Any] = {}
    for k, v in grid.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_grid(v, key + "."))
        else:
            out[key] = v
    return out
