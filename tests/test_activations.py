"""Tests for nanoact.activations: values and gradients against the closed forms in nanoact/activations/, the
parser, the registry.

Run: python -m pytest tests/test_activations.py -q   (CPU, about a second)

Reference formulas are written here independently in plain Python/numpy (float64), not imported from the module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn as nn

import nanoact.activations as A
from nanoact.activations import (
    ActivationError,
    activation_modules,
    activation_names,
    build_activation,
    canonical,
    describe,
    expected_modules,
    get_spec,
    is_activation_module,
    is_gated,
    mlp_hidden,
    mlp_in_features,
    parse_activation,
    register_activation,
    split_layer_spec,
    unregister_activation,
)
from nanoact.errors import NanoactError

Ref = Callable[[np.ndarray], np.ndarray]

# ----------------------------------------------------------------------------------------------------------------
# independent closed forms (numpy, float64)

_erf = np.vectorize(math.erf)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _relu_grad(x: np.ndarray) -> np.ndarray:
    return (x > 0).astype(np.float64)


def _gelu(x: np.ndarray) -> np.ndarray:
    return x * 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def _gelu_grad(x: np.ndarray) -> np.ndarray:
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return cdf + x * pdf


_K = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(_K * (x + 0.044715 * x**3)))


def _gelu_tanh_grad(x: np.ndarray) -> np.ndarray:
    th = np.tanh(_K * (x + 0.044715 * x**3))
    du = _K * (1.0 + 3 * 0.044715 * x**2)
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th**2) * du


def _swish(beta: float) -> tuple[Ref, Ref]:
    def f(x: np.ndarray) -> np.ndarray:
        return x * _sigmoid(beta * x)

    def df(x: np.ndarray) -> np.ndarray:
        s = _sigmoid(beta * x)
        return s + beta * x * s * (1.0 - s)

    return f, df


def _smelu(beta: float) -> tuple[Ref, Ref]:
    def f(x: np.ndarray) -> np.ndarray:
        return np.where(x <= -beta, 0.0, np.where(x >= beta, x, (x + beta) ** 2 / (4.0 * beta)))

    def df(x: np.ndarray) -> np.ndarray:
        return np.where(x <= -beta, 0.0, np.where(x >= beta, 1.0, (x + beta) / (2.0 * beta)))

    return f, df


def _gsmelu(g_neg: float, g_pos: float, alpha: float, beta: float, t: float) -> tuple[Ref, Ref]:
    a = (g_pos - g_neg) / (2 * (alpha + beta))
    b = (alpha * g_pos + beta * g_neg) / (alpha + beta)
    c = t + alpha**2 * (g_pos - g_neg) / (2 * (alpha + beta))
    d = t + (alpha - beta) * (g_pos - g_neg) / 2

    def f(x: np.ndarray) -> np.ndarray:
        return np.where(x <= -alpha, g_neg * x + t, np.where(x >= beta, g_pos * x + d, a * x**2 + b * x + c))

    def df(x: np.ndarray) -> np.ndarray:
        return np.where(x <= -alpha, g_neg, np.where(x >= beta, g_pos, 2 * a * x + b))

    return f, df


# spec -> (value, derivative); covers every built-in (checked by test_every_builtin_has_a_reference)
REFERENCES: dict[str, tuple[Ref, Ref]] = {
    "relu": (_relu, _relu_grad),
    "gelu": (_gelu, _gelu_grad),
    "gelu_tanh": (_gelu_tanh, _gelu_tanh_grad),
    "silu": _swish(1.0),
    "swish": _swish(1.0),
    "swish(beta=0)": _swish(0.0),
    "swish(beta=2.5)": _swish(2.5),
    "swish(beta=-0.7)": _swish(-0.7),
    "smelu": _smelu(1.0),
    "smelu_05": _smelu(0.5),
    "smelu_1": _smelu(1.0),
    "smelu(beta=0.1)": _smelu(0.1),
    "smelu(beta=0.5)": _smelu(0.5),
    "smelu(beta=3)": _smelu(3.0),
    "gsmelu": _gsmelu(0.0, 1.0, 1.0, 1.0, 0.0),
    "gsmelu(g_neg=0.1, g_pos=1.5, alpha=0.5, beta=2, t=-0.3)": _gsmelu(0.1, 1.5, 0.5, 2.0, -0.3),
    "identity": (lambda x: x.copy(), lambda x: np.ones_like(x)),
}

# no exact kinks (0, +-beta) here: those are tested separately
GRID = np.concatenate([np.linspace(-6.0, 6.0, 241) + 0.0123, [-50.0, -3.3, -0.73, 0.37, 2.9, 50.0]])


def _value_and_grad(module: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = module(xt)
    (g,) = torch.autograd.grad(y.sum(), xt)
    return y.detach().numpy(), g.numpy()


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Snapshot and restore the registry and the known activation classes around a test."""
    registry = dict(A._REGISTRY)
    classes = set(A._ACTIVATION_CLASSES)
    yield
    A._REGISTRY.clear()
    A._REGISTRY.update(registry)
    A._ACTIVATION_CLASSES.clear()
    A._ACTIVATION_CLASSES.update(classes)


