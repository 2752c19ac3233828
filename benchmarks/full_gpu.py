"""One cell of the `full` experiment on a CUDA GPU: ms/iter, tokens/s, MFU, one prediction eval, the grid's time.

Trains `full`'s first cell (nanotransformer 6x384, block 256, batch 64, relu, seed 42) with the real trainer and
its defaults (``train.dtype=auto``: bf16 autocast where the GPU has native bf16; fused AdamW) for ``--iters``
iterations, with eval steps at 0, iters/2 and iters (loss evals of 20 batches per split and a prediction eval of
the shipped 4,096 contexts at block 256, as in `full`). Prints:

- ms/iter and tokens/s over the second half (the first includes CUDA's warm-up),
- MFU: 6 N + 12 L d T FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B) over the device's stated dense
  peak for the dtype used (table below, from NVIDIA's datasheets; ``--peak-tflops`` for other devices),
- the cost of one prediction eval and one loss eval (means over the three eval steps),
- the projected minutes of one `full` cell (5,000 iterations, 11 eval steps) and of the 9-cell grid on one GPU.

    python benchmarks/full_gpu.py [--iters 200] [--compile] [--peak-tflops 312]

Without CUDA it prints one error line and exits with code 2. Its figures are not yet measured in this project.
"""

from __future__ import annotations

import argparse
import sys

# (name substring, dtype) -> dense tensor-core peak, TFLOP/s (NVIDIA datasheets; SXM variants unless named)
PEAK_TFLOPS = {
    ("H200", "bfloat16"): 989.0, ("H100 PCIe", "bfloat16"): 756.0, ("H100", "bfloat16"): 989.0,
    ("A100", "bfloat16"): 312.0, ("L40S", "bfloat16"): 362.0, ("A10", "bfloat16"): 125.0, ("L4", "bfloat16"): 121.0,
    ("H100", "float32"): 67.0, ("A100", "float32"): 19.5,
}


def stated_peak(name: str, dtype: str) -> float | None:
    """The first table entry whose name is in the device's name (most specific entries come first)."""
    for (key, dt), peak in PEAK_TFLOPS.items():
        if key in name and dt == dtype:
            return peak * 1e12
    return None


def measure(device: str, iters: int, compile_: bool = False, peak_tflops: float | None = None,
            overrides: tuple[str, ...] = ()) -> list[str]:
    """Train `full`'s first cell for ``iters`` iterations on ``device`` and return the lines to print.
    ``overrides`` (``key=value``) exist for the test that runs this code on a CPU at toy size."""
    import torch

    from nanoact import planning
    from nanoact.data import CharDataset
    from nanoact.models import build_model
    from nanoact.sweep import load_sweep
    from nanoact.trainer import resolve_dtype, train

    spec = load_sweep("full", overrides=[f"train.max_iters={iters}", f"train.eval_interval={iters // 2}",
                                         "train.checkpoint=false", f"train.compile={str(compile_).lower()}",
                                         f"train.device={device}", *overrides])
    cfg = spec.cell_config(spec.cells()[0])
    shipped = load_sweep("full").base.train
    dev = torch.device(device)
    dtype = resolve_dtype(cfg.train.dtype, dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else device
    data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    res = train(cfg, data=data)
    m = res.metrics
    tokens = cfg.train.batch_size * cfg.model.block_size
    tps = res.history[-1]["tokens_per_s"]  # the second half's window
    s_iter = tokens / tps
    attn = planning.attention_width(build_model(cfg.model, data.vocab.size, seed=0))
    flops_iter = planning.train_flops_per_token(res.n_params, attn, cfg.model.block_size) * tokens
    peak = peak_tflops * 1e12 if peak_tflops else stated_peak(name, dtype)
    n_evals = len(res.history)
    pred_s, loss_s = m["time/prediction_evals_s"] / n_evals, m["time/loss_evals_s"] / n_evals
    other_s = m["time/wall_s"] - m["time/train_s"] - m["time/loss_evals_s"] - m["time/prediction_evals_s"]
    full_evals = planning.eval_steps(shipped.max_iters, shipped.eval_interval)
    cell_s = shipped.max_iters * s_iter + full_evals * (pred_s + loss_s) + other_s
    mfu = (f"MFU: {flops_iter / s_iter / peak:.1%} of {peak / 1e12:.0f} TFLOP/s ({flops_iter / 1e12:.3f} TFLOP/iter)"
           if peak else f"MFU: n/a, no stated {dtype} peak for {name!r} in the table; pass --peak-tflops")
    return [
        f"device: {name}; dtype {dtype} (train.dtype={cfg.train.dtype}); compile {compile_}; torch {torch.__version__}",
        f"model: {res.n_params:,} parameters; batch {cfg.train.batch_size} x block {cfg.model.block_size} = "
        f"{tokens:,} tokens/iter; {iters} iterations, timed over the last {iters // 2}",
        f"training: {1000 * s_iter:.2f} ms/iter, {tps:,.0f} tokens/s",
        mfu,
        f"one prediction eval ({cfg.eval.n_contexts:,} contexts at block {cfg.model.block_size}): {pred_s:.2f} s; "
        f"one loss eval (2 x {cfg.train.eval_iters} batches): {loss_s:.2f} s (means over {n_evals} eval steps)",
        f"projected: one `full` cell ({shipped.max_iters} iterations, {full_evals} eval steps) {cell_s / 60:.1f} min; "
        f"the 9-cell grid on this device, one worker: {9 * cell_s / 60:.1f} min",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="training iterations (even, >= 20)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile the model (train.compile=true)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak for MFU, if not in the table")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: benchmarks/full_gpu.py needs a CUDA GPU, and torch.cuda.is_available() is False here",
              file=sys.stderr)
        return 2
    if args.iters < 20 or args.iters % 2:
        print("error: --iters must be an even number >= 20", file=sys.stderr)
        return 2
    for line in measure("cuda", args.iters, args.compile, args.peak_tflops):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
