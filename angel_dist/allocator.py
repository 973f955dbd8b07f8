"""Keep freed memory in the process: glibc's malloc tuned for loops that allocate the same large
buffers every step, as a decoder step's [rows, vocabulary] logits on CPU.

By default glibc serves blocks above a (self-adjusting) size with mmap and returns a freed
heap top to the kernel, so each step's large buffers come back as fresh pages that the
kernel faults in and zeroes again. In a CPU beam search on the tiny preset those page faults
were a fifth of the time. Fixing both thresholds keeps such buffers in the heap for reuse:
the process holds its peak heap instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False (and nothing changed)
    where the C library is not glibc. Idempotent."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