# ----------------------------------------------------------------------------------------------------------------
# values and gradients


def test_every_builtin_has_a_reference() -> None:
    tested = {parse_activation(s)[0] for s in REFERENCES} | {"swiglu"}  # swiglu: own tests below
    assert set(A._BUILTIN_NAMES) == tested
    assert set(A._BUILTIN_NAMES) <= set(activation_names())


@pytest.mark.parametrize("spec", sorted(REFERENCES))
def test_value_and_gradient_match_closed_form(spec: str) -> None:
    f, df = REFERENCES[spec]
    y, g = _value_and_grad(build_activation(spec), GRID)
    np.testing.assert_allclose(y, f(GRID), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, df(GRID), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 3.0])
def test_smelu_edges(beta: float) -> None:
    m = build_activation(f"smelu(beta={beta})")
    f, df = _smelu(beta)
    # at 0 the value is beta/4 and the slope 1/2
    y0, g0 = _value_and_grad(m, np.array([0.0]))
    assert y0[0] == pytest.approx(beta / 4, rel=1e-15)
    assert g0[0] == pytest.approx(0.5, rel=1e-15)
    # at exactly +-beta the closed form (both one-sided limits agree) holds
    edges = np.array([-beta, beta])
    y, g = _value_and_grad(m, edges)
    np.testing.assert_allclose(y, [0.0, beta], atol=1e-15)
    np.testing.assert_allclose(g, [0.0, 1.0], atol=1e-15)
    # continuity of value and gradient across +-beta
    eps = 1e-7 * beta
    for edge in (-beta, beta):
        yl, gl = _value_and_grad(m, np.array([edge - eps]))
        yr, gr = _value_and_grad(m, np.array([edge + eps]))
        assert abs(yl[0] - yr[0]) < 3 * eps
        assert abs(gl[0] - gr[0]) < 1e-6
    # dense grid inside and around the transition region
    x = np.linspace(-2 * beta, 2 * beta, 401)
    y, g = _value_and_grad(m, x)
    np.testing.assert_allclose(y, f(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g, df(x), rtol=1e-12, atol=1e-14)


def test_smelu_gradients_finite_for_extreme_inputs() -> None:
    x = np.array([-1e300, -1e30, 1e30, 1e300])
    for spec in ("smelu(beta=0.1)", "gsmelu(g_neg=0.2, alpha=0.3, beta=0.4)"):
        y, g = _value_and_grad(build_activation(spec), x)
        assert np.all(np.isfinite(y)) and np.all(np.isfinite(g))
    xt = torch.tensor([-1e30, -0.5, 0.5, 1e30], dtype=torch.float32, requires_grad=True)
    y = build_activation("smelu")(xt)
    y.sum().backward()
    assert y.dtype == torch.float32
    assert xt.grad is not None and torch.isfinite(xt.grad).all()


def test_swish_special_cases() -> None:
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(build_activation("swish(beta=1)")(x), nn.SiLU()(x), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(build_activation("swish(beta=0)")(x), x / 2, rtol=0, atol=0)
    relu = torch.relu(x)
    for beta, tol in [(10.0, 0.03), (100.0, 0.003), (1000.0, 0.0003)]:
        err = (build_activation(f"swish(beta={beta})")(x) - relu).abs().max().item()
        assert err < tol  # max |x sigmoid(beta x) - relu(x)| ~ 0.278 / beta


def test_gelu_and_gelu_tanh_differ() -> None:
    exact, approx = build_activation("gelu"), build_activation("gelu_tanh")
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    diff = (exact(x) - approx(x)).abs().max().item()
    assert 1e-5 < diff < 1e-2
    assert describe(exact) == "GELU(approximate='none')"
    assert describe(approx) == "GELU(approximate='tanh')"


def test_gsmelu_random_parameters() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        g_neg, g_pos, t = (float(v) for v in rng.uniform(-2, 2, size=3))
        alpha, beta = (float(v) for v in rng.uniform(0.1, 3, size=2))
        spec = f"gsmelu(g_neg={g_neg!r}, g_pos={g_pos!r}, alpha={alpha!r}, beta={beta!r}, t={t!r})"
        m = build_activation(spec)
        f, df = _gsmelu(g_neg, g_pos, alpha, beta, t)
        x = np.concatenate([GRID, [-alpha, beta], np.linspace(-alpha, beta, 50)])
        y, g = _value_and_grad(m, x)
        np.testing.assert_allclose(y, f(x), rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(g, df(x), rtol=1e-11, atol=1e-12)
        # continuity of value and gradient at -alpha and beta
        eps = 1e-8
        for edge in (-alpha, beta):
            yl, gl = _value_and_grad(m, np.array([edge - eps]))
            yr, gr = _value_and_grad(m, np.array([edge + eps]))
            assert abs(yl[0] - yr[0]) < 1e-7
            assert abs(gl[0] - gr[0]) < 1e-6


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0, 3.0])
def test_gsmelu_reduces_to_smelu(beta: float) -> None:
    g = build_activation(f"gsmelu(g_neg=0, g_pos=1, alpha={beta}, beta={beta}, t=0)")
    s = build_activation(f"smelu(beta={beta})")
    x = np.linspace(-3 * beta, 3 * beta, 301)
    yg, gg = _value_and_grad(g, x)
    ys, gs = _value_and_grad(s, x)
    np.testing.assert_allclose(yg, ys, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gg, gs, rtol=1e-12, atol=1e-14)


def test_swiglu_shape_value_and_gradient() -> None:
    beta = 1.7
    m = build_activation(f"swiglu(beta={beta})")
    x = torch.randn(2, 3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    y = m(x)
    assert y.shape == (2, 3, 5)
    a, b = x.detach().numpy()[..., :5], x.detach().numpy()[..., 5:]
    s = _sigmoid(beta * a)
    np.testing.assert_allclose(y.detach().numpy(), a * s * b, rtol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x)
    np.testing.assert_allclose(g.numpy()[..., :5], b * (s + beta * a * s * (1 - s)), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(g.numpy()[..., 5:], a * s, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="even"):
        m(torch.zeros(4, 7))
    assert describe(m) == "SwiGLU(beta=1.7)"
    assert "8" in (A.SwiGLU.__doc__ or "") and "2h" in (A.SwiGLU.__doc__ or "")


def test_gated_helpers() -> None:
    assert is_gated("swiglu") and is_gated("swiglu(beta=2)") and get_spec("swiglu").gated
    assert not any(is_gated(n) for n in activation_names() if n != "swiglu")
    assert mlp_hidden(384, "gelu") == 1536
    assert mlp_hidden(384, "swiglu") == 1024
    assert mlp_hidden(64, "swiglu") == int(8 * 64 / 3) == 170
    assert mlp_in_features(1024, "swiglu") == 2048
    assert mlp_in_features(1536, "smelu(beta=0.5)") == 1536
    for d in (32, 64, 384):  # 3 d h ~= 8 d^2 weights, within 2%
        h = mlp_hidden(d, "swiglu")
        assert abs(3 * d * h - 8 * d * d) / (8 * d * d) < 0.02
    with pytest.raises(ActivationError):
        mlp_hidden(0, "gelu")


def test_own_classes_validate_and_describe() -> None:
    with pytest.raises(ActivationError):
        A.SmeLU(beta=0)
    with pytest.raises(ActivationError):
        A.GeneralizedSmeLU(alpha=-1)
    with pytest.raises(ActivationError):
        A.Swish(beta=float("nan"))
    assert describe(A.SmeLU(1)) == "SmeLU(beta=1.0)"
    assert describe(build_activation("smelu_05")) == describe(build_activation("smelu(beta=0.5)"))
    assert describe(build_activation("smelu_1")) == describe(build_activation("smelu")) == "SmeLU(beta=1.0)"
    assert describe(build_activation("identity")) == "LinearActivation"
    assert not isinstance(build_activation("identity"), nn.Identity)
    assert describe(build_activation("relu")) == "ReLU"
    assert describe(build_activation("swish")) == "Swish(beta=1.0)"
    assert describe(build_activation("gsmelu")) == (
        "GeneralizedSmeLU(g_neg=0.0, g_pos=1.0, alpha=1.0, beta=1.0, t=0.0)"
    )


def test_building_does_not_touch_rng() -> None:
    state = torch.get_rng_state()
    for name in activation_names():
        build_activation(name)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------------------------
# parser


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("smelu(beta=0.5)", ("smelu", {"beta": 0.5})),
        ("swish", ("swish", {"beta": 1.0})),
        ("relu", ("relu", {})),
        ("  gelu  ", ("gelu", {})),
        ("relu()", ("relu", {})),
        (" smelu ( beta = .5 ) ", ("smelu", {"beta": 0.5})),
        ("swish(beta=2)", ("swish", {"beta": 2.0})),
        ("swish(beta=-1.5e-1)", ("swish", {"beta": -0.15})),
        ("swish(beta=+3)", ("swish", {"beta": 3.0})),
        ("gsmelu(t=0.1, alpha=2)", ("gsmelu", {"g_neg": 0.0, "g_pos": 1.0, "alpha": 2.0, "beta": 1.0, "t": 0.1})),
    ],
)
def test_parse_valid(spec: str, expected: tuple[str, dict[str, float]]) -> None:
    name, params = parse_activation(spec)
    assert (name, params) == expected
    assert all(type(v) is float for v in params.values())


@pytest.mark.parametrize(
    "spec",
    [
        "swish(",
        "swish(beta=)",
        "swish(beta=abc)",
        "swish(1.0)",
        "relu(beta=1)",
        "",
        "   ",
        "swish(beta=nan)",
        "swish(beta=inf)",
        "swish(beta=-inf)",
        "swish(beta=1e999)",
        "swish(beta=True)",
        "swish(beta=1_0)",
        "smelu(beta=0)",
        "smelu(beta=-1)",
        "gsmelu(alpha=0)",
        "gsmelu(beta=-2)",
        "swish(gamma=1)",
        "swish(beta=1,beta=2)",
        "swish(beta=1,)",
        "swish(,beta=1)",
        "swish(beta=1)x",
        "swish((beta=1))",
        "swish)",
        "swish beta=1",
        "(beta=1)",
        "relu gelu",
        "relu,gelu",
        "Relu",
        "GELU",
        "smelu-05",
        "swish(=1)",
        "swish(beta=1\n)",
    ],
)
def test_parse_malformed_raises_one_line(spec: str) -> None:
    with pytest.raises(ActivationError) as info:
        parse_activation(spec)
    assert "\n" not in str(info.value)
    assert str(info.value)
    with pytest.raises(ActivationError):
        build_activation(spec)  # never falls back to a default


def test_error_types_and_messages() -> None:
    assert issubclass(ActivationError, ValueError) and issubclass(ActivationError, NanoactError)
    with pytest.raises(ActivationError) as info:
        build_activation("nosuch")
    message = str(info.value)
    assert "'nosuch'" in message
    assert ", ".join(activation_names()) in message  # all valid names, sorted
    with pytest.raises(ActivationError, match="case-sensitive"):
        get_spec("Relu")
    with pytest.raises(ActivationError, match="beta"):
        parse_activation("smelu(beta=0)")
    with pytest.raises(ActivationError, match="takes no parameters"):
        parse_activation("relu(beta=1)")
    with pytest.raises(ActivationError, match="split_layer_spec"):
        parse_activation("relu,gelu")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("smelu(beta=0.5)", "smelu(beta=0.5)"),
        ("  smelu( beta = .50 )", "smelu(beta=0.5)"),
        ("relu", "relu"),
        ("relu()", "relu"),
        ("swish", "swish(beta=1.0)"),
        ("swish(beta=1)", "swish(beta=1.0)"),
        ("swish(beta=-0)", "swish(beta=0.0)"),
        ("swish(beta=1e-5)", "swish(beta=1e-05)"),
        ("smelu_05", "smelu_05"),
        ("gsmelu(t=0.1, alpha=2)", "gsmelu(alpha=2.0, beta=1.0, g_neg=0.0, g_pos=1.0, t=0.1)"),
    ],
)
def test_canonical(spec: str, expected: str) -> None:
    assert canonical(spec) == expected
    assert canonical(expected) == expected  # idempotent
    assert parse_activation(expected) == parse_activation(spec)  # round trip


