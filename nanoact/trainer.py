"""The only training loop. It knows nothing about any particular model: it calls ``logits, loss = model(x, y)``.

One run: resolve the device, load the data, build the model by name, check that the configured activation is
really wired in, then AdamW with nanoGPT's recipe (linear warmup, cosine decay to ``min_lr``, weight decay on
matrices only, grad clipping). Every ``eval_interval`` iterations (and at the end) it measures train/val loss
and top-1 accuracy on fixed batches and, if asked, the predictions on the fixed evaluation set, and hands them
to a ``Tracker``. A NaN or infinite loss stops the run with ``DivergenceError``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from nanoact import runtime, wiring
from nanoact.config import RunConfig, validate
from nanoact.data import CharDataset, EvalSet, corpus_source
from nanoact.errors import DivergenceError, interrupt_reason
from nanoact.events import Evaluated, Evaluating, EventFn, Iterated
from nanoact.models import CharLM, build_model
from nanoact.runtime import autocast_for, resolve_device, resolve_dtype  # noqa: F401 (the trainer's API too)
from nanoact.tracking import NullTracker, Tracker, provenance_tags, schema


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
    dtype = runtime.check(cfg.train, device)
    if data is None:
        data = CharDataset.from_config(cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
    eval_set = data.eval_set(e.n_contexts, m.block_size, e.seed)

    with runtime.configured(t, device):
        init_seed, data_seed, dropout_seed = t.source_seeds()
        model = build_model(m, data.vocab.size, seed=init_seed).to(device)
        check = wiring.check_model(model, m, data.vocab.size, init_seed)
        n_params = model.num_params()
        run_tags = {**provenance_tags(device), **schema.training_tags(
            model=m.name, activation=m.activation, seed=t.seed, init_seed=init_seed, data_seed=data_seed,
            dropout_seed=dropout_seed, eval_set_sha256=eval_set.sha256, data_sha256=data.sha256,
            modules_found=check.found, modules_expected=check.expected,
            wiring_failure=None if check.ok else str(check.reason), n_params=n_params)}
        tracker.set_tags(run_tags)
        tracker.log_params({**cfg.flat(), schema.P_DTYPE_RESOLVED: dtype, schema.P_ACTIVATION: m.activation,
                            schema.P_SEED: t.seed})
        tracker.log_dict(cfg.to_dict(), schema.CONFIG_FILE)
        corpus_name, corpus_from = corpus_source(cfg.data.corpus)
        tracker.log_dataset(corpus_name, data.sha256, corpus_from)
        if not check.ok:
            raise wiring.WiringError(f"activation wiring check failed for {m.name}/{m.activation}: {check.reason}")

        metrics, history = _loop(cfg, model, data, eval_set, device, autocast_for(dtype, device), tracker, progress)
        metrics[schema.TIME_WALL_S] = time.perf_counter() - t_start
        tracker.log_metrics({schema.TIME_WALL_S: metrics[schema.TIME_WALL_S]}, step=t.max_iters)
        result = TrainResult(metrics, history, n_params, eval_set.sha256, data.sha256, check.found, str(device),
                             t.max_iters, run_tags, dtype)
        if t.checkpoint:
            tracker.log_checkpoint({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                    "config": cfg.to_dict(), "vocab": list(data.vocab.chars), "iter": t.max_iters})
        return result


def _report_iter(it: int, loss: float, lr: float, t, tracker: Tracker, progress: EventFn | None) -> None:
    """The current batch's loss and the lr: to the tracker every ``log_interval`` iterations (between evals; an
    eval step logs its own), to the progress callback every 10."""
    if t.log_interval and it % t.log_interval == 0 and it % t.eval_interval != 0:
        tracker.log_metrics({schema.TRAIN_LOSS_ITER: loss, schema.LR: lr}, step=it)
    if progress and it % 10 == 0:
        progress(Iterated(it, t.max_iters, loss, lr))


def _loop(cfg: RunConfig, model: CharLM, data: CharDataset, eval_set: EvalSet, device: torch.device, autocast,
          tracker: Tracker, progress: EventFn | None) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The optimisation loop with its evals; returns (final metrics, one row of metrics per eval step)."""
    m, t = cfg.model, cfg.train
    _, data_seed, dropout_seed = t.source_seeds()
    torch.manual_seed(dropout_seed)  # dropout draws from the global generator
    if device.type == "cuda":
        torch.cuda.manual_seed_all(dropout_seed)
    batches = {split: data.fixed_batches(split, t.eval_iters, t.batch_size, m.block_size, t.eval_batch_seed)
               for split in ("train", "val")}
    optimizer = configure_optimizer(model, t, device)
    fwd = torch.compile(model) if t.compile else model
    last_only = device.type == "cpu" and not t.compile
    evaluate_at = EvalStep(model, fwd, batches, eval_set if t.predictions else None, device, autocast, tracker,
                           last_only)
    train_step = OptimizerStep(model, fwd, optimizer, data, t, m.block_size, device, autocast, data_seed)
    timer = ThroughputTimer(device, t.batch_size * m.block_size)
    emit = progress or (lambda ev: None)

    for it in range(t.max_iters + 1):
        lr = get_lr(it, t)
        if it % t.eval_interval == 0 or it == t.max_iters:
            tokens_per_s = timer.stop()  # evals are not training time
            emit(Evaluating(it, t.max_iters))
            emit(evaluate_at(it, t.max_iters, lr, tokens_per_s))
            timer.start()
        if it == t.max_iters:
            break
        loss = train_step(it, lr)
        timer.count()
        if it % 10 == 0 or (t.log_interval and it % t.log_interval == 0):
            _report_iter(it, float(loss.detach()), lr, t, tracker, progress)

    metrics = {**evaluate_at.final_metrics(), **timer.metrics(), **evaluate_at.time_metrics()}
    tracker.log_metrics(metrics, step=t.max_iters)
    return metrics, evaluate_at.history


