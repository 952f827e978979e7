"""Param shapes kept on disk (mv2_jax/weights/shape_cache.py): a second load traces no `init`
and reads the same params; a damaged entry is traced again; without a folder nothing is kept;
shapes shipped with the package (mv2_jax.traced_ahead) stand in for a missing entry."""

import jax
import numpy as np
import pytest

from mv2_jax.pipelines.shipped import shipped_model
from mv2_jax.weights import registry, shape_cache
from mv2_jax.weights.load import load_component


@pytest.fixture
def traces(monkeypatch, tmp_path):
    monkeypatch.setattr(shape_cache, "SHAPES", tmp_path / "shipped")  # none shipped
    count = []
    real = jax.eval_shape

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry.jax, "eval_shape", counting)
    yield count
    shape_cache.use_shape_cache(None)


def test_a_second_load_reads_the_shapes_instead_of_tracing(tmp_path, traces):
    folder, cache = shipped_model("t2i") / "unet", tmp_path / "cache"
    shape_cache.use_shape_cache(cache)
    _, first = load_component(folder)
    assert len(traces) == 1 and len(list(cache.glob("*.json"))) == 1
    _, second = load_component(folder)
    assert len(traces) == 1  # from the cache
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    entry = next(cache.glob("*.json"))
    entry.write_text(entry.read_text()[:50])  # damaged: traced again, and rewritten
    load_component(folder)
    assert len(traces) == 2
    load_component(folder, param_dtype="bf16")  # another dtype is another entry
    assert len(traces) == 3 and len(list(cache.glob("*.json"))) == 2


def test_shipped_shapes_stand_in_for_a_missing_entry(tmp_path, traces, monkeypatch):
    folder = shipped_model("t2i") / "vae"
    shape_cache.use_shape_cache(tmp_path / "shipped")  # as `python -m mv2_jax.traced_ahead`
    _, expected = load_component(folder)
    assert len(traces) == 1
    shape_cache.use_shape_cache(tmp_path / "user")  # a new user's empty cache
    _, params = load_component(folder)
    assert len(traces) == 1 and not (tmp_path / "user").exists()  # read, not traced
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    shipped = next((tmp_path / "shipped").glob("*.json"))
    shipped.write_text("[")  # a damaged shipped entry is traced past
    load_component(folder)
    assert len(traces) == 2 and len(list((tmp_path / "user").glob("*.json"))) == 1


def test_without_a_folder_every_load_traces(traces):
    folder = shipped_model("t2i") / "vae"
    load_component(folder)
    load_component(folder)
    assert len(traces) == 2
