"""The one registry of activation names, their parser, and the modules they build.

A run's config holds an activation *spec*, a string such as ``"gelu"`` or ``"smelu(beta=0.5)"``. This module
resolves it to an ``nn.Module`` and never falls back to a default: an unknown name, a malformed spec or an invalid
parameter raises :class:`ActivationError` with a one-line message. Spec grammar::

    spec   := NAME | NAME "(" [param ("," param)*] ")"      whitespace around tokens is ignored
    param  := KEY "=" NUMBER                                 NUMBER: a finite int or float literal

Names are case-sensitive (``"Relu"`` is an error). Per-layer lists (``"relu,gelu"``) are split with
:func:`split_layer_spec`. Definitions: SmeLU and generalized SmeLU from Shamir et al., "Smooth activations
and reproducibility in deep networks" (arXiv:2010.09931); SwiGLU from Shazeer, "GLU variants improve
transformer" (arXiv:2002.05202); GELU from Hendrycks & Gimpel (arXiv:1606.08415).

Users add their own activations with :func:`register_activation`; everything else (``build_activation``,
``is_activation_module``, ``activation_modules``, ``expected_modules``) then sees them.

This module is the registry, the one place where an activation plugs in. Beside it: ``modules`` (nanoact's own
``nn.Module`` classes) and ``syntax`` (the grammar above, without name lookups); import both from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType

import torch.nn as nn
import torch.nn.modules.activation as _torch_activation

from nanoact.activations.modules import GeneralizedSmeLU, LinearActivation, SmeLU, SwiGLU, Swish
from nanoact.activations.syntax import (
    KEY_RE,
    NAME_RE,
    ActivationError,
    check_finite,
    check_positive,
    format_number,
    param_text,
    parse_params,
    split_head,
    split_layer_spec,
)

__all__ = [
    "ActivationError",
    "ActivationSpec",
    "GeneralizedSmeLU",
    "LinearActivation",
    "SmeLU",
    "SwiGLU",
    "Swish",
    "activation_modules",
    "activation_names",
    "build_activation",
    "canonical",
    "describe",
    "expected_modules",
    "get_spec",
    "is_activation_module",
    "is_gated",
    "mlp_hidden",
    "mlp_in_features",
    "parse_activation",
    "register_activation",
    "split_layer_spec",
    "unregister_activation",
]


# ----------------------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class ActivationSpec:
    """One registered activation: how to build it and which keyword parameters (with defaults) it takes."""

    name: str
    factory: Callable[..., nn.Module]  # called with keyword params
    params: Mapping[str, float]  # parameter name -> default; empty if none
    gated: bool = False  # True: module maps (..., 2h) -> (..., h)
    doc: str = ""
    validate: Callable[[Mapping[str, float]], None] | None = field(default=None, repr=False, compare=False)


_REGISTRY: dict[str, ActivationSpec] = {}
_BUILTIN_NAMES: frozenset[str]

# Every class from torch.nn.modules.activation except attention (it lives there but is not an activation).
_TORCH_ACTIVATION_CLASSES: frozenset[type[nn.Module]] = frozenset(
    cls
    for _, cls in inspect.getmembers(_torch_activation, inspect.isclass)
    if issubclass(cls, nn.Module)
    and cls.__module__ == _torch_activation.__name__
    and cls is not nn.MultiheadAttention
)
# Containers and nn.Identity are never recorded as activation classes, even if a user factory returns one:
# they appear in models for other reasons.
_NEVER_ACTIVATION: frozenset[type[nn.Module]] = frozenset(
    {nn.Module, nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict}
)
_ACTIVATION_CLASSES: set[type[nn.Module]] = set(_TORCH_ACTIVATION_CLASSES) | {
    LinearActivation,
    Swish,
    SmeLU,
    GeneralizedSmeLU,
    SwiGLU,
}


def _record_class(cls: type) -> None:
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls not in _NEVER_ACTIVATION:
        _ACTIVATION_CLASSES.add(cls)


def _valid_names() -> str:
    return ", ".join(sorted(_REGISTRY))


def register_activation(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    params: Mapping[str, float] | None = None,
    gated: bool = False,
    doc: str = "",
    overwrite: bool = False,
    validate: Callable[[Mapping[str, float]], None] | None = None,
) -> None:
    """Register an activation under ``name`` (the public extension point).

    Args:
        name: matches ``[a-z][a-z0-9_]*``.
        factory: called as ``factory(**params)``; must return an ``nn.Module``.
        params: parameter names -> float defaults; ``None`` or empty for none.
        gated: True if the module maps (..., 2h) -> (..., h), like SwiGLU.
        doc: one-line description.
        overwrite: allow replacing an existing name (otherwise that raises ActivationError).
        validate: optional check of a full parameter dict; raises ActivationError (or ValueError) if invalid.
            It runs when a spec is parsed, so bad values fail before any model is built.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ActivationError(f"invalid activation name {name!r}: must match [a-z][a-z0-9_]*")
    if not callable(factory):
        raise ActivationError(f"factory for activation {name!r} is not callable: {factory!r}")
    if name in _REGISTRY and not overwrite:
        raise ActivationError(f"activation {name!r} is already registered; pass overwrite=True to replace it")
    defaults: dict[str, float] = {}
    for key, value in (params or {}).items():
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise ActivationError(f"invalid parameter name {key!r} for activation {name!r}")
        defaults[key] = check_finite(f"default of {name}.{key}", value)
    spec = ActivationSpec(
        name=name,
        factory=factory,
        params=MappingProxyType(defaults),
        gated=bool(gated),
        doc=doc,
        validate=validate,
    )
    _run_validate(spec, defaults)
    _REGISTRY[name] = spec
    _record_class(factory)


