"""What the prediction evals cost in a ``cpu`` cell (nanoGPT's CPU recipe, minigpt 4x128, block 64, batch 12,
2000 iterations, an eval every 250, 2048 evaluation contexts), before and after making them cheaper.

Two measurements, both in one process:

1. Interleaved, ``--repeats`` times: the prediction eval as it was (the full forward pass over 512 contexts at
   a time under ``no_grad``, last position sliced afterwards) and as it is (``nanoact.trainer.predict``). Prints
   the median seconds of each, their ratio, and whether the probabilities are bit-identical (and identical
   after the float16 cast of the stored artifact).
2. The share of a cell: median ms per training iteration (the trainer's own timing, evals excluded) and the
   median cost of the loss evals, combined with (1) for the 9 eval steps of a 2000-iteration cell:
   share = 9 * predict / (2000 * iter + 9 * (predict + loss evals)).

With ``--full-cell`` it also trains one real ``cpu`` cell (about a minute on 2 idle cores) and reports the
measured share of its prediction evals (the trainer's ``predict`` calls timed from outside).

    python benchmarks/eval_cost.py [--repeats 5] [--iters 100] [--threads 2] [--full-cell]

Other jobs on the machine distort absolute times; the ratios are what to quote.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from nanoact import trainer
from nanoact.config import RunConfig, apply_overrides
from nanoact.data import CharDataset
from nanoact.models import build_model

CPU_CELL = {"train.max_iters": 2000, "train.eval_interval": 250, "eval.n_contexts": 2048, "train.device": "cpu"}


@torch.no_grad()
def predict_before(model, eval_set) -> np.ndarray:
    """The prediction eval as it was before: full forward, 512 contexts at a time, last position sliced."""
    out = []
    for i in range(0, len(eval_set), 512):
        logits, _ = model(eval_set.contexts[i : i + 512])
        out.append(torch.softmax(logits[:, -1, :].float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def predict_now(model, eval_set) -> np.ndarray:
    return trainer.predict(model, eval_set, torch.device("cpu"), contextlib.nullcontext)


def timed(fn, *args) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def interleaved(model, eval_set, repeats: int) -> dict[str, float]:
    model.eval()
    times: dict[str, list[float]] = {"before": [], "now": []}
    same = same16 = True
    for _ in range(repeats):
        t_b, p_b = timed(predict_before, model, eval_set)
        t_n, p_n = timed(predict_now, model, eval_set)
        times["before"].append(t_b)
        times["now"].append(t_n)
        same &= bool(np.array_equal(p_b, p_n))
        same16 &= bool(np.array_equal(p_b.astype(np.float16), p_n.astype(np.float16)))
    return {"before": statistics.median(times["before"]), "now": statistics.median(times["now"]),
            "bit_identical": same, "float16_identical": same16}


def iteration_cost(cfg: RunConfig, data: CharDataset, iters: int, repeats: int) -> tuple[float, float]:
    """(median s per training iteration, median s of one eval step's loss evals) at the recipe's shapes."""
    short = apply_overrides(cfg, {"train.max_iters": iters, "train.eval_interval": iters,
                                  "train.lr_decay_iters": max(iters, cfg.train.warmup_iters),
                                  "train.predictions": False, "train.checkpoint": False})
    per_iter = statistics.median(trainer.train(short, data=data).metrics["time/train_s"] / iters
                                 for _ in range(repeats))
    m, t = cfg.model, cfg.train
    model = build_model(m, data.vocab.size, seed=t.seed).eval()
    batches = {s: data.fixed_batches(s, t.eval_iters, t.batch_size, m.block_size, t.eval_batch_seed)
               for s in ("train", "val")}
    losses = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in ("train", "val"):
            trainer.evaluate(model, batches[s], torch.device("cpu"), contextlib.nullcontext)
        losses.append(time.perf_counter() - t0)
    return per_iter, statistics.median(losses)


def full_cell(cfg: RunConfig, data: CharDataset) -> tuple[float, float, int]:
    """Train one real cell; (seconds in predict, wall seconds, number of predict calls)."""
    spent: list[float] = []
    original = trainer.predict

    def counting(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    trainer.predict = counting
    try:
        res = trainer.train(apply_overrides(cfg, {"train.checkpoint": False}), data=data)
    finally:
        trainer.predict = original
    return sum(spent), res.metrics["time/wall_s"], len(spent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100, help="training iterations per timing of the train step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-cell", action="store_true", help="also train one real cpu cell (about a minute)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(RunConfig(), {**CPU_CELL, "train.threads": args.threads})
    data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    eval_set = data.eval_set(cfg.eval.n_contexts, cfg.model.block_size, cfg.eval.seed)
    model = build_model(cfg.model, data.vocab.size, seed=cfg.train.seed)

    r = interleaved(model, eval_set, args.repeats)
    print(f"prediction eval, {len(eval_set)} contexts, median of {args.repeats} interleaved: before "
          f"{r['before']:.3f} s, now {r['now']:.3f} s, ratio {r['before'] / r['now']:.2f}x; "
          f"bit-identical {r['bit_identical']}, float16-identical {r['float16_identical']}")
    per_iter, loss_evals = iteration_cost(cfg, data, args.iters, max(3, args.repeats // 2))
    n_evals = cfg.train.max_iters // cfg.train.eval_interval + 1
    train_s = cfg.train.max_iters * per_iter
    for label in ("before", "now"):
        pred = n_evals * r[label]
        total = train_s + n_evals * loss_evals + pred
        print(f"{label:6s}: cpu cell ~{total:.0f} s = train {train_s:.0f} s + loss evals {n_evals * loss_evals:.1f} s"
              f" + prediction evals {pred:.1f} s -> prediction evals {100 * pred / total:.1f}% of the cell")
    print(f"(train step {1000 * per_iter:.1f} ms/iter, trainer timing; loss evals {loss_evals:.3f} s per eval step)")
    if args.full_cell:
        pred, wall, n = full_cell(cfg, data)
        print(f"one real cpu cell: {wall:.1f} s wall, {n} prediction evals {pred:.1f} s = {100 * pred / wall:.1f}%")


if __name__ == "__main__":
    main()
