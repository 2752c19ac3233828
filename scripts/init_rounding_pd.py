"""How far float rounding alone moves pd_tv at step 0: the floor of the near-identity guard.

Two runs with the same seed start from the same weights; if the activation were not applied, their step-0
predictions would differ only by rounding (a nondeterministic forward pass). This prints pd_tv between the same
initialised model's predictions computed in float64 and float32, and with bfloat16 autocast and float32 (a bound
on rounding: a whole dtype change), on 256 random contexts, for each model of the zoo. The guard's floor
(``nanoact.analysis.guards.INIT_FLOOR``) must sit above these.

    python scripts/init_rounding_pd.py
"""

from __future__ import annotations

import torch

from nanoact.analysis.guards import INIT_FLOOR
from nanoact.config import ModelConfig
from nanoact.models import build_model, model_names


def tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return (0.5 * (p - q).abs().sum(-1)).mean().item()


def main() -> None:
    torch.set_num_threads(1)
    idx = torch.randint(65, (256, 128), generator=torch.Generator().manual_seed(0))
    worst = 0.0
    for name in model_names():
        cfg = ModelConfig(name=name, activation="relu", n_layer=2, n_head=4, n_embd=128, block_size=128)
        model = build_model(cfg, 65, seed=42).eval()
        with torch.no_grad():
            p32 = torch.softmax(model(idx)[0][:, -1], -1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                pbf = torch.softmax(model(idx)[0][:, -1].float(), -1)
            p64 = torch.softmax(model.double()(idx)[0][:, -1], -1).float()
        a, b = tv(p64, p32), tv(pbf, p32)
        worst = max(worst, a, b)
        print(f"{name:16s} float64 vs float32 {a:.2e}   bfloat16 autocast vs float32 {b:.2e}")
    print(f"largest {worst:.2e}; the guard's floor INIT_FLOOR = {INIT_FLOOR:g} ({INIT_FLOOR / worst:.1f}x above)")


if __name__ == "__main__":
    main()