def unregister_activation(name: str) -> None:
    """Remove a user-registered activation (built-ins cannot be removed). Mainly for tests' cleanup."""
    if name in _BUILTIN_NAMES:
        raise ActivationError(f"cannot unregister built-in activation {name!r}")
    get_spec(name)
    del _REGISTRY[name]


def activation_names() -> list[str]:
    """All registered activation names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ActivationSpec:
    """The registered spec for ``name`` (exact, case-sensitive); unknown names raise ActivationError."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        hint = ""
        if isinstance(name, str) and name.strip().lower() in _REGISTRY and name != name.strip().lower():
            hint = f" (names are case-sensitive: did you mean {name.strip().lower()!r}?)"
        else:
            from nanoact.errors import did_you_mean

            hint = did_you_mean(name, _REGISTRY)
        raise ActivationError(f"unknown activation {name!r}{hint}; valid names: {_valid_names()}") from None


# ----------------------------------------------------------------------------------------------------------------
# parsing


def _run_validate(spec: ActivationSpec, values: Mapping[str, float]) -> None:
    if spec.validate is None:
        return
    try:
        spec.validate(values)
    except ValueError as e:  # ActivationError included
        raise ActivationError(f"invalid parameters for activation {spec.name!r}: {e}") from None


def parse_activation(spec: str) -> tuple[str, dict[str, float]]:
    """Parse ``NAME`` or ``NAME(key=value, ...)`` into (name, params) with defaults filled in.

    Surrounding whitespace is stripped; names are case-sensitive; values are finite numbers (ints are
    converted to float). Anything malformed, unknown or invalid raises ActivationError.

    Example: ``parse_activation("smelu(beta=0.5)") == ("smelu", {"beta": 0.5})``.
    """
    name, rest = split_head(spec)
    if not spec.strip():
        raise ActivationError("empty activation spec; valid names: " + _valid_names())
    if not name:
        raise ActivationError(f"missing activation name in spec {spec!r}")
    act = get_spec(name)
    given = parse_params(param_text(rest, name, spec), spec, name, act.params)
    params = {key: given.get(key, default) for key, default in act.params.items()}
    _run_validate(act, params)
    return name, params


def canonical(spec: str) -> str:
    """The canonical spelling of one activation spec: params with defaults filled in, sorted by name.

    ``canonical("smelu( beta = .5 )") == "smelu(beta=0.5)"``, ``canonical("swish") == "swish(beta=1.0)"``,
    ``canonical("relu") == "relu"``. Parameters are joined with ", ".
    """
    name, params = parse_activation(spec)
    if not params:
        return name
    return name + "(" + ", ".join(f"{k}={format_number(params[k])}" for k in sorted(params)) + ")"


# ----------------------------------------------------------------------------------------------------------------
# building and inspecting modules


def build_activation(spec: str) -> nn.Module:
    """Build the module for one activation spec (``factory(**params)``); never falls back to a default."""
    name, params = parse_activation(spec)
    act = _REGISTRY[name]
    try:
        module = act.factory(**params)
    except (ValueError, TypeError) as e:
        raise ActivationError(f"cannot build activation {spec.strip()!r}: {e}") from None
    if not isinstance(module, nn.Module):
        raise ActivationError(
            f"factory of activation {name!r} returned {type(module).__name__}, not an nn.Module"
        )
    _record_class(type(module))
    return module


