"""The one training loop: schedule, eval, predictions, determinism, divergence, config effects."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from conftest import tiny_overrides

from nanoact.config import RunConfig, apply_overrides
from nanoact.errors import ConfigError, DivergenceError
from nanoact.tracking import MemoryTracker
from nanoact.trainer import autocast_for, get_lr, resolve_device, resolve_dtype, train


def run(tiny_data, tracker=None, **kw):
    cfg = apply_overrides(RunConfig(), tiny_overrides(**kw))
    return train(cfg, data=tiny_data, tracker=tracker)


def test_lr_schedule_matches_nanogpt():
    t = RunConfig().train  # lr 1e-3, min 1e-4, warmup 100, decay 2000
    assert get_lr(0, t) == pytest.approx(1e-3 * 1 / 101)
    assert get_lr(99, t) == pytest.approx(1e-3 * 100 / 101)
    assert get_lr(100, t) == pytest.approx(1e-3)
    assert get_lr(1050, t) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert get_lr(2000, t) == pytest.approx(1e-4)
    assert get_lr(5000, t) == pytest.approx(1e-4)


def test_training_logs_evals_and_predictions(tiny_data):
    tr = MemoryTracker()
    res = run(tiny_data, tr, **{"train.max_iters": 30, "train.eval_interval": 10, "train.lr": 3e-3})
    steps = [s for s, m in tr.metrics if "val/loss" in m]
    assert steps == [0, 10, 20, 30]
    first, last = res.history[0], res.history[-1]
    assert last["train/loss"] < first["train/loss"]  # it learns
    assert set(tr.predictions) == {0, 10, 20, 30}
    probs, targets = tr.predictions[30]
    assert probs.shape == (32, tiny_data.vocab.size) and targets.shape == (32,)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert tr.status == "FINISHED"
    assert tr.tags["nanoact.wiring_check"] == "passed"
    assert tr.tags["nanoact.activation_modules"] == "GELU(approximate='none');GELU(approximate='none')"
    assert tr.params["activation"] == "gelu" and tr.params["model.n_layer"] == 2
    assert tr.checkpoint is not None and tr.checkpoint["iter"] == 30
    assert res.metrics["final/val_loss"] == last["val/loss"]
    assert res.metrics["best/val_loss"] == min(h["val/loss"] for h in res.history)
    assert res.metrics["tokens_per_s_mean"] > 0


def test_the_eval_steps_cost_is_logged_apart_from_training(tiny_data):
    """time/loss_evals_s and time/prediction_evals_s: where a cell's time goes, without a profiler."""
    m = run(tiny_data, MemoryTracker(), **{"train.max_iters": 20, "train.eval_interval": 10}).metrics
    parts = m["time/train_s"] + m["time/loss_evals_s"] + m["time/prediction_evals_s"]
    assert m["time/loss_evals_s"] > 0 and m["time/prediction_evals_s"] > 0 and parts <= m["time/wall_s"]
    m = run(tiny_data, MemoryTracker(), **{"train.max_iters": 20, "train.predictions": False}).metrics
    assert m["time/prediction_evals_s"] == 0.0 and m["time/loss_evals_s"] > 0


def test_eval_set_is_shared_and_hashed(tiny_data):
    a, b = MemoryTracker(), MemoryTracker()
    run(tiny_data, a, **{"model.activation": "relu", "train.seed": 1})
    run(tiny_data, b, **{"model.activation": "gelu", "train.seed": 2})
    assert a.tags["nanoact.eval_set_sha256"] == b.tags["nanoact.eval_set_sha256"]
    assert np.array_equal(a.predictions[20][1], b.predictions[20][1])
    assert not np.array_equal(a.predictions[20][0], b.predictions[20][0])
    c = MemoryTracker()
    run(tiny_data, c, **{"eval.seed": 5})
    assert c.tags["nanoact.eval_set_sha256"] != a.tags["nanoact.eval_set_sha256"]


def test_deterministic_rerun_is_bit_identical(tiny_data):
    kw = {"train.deterministic": True, "model.dropout": 0.1}
    a, b = MemoryTracker(), MemoryTracker()
    run(tiny_data, a, **kw)
    run(tiny_data, b, **kw)
    for (sa, ma), (sb, mb) in zip(a.metrics, b.metrics):
        assert sa == sb
        assert {k: v for k, v in ma.items() if "time" not in k and "tokens" not in k} == {
            k: v for k, v in mb.items() if "time" not in k and "tokens" not in k
        }
    for k in a.checkpoint["model"]:
        assert torch.equal(a.checkpoint["model"][k], b.checkpoint["model"][k])


def test_activations_give_different_results(tiny_data):
    losses = {act: run(tiny_data, **{"model.activation": act}).metrics["final/val_loss"]
              for act in ("relu", "gelu", "swish")}
    assert len(set(losses.values())) == 3


def test_dropout_changes_training(tiny_data):
    a = run(tiny_data, **{"model.dropout": 0.0}).metrics["final/train_loss"]
    b = run(tiny_data, **{"model.dropout": 0.3}).metrics["final/train_loss"]
    assert a != b


def test_every_train_field_takes_effect_or_is_rejected(tiny_data):
    base = run(tiny_data).metrics["final/val_loss"]
    for key, value in [("train.lr", 3e-3), ("train.weight_decay", 0.5), ("train.beta2", 0.9),
                       ("train.grad_clip", 0.01), ("train.batch_size", 6), ("train.warmup_iters", 10),
                       ("train.min_lr", 0.0), ("train.beta1", 0.5), ("train.seed", 99),
                       ("train.decay_lr", False), ("train.lr_decay_iters", 10)]:
        assert run(tiny_data, **{key: value}).metrics["final/val_loss"] != base, key
    assert run(tiny_data, **{"train.eval_batch_seed": 3}).metrics["final/val_loss"] != base