class EvalStep:
    """An eval step: loss and top-1 accuracy on fixed train and val batches, then (if ``eval_set`` is given) the
    predictions on the evaluation set; everything goes to the tracker. Keeps the history, the best values and
    what the evals cost. A NaN or infinite loss raises ``DivergenceError``."""

    def __init__(self, model: CharLM, fwd, batches: dict[str, list], eval_set: EvalSet | None, device: torch.device,
                 autocast, tracker: Tracker, last_only: bool):
        self.model, self.fwd, self.batches, self.eval_set = model, fwd, batches, eval_set
        self.device, self.autocast, self.tracker, self.last_only = device, autocast, tracker, last_only
        self.history: list[dict[str, float]] = []
        self.best_val_loss, self.best_val_acc = math.inf, 0.0
        self.loss_s = self.predictions_s = 0.0

    def __call__(self, it: int, max_iters: int, lr: float, tokens_per_s: float) -> Evaluated:
        self.model.eval()
        t0 = time.perf_counter()
        tr_loss, tr_acc = evaluate(self.fwd, self.batches["train"], self.device, self.autocast)
        va_loss, va_acc = evaluate(self.fwd, self.batches["val"], self.device, self.autocast)
        self.loss_s += time.perf_counter() - t0
        self.model.train()
        if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
            raise DivergenceError(f"loss diverged (NaN/inf) at iteration {it}: val loss {va_loss}")
        ev = Evaluated(it, max_iters, tr_loss, va_loss, tr_acc, va_acc, lr, tokens_per_s)
        self.history.append({"step": it, **ev.metrics()})
        self.best_val_loss, self.best_val_acc = min(self.best_val_loss, va_loss), max(self.best_val_acc, va_acc)
        self.tracker.log_metrics(ev.metrics(), step=it)
        if self.eval_set is not None:
            self.model.eval()
            t0 = time.perf_counter()
            probs = predict(self.fwd, self.eval_set, self.device, self.autocast, last_only=self.last_only)
            self.predictions_s += time.perf_counter() - t0
            self.model.train()
            self.tracker.log_predictions(it, probs, self.eval_set.targets.numpy())
        return ev

    def final_metrics(self) -> dict[str, float]:
        last = self.history[-1]
        return {schema.FINAL_TRAIN_LOSS: last[schema.TRAIN_LOSS], schema.FINAL_VAL_LOSS: last[schema.VAL_LOSS],
                schema.FINAL_TRAIN_ACC: last[schema.TRAIN_ACC], schema.FINAL_VAL_ACC: last[schema.VAL_ACC],
                schema.BEST_VAL_LOSS: self.best_val_loss, schema.BEST_VAL_ACC: self.best_val_acc}

    def time_metrics(self) -> dict[str, float]:
        return {schema.TIME_LOSS_EVALS_S: self.loss_s, schema.TIME_PREDICTION_EVALS_S: self.predictions_s}


class OptimizerStep:
    """One training iteration: forward, backward (the next batch is drawn meanwhile), grad clipping, AdamW.

    A NaN or infinite loss raises ``DivergenceError``: checked every step on CPU, every 25 steps elsewhere (a
    CUDA sync per step would cost throughput), and at the last step."""

    def __init__(self, model: CharLM, fwd, optimizer: torch.optim.Optimizer, data: CharDataset, t,
                 block_size: int, device: torch.device, autocast, data_seed: int):
        self.model, self.fwd, self.optimizer, self.data, self.t = model, fwd, optimizer, data, t
        self.block_size, self.device, self.autocast = block_size, device, autocast
        self.batch_gen = torch.Generator().manual_seed(data_seed)  # the training batch order
        self.x, self.y = data.get_batch("train", t.batch_size, block_size, self.batch_gen)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self.check_every = 1 if device.type == "cpu" else 25

    def __call__(self, it: int, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast():
            _, loss = self.fwd(self.x.to(self.device, non_blocking=True), self.y.to(self.device, non_blocking=True))
        self.x, self.y = self.data.get_batch("train", self.t.batch_size, self.block_size, self.batch_gen)
        loss.backward()
        if self.t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite |= ~torch.isfinite(loss.detach())
        checked = (it + 1) % self.check_every == 0 or it + 1 == self.t.max_iters
        if checked and bool(self.nonfinite):
            raise DivergenceError(
                f"loss diverged (NaN/inf) by iteration {it} (lr {lr:.3g}); lower train.lr or check the data")
        return loss


class ThroughputTimer:
    """Training time between evals, with one device sync per window (not per step), so evals are excluded."""

    def __init__(self, device: torch.device, tokens_per_iter: int):
        self.device, self.tokens_per_iter = device, tokens_per_iter
        self.train_s, self.iters = 0.0, 0
        self._window_iters, self._window_start = 0, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._window_iters = 0
        self._sync()
        self._window_start = time.perf_counter()

    def count(self) -> None:
        self._window_iters += 1

    def stop(self) -> float:
        """Ends the window: its tokens per second (0 when no iteration ran in it)."""
        if not self._window_iters:
            return 0.0
        self._sync()
        window_s = time.perf_counter() - self._window_start
        self.train_s += window_s
        self.iters += self._window_iters
        return self.tokens_per_iter * self._window_iters / window_s if window_s > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        mean = self.tokens_per_iter * self.iters / self.train_s if self.train_s > 0 else 0.0
        return {schema.TIME_TRAIN_S: self.train_s, schema.TOKENS_PER_S_MEAN: mean}
