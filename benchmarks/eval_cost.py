"""What the prediction evals cost in a ``cpu`` cell (nanoGPT's CPU recipe, minigpt 4x128, block 64, batch 12,
2000 iterations, an eval every 250, 2048 evaluation contexts), before and after making them cheaper.

Each round runs two fresh processes back to back, so a busy machine distorts them alike:

- ``before``: the prediction eval as it was (the full forward pass over 512 contexts at a time under
  ``no_grad``, last position sliced afterwards) in a process with glibc's default allocator settings;
- ``now``: ``nanoact.trainer.predict`` in a process with what the trainer applies on CPU
  (``nanoact.runtime.keep_freed_memory``: freed memory kept for reuse, not faulted in afresh).

Each process times one prediction eval (after a warm-up one), ``--iters`` training iterations (the trainer's own
timing, evals excluded) and one eval step's loss evals (the trainer's ``time/loss_evals_s`` over that short run's
two eval steps), and so the share of the 9 prediction evals in a 2000-iteration cell,
share = 9 * predict / (2000 * iter + 9 * (predict + loss evals)). Prints medians over rounds, the ratio, and
whether the probabilities are bit-identical (and identical after the float16 cast of the stored artifact).

With ``--full-cell`` it also trains one real ``cpu`` cell (about two minutes on 2 idle cores) in a ``now``
process and reports the measured share of its prediction evals (the run's ``time/prediction_evals_s`` over
``time/wall_s``).

    python benchmarks/eval_cost.py [--repeats 5] [--iters 100] [--threads 2] [--full-cell]

Other jobs on the machine distort absolute times; the ratios are what to quote.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CPU_CELL = {"train.max_iters": 2000, "train.eval_interval": 250, "eval.n_contexts": 2048, "train.device": "cpu"}


def predict_before(model, eval_set):
    """The prediction eval as it was before: full forward, 512 contexts at a time, last position sliced."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(eval_set), 512):
            logits, _ = model(eval_set.contexts[i : i + 512])
            out.append(torch.softmax(logits[:, -1, :].float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def setup(threads: int):
    import torch

    from nanoact.config import RunConfig, apply_overrides
    from nanoact.data import CharDataset
    from nanoact.models import build_model

    torch.set_num_threads(threads)
    cfg = apply_overrides(RunConfig(), {**CPU_CELL, "train.threads": threads})
    data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    eval_set = data.eval_set(cfg.eval.n_contexts, cfg.model.block_size, cfg.eval.seed)
    model = build_model(cfg.model, data.vocab.size, seed=cfg.train.seed)
    return cfg, data, eval_set, model


def child(which: str, threads: int, iters: int, probs_out: str, full_cell: bool) -> dict[str, float]:
    """One process's timings; ``which`` is ``before`` or ``now``."""
    import numpy as np
    import torch

    from nanoact import runtime, trainer
    from nanoact.config import apply_overrides

    if which == "now":
        runtime.keep_freed_memory()  # what trainer.train does first on CPU
    else:  # the trainer must not apply it either
        runtime.keep_freed_memory = lambda: False
    cfg, data, eval_set, model = setup(threads)
    model.eval()
    cpu = torch.device("cpu")
    run = (lambda: predict_before(model, eval_set)) if which == "before" else (
        lambda: trainer.predict(model, eval_set, cpu, contextlib.nullcontext))
    run()  # warm-up: the first call pays one-off costs that a cell's 9 evals share
    t0 = time.perf_counter()
    probs = run()
    t_pred = time.perf_counter() - t0
    np.save(probs_out, probs)
    short = apply_overrides(cfg, {"train.max_iters": iters, "train.eval_interval": iters,
                                  "train.lr_decay_iters": max(iters, cfg.train.warmup_iters),
                                  "train.predictions": False, "train.checkpoint": False})
    short_metrics = trainer.train(short, data=data).metrics  # eval steps at 0 and iters
    out = {"predict": t_pred, "iter": short_metrics["time/train_s"] / iters,
           "loss_evals": short_metrics["time/loss_evals_s"] / 2}
    if full_cell:
        cell = trainer.train(apply_overrides(cfg, {"train.checkpoint": False}), data=data).metrics
        out.update(cell_predict=cell["time/prediction_evals_s"], cell_wall=cell["time/wall_s"])
    return out


def share(r: dict[str, float]) -> float:
    """Percent of a cpu cell (2000 iterations, 9 eval steps) spent in prediction evals, from one process."""
    n_evals = CPU_CELL["train.max_iters"] // CPU_CELL["train.eval_interval"] + 1
    pred = n_evals * r["predict"]
    return 100 * pred / (CPU_CELL["train.max_iters"] * r["iter"] + n_evals * r["loss_evals"] + pred)


def spawn(which: str, args, probs_out: Path, full_cell: bool = False) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", which, "--threads", str(args.threads), "--iters", str(args.iters),
           "--probs-out", str(probs_out)] + (["--full-cell"] if full_cell else [])
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=100, help="training iterations per timing of the train step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-cell", action="store_true", help="also train one real cpu cell (about two minutes)")
    ap.add_argument("--child", choices=("before", "now"), help=argparse.SUPPRESS)
    ap.add_argument("--probs-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.iters, args.probs_out, args.full_cell)))
        return
    import numpy as np

    rounds: list[dict[str, dict[str, float]]] = []
    identical = {"bit": True, "float16": True}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            rnd = {which: spawn(which, args, Path(tmp, f"{which}.npy")) for which in ("before", "now")}
            p_b, p_n = (np.load(Path(tmp, f"{which}.npy")) for which in ("before", "now"))
            identical["bit"] &= bool(np.array_equal(p_b, p_n))
            identical["float16"] &= bool(np.array_equal(p_b.astype(np.float16), p_n.astype(np.float16)))
            rounds.append(rnd)
            print(f"round {i + 1}/{args.repeats}: predict before {rnd['before']['predict']:.3f} s, now "
                  f"{rnd['now']['predict']:.3f} s; share before {share(rnd['before']):.1f}%, now "
                  f"{share(rnd['now']):.1f}%", flush=True)
        med = {w: {k: statistics.median(r[w][k] for r in rounds) for k in rounds[0][w]} for w in ("before", "now")}
        ratios = [r["before"]["predict"] / r["now"]["predict"] for r in rounds]
        print(f"prediction eval, {CPU_CELL['eval.n_contexts']} contexts, median of {args.repeats} interleaved "
              f"rounds: before {med['before']['predict']:.3f} s, now {med['now']['predict']:.3f} s, median "
              f"ratio {statistics.median(ratios):.2f}x; bit-identical {identical['bit']}, float16-identical "
              f"{identical['float16']}")
        for w in ("before", "now"):
            shares = sorted(share(r[w]) for r in rounds)
            print(f"{w:6s}: train step {1000 * med[w]['iter']:.1f} ms/iter, loss evals {med[w]['loss_evals']:.3f} "
                  f"s per eval step; prediction evals {statistics.median(shares):.1f}% of a cpu cell (median of "
                  f"rounds; range {shares[0]:.1f}-{shares[-1]:.1f}%)")
        if args.full_cell:
            r = spawn("now", args, Path(tmp, "cell.npy"), full_cell=True)
            print(f"one real cpu cell (now): {r['cell_wall']:.1f} s wall, prediction evals {r['cell_predict']:.1f} s "
                  f"= {100 * r['cell_predict'] / r['cell_wall']:.1f}% (the run's time/prediction_evals_s)")


if __name__ == "__main__":
    main()