def test_divergence_is_a_specific_error(tiny_data):
    tr = MemoryTracker()
    with pytest.raises(DivergenceError, match="diverged"):
        run(tiny_data, tr, **{"train.lr": 1e6, "train.min_lr": 0.0, "train.grad_clip": 0.0,
                              "train.warmup_iters": 0})
    assert tr.status == "FAILED" and "diverged" in tr.error


def test_cuda_switches_rejected_on_cpu(tiny_data):
    with pytest.raises(ConfigError, match="bfloat16"):
        run(tiny_data, **{"train.dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="tf32"):
        run(tiny_data, **{"train.tf32": True})


def test_dtype_auto_is_float32_on_cpu_and_logged_resolved(tiny_data):
    assert RunConfig().train.dtype == "auto"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    tr = MemoryTracker()
    assert run(tiny_data, tr).dtype == "float32"
    assert tr.params["train.dtype"] == "auto" and tr.params["train.dtype_resolved"] == "float32"
    with pytest.raises(ConfigError, match="'auto', 'float32' or 'bfloat16'"):
        apply_overrides(RunConfig(), {"train.dtype": "float16"})


def test_dtype_auto_is_the_old_float32_default_bit_for_bit_on_cpu(tiny_data):
    kw = {"train.deterministic": True, "model.dropout": 0.1}
    auto, f32 = MemoryTracker(), MemoryTracker()
    run(tiny_data, auto, **kw)
    run(tiny_data, f32, **kw, **{"train.dtype": "float32"})
    assert _numbers(auto) == _numbers(f32)
    assert all(np.array_equal(auto.predictions[s][0], f32.predictions[s][0]) for s in f32.predictions)


def test_dtype_auto_chooses_bf16_autocast_on_a_cuda_device_with_native_bf16(monkeypatch):
    """The whole choice, with CUDA faked at the function level: device auto -> cuda, dtype auto -> bfloat16,
    and the forward passes' context is a bf16 autocast on that device."""
    bf16 = {"native": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: bf16["native"] or including_emulation)
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    assert resolve_dtype("auto", dev) == "bfloat16"
    ctx = autocast_for(resolve_dtype("auto", dev), dev)()
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    bf16["native"] = False  # emulated bf16 only (pre-Ampere): float32, no autocast
    assert resolve_dtype("auto", dev) == "float32"
    assert autocast_for("float32", dev) is contextlib.nullcontext
    assert resolve_dtype("float32", dev) == "float32" and resolve_dtype("bfloat16", dev) == "bfloat16"
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"  # CUDA present, CPU device chosen


def test_interrupt_marks_run_killed(tiny_data):
    class Interrupting(MemoryTracker):
        def log_metrics(self, metrics, step):
            super().log_metrics(metrics, step)
            if step == 10:
                raise KeyboardInterrupt

    tr = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        run(tiny_data, tr)
    assert tr.status == "KILLED"


@pytest.mark.parametrize("name", ["minigpt", "nanotransformer", "charlm", "tinylstm", "convlm", "hybridlm"])
def test_every_model_trains(tiny_data, name):
    heads = 4 if name == "tinylstm" else 2
    res = run(tiny_data, **{"model.name": name, "model.n_head": heads, "train.lr": 3e-3})
    assert math.isfinite(res.metrics["final/val_loss"])
    assert res.history[-1]["train/loss"] < res.history[0]["train/loss"]


def _numbers(tracker):
    return [(s, {k: v for k, v in m.items() if "time" not in k and "tokens" not in k}) for s, m in tracker.metrics]


def test_source_seeds_default_to_train_seed_so_old_runs_keep_their_meaning(tiny_data):
    # unset (-1) source seeds give exactly the numbers of a run that only knows train.seed
    kw = {"train.deterministic": True, "model.dropout": 0.1, "train.seed": 7}
    old, explicit = MemoryTracker(), MemoryTracker()
    run(tiny_data, old, **kw)
    run(tiny_data, explicit, **kw, **{"train.init_seed": 7, "train.data_seed": 7, "train.dropout_seed": 7})
    assert _numbers(old) == _numbers(explicit)
    for k in old.checkpoint["model"]:
        assert torch.equal(old.checkpoint["model"][k], explicit.checkpoint["model"][k])
    assert old.tags["nanoact.init_seed"] == old.tags["nanoact.data_seed"] == old.tags["nanoact.dropout_seed"] == "7"


def test_each_source_seed_moves_only_its_source(tiny_data):
    kw = {"train.deterministic": True, "model.dropout": 0.1, "train.seed": 7}
    base = run(tiny_data, **kw)
    init = run(tiny_data, **kw, **{"train.init_seed": 8})
    data = run(tiny_data, **kw, **{"train.data_seed": 8})
    drop = run(tiny_data, **kw, **{"train.dropout_seed": 8})
    losses = {r.metrics["final/val_loss"] for r in (base, init, data, drop)}
    assert len(losses) == 4
    # the initial weights depend on init_seed alone: the step-0 eval is unchanged by the other two
    step0 = [r.history[0]["val/loss"] for r in (base, init, data, drop)]
    assert step0[0] == step0[2] == step0[3] != step0[1]
    with pytest.raises(ConfigError, match=r"train.data_seed must be in \[0, 4294967295\], or -1"):
        apply_overrides(RunConfig(), {"train.data_seed": -2})
