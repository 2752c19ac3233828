"""Where and how a run computes: its device and dtype, and the process-wide settings the trainer applies.

``resolve_device``, ``resolve_dtype`` and ``autocast_for`` turn ``train.device`` and ``train.dtype`` into what
the run uses; ``check`` refuses CUDA switches on another device; ``configured`` applies the thread count, the
allocator setting below, deterministic algorithms and TF32 for the run.

``keep_freed_memory``: glibc hands large freed blocks back to the OS and takes them again on the next allocation,
so an op's fresh output tensor of a few MB costs a page fault per 4 KB page. On a 2-core machine that was about
a sixth of a prediction eval's time and 5-10% of a training step's (``benchmarks/eval_cost.py``). Raising
glibc's mmap and trim thresholds keeps freed memory for reuse instead. It does not change what is computed:
PyTorch aligns every tensor to 64 bytes wherever its memory comes from.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from collections.abc import Callable, Iterator

import torch

from nanoact.errors import ConfigError

# malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit
_TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> bool:
    """Stop glibc from returning freed tensor memory to the OS between ops; False where libc is not glibc.

    Both thresholds are needed: a fixed mmap threshold alone turns off glibc's own adjustment of it, and a high
    trim threshold alone leaves blocks above the default 128 KB threshold to fresh mmaps.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                        _TRIM_THRESHOLD))


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
    (Ampere or newer), else ``float32``; ``float32`` and ``bfloat16`` are taken as given (``check``
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


def check(t, device: torch.device) -> str:
    """The dtype the run computes in (``train`` section ``t``), after refusing CUDA switches off CUDA."""
    dtype = resolve_dtype(t.dtype, device)
    if dtype == "bfloat16" and device.type != "cuda":
        raise ConfigError(f"train.dtype=bfloat16 is a CUDA switch, but the device is {device}; use float32")
    if t.tf32 and device.type != "cuda":
        raise ConfigError(f"train.tf32=true is a CUDA switch, but the device is {device}; set it to false")
    return dtype


@contextlib.contextmanager
def configured(t, device: torch.device) -> Iterator[None]:
    """The process settings of a run (``train`` section ``t``); the deterministic-algorithms switch is restored
    afterwards."""
    if t.threads:
        torch.set_num_threads(t.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for every fresh activation tensor
    det_before = torch.are_deterministic_algorithms_enabled()
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = t.tf32
        torch.backends.cudnn.allow_tf32 = t.tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det_before)
