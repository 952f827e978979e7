"""Param shapes kept on disk (mv2_jax/weights/shape_cache.py): a second load traces no `init`
and reads the same params; a damaged entry is traced again; without a folder nothing is kept."""

import jax
import numpy as np
import pytest

from mv2_jax.pipelines.shipped import shipped_model
from mv2_jax.weights import registry, shape_cache
from mv2_jax.weights.load import load_component


@pytest.fixture
def traces(monkeypatch):
    count = []
    real = jax.eval_shape

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry.jax, "eval_shape", counting)
    yield count
    shape_cache.use_shape_cache(None)


def test_a_second_load_reads_the_shapes_instead_of_tracing(tmp_path, traces):
    folder = shipped_model("t2i") / "unet"
    shape_cache.use_shape_cache(tmp_path)
    _, first = load_component(folder)
    assert len(traces) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    _, second = load_component(folder)
    assert len(traces) == 1  # from the cache
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    entry = next(tmp_path.glob("*.json"))
    entry.write_text(entry.read_text()[:50])  # damaged: traced again, and rewritten
    load_component(folder)
    assert len(traces) == 2
    load_component(folder, param_dtype="bf16")  # another dtype is another entry
    assert len(traces) == 3 and len(list(tmp_path.glob("*.json"))) == 2


def test_without_a_folder_every_load_traces(traces):
    folder = shipped_model("t2i") / "vae"
    load_component(folder)
    load_component(folder)
    assert len(traces) == 2
