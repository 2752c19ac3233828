"""The only training loop. It knows nothing about any particular model: it calls ``logits, loss = model(x, y)``.

One run: resolve the device, load the data, build the model by name, check that the configured activation is
really wired in, then AdamW with nanoGPT's recipe (linear warmup, cosine decay to ``min_lr``, weight decay on
matrices only, grad clipping). Every ``eval_interval`` iterations (and at the end) it measures train/val loss
and top-1 accuracy on fixed batches and, if asked, the predictions on the fixed evaluation set, and hands them
to a ``Tracker``. A NaN or infinite loss stops the run with ``DivergenceError``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from nanoact import runtime, wiring
from nanoact.config import RunConfig, validate
from nanoact.data import CharDataset, EvalSet, corpus_source
from nanoact.errors import ConfigError, DivergenceError, interrupt_reason
from nanoact.events import Evaluated, Evaluating, EventFn, Iterated
from nanoact.models import CharLM, build_model
from nanoact.tracking import NullTracker, Tracker, provenance_tags

@dataclass
class TrainResult:
    """What a finished run measured. ``history`` holds one dict of metrics per eval step."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    n_params: int
    eval_set_sha256: str
    data_sha256: str
    activation_modules: list[str]
    device: str
    iters: int
    tags: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"
    """The dtype it computed in (``train.dtype`` resolved for the device)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use train.device=cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def resolve_dtype(name: str, device: torch.device) -> str:
    """The dtype a run computes in: ``auto`` is ``bfloat16`` (autocast) on a CUDA device with native bf16
    (Ampere or newer), else ``float32``; ``float32`` and ``bfloat16`` are taken as given (``_check_runtime``
    rejects bfloat16 off CUDA). On a CPU ``auto`` is float32, so a CPU run computes exactly what it did when
    float32 was the default."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bfloat16"
    return "float32"


def autocast_for(dtype: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context every forward pass runs in: bf16 autocast, or nothing for float32."""
    if dtype == "bfloat16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def get_lr(it: int, cfg) -> float:
    """nanoGPT's schedule: linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.lr
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    span = cfg.lr_decay_iters - cfg.warmup_iters
    ratio = (it - cfg.warmup_iters) / span if span > 0 else 1.0
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)


def configure_optimizer(model: CharLM, cfg, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (>= 2 dims) only, as nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)


@torch.no_grad()
def evaluate(model: CharLM, batches, device: torch.device, autocast) -> tuple[float, float]:
    """Mean loss and top-1 accuracy over fixed batches."""
    losses, correct, total = [], 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits, loss = model(x, y)
        losses.append(loss.float())
        correct += (logits.argmax(-1) == y).sum()
        total += y.numel()
    return float(torch.stack(losses).mean()), float(correct) / total


@torch.inference_mode()
def predict(model: CharLM, eval_set: EvalSet, device: torch.device, autocast, chunk: int | None = None,
            last_only: bool | None = None) -> np.ndarray:
    """Next-character probabilities (N, V) at the last position of each evaluation context, float32.

    Only the last position is stored, so on CPU the model skips what only the other positions need
    (``CharLM.forward_last``), runs 32 contexts at a time, which keeps activations in cache, and gives each
    core whole chunks of its own (``_chunks_per_core``) instead of splitting every small op across cores.
    The probabilities are bit-identical to the full forward's (tests/test_trainer_eval.py checks them, also
    at the ``cpu`` recipe's size with several threads); benchmarks/eval_cost.py measures the speed. Other
    devices keep the full forward, which is not verified bit-identical there.

    Args:
        chunk: contexts per forward pass (default 32 on CPU, 512 elsewhere). BLAS kernels may round a matrix
            product differently for some row counts, so other chunk sizes are not guaranteed bit-identical.
        last_only: use ``forward_last`` (default: on CPU).
    """
    cpu = device.type == "cpu"
    chunk = chunk or (32 if cpu else 512)
    last = model.forward_last if (cpu if last_only is None else last_only) else (lambda x: model(x)[0][:, -1, :])
    contexts = eval_set.contexts.to(device)  # one transfer, not one per chunk

    def probs(start: int) -> torch.Tensor:
        with torch.inference_mode(), autocast():  # both are thread-local
            logits = last(contexts[start : start + chunk])
        return torch.softmax(logits.float(), dim=-1)

    starts = range(0, len(eval_set), chunk)
    threads = torch.get_num_threads() if cpu else 1
    out = _chunks_per_core(probs, starts, threads) if threads > 1 and len(starts) > 1 else map(probs, starts)
    return torch.cat(list(out)).cpu().numpy()


def _chunks_per_core(fn: Callable[[int], torch.Tensor], starts: range, threads: int) -> list[torch.Tensor]:
    """``fn`` over ``starts`` on ``threads`` Python threads, each running its ops single-threaded.

    A chunk's ops are small (LayerNorm, GELU, a 64x64 attention), and splitting each across cores spends much
    of their time waiting at OpenMP barriers, the more so on a shared machine; whole chunks per core do not.
    Torch ops release the GIL. The process's thread setting is restored afterwards.
    """
    from concurrent.futures import ThreadPoolExecutor

    try:
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(fn, starts))
    finally:
        torch.set_num_threads(threads)


