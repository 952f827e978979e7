"""The sampling commands' allocator settings (`mv2_jax/commands/malloc.py`) are all accepted
by glibc: a value out of its range would be refused (mallopt returns 0)."""

from __future__ import annotations

import platform

import pytest

from mv2_jax.commands.malloc import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_every_setting():
    assert keep_freed_memory()
