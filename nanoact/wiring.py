"""The run-start check that the configured activation is really what runs (a model that maps an unknown activation
name to a default ReLU silently runs ReLU for every "activation"; this makes that impossible).

Two independent checks, both cheap:
  * the activation modules found in ``model.modules()`` are exactly what the configured spec builds;
  * a probe model with the same seed and a *different* activation gives different logits on a fixed batch,
    so the activation is on the forward path and not a dead module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from nanoact import activations
from nanoact.config import ModelConfig
from nanoact.errors import NanoactError


class WiringError(NanoactError):
    """The model does not run the configured activation."""


@dataclass
class WiringCheck:
    ok: bool
    reason: str
    found: list[str]
    expected: set[str]


def contrast_spec(spec: str) -> str:
    """An activation that must change the logits if ``spec`` is wired in."""
    return "relu" if set(activations.split_layer_spec(spec)) == {"identity"} else "identity"


@torch.no_grad()
def check_model(model: torch.nn.Module, cfg: ModelConfig, vocab_size: int, seed: int) -> WiringCheck:
    from nanoact.models import build_model

    found = activations.activation_modules(model)
    expected = activations.expected_modules(cfg.activation)
    if not found:
        return WiringCheck(False, "no activation module found in the model", found, expected)
    if set(found) != expected:
        return WiringCheck(False, f"found {sorted(set(found))}, expected {sorted(expected)}", found, expected)
    probe_cfg = dataclasses.replace(cfg, activation=contrast_spec(cfg.activation))
    probe = build_model(probe_cfg, vocab_size, seed=seed)
    device = next(model.parameters()).device
    probe.to(device)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(vocab_size, (2, min(cfg.block_size, 16)), generator=g).to(device)
    was_training = model.training
    model.eval()
    probe.eval()
    a, _ = model(idx)
    b, _ = probe(idx)
    model.train(was_training)
    if torch.equal(a, b):
        return WiringCheck(
            False, f"logits are identical to a {probe_cfg.activation!r} model with the same seed", found, expected
        )
    return WiringCheck(True, "", found, expected)
