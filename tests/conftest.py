"""Test setup: 8 simulated CPU devices (set before jax initialises), fp32 matmuls.

The tests compile many small programs and run each once or twice, so XLA's backend (LLVM)
optimisation is turned off: compiles take ~2.5× less time, results are the same computation
(set MV2_TEST_XLA_OPT=1 to test with full optimisation, as the benchmarks run).
"""

import ctypes
import gc
import os
import platform
import tempfile

import pytest

_flags = " --xla_force_host_platform_device_count=8"
if os.environ.get("MV2_TEST_XLA_OPT") != "1":
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + _flags).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Commands run in-process keep their compilation cache in $XDG_CACHE_HOME/mv2_jax/xla by
# default: a fresh folder for each test session, never the user's cache (a program found there
# from an earlier session is not compiled, so a test that reads XLA's dumps found none).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mv2-test-cache-")

import jax  # noqa: E402  (XLA_FLAGS must be set before jax initialises)

jax.config.update("jax_default_matmul_precision", "highest")

if os.environ.get("MV2_REQUIRE_REFERENCE") == "1":
    # .ci/run's reference job installs torch, diffusers, peft and the extras: there a missing
    # package must fail the tests whose `pytest.importorskip` would otherwise skip them.
    import importlib

    def _import_or_fail(modname, minversion=None, reason=None, **kwargs):
        return importlib.import_module(modname)

    pytest.importorskip = _import_or_fail


def pytest_collection_modifyitems(config, items):
    """Modules holding slow tests run first. With `-n 2 --dist loadfile` each module goes whole
    to one worker in collection order, so a long module left for the end keeps one worker busy
    while the other idles; the many short modules fill in behind the long ones instead."""
    slow = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow)


@pytest.fixture(autouse=True, scope="module")
def _release_memory_after_module():
    """A worker runs module after module in one process: after each, drop jax's compiled
    programs and traces and hand freed heap back to the system, so the worker's memory stays
    near one module's peak instead of growing with everything compiled before (two workers
    had reached 7–8 GB each by the end of the suite, and the OOM killer took one)."""
    yield
    jax.clear_caches()
    gc.collect()
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@pytest.fixture
def shipped(monkeypatch, tmp_path):
    """The shipped models of this install, pointed at `tmp_path/shipped/STAGE` (absent until a
    test writes a model_index.json there)."""
    from mv2_jax.pipelines import shipped

    folders = {stage: tmp_path / "shipped" / stage for stage in ("t2i", "i2v", "v2v")}
    for stage, folder in folders.items():
        monkeypatch.setitem(shipped.SHIPPED, stage, folder)
    return folders
