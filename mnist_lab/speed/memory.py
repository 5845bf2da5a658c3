"""Keep freed memory in the process, so that training on the CPU stops page-faulting.

glibc's malloc hands blocks over 128 KiB back to the kernel when they are freed (with
munmap, or by trimming the heap), and the next allocation of the same size takes every
page again as a fresh page fault, zeroed by the kernel. A training step allocates and
frees the same activations and gradients every time (MobileNet's 28×28×64 maps are
12.8 MB each), so glibc's defaults cost thousands of page faults per step. Raising the
two thresholds makes freed blocks stay in the heap for the next step to reuse.

It is a setting of the whole process, so the project applies it only to processes it
starts itself: `mnist-lab` calls `keep_freed_memory()` once at start-up, and puts the same
thresholds in the environment (`ENVIRONMENT`, which glibc reads when a process starts) for
the notebook kernels and benchmark workers it launches. The cost is that a process keeps
its peak memory (a few hundred MB here) until it exits. Measurements: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import platform

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts; bigger blocks are still mapped
TRIM_THRESHOLD = 1 << 30  # return free heap memory to the kernel only past 1 GiB
# The same two settings as environment variables, for child processes (mallopt(3)).
ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
