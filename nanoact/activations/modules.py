"""nanoact's own activation modules: the linear control, Swish, SmeLU, generalized SmeLU and SwiGLU.

Registered by name in ``nanoact.activations`` (the one registry); import them from there.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nanoact.activations.syntax import check_finite, check_positive


class LinearActivation(nn.Module):
    """f(x) = x: the linear control arm. Its own class so it is never confused with ``nn.Identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Swish(nn.Module):
    """Swish_beta: f(x) = x * sigmoid(beta * x). beta = 1 is SiLU, beta = 0 is x/2, beta -> inf tends to ReLU."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_finite("beta", beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta!r}"


class SmeLU(nn.Module):
    """Smooth ReLU with half-width beta > 0: 0 for x <= -beta, (x+beta)^2/(4 beta) for |x| < beta, x for x >= beta.

    The gradient is 0, (x+beta)/(2 beta), 1 on the three pieces; the value at 0 is beta/4.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_positive("beta", beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.beta
        # Clamping keeps the quadratic finite (and its gradient zero) outside (-b, b); at x <= -b it is exactly 0,
        # so one torch.where suffices and no inf/NaN from an unused branch reaches the gradient.
        quad = (x.clamp(-b, b) + b).square() / (4.0 * b)
        return torch.where(x >= b, x, quad)

    def extra_repr(self) -> str:
        return f"beta={self.beta!r}"


class GeneralizedSmeLU(nn.Module):
    """Generalized SmeLU: slopes g_neg / g_pos, half-widths alpha / beta > 0, offset t (Shamir et al.,
    arXiv:2010.09931).

    With a = (g_pos-g_neg)/(2(alpha+beta)), b = (alpha g_pos + beta g_neg)/(alpha+beta),
    c = t + alpha^2 (g_pos-g_neg)/(2(alpha+beta)), d = t + (alpha-beta)(g_pos-g_neg)/2:
    f(x) = g_neg x + t for x <= -alpha; a x^2 + b x + c for -alpha < x < beta; g_pos x + d for x >= beta.
    g_neg=0, g_pos=1, alpha=beta, t=0 is SmeLU(beta).
    """

    def __init__(
        self,
        g_neg: float = 0.0,
        g_pos: float = 1.0,
        alpha: float = 1.0,
        beta: float = 1.0,
        t: float = 0.0,
    ) -> None:
        super().__init__()
        self.g_neg = check_finite("g_neg", g_neg)
        self.g_pos = check_finite("g_pos", g_pos)
        self.alpha = check_positive("alpha", alpha)
        self.beta = check_positive("beta", beta)
        self.t = check_finite("t", t)
        gn, gp, al, be, t = self.g_neg, self.g_pos, self.alpha, self.beta, self.t
        self._a = (gp - gn) / (2.0 * (al + be))
        self._b = (al * gp + be * gn) / (al + be)
        self._c = t + al * al * (gp - gn) / (2.0 * (al + be))
        self._d = t + (al - be) * (gp - gn) / 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = x.clamp(-self.alpha, self.beta)  # keeps the unused quadratic finite outside (-alpha, beta)
        quad = (self._a * xq + self._b) * xq + self._c
        left = self.g_neg * x + self.t
        right = self.g_pos * x + self._d
        return torch.where(x <= -self.alpha, left, torch.where(x >= self.beta, right, quad))

    def extra_repr(self) -> str:
        return (
            f"g_neg={self.g_neg!r}, g_pos={self.g_pos!r}, alpha={self.alpha!r}, beta={self.beta!r}, t={self.t!r}"
        )


class SwiGLU(nn.Module):
    """Gated activation (Shazeer, arXiv:2002.05202): maps (..., 2h) -> (..., h) as Swish_beta(a) * b.

    The input's last dimension is split into halves ``a, b = x.chunk(2, dim=-1)``. The MLP that uses it
    projects d -> 2h with h = int(8 d / 3) (2/3 of 4d; see :func:`mlp_hidden` and :func:`mlp_in_features`),
    applies SwiGLU, then projects h -> d. That MLP has 3 d h ~= 8 d^2 weights (without biases), like the ungated
    d -> 4d -> d MLP, but parameter counts and initialisation differ slightly from the other arms for the same
    seed (Shazeer, arXiv:2002.05202, keeps the hidden size at 2/3 of 4d for this reason), so report the SwiGLU
    arm as such.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_finite("beta", beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"SwiGLU needs an even last dimension (2h), got shape {tuple(x.shape)}")
        a, b = x.chunk(2, dim=-1)
        return a * torch.sigmoid(self.beta * a) * b

    def extra_repr(self) -> str:
        return f"beta={self.beta!r}"