def test_split_layer_spec() -> None:
    assert split_layer_spec("relu,gelu") == ["relu", "gelu"]
    assert split_layer_spec("relu") == ["relu"]
    assert split_layer_spec(" gsmelu(alpha=1, beta=2) , relu ") == ["gsmelu(alpha=1, beta=2)", "relu"]
    assert split_layer_spec("smelu(beta=0.5),swish(beta=2),identity") == [
        "smelu(beta=0.5)",
        "swish(beta=2)",
        "identity",
    ]
    for bad in ["", " ", "relu,,gelu", "relu,", ",relu", "gsmelu(alpha=1", "relu)", "relu),(gelu"]:
        with pytest.raises(ActivationError):
            split_layer_spec(bad)


# ----------------------------------------------------------------------------------------------------------------
# module inspection


def test_is_activation_module() -> None:
    for cls in (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Mish, nn.LeakyReLU, nn.ELU, nn.Hardtanh):
        assert is_activation_module(cls())
    assert is_activation_module(nn.Softmax(dim=-1))
    for name in activation_names():
        assert is_activation_module(build_activation(name))
    for other in (nn.Identity(), nn.Linear(2, 2), nn.LayerNorm(2), nn.Sequential(), nn.MultiheadAttention(4, 2)):
        assert not is_activation_module(other)