def _check_runtime(cfg: RunConfig, device: torch.device) -> None:
    t = cfg.train
    if resolve_dtype(t.dtype, device) == "bfloat16" and device.type != "cuda":
        raise ConfigError(f"train.dtype=bfloat16 is a CUDA switch, but the device is {device}; use float32")
    if t.tf32 and device.type != "cuda":
        raise ConfigError(f"train.tf32=true is a CUDA switch, but the device is {device}; set it to false")


def default_run_name(cfg: RunConfig) -> str:
    """``minigpt-gelu-s42``; with seeds split into sources, ``minigpt-gelu-s42-i1-d2`` (init, data order)."""
    t = cfg.train
    name = f"{cfg.model.name}-{cfg.model.activation}-s{t.seed}"
    return name + "".join(f"-{tag}{v}" for tag, v in (("i", t.init_seed), ("d", t.data_seed), ("p", t.dropout_seed))
                          if v != -1)


def train(
    cfg: RunConfig,
    *,
    data: CharDataset | None = None,
    tracker: Tracker | None = None,
    progress: EventFn | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainResult:
    """Train one cell and return its metrics. The tracker's run is closed as FINISHED, FAILED or KILLED."""
    validate(cfg)
    tracker = tracker or NullTracker()
    t_start = time.perf_counter()
    tracker.start(run_name or default_run_name(cfg), tags or {})
    try:
        result = _train(cfg, data, tracker, progress, t_start)
    except KeyboardInterrupt as e:
        tracker.finish("KILLED", interrupt_reason(e))
        raise
    except BaseException as e:
        tracker.finish("FAILED", f"{type(e).__name__}: {e}".splitlines()[0][:500])
        raise
    tracker.finish("FINISHED")
    return result


def _train(
    cfg: RunConfig, data: CharDataset | None, tracker: Tracker, progress: EventFn | None, t_start: float
) -> TrainResult:
    m, t, e = cfg.model, cfg.train, cfg.eval
    device = resolve_device(t.device)
    _check_runtime(cfg, device)
    dtype = resolve_dtype(t.dtype, device)
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cpu":
        runtime.keep_freed_memory()  # no page faults for every fresh activation tensor
    if data is None:
        data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    eval_set = data.eval_set(e.n_contexts, m.block_size, e.seed)

    det_before = torch.are_deterministic_algorithms_enabled()
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    try:
        init_seed, data_seed, dropout_seed = t.source_seeds()
        model = build_model(m, data.vocab.size, seed=init_seed).to(device)
        check = wiring.check_model(model, m, data.vocab.size, init_seed)
        n_params = model.num_params()
        run_tags = {
            **provenance_tags(device),
            "nanoact.model": m.name,
            "nanoact.activation": m.activation,
            "nanoact.seed": str(t.seed),
            "nanoact.init_seed": str(init_seed),
            "nanoact.data_seed": str(data_seed),
            "nanoact.dropout_seed": str(dropout_seed),
            "nanoact.eval_set_sha256": eval_set.sha256,
            "nanoact.data_sha256": data.sha256,
            "nanoact.activation_modules": ";".join(check.found),
            "nanoact.activation_modules_expected": ";".join(sorted(check.expected)),
            "nanoact.wiring_check": "passed" if check.ok else f"failed: {check.reason}",
            "nanoact.n_params": str(n_params),
        }
        tracker.set_tags(run_tags)
        tracker.log_params({**cfg.flat(), "train.dtype_resolved": dtype, "activation": m.activation, "seed": t.seed})
        tracker.log_dict(cfg.to_dict(), "config.json")
        corpus_name, corpus_from = corpus_source(cfg.data.corpus)
        tracker.log_dataset(corpus_name, data.sha256, corpus_from)
        if not check.ok:
            raise wiring.WiringError(f"activation wiring check failed for {m.name}/{m.activation}: {check.reason}")

        metrics, history = _loop(cfg, model, data, eval_set, device, autocast_for(dtype, device), tracker, progress)
        metrics["time/wall_s"] = time.perf_counter() - t_start
        tracker.log_metrics({"time/wall_s": metrics["time/wall_s"]}, step=t.max_iters)
        result = TrainResult(metrics, history, n_params, eval_set.sha256, data.sha256, check.found, str(device),
                             t.max_iters, run_tags, dtype)
        if t.checkpoint:
            tracker.log_checkpoint(
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "config": cfg.to_dict(),
                    "vocab": list(data.vocab.chars),
                    "iter": t.max_iters,
                }
            )
        return result
    finally:
        torch.use_deterministic_algorithms(det_before)


