"""Does a run's result depend on the CPU thread count? Trains a short minigpt run per activation at 1 and at 2
intra-op threads (same seed, same config) and prints the final val losses and whether they are bit-identical.

    python scripts/thread_bits.py [--iters 60] [activation ...]

On PyTorch 2.13's CPU build: relu differs (2.789058 vs 2.788806 after 60 iterations), smelu_05 differs in the
7th digit of the train loss, gelu and swish are identical. A sweep with N workers gives each cores // N threads,
so the run's ``nanoact.device`` tag records the count, and the report notes when one analysis mixes counts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
from dataclasses import replace


def _final(args: tuple[str, int, int]) -> dict[str, float]:
    from nanoact.config import RunConfig
    from nanoact.trainer import train

    act, threads, iters = args
    cfg = RunConfig()
    cfg = replace(cfg, model=replace(cfg.model, name="minigpt", activation=act),
                  train=replace(cfg.train, max_iters=iters, eval_interval=iters, eval_iters=2, threads=threads, seed=1,
                                predictions=False, checkpoint=False),
                  eval=replace(cfg.eval, n_contexts=64))
    m = train(cfg).metrics
    return {k: m[k] for k in ("final/train_loss", "final/val_loss")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("activations", nargs="*", default=["relu", "gelu", "swish", "smelu_05"])
    ap.add_argument("--iters", type=int, default=60)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")  # a fresh process per run: torch's thread pool is set once per process
    print(f"{'activation':10s} {'val loss, 1 thread':>20s} {'val loss, 2 threads':>20s}  bit-identical")
    for act in a.activations:
        with ctx.Pool(1) as pool:
            one = pool.map(_final, [(act, 1, a.iters)])[0]
        with ctx.Pool(1) as pool:
            two = pool.map(_final, [(act, 2, a.iters)])[0]
        print(f"{act:10s} {one['final/val_loss']:20.9f} {two['final/val_loss']:20.9f}  {'yes' if one == two else 'no'}")


if __name__ == "__main__":
    main()
