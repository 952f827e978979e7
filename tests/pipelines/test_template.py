"""The pipeline template (mv2_jax/pipelines/base.py): requests are checked when made, nothing of
a call stays on the pipeline, and one pipeline serves several threads at once. Runs on the
shipped shapes-world models, so it needs no torch."""

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mv2_jax
from mv2_jax.commands.common import program_caches
from mv2_jax.pipelines import program_store
from mv2_jax.pipelines.program_store import ProgramStore, default_program_store
from mv2_jax.pipelines.shipped import shipped_model
from mv2_jax.weights import shape_cache

KEY_IMAGE = np.zeros((64, 64, 3), np.float32)
KEY_IMAGE[20:44, 24:40] = (1.0, 0.1, 0.1)
CALLS = {
    "t2i": (
        dict(prompt="a red circle moving right", height=64, width=64, seed=1,
             num_inference_steps=3, guidance_scale=2.0),
        dict(prompt=["a blue square moving up", "a green triangle moving left"], height=48,
             width=64, seed=2, num_inference_steps=4, guidance_scale=1.0, progress=True),
    ),
    "i2v": (
        dict(image=KEY_IMAGE, prompt="a red square moving right", height=64, width=64,
             num_frames=4, seed=3, num_inference_steps=3, guidance_scale=5.0),
        dict(image=KEY_IMAGE, prompt="a red square moving down", height=48, width=48,
             num_frames=3, seed=4, num_inference_steps=2, guidance_scale=1.0,
             noise_prior="none", reference_scale=0.5),
    ),
}  # fmt: skip


def _pipeline(stage):
    folder = shipped_model(stage)
    if folder is None:
        pytest.fail(f"the shipped {stage} model is missing from mv2_jax/assets")
    return mv2_jax.load_pipeline(folder)


@pytest.mark.parametrize("stage", sorted(CALLS))
def test_two_threads_on_one_pipeline_get_what_sequential_calls_get(stage):
    sequential = [_pipeline(stage)(**call) for call in CALLS[stage]]
    pipe = _pipeline(stage)  # fresh: the threads also trace and compile at the same time
    start = threading.Barrier(len(CALLS[stage]))

    def run(call):
        start.wait()
        return pipe(**call)

    with ThreadPoolExecutor(len(CALLS[stage])) as pool:
        threaded = list(pool.map(run, CALLS[stage]))
    for alone, together in zip(sequential, threaded):
        assert together.shape == alone.shape
        np.testing.assert_array_equal(together, alone)
    assert sequential[0].shape[1:3] != sequential[1].shape[1:3] or stage == "i2v"
    assert pipe.trace_count == 2  # one program per request shape, none traced twice


def test_requests_are_checked_when_made():
    pipe = _pipeline("t2i")
    for bad, message in (
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(num_inference_steps=0), "num_inference_steps must be ≥ 1"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(negative_prompt=["a", "b"]), "2 negative prompts for 1 prompts"),
        (dict(image=KEY_IMAGE[None], strength=0.0), r"strength must be in \(0, 1\]"),
        (dict(num_frames=4), "num_frames must be None or 1"),
    ):
        with pytest.raises(ValueError, match=message):
            pipe.request("a red circle", **bad)
    with pytest.raises(TypeError):  # settings after the prompts are keyword-only
        pipe("a red circle", None, 3)
    request = pipe.request("a red circle", num_inference_steps=3)
    assert request.prompts == ("a red circle",)
    with pytest.raises(AttributeError):  # frozen
        request.seed = 2


def test_nothing_of_a_call_stays_on_the_pipeline():
    pipe = _pipeline("t2i")
    before = {name: value for name, value in vars(pipe).items() if name != "_cache"}
    pipe("a red circle moving right", num_inference_steps=2, height=32, width=32)
    after = {name: value for name, value in vars(pipe).items() if name != "_cache"}
    assert after.keys() == before.keys()
    assert {k for k in after if after[k] is not before[k]} == {"trace_count"}


def test_a_stored_program_runs_again_without_tracing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(program_store, "PROGRAMS", tmp_path / "shipped")  # none shipped
    store = ProgramStore(tmp_path)
    call = dict(CALLS["t2i"][0], num_inference_steps=2)
    first = dataclasses.replace(_pipeline("t2i"), program_store=store)
    expected = first(**call)
    stored = list(tmp_path.glob("*.jaxexport"))
    assert first.trace_count == 1 and len(stored) == 1
    second = dataclasses.replace(_pipeline("t2i"), program_store=store)
    np.testing.assert_array_equal(second(**call), expected)
    assert second.trace_count == 0  # read back, not traced
    stored[0].write_bytes(stored[0].read_bytes()[:100])  # truncated: exported again, with a word
    third = dataclasses.replace(_pipeline("t2i"), program_store=store)
    np.testing.assert_array_equal(third(**call), expected)
    assert third.trace_count == 1 and "unreadable stored program" in caplog.text


def test_shipped_programs_stand_in_for_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setattr(program_store, "PROGRAMS", tmp_path / "shipped")
    call = dict(CALLS["t2i"][0], num_inference_steps=2)

    def stored_in(folder):
        return dataclasses.replace(_pipeline("t2i"), program_store=ProgramStore(folder))

    expected = stored_in(tmp_path / "shipped")(**call)  # as `python -m mv2_jax.traced_ahead`
    user = stored_in(tmp_path / "user")
    np.testing.assert_array_equal(user(**call), expected)
    assert user.trace_count == 0 and not (tmp_path / "user").exists()  # read, not traced
    other = stored_in(tmp_path / "user")
    other(**dict(call, height=48))  # another shape: none shipped, traced and stored
    assert other.trace_count == 1 and len(list((tmp_path / "user").glob("*.jaxexport"))) == 1


def test_a_command_puts_the_program_caches_back(tmp_path):
    with program_caches(str(tmp_path)):
        assert default_program_store().folder == tmp_path / "exported"
        assert shape_cache.current_folder() == tmp_path / "param_shapes"
    assert default_program_store() is None and shape_cache.current_folder() is None