def test_activation_modules_and_expected() -> None:
    model = nn.Sequential(nn.Linear(4, 8), build_activation("smelu(beta=0.5)"), nn.Linear(8, 4))
    assert activation_modules(model) == ["SmeLU(beta=0.5)"]
    deep = nn.Sequential(
        nn.Linear(2, 2), nn.GELU(), nn.Sequential(nn.Identity(), nn.GELU(), build_activation("identity"))
    )
    assert activation_modules(deep) == ["GELU(approximate='none')", "GELU(approximate='none')", "LinearActivation"]
    assert activation_modules(nn.Linear(2, 2)) == []
    assert expected_modules("relu,smelu_05,smelu(beta=0.5)") == {"ReLU", "SmeLU(beta=0.5)"}
    assert expected_modules("gelu") == {"GELU(approximate='none')"}
    with pytest.raises(ActivationError):
        expected_modules("relu,nosuch")


# ----------------------------------------------------------------------------------------------------------------
# registration (the public extension point)


class _Cube(nn.Module):
    def __init__(self, k: float = 1.0) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * x**3

    def extra_repr(self) -> str:
        return f"k={self.k!r}"


class _Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.inner(x)


@pytest.mark.usefixtures("clean_registry")
def test_register_custom_activation() -> None:
    register_activation("cube", _Cube, params={"k": 1.0}, doc="k x^3")
    assert "cube" in activation_names()
    assert activation_names() == sorted(activation_names())
    m = build_activation("cube(k=2)")
    assert isinstance(m, _Cube) and m.k == 2.0
    assert canonical("cube( k=2 )") == "cube(k=2.0)"
    assert is_activation_module(m)
    model = nn.Sequential(nn.Linear(3, 3), m, nn.Linear(3, 3))
    assert activation_modules(model) == ["_Cube(k=2.0)"]
    assert expected_modules("cube(k=2),relu") == {"_Cube(k=2.0)", "ReLU"}
    with pytest.raises(ActivationError, match="already registered"):
        register_activation("cube", _Cube, params={"k": 1.0})
    register_activation("cube", _Cube, params={"k": 3.0}, overwrite=True)
    assert parse_activation("cube") == ("cube", {"k": 3.0})
    with pytest.raises(ActivationError, match="already registered"):
        register_activation("relu", nn.Tanh)
    unregister_activation("cube")
    assert "cube" not in activation_names()
    with pytest.raises(ActivationError):
        unregister_activation("relu")