def _report_iter(it: int, loss: float, lr: float, t, tracker: Tracker, progress: EventFn | None) -> None:
    """The current batch's loss and the lr: to the tracker every ``log_interval`` iterations (between evals; an
    eval step logs its own), to the progress callback every 10."""
    if t.log_interval and it % t.log_interval == 0 and it % t.eval_interval != 0:
        tracker.log_metrics({"train/loss_iter": loss, "lr": lr}, step=it)
    if progress and it % 10 == 0:
        progress(Iterated(it, t.max_iters, loss, lr))


def _loop(cfg, model, data, eval_set, device, autocast, tracker, progress
          ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The optimisation loop with its evals; returns (final metrics, one row of metrics per eval step)."""
    m, t = cfg.model, cfg.train
    _, data_seed, dropout_seed = t.source_seeds()
    torch.manual_seed(dropout_seed)  # dropout draws from the global generator
    if device.type == "cuda":
        torch.cuda.manual_seed_all(dropout_seed)
    batch_gen = torch.Generator().manual_seed(data_seed)  # the training batch order
    eval_batches = {
        split: data.fixed_batches(split, t.eval_iters, t.batch_size, m.block_size, t.eval_batch_seed)
        for split in ("train", "val")
    }
    optimizer = configure_optimizer(model, t, device)
    fwd = torch.compile(model) if t.compile else model
    tokens_per_iter = t.batch_size * m.block_size

    history: list[dict[str, float]] = []
    best_val_loss, best_val_acc = math.inf, 0.0
    # Training time is measured between evals (one sync per window, not per step), so evals are excluded.
    train_time, iters_timed, window_iters, window_start = 0.0, 0, 0, 0.0
    eval_time = {"loss": 0.0, "predictions": 0.0}  # what the eval steps cost, for time/*_s
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else 25  # a CUDA sync per step would cost throughput

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    x, y = data.get_batch("train", t.batch_size, m.block_size, batch_gen)
    for it in range(t.max_iters + 1):
        lr = get_lr(it, t)
        if it % t.eval_interval == 0 or it == t.max_iters:
            window_t = 0.0
            if window_iters:
                sync()
                window_t = time.perf_counter() - window_start
                train_time += window_t
                iters_timed += window_iters
            if progress:
                progress(Evaluating(it, t.max_iters))
            model.eval()
            t0 = time.perf_counter()
            tr_loss, tr_acc = evaluate(fwd, eval_batches["train"], device, autocast)
            va_loss, va_acc = evaluate(fwd, eval_batches["val"], device, autocast)
            eval_time["loss"] += time.perf_counter() - t0
            model.train()
            if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
                raise DivergenceError(f"loss diverged (NaN/inf) at iteration {it}: val loss {va_loss}")
            tps = tokens_per_iter * window_iters / window_t if window_t > 0 else 0.0
            row = {"train/loss": tr_loss, "val/loss": va_loss, "train/acc": tr_acc, "val/acc": va_acc,
                   "lr": lr, "tokens_per_s": tps}
            history.append({"step": it, **row})
            best_val_loss, best_val_acc = min(best_val_loss, va_loss), max(best_val_acc, va_acc)
            tracker.log_metrics(row, step=it)
            if t.predictions:
                model.eval()
                t0 = time.perf_counter()
                probs = predict(fwd, eval_set, device, autocast, last_only=device.type == "cpu" and not t.compile)
                eval_time["predictions"] += time.perf_counter() - t0
                model.train()
                tracker.log_predictions(it, probs, eval_set.targets.numpy())
            if progress:
                progress(Evaluated(it, t.max_iters, tr_loss, va_loss, tr_acc, va_acc, lr, tps))
            window_iters = 0
            sync()
            window_start = time.perf_counter()
        if it == t.max_iters:
            break

        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast():
            _, loss = fwd(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        x, y = data.get_batch("train", t.batch_size, m.block_size, batch_gen)  # prefetch while backward runs
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        nonfinite |= ~torch.isfinite(loss.detach())
        if (it + 1) % check_every == 0 or it + 1 == t.max_iters:
            if bool(nonfinite):
                raise DivergenceError(
                    f"loss diverged (NaN/inf) by iteration {it} (lr {lr:.3g}); lower train.lr or check the data"
                )
        window_iters += 1
        if it % 10 == 0 or (t.log_interval and it % t.log_interval == 0):
            _report_iter(it, float(loss.detach()), lr, t, tracker, progress)

    last = history[-1]
    metrics = {
        "final/train_loss": last["train/loss"],
        "final/val_loss": last["val/loss"],
        "final/train_acc": last["train/acc"],
        "final/val_acc": last["val/acc"],
        "best/val_loss": best_val_loss,
        "best/val_acc": best_val_acc,
        "time/train_s": train_time,
        "time/loss_evals_s": eval_time["loss"],
        "time/prediction_evals_s": eval_time["predictions"],
        "tokens_per_s_mean": tokens_per_iter * iters_timed / train_time if train_time > 0 else 0.0,
    }
    tracker.log_metrics(metrics, step=t.max_iters)
    return metrics, history
