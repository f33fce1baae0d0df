"""How a CPU worker or profiling process is set up: one torch thread and a heap that keeps
the memory it frees.

Why the heap: glibc's malloc gives freed memory back to the OS (it trims the top of the heap
and unmaps large blocks, with thresholds that move with the process's history) and then
faults the same pages in again at the next allocation. Whether an optimizer step pays for
that depends on what the process ran before: an 85M-parameter AdamW step with its float64
gradient norm took 1.2-1.4 s with ~290,000 page faults per step after one forward pass shape
and 0.4-0.6 s with none after another; with the thresholds below, 0.4-0.6 s after either
(2-core EPYC, one thread, 2026-12-03). Timings that depend on the heap's past are useless to
a cost model, and the slow state helps no one, so every CPU process of ours fixes both
thresholds once: blocks up to 32 MiB come from the heap and freed memory stays mapped.
Resident memory stays at its peak instead of shrinking, which a worker that runs the same
calls every iteration reaches anyway. `RLHF_GLIBC_MALLOC=default` in the environment leaves
glibc's own thresholds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20
"""The upper limit glibc's manual gives for it on 64-bit systems; bigger blocks are still mapped
fresh each time (a large tensor's first touch, which the profile's fresh-memory rate prices)."""
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim below 2 GiB of free heap top
ENV = "RLHF_GLIBC_MALLOC"


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process. True when glibc took both;
    False elsewhere (another libc or OS: nothing to do) or when RLHF_GLIBC_MALLOC=default."""
    if not sys.platform.startswith("linux") or os.environ.get(ENV) == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok


def setup_cpu_process(threads: int = 1) -> None:
    """`threads` torch threads (several CPU workers share the cores: one each is fastest) and
    a heap that keeps freed memory (keep_freed_memory)."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