@pytest.mark.usefixtures("clean_registry")
def test_register_function_factory_records_built_class() -> None:
    # a plain function factory: its class becomes known once built
    register_activation("wrapped", lambda: _Wrapped())
    assert not is_activation_module(_Wrapped())
    m = build_activation("wrapped")
    assert is_activation_module(m)
    # the wrapper's own Sigmoid is part of it, not a separate activation
    assert activation_modules(nn.Sequential(nn.Linear(2, 2), m)) == ["_Wrapped"]


@pytest.mark.usefixtures("clean_registry")
def test_register_validation() -> None:
    for bad in ["Cube", "1cube", "cu-be", "", "cube(k=1)"]:
        with pytest.raises(ActivationError, match="invalid activation name"):
            register_activation(bad, _Cube)
    with pytest.raises(ActivationError):
        register_activation("cube", _Cube, params={"k": float("inf")})
    with pytest.raises(ActivationError):
        register_activation("cube", "not callable")  # type: ignore[arg-type]

    def positive_k(p: object) -> None:
        if p["k"] <= 0:  # type: ignore[index]
            raise ValueError("k must be > 0")

    register_activation("cube", _Cube, params={"k": 1.0}, validate=positive_k)
    with pytest.raises(ActivationError, match="k must be > 0"):
        parse_activation("cube(k=-1)")
    register_activation("notmodule", lambda: 42)
    with pytest.raises(ActivationError, match="not an nn.Module"):
        build_activation("notmodule")


def test_registry_was_restored() -> None:
    assert not {"cube", "wrapped", "notmodule"} & set(activation_names())  # the fixture cleaned up
