"""What a sweep will do and what its cells will cost, before any runs: the resolved config, the study it would
use, and parameters, activation memory and time per device class.

Nothing here trains or times anything. ``nanoact sweep --dry-run`` prints it for each distinct config (cells
that differ only in seeds share one):

- **parameters**: the model built on the CPU, as the trainer builds it.
- **activation memory**: the bytes of the tensors autograd saves for the backward pass in one training step
  at the configured batch and block, in float32. They are counted with ``saved_tensors_hooks`` on one forward
  pass at batch 1 (each storage once; parameters left out) and multiplied by the batch size, which is exact
  because every saved activation has the batch as a dimension. Not counted: the weights, gradients and AdamW
  moments (printed apart, 16 bytes per parameter in float32), temporary buffers of single ops, and the
  allocator's slack. The attention counted is PyTorch's CPU kernel; a GPU's flash attention saves less, and
  bf16 autocast stores many saved tensors in 2 bytes instead of 4.
- **time on a CPU**: measured, where finished runs of the same model (activation included) and batch size ran
  on a CPU in the tracking store: their seconds per training iteration (``time/train_s``), per loss-eval batch
  (``time/loss_evals_s``) and per prediction-eval context (``time/prediction_evals_s``), medians over those
  runs, scaled to the cell's iterations, eval steps and evaluation set. They hold for the machine, thread
  count and load those runs had.
- **time on a GPU**: a FLOP count over a stated peak at an assumed model FLOPs utilisation (MFU). Training:
  ``6 N + 12 L d T`` FLOPs per token (N parameters; L attention layers of width d over T positions; PaLM,
  Chowdhery et al. 2022, appendix B), forward-only evals a third of that. The GPU class is an NVIDIA A100 at
  its bf16 dense tensor-core peak of 312 TFLOP/s (NVIDIA A100 datasheet), at an assumed MFU of 20%: an
  assumption, not a measurement (``benchmarks/full_gpu.py`` measures it on a real GPU).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable

from nanoact.config import RunConfig
from nanoact.tracking import schema as S

GPU_NAME = "A100"
GPU_PEAK_FLOPS = 312e12  # bf16 dense tensor-core peak, NVIDIA A100 datasheet
ASSUMED_MFU = 0.20
STATE_BYTES_PER_PARAM = 16  # float32 weight + gradient + AdamW's two moments
MAX_CONFIGS = 12  # distinct configs estimated by one dry-run; a bigger grid gets a line saying how many were left
SEED_KEYS = ("train.seed", "train.init_seed", "train.data_seed", "train.dropout_seed")


@dataclass
class CpuMeasure:
    """Median per-unit costs of finished CPU runs of one recipe (model config and batch size)."""

    n_runs: int
    s_per_iter: float
    s_per_loss_batch: float
    s_per_context: float


@dataclass
class Estimate:
    n_params: int
    activation_bytes: int
    train_flops: float
    eval_flops: float
    cpu: CpuMeasure | None
    cpu_s: float | None

    @property
    def state_bytes(self) -> int:
        return STATE_BYTES_PER_PARAM * self.n_params

    @property
    def gpu_s(self) -> float:
        return (self.train_flops + self.eval_flops) / (GPU_PEAK_FLOPS * ASSUMED_MFU)


def eval_steps(max_iters: int, eval_interval: int) -> int:
    """Eval steps of a run: 0, K, 2K, ... and max_iters (the trainer's rule)."""
    return len(range(0, max_iters + 1, eval_interval)) + (1 if max_iters % eval_interval else 0)


def _counts(cfg: RunConfig) -> tuple[int, int, int]:
    """(training iterations, loss-eval batches, prediction-eval contexts) of one run."""
    t = cfg.train
    n_evals = eval_steps(t.max_iters, t.eval_interval)
    return t.max_iters, n_evals * 2 * t.eval_iters, n_evals * cfg.eval.n_contexts if t.predictions else 0


def attention_width(model) -> int:
    """Sum over attention layers of their width (L d in the FLOP formula)."""
    from nanoact.models.layers import CausalSelfAttention

    return sum(m.c_proj.in_features for m in model.modules() if isinstance(m, CausalSelfAttention))


def _saved_bytes_per_sample(model, block_size: int, vocab_size: int) -> int:
    """Bytes autograd saves for backward in a training forward pass at batch 1 (each storage once, no params)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    g = torch.Generator().manual_seed(0)
    x = torch.randint(vocab_size, (1, block_size), generator=g)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, x)
    del loss
    return sum(seen.values())


def _model_numbers(cfg: RunConfig, vocab_size: int) -> tuple[int, int, int]:
    """(parameters, activation bytes at the configured batch, attention L*d) of the cell's model."""
    from nanoact.models import build_model

    model = build_model(cfg.model, vocab_size, seed=0)
    per_sample = _saved_bytes_per_sample(model, cfg.model.block_size, vocab_size)
    return model.num_params(), per_sample * cfg.train.batch_size, attention_width(model)


def train_flops_per_token(n_params: int, attn: int, block_size: int) -> int:
    """6 N + 12 L d T: a trained token's forward and backward FLOPs (PaLM, appendix B); ``attn`` is L d."""
    return 6 * n_params + 12 * attn * block_size


def _flops(cfg: RunConfig, n_params: int, attn: int) -> tuple[float, float]:
    """(training FLOPs, eval FLOPs) of one run: 6N + 12 L d T per trained token, a third per evaluated one."""
    T = cfg.model.block_size
    per_token = train_flops_per_token(n_params, attn, T)
    iters, loss_batches, contexts = _counts(cfg)
    tokens_train = iters * cfg.train.batch_size * T
    tokens_eval = (loss_batches * cfg.train.batch_size + contexts) * T  # full forward per context on a GPU
    return float(per_token * tokens_train), float(per_token / 3 * tokens_eval)


RunsFn = Callable[[RunConfig], list[Any]]


class StoreRuns:
    """Finished runs on a CPU with a cell's model and batch size, read from the store at ``tracking_uri`` (read
    only: a sqlite store that does not exist yet has none and is not created). ``problem`` says why the store
    could not be read, if it could not; then no run is found."""

    def __init__(self, tracking_uri: str):
        from nanoact.tracking.store import Store

        self.uri = tracking_uri
        self.problem: str | None = None
        self._store: Store | None = Store(tracking_uri)
        self._checked = False
        self._cache: dict[tuple[str, str], list[Any]] = {}

    def _open(self):
        from nanoact.errors import NanoactError

        self._checked = True
        try:
            self._store.check_reachable()
        except NanoactError as e:
            self.problem = str(e)
            self._store = None

    def __call__(self, cfg: RunConfig) -> list[Any]:
        if self._store is not None and not self._store.exists():
            return []
        key = (cfg.model.name, str(cfg.train.batch_size))
        if key not in self._cache:
            self._cache[key] = []
            if not self._checked:
                self._open()
            if self._store is not None:
                flt = (f"attributes.status = 'FINISHED' and params.`model.name` = '{key[0]}' "
                       f"and params.`train.batch_size` = '{key[1]}' and tags.`{S.DEVICE}` LIKE 'cpu%'")
                try:
                    self._cache[key] = self._store.search_all(flt)
                except Exception as e:  # any store failure: say so, estimate the rest
                    self.problem = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                    self._store = None
        want = {k: str(v) for k, v in cfg.flat().items() if k.startswith("model.")}
        return [r for r in self._cache[key] if all(r.data.params.get(k) == v for k, v in want.items())]


def cpu_measure(runs: list[Any]) -> CpuMeasure | None:
    """Per-unit CPU costs (medians) from runs that logged time/train_s, time/loss_evals_s, time/prediction_evals_s."""
    it, lb, ctx = [], [], []
    for r in runs:
        m, p = r.data.metrics, r.data.params
        try:
            cfg_like = RunConfig()
            cfg_like.train.max_iters, cfg_like.train.eval_interval = int(p["train.max_iters"]), int(
                p["train.eval_interval"])
            cfg_like.train.eval_iters, cfg_like.eval.n_contexts = int(p["train.eval_iters"]), int(p["eval.n_contexts"])
            cfg_like.train.predictions = p.get("train.predictions", "True") == "True"
            times = m[S.TIME_TRAIN_S], m[S.TIME_LOSS_EVALS_S], m[S.TIME_PREDICTION_EVALS_S]
        except (KeyError, ValueError):
            continue  # logged before these metrics existed
        iters, loss_batches, contexts = _counts(cfg_like)
        if iters <= 0 or times[0] <= 0:
            continue
        it.append(times[0] / iters)
        lb.append(times[1] / loss_batches)
        if contexts:
            ctx.append(times[2] / contexts)
    if not it or not ctx:
        return None
    return CpuMeasure(len(it), statistics.median(it), statistics.median(lb), statistics.median(ctx))


def estimate(cfg: RunConfig, vocab_size: int, runs: RunsFn | None = None) -> Estimate:
    """Parameters, activation memory, FLOPs and time estimates of one cell (see the module docstring)."""
    n_params, act_bytes, attn = _model_numbers(cfg, vocab_size)
    train_flops, eval_flops = _flops(cfg, n_params, attn)
    cpu = cpu_measure(runs(cfg)) if runs is not None else None
    cpu_s = None
    if cpu is not None:
        iters, loss_batches, contexts = _counts(cfg)
        cpu_s = iters * cpu.s_per_iter + loss_batches * cpu.s_per_loss_batch + contexts * cpu.s_per_context
    return Estimate(n_params, act_bytes, train_flops, eval_flops, cpu, cpu_s)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _vocab_sizes() -> Callable[[RunConfig], int]:
    from nanoact.data import CharDataset

    sizes: dict[tuple, int] = {}

    def size(cfg: RunConfig) -> int:
        key = (cfg.data.corpus, cfg.data.cache_dir, cfg.data.train_fraction)
        if key not in sizes:
            sizes[key] = CharDataset.from_config(*key).vocab.size
        return sizes[key]

    return size


def config_lines(spec, file_spec) -> list[str]:
    """The resolved base config, a line per section, and what ``--set`` changed from the sweep file."""
    flat, from_file = spec.base.flat(), file_spec.base.flat()
    lines = [f"base config ({spec.source or spec.name}{', with --set' if flat != from_file else ''}; grid axes "
             "replace their keys):"]
    sections: dict[str, list[str]] = {}
    for k, v in flat.items():
        section, _, name = k.partition(".")
        if k not in spec.grid:
            sections.setdefault(section, []).append(f"{name}={v}")
    lines += [f"  {section}: {' '.join(items)}" for section, items in sections.items()]
    changed = [k for k in flat if flat[k] != from_file.get(k)]
    if changed:
        lines.append("--set changed from the sweep file: "
                     + "; ".join(f"{k} {from_file.get(k)} -> {flat[k]}" for k in changed))
    return lines


def study_lines(spec, check, n_done: int, storage: str) -> list[str]:
    """Whether the study exists in ``storage``, and whether the real run would accept this config."""
    name = f"study {spec.study_name!r} in {storage}"
    if not check.exists:
        return [f"{name}: does not exist yet; the sweep would create it"]
    if check.matches:
        return [f"{name}: exists ({n_done} of {len(spec.cells())} cells done), created from this config and grid"]
    lines = [f"{name}: exists, created from a different config or grid; the sweep would refuse it"]
    if not check.differences:
        lines.append("  (the study does not record its config, so the keys that differ cannot be named)")
    lines += [f"  {k}: {old} in the study, {new} here" for k, old, new in check.differences[:20]]
    if len(check.differences) > 20:
        lines.append(f"  ... and {len(check.differences) - 20} more")
    return lines


@dataclass
class _Tally:
    """Estimated times summed over cells (CPU only over the cells a measurement exists for)."""

    cpu: float = 0.0
    gpu: float = 0.0
    cells: int = 0
    measured: int = 0

    def add(self, est: Estimate, n: int) -> None:
        self.cells += n
        self.gpu += est.gpu_s * n
        if est.cpu is not None:
            self.cpu += est.cpu_s * n
            self.measured += n

    def words(self) -> str:
        part = f" ({self.measured} of {self.cells} cells measured)" if self.measured < self.cells else ""
        return (f"cpu {_dur(self.cpu)}{part}" if self.measured else "cpu unknown") + f"; {GPU_NAME} {_dur(self.gpu)}"


def _config_lines(label: str, n: int, cfg: RunConfig, est: Estimate, runs: StoreRuns) -> list[str]:
    m, t = cfg.model, cfg.train
    lines = [f"  {label} ({n} cell(s)):",
             f"    {est.n_params:,} parameters; activations saved for backward at batch {t.batch_size} x block "
             f"{m.block_size}: {_gib(est.activation_bytes)} (float32); weights + grads + AdamW state: "
             f"{_gib(est.state_bytes)}"]
    if est.cpu is not None:
        c = est.cpu
        lines.append(f"    cpu: {_dur(est.cpu_s)} per cell, from {c.n_runs} finished CPU run(s) of this model and "
                     f"batch in the store ({c.s_per_iter * 1e3:.0f} ms/iter, {c.s_per_context * 1e3:.1f} ms per eval "
                     "context)")
    elif runs.problem:
        lines.append(f"    cpu: unknown, the store could not be read ({runs.problem})")
    else:
        lines.append("    cpu: no finished CPU run of this model and batch size in the store to measure from")
    lines.append(f"    {GPU_NAME} (bf16 peak {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s at an assumed {ASSUMED_MFU:.0%} MFU): "
                 f"{_dur(est.gpu_s)} per cell for {(est.train_flops + est.eval_flops) / 1e15:.2f} PFLOP "
                 f"({est.train_flops / 1e15:.2f} training, {est.eval_flops / 1e15:.2f} evals)")
    return lines


def describe(spec, tracking_uri: str, planned: set[str] | None = None) -> list[str]:
    """Lines for ``--dry-run``: one block per distinct config (cells differing only in seeds share it), and the
    grid's totals (and, given the cells that would run, theirs)."""
    vocab_size = _vocab_sizes()
    groups: dict[tuple, list[Any]] = {}
    for cell in spec.cells():
        cfg = spec.cell_config(cell)
        key = tuple(sorted((k, str(v)) for k, v in cfg.flat().items() if k not in SEED_KEYS))
        groups.setdefault(key, []).append((cell, cfg))
    runs = StoreRuns(tracking_uri)
    seed_axes = [k for k in spec.grid if k in SEED_KEYS]
    other_axes = [k for k in spec.grid if k not in SEED_KEYS]
    lines = [f"estimates per cell ({len(groups)} distinct config(s); cells that differ only in "
             f"{', '.join(seed_axes) or 'seeds'} share one), computed, not measured, except the CPU times:"]
    grid, left = _Tally(), _Tally()
    for i, members in enumerate(groups.values()):
        if i == MAX_CONFIGS:
            lines.append(f"  ... {len(groups) - MAX_CONFIGS} more distinct config(s) not estimated (at most "
                         f"{MAX_CONFIGS} per dry-run)")
            break
        cell, cfg = members[0]
        est = estimate(cfg, vocab_size(cfg), runs)
        label = "|".join(f"{k}={cell.values[k]}" for k in other_axes) or "every cell"
        lines += _config_lines(label, len(members), cfg, est, runs)
        grid.add(est, len(members))
        left.add(est, len(members) if planned is None else sum(c.key in planned for c, _ in members))
    if len(groups) <= MAX_CONFIGS:
        lines.append(f"grid total, one worker: {grid.words()} (assumed MFU)")
        if planned is not None and 0 < left.cells < grid.cells:
            lines.append(f"the {left.cells} cell(s) that would run, one worker: {left.words()}")
    return lines
