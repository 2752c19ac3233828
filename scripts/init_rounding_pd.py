"""How far float rounding alone moves pd_tv at step 0: the floor of the near-identity guard.

Two runs with the same seed start from the same weights (unless the activation changes the parameter shapes, as
a gated one does); if the activation were not applied, their step-0 predictions would differ only by rounding
(a nondeterministic forward pass). This prints pd_tv between one initialised model's predictions computed in
float64 and in float32, and with bfloat16 autocast and in float32 (a bound on rounding: a whole dtype change),
each stored as the tracker stores them (float16 probabilities), on 256 random contexts: every model at the zoo's
size, and nanotransformer at the size of `full`. The guard's floors (``nanoact.analysis.guards.INIT_FLOORS``) must
sit above these: float64 vs float32 bounds float32 rounding, bfloat16 vs float32 bounds bfloat16 rounding.

    python scripts/init_rounding_pd.py
"""

from __future__ import annotations

import torch

from nanoact.analysis.guards import INIT_FLOORS
from nanoact.config import ModelConfig
from nanoact.models import build_model, model_names

ZOO = dict(n_layer=2, n_head=4, n_embd=128, block_size=128)
FULL = dict(n_layer=6, n_head=6, n_embd=384, block_size=256)


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    p, q = p.to(torch.float16).double(), q.to(torch.float16).double()  # as stored (float16 probabilities)
    return (0.5 * (p - q).abs().sum(-1)).mean().item()


def measure(name: str, size: dict, idx: torch.Tensor) -> tuple[float, float]:
    model = build_model(ModelConfig(name=name, activation="relu", **size), 65, seed=42).eval()
    with torch.no_grad():
        p32 = torch.softmax(model(idx)[0][:, -1], -1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            pbf = torch.softmax(model(idx)[0][:, -1].float(), -1)
        p64 = torch.softmax(model.double()(idx)[0][:, -1], -1)
    return tv(p64, p32), tv(pbf, p32)


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cases = [(name, "zoo", ZOO) for name in model_names()] + [("nanotransformer", "full", FULL)]
    worst32 = worst16 = 0.0
    for name, label, size in cases:
        idx = torch.randint(65, (256, size["block_size"]), generator=g)
        a, b = measure(name, size, idx)
        worst32, worst16 = max(worst32, a), max(worst16, b)
        print(f"{name:16s} {label:4s}  float64 vs float32 {a:.2e}   bfloat16 autocast vs float32 {b:.2e}")
    for dtype, worst in (("float32", worst32), ("bfloat16", worst16)):
        floor = INIT_FLOORS[dtype]
        above = f"{floor / worst:.0f}x above" if worst > 0 else "above"
        print(f"{dtype}: largest rounding {worst:.2e}; the guard's floor {floor:g} ({above})")


if __name__ == "__main__":
    main()