def is_gated(spec: str) -> bool:
    """True if the spec's activation is gated (maps (..., 2h) -> (..., h))."""
    name, _ = parse_activation(spec)
    return _REGISTRY[name].gated


def mlp_hidden(n_embd: int, spec: str) -> int:
    """MLP hidden width h: 4 * n_embd, or int(8 * n_embd / 3) for gated specs (keeps ~8 d^2 weights)."""
    if isinstance(n_embd, bool) or not isinstance(n_embd, int) or n_embd <= 0:
        raise ActivationError(f"n_embd must be a positive int, got {n_embd!r}")
    return (8 * n_embd) // 3 if is_gated(spec) else 4 * n_embd


def mlp_in_features(hidden: int, spec: str) -> int:
    """Output width of the MLP's first projection: 2 * hidden for gated specs, else hidden."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
        raise ActivationError(f"hidden must be a positive int, got {hidden!r}")
    return 2 * hidden if is_gated(spec) else hidden


def describe(module: nn.Module) -> str:
    """Class name plus extra_repr, e.g. ``"GELU(approximate='none')"``, ``"ReLU"``, ``"SmeLU(beta=0.5)"``."""
    extra = module.extra_repr()
    return type(module).__name__ + (f"({extra})" if extra else "")


def is_activation_module(module: nn.Module) -> bool:
    """True for torch.nn activation classes, nanoact's own, and any class a registered factory produced."""
    return isinstance(module, tuple(_ACTIVATION_CLASSES))


def _activation_modules(module: nn.Module) -> Iterator[nn.Module]:
    if is_activation_module(module):
        yield module  # an activation's own submodules are part of it, not separate activations
        return
    for child in module.children():
        yield from _activation_modules(child)


def activation_modules(model: nn.Module) -> list[str]:
    """describe() of every activation module in ``model`` in ``model.modules()`` order (duplicates kept).

    Submodules of an activation module (a user activation built from, say, ``nn.Sigmoid``) are not listed
    separately. Note that ``nn.Softmax`` counts as an activation class.
    """
    return [describe(m) for m in _activation_modules(model)]


def expected_modules(spec: str) -> set[str]:
    """The describe() strings a model built from a (per-layer) spec should contain."""
    return {describe(build_activation(s)) for s in split_layer_spec(spec)}


# ----------------------------------------------------------------------------------------------------------------
# built-ins


def _smelu_validate(p: Mapping[str, float]) -> None:
    check_positive("beta", p["beta"])


def _gsmelu_validate(p: Mapping[str, float]) -> None:
    check_positive("alpha", p["alpha"])
    check_positive("beta", p["beta"])


register_activation("relu", nn.ReLU, doc="max(0, x)")
register_activation("gelu", nn.GELU, doc="exact x * Phi(x) (erf)")
register_activation("gelu_tanh", partial(nn.GELU, approximate="tanh"), doc="GELU, tanh approximation")
register_activation("silu", nn.SiLU, doc="x * sigmoid(x)")
register_activation("swish", Swish, params={"beta": 1.0}, doc="x * sigmoid(beta x); beta any finite float")
register_activation(
    "smelu", SmeLU, params={"beta": 1.0}, validate=_smelu_validate, doc="smooth ReLU, half-width beta > 0"
)
register_activation("smelu_05", partial(SmeLU, beta=0.5), doc="SmeLU with beta = 0.5")
register_activation("smelu_1", partial(SmeLU, beta=1.0), doc="SmeLU with beta = 1.0")
register_activation(
    "gsmelu",
    GeneralizedSmeLU,
    params={"g_neg": 0.0, "g_pos": 1.0, "alpha": 1.0, "beta": 1.0, "t": 0.0},
    validate=_gsmelu_validate,
    doc="generalized SmeLU: slopes g_neg/g_pos, half-widths alpha/beta > 0, offset t",
)
register_activation(
    "swiglu",
    SwiGLU,
    params={"beta": 1.0},
    gated=True,
    doc="gated: Swish_beta(a) * b on (..., 2h) -> (..., h); MLP hidden h = int(8 d / 3)",
)
register_activation("identity", LinearActivation, doc="f(x) = x, the linear control")

_BUILTIN_NAMES = frozenset(_REGISTRY)
