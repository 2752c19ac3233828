"""Process-wide settings the trainer applies before a CPU run.

``keep_freed_memory``: glibc hands large freed blocks back to the OS and takes them again on the next allocation,
so an op's fresh output tensor of a few MB costs a page fault per 4 KB page. On a 2-core machine that was about
a sixth of a prediction eval's time and 5-10% of a training step's (``benchmarks/eval_cost.py``). Raising
glibc's mmap and trim thresholds keeps freed memory for reuse instead. It does not change what is computed:
PyTorch aligns every tensor to 64 bytes wherever its memory comes from.
"""

from __future__ import annotations

import ctypes
import platform

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
