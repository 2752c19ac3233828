"""The activation spec grammar, apart from the registry: the error type, numbers, parameter lists, per-layer lists.

Nothing here looks a name up; ``nanoact.activations.parse_activation`` does, and passes the parameters the
registered activation takes to :func:`parse_params`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from nanoact.errors import NanoactError

NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class ActivationError(NanoactError, ValueError):
    """An activation name, spec or parameter is invalid (one-line message)."""


def check_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ActivationError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ActivationError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(name: str, value: float) -> float:
    value = check_finite(name, value)
    if value <= 0:
        raise ActivationError(f"{name} must be > 0, got {value!r}")
    return value


def split_head(spec: str) -> tuple[str, str]:
    """(name, rest) of one spec: the name up to the first ``(``, ``,``, ``=`` or space; the stripped rest."""
    if not isinstance(spec, str):
        raise ActivationError(f"activation spec must be a string, got {type(spec).__name__}: {spec!r}")
    text = spec.strip()
    if "\n" in text or "\r" in text:
        raise ActivationError(f"activation spec {spec!r} must be on one line")
    head = re.match(r"[^()\s,=]*", text)
    assert head is not None  # the pattern matches the empty string
    return head.group(), text[head.end() :].strip()


def param_text(rest: str, name: str, spec: str) -> str:
    """The text between the parentheses after the name (``""`` when there are none)."""
    if not rest:
        return ""
    if rest.startswith(","):
        raise ActivationError(
            f"activation spec {spec!r} holds several activations; split per-layer lists with split_layer_spec"
        )
    if not rest.startswith("("):
        raise ActivationError(f"unexpected text {rest!r} after activation name {name!r} in spec {spec!r}")
    if not rest.endswith(")"):
        if ")" in rest:
            tail = rest[rest.rindex(")") + 1 :].strip()
            raise ActivationError(f"unexpected text {tail!r} after ')' in activation spec {spec!r}")
        raise ActivationError(f"missing closing parenthesis in activation spec {spec!r}")
    inner = rest[1:-1]
    if "(" in inner or ")" in inner:
        raise ActivationError(f"unbalanced or nested parentheses in activation spec {spec!r}")
    return inner


def parse_params(inner: str, spec: str, name: str, allowed: Mapping[str, float]) -> dict[str, float]:
    """``key=value, ...`` -> the given values; every key must be one of ``allowed`` (the activation's params)."""
    given: dict[str, float] = {}
    if not inner.strip():
        return given
    for item in inner.split(","):
        item = item.strip()
        if not item:
            raise ActivationError(f"empty parameter in activation spec {spec!r}")
        if "=" not in item:
            raise ActivationError(f"parameter {item!r} in activation spec {spec!r} must be written key=value")
        key, _, value_text = item.partition("=")
        key = key.strip()
        if not KEY_RE.fullmatch(key):
            raise ActivationError(f"invalid parameter name {key!r} in activation spec {spec!r}")
        if key in given:
            raise ActivationError(f"parameter {key!r} given twice in activation spec {spec!r}")
        if key not in allowed:
            if not allowed:
                raise ActivationError(f"activation {name!r} takes no parameters, got {key!r} in spec {spec!r}")
            raise ActivationError(
                f"unknown parameter {key!r} for activation {name!r} in spec {spec!r}; "
                f"valid: {', '.join(sorted(allowed))}"
            )
        given[key] = parse_value(value_text, key, spec)
    return given


def parse_value(text: str, key: str, spec: str) -> float:
    value_text = text.strip()
    if not value_text:
        raise ActivationError(f"missing value for parameter {key!r} in activation spec {spec!r}")
    try:
        value = float(value_text)
    except ValueError:
        raise ActivationError(
            f"value {value_text!r} for parameter {key!r} in activation spec {spec!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise ActivationError(
            f"value {value_text!r} for parameter {key!r} in activation spec {spec!r} is not finite"
        )
    if not NUMBER_RE.fullmatch(value_text):
        raise ActivationError(
            f"value {value_text!r} for parameter {key!r} in activation spec {spec!r} is not a plain number"
        )
    return value


def format_number(value: float) -> str:
    value = float(value)
    if value == 0.0:
        value = 0.0  # -0.0 and 0.0 spell the same
    return repr(value)


def split_layer_spec(spec: str) -> list[str]:
    """Split a per-layer list on commas outside parentheses: ``"gsmelu(alpha=1,beta=2),relu"`` -> 2 entries.

    Entries are stripped; empty entries and unbalanced parentheses raise ActivationError. Entries are not
    parsed here (use :func:`parse_activation`).
    """
    if not isinstance(spec, str):
        raise ActivationError(f"activation spec must be a string, got {type(spec).__name__}: {spec!r}")
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(spec):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ActivationError(f"unbalanced ')' in activation spec {spec!r}")
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    if depth != 0:
        raise ActivationError(f"unbalanced '(' in activation spec {spec!r}")
    parts.append(spec[start:])
    entries = [p.strip() for p in parts]
    for i, entry in enumerate(entries):
        if not entry:
            raise ActivationError(f"empty entry {i} in activation list {spec!r}")
    return entries
