"""Register your own activation from your own code, without editing nanoact, and sweep it.

    python examples/custom_activation.py [--workdir DIR] [--corpus PATH] [--workers N]

It registers ``sqrelu`` (squared ReLU, Primer: So et al. 2021) next to the built-ins, defines a small sweep in
Python (relu vs sqrelu x 2 seeds on a tiny minigpt), runs it through ``nanoact.sweep.run`` into an MLflow store
under ``--workdir`` and prints each cell's final validation loss. Run it twice: the second run trains nothing.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn as nn

from nanoact.activations import register_activation


class SquaredReLU(nn.Module):
    """relu(x)^2"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


# At module level, so that worker processes (which re-import this file) know the name too.
try:
    register_activation("sqrelu", SquaredReLU, doc="squared ReLU (Primer)")
except ValueError:  # already registered in this process
    pass


def main() -> None:
    from nanoact import sweep
    from nanoact.config import RunConfig, apply_overrides

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=".", help="where mlruns/ goes")
    ap.add_argument("--corpus", default="tinyshakespeare", help="corpus name or text file")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    os.chdir(args.workdir)

    base = apply_overrides(RunConfig(), {
        "model.name": "minigpt", "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
        "model.block_size": 32, "train.max_iters": args.iters, "train.eval_interval": args.iters // 2,
        "train.eval_iters": 4, "train.batch_size": 8, "train.lr": 3e-3, "train.warmup_iters": 5,
        "train.lr_decay_iters": args.iters, "eval.n_contexts": 128, "data.corpus": args.corpus,
    })
    spec = sweep.SweepSpec(
        name="custom-activation", base=base,
        grid={"model.activation": ["relu", "sqrelu"], "train.seed": [1, 2]},
        description="relu vs a user-registered squared ReLU",
    )
    result = sweep.run(spec, sweep.SweepOptions(workers=args.workers))
    print(f"trained {result.trained} cell(s) in this invocation")
    for s in result.states:
        print(f"{s.cell.key}: {s.state}, final val loss {s.final_val_loss:.4f}, run {s.run_id}")


if __name__ == "__main__":
    main()
