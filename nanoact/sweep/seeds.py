"""The seeds-on-demand rule as a sweep file states it (``[seeds]``) or the command line (``--until``,
``--max-seeds``): plain data, checked here, with no numerics (``nanoact.analysis.sequential`` decides rounds)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

METRICS = ("final_val_loss", "pd_tv")  # what a target can name: seed-paired loss differences, the PD estimands


@dataclass(frozen=True)
class SeedRule:
    start: int
    step: int
    max: int
    targets: Mapping[str, float] = field(default_factory=dict)  # metric -> 95% half-width

    def __post_init__(self) -> None:
        from nanoact.errors import ConfigError

        if not (isinstance(self.start, int) and self.start >= 3):
            raise ConfigError(f"seeds.start must be an integer >= 3 (a seed-jackknife needs 3), not {self.start!r}")
        if not (isinstance(self.step, int) and self.step >= 1):
            raise ConfigError(f"seeds.step must be a positive integer, not {self.step!r}")
        if not (isinstance(self.max, int) and self.max >= self.start):
            raise ConfigError(f"seeds.max must be an integer >= seeds.start ({self.start}), not {self.max!r}")
        if not self.targets:
            raise ConfigError(f"seeds.target names no metric; give one or more of {', '.join(METRICS)}")
        for k, v in self.targets.items():
            if k not in METRICS:
                raise ConfigError(f"seeds.target: unknown metric {k!r}; choose from {', '.join(METRICS)}")
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ConfigError(f"seeds.target.{k} must be a positive number (a 95% CI half-width), not {v!r}")

    def schedule(self) -> tuple[int, ...]:
        """The seed counts at which the interim analysis runs: start, start + step, ..., max."""
        return tuple(sorted({*range(self.start, self.max, self.step), self.max}))

    def describe(self) -> str:
        t = ", ".join(f"{k} ±{v:g}" for k, v in self.targets.items())
        return (f"start {self.start} seeds, add {self.step} per round up to {self.max}, until every primary 95% "
                f"half-width is within {t}")

    def to_dict(self) -> dict:
        return {"start": self.start, "step": self.step, "max": self.max, "target": dict(self.targets)}
