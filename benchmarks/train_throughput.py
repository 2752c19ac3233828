"""Training throughput of nanoact's trainer on nanoGPT's CPU recipe (minigpt, 4x128, block 64, batch 12).

Compares, interleaved in one process, the full trainer (``nanoact.trainer.train`` with a null tracker, evals
excluded from its timing) against a bare baseline loop over the same model: forward, backward, clip, AdamW
step, nothing else. Prints the median ms/iter and tokens/s of each and their ratio. nanoGPT's own train.py
measured 30.6 ms/iter (about 25k tokens/s) on this 2-core machine.

    python benchmarks/train_throughput.py [--iters 200] [--repeats 5] [--threads 2]

Other jobs on the machine distort timings: run it when the machine is idle and say so when quoting.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nanoact.config import RunConfig, apply_overrides
from nanoact.data import CharDataset
from nanoact.models import build_model
from nanoact.trainer import configure_optimizer, get_lr, train


def bare_loop(cfg: RunConfig, data: CharDataset, iters: int) -> float:
    """ms/iter of the minimal loop (after 10 warm-up iterations)."""
    m, t = cfg.model, cfg.train
    model = build_model(m, data.vocab.size, seed=t.seed)
    opt = configure_optimizer(model, t, torch.device("cpu"))
    g = torch.Generator().manual_seed(t.seed)
    torch.manual_seed(t.seed)
    for it in range(iters + 10):
        if it == 10:
            t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = get_lr(it, t)
        x, y = data.get_batch("train", t.batch_size, m.block_size, g)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return 1000 * (time.perf_counter() - t0) / iters


def trainer_loop(cfg: RunConfig, data: CharDataset, iters: int) -> float:
    """ms/iter as the trainer measures it (eval steps excluded)."""
    cfg = apply_overrides(cfg, {"train.max_iters": iters, "train.eval_interval": iters,
                                "train.predictions": False, "train.checkpoint": False})
    res = train(cfg, data=data)
    return 1000 * res.metrics["time/train_s"] / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig()  # nanoGPT's CPU recipe on minigpt
    cfg.train.device = "cpu"
    data = CharDataset.from_config(cfg.data.corpus)
    tokens = cfg.train.batch_size * cfg.model.block_size
    base, ours = [], []
    for r in range(args.repeats):
        base.append(bare_loop(cfg, data, args.iters))
        ours.append(trainer_loop(cfg, data, args.iters))
        print(f"repeat {r + 1}/{args.repeats}: bare {base[-1]:.2f} ms/iter, nanoact {ours[-1]:.2f} ms/iter")
    mb, mo = statistics.median(base), statistics.median(ours)
    print(f"tokens/iter: {tokens} ({cfg.train.batch_size}x{cfg.model.block_size}), threads: {args.threads}")
    print(f"bare loop : median {mb:.2f} ms/iter, {1000 * tokens / mb:,.0f} tokens/s")
    print(f"nanoact   : median {mo:.2f} ms/iter, {1000 * tokens / mo:,.0f} tokens/s")
    print(f"ratio nanoact/bare ms/iter: {mo / mb:.3f}")
    print(f"vs nanoGPT train.py reference on this machine (30.6 ms/iter): {mo / 30.6:.3f}")


if __name__ == "__main__":
    main()
