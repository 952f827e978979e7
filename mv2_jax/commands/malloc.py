"""A command's process keeps the memory it frees, for its next use (glibc's `mallopt`).

XLA:CPU allocates and frees each program's buffers on every call. With glibc's defaults, freed
blocks above a size are handed back to the system and the next call faults every page in
again; on this project's 2-core sandbox that made a sampling program's first call ~2 s slower
and every later call ~20 % slower (`benchmarks/first_run.py`; docs/benchmarks.md). Kept, the
pages are reused. The cost is a resident size that stays at its peak until the process ends,
which is what a sampling or evaluation process holds anyway. Other C libraries: no change.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # blocks up to 32 MiB (glibc's largest) come from the heap
    M_TRIM_THRESHOLD: 1 << 30,  # the heap's free top is returned only beyond 1 GiB
    M_TOP_PAD: 512 << 20,  # and grows by 512 MiB of address space at a time (untouched)
}


def keep_freed_memory() -> bool:
    """Apply `SETTINGS` to this process's allocator; False where it has no `mallopt` or
    refuses one of them (then nothing else changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
