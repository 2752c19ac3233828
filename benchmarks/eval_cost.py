"""What the prediction evals cost in a ``cpu`` cell (nanoGPT's CPU recipe, minigpt 4x128, block 64, batch 12,
2000 iterations, an eval every 250, 2048 evaluation contexts), before and after making them cheaper.

``--repeats`` rounds, each timing back to back: the prediction eval as it was (the full forward pass over 512
contexts at a time under ``no_grad``, last position sliced afterwards), as it is (``nanoact.trainer.predict``),
``--iters`` training iterations (the trainer's own timing, evals excluded) and one eval step's loss evals.
Prints the median seconds of each eval, their ratio, whether the probabilities are bit-identical (and identical
after the float16 cast of the stored artifact), and per round the share of the 9 prediction evals in a
2000-iteration cell, share = 9 * predict / (2000 * iter + 9 * (predict + loss evals)), as the median over rounds.

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


def one_round(model, eval_set, cfg: RunConfig, data: CharDataset, iters: int, batches) -> dict[str, float]:
    """One round of every timing, back to back, so a busy machine distorts them alike."""
    model.eval()
    t_b, p_b = timed(predict_before, model, eval_set)
    t_n, p_n = timed(predict_now, model, eval_set)
    short = apply_overrides(cfg, {"train.max_iters": iters, "train.eval_interval": iters,
                                  "train.lr_decay_iters": max(iters, cfg.train.warmup_iters),
                                  "train.predictions": False, "train.checkpoint": False})
    per_iter = trainer.train(short, data=data).metrics["time/train_s"] / iters
    t0 = time.perf_counter()
    for split in ("train", "val"):
        trainer.evaluate(model, batches[split], torch.device("cpu"), contextlib.nullcontext)
    loss_evals = time.perf_counter() - t0
    return {"before": t_b, "now": t_n, "iter": per_iter, "loss_evals": loss_evals,
            "bit_identical": float(np.array_equal(p_b, p_n)),
            "float16_identical": float(np.array_equal(p_b.astype(np.float16), p_n.astype(np.float16)))}


def share(r: dict[str, float], which: str, cfg: RunConfig) -> tuple[float, float, float, float]:
    """(cell seconds, train seconds, loss-eval seconds, prediction-eval seconds) of a cpu cell from one round."""
    n_evals = cfg.train.max_iters // cfg.train.eval_interval + 1
    train_s, loss_s, pred_s = cfg.train.max_iters * r["iter"], n_evals * r["loss_evals"], n_evals * r[which]
    return train_s + loss_s + pred_s, train_s, loss_s, pred_s


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

    m, t = cfg.model, cfg.train
    batches = {split: data.fixed_batches(split, t.eval_iters, t.batch_size, m.block_size, t.eval_batch_seed)
               for split in ("train", "val")}
    rounds = [one_round(model, eval_set, cfg, data, args.iters, batches) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"prediction eval, {len(eval_set)} contexts, median of {args.repeats} interleaved rounds: before "
          f"{med['before']:.3f} s, now {med['now']:.3f} s, ratio {med['before'] / med['now']:.2f}x (median of "
          f"per-round ratios {statistics.median(r['before'] / r['now'] for r in rounds):.2f}x); "
          f"bit-identical {all(r['bit_identical'] for r in rounds)}, "
          f"float16-identical {all(r['float16_identical'] for r in rounds)}")
    print(f"train step {1000 * med['iter']:.1f} ms/iter (trainer timing), loss evals {med['loss_evals']:.3f} s per "
          "eval step")
    for label in ("before", "now"):
        shares = sorted(100 * share(r, label, cfg)[3] / share(r, label, cfg)[0] for r in rounds)
        total, train_s, loss_s, pred_s = share(med, label, cfg)
        print(f"{label:6s}: cpu cell ~{total:.0f} s = train {train_s:.0f} s + loss evals {loss_s:.1f} s + prediction "
              f"evals {pred_s:.1f} s; prediction evals {statistics.median(shares):.1f}% of the cell (median of "
              f"rounds; range {shares[0]:.1f}-{shares[-1]:.1f}%)")
    if args.full_cell:
        pred, wall, n = full_cell(cfg, data)
        print(f"one real cpu cell: {wall:.1f} s wall, {n} prediction evals {pred:.1f} s = {100 * pred / wall:.1f}%")


if __name__ == "__main__":
    main()
