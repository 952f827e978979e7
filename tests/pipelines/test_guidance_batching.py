"""Guidance halves one after the other (`guidance_batching="sequential"`) give what one batch of
both gives: on the shipped shapes-world models (no torch) for T2I (also split over a mesh), I2V
(appearance encoder, SparseCtrl on every frame, frequency prior) and V2V (low-res latents, noise
level, appearance encoder, ControlNet), two prompts or videos each and guidance rescale on; with
torch, SDXL's pooled embeddings and time ids and an IP-Adapter's image embeddings. "auto" runs
the sequential program when the device's memory is below what the batched one needs, batched
otherwise and on CPU, logging both figures once; the flag reaches the requests."""

import dataclasses
import logging
import re

import jax
import numpy as np
import pytest

import mv2_jax
from mv2_jax.cli import sample
from mv2_jax.commands.common import DeviceFlags, SamplingFlags, from_namespace, sampling_kwargs
from mv2_jax.commands.stages import stage_run_flags
from mv2_jax.pipelines import guidance_batching
from mv2_jax.pipelines.cascade import StageSettings, TextToVideoCascade
from mv2_jax.pipelines.i2v import ImageToVideoPipeline
from mv2_jax.pipelines.shipped import shipped_model
from mv2_jax.pipelines.t2i import TextToImagePipeline
from mv2_jax.pipelines.t2v import TextToVideoPipeline
from mv2_jax.pipelines.v2v import VideoToVideoPipeline
from tests.reference import relative_error

pytestmark = pytest.mark.slow

# max |sequential − batched| / max |batched| of the sampled latents. The two forms run the same
# UNet on the same rows, at batch B instead of 2B, and XLA:CPU rounds some ops (LayerNorm, dense
# layers) differently at another batch size: ≈1e-6 of one motion-UNet call, carried by the
# guidance weight (ε_u + w·(ε_c − ε_u)) through the steps; 1.2–2.4e-6 measured here on jax 0.10
# and 0.12. (T2I's batched program split over a 2-device data mesh, B rows a device, gives the
# sequential latents bit for bit.) A half given the other half's conditioning moves them > 1e-2.
TOLERANCE = 1e-5
KEY = np.zeros((32, 32, 3), np.float32)
KEY[10:22, 12:20] = (1.0, 0.1, 0.1)
PROMPTS = ["a red square moving right", "a blue circle moving up"]
T2I = dict(prompt=PROMPTS, height=32, width=32, seed=1, num_inference_steps=3,
           guidance_scale=3.0, guidance_rescale=0.7)  # fmt: skip
I2V = dict(image=np.stack([KEY, KEY[::-1]]), prompt=PROMPTS, height=32, width=32, num_frames=3,
           seed=3, num_inference_steps=2, guidance_scale=5.0, guidance_rescale=0.5,
           reference_scale=0.8, controlnet_frames="all", noise_prior="frequency")  # fmt: skip
V2V = dict(video=np.random.default_rng(0).uniform(0, 1, (3, 16, 16, 3)).astype(np.float32),
           prompt="a red square moving right", height=32, width=32, seed=2,
           num_inference_steps=2, guidance_scale=3.0, guidance_rescale=0.3, noise_level=50,
           num_videos_per_prompt=2)  # fmt: skip


def _sampled_latents(pipe):
    """A copy of `pipe` whose programs return the sampled latents: the VAE decoder is the same
    code in both forms and only scales their difference (by ≈5 here)."""
    copy = dataclasses.replace(pipe, trace_count=0)
    copy.decode_latents = lambda vae_params, latents, chunk=16, tile=None: latents
    return copy


def _pipeline(stage):
    folder = shipped_model(stage)
    if folder is None:
        pytest.fail(f"the shipped {stage} model is missing from mv2_jax/assets")
    return _sampled_latents(mv2_jax.load_pipeline(folder))


def _both(pipe, **call):
    """The pipeline's sampled latents with the halves batched, then one after the other."""
    batched = pipe(**call, guidance_batching="batched")
    sequential = pipe(**call, guidance_batching="sequential")
    assert sequential.shape == batched.shape
    return batched, sequential


@pytest.fixture(scope="module")
def t2i():
    return _pipeline("t2i")


@pytest.fixture(scope="module")
def t2i_batched(t2i):
    return t2i(**T2I, guidance_batching="batched")


def test_t2i_sequential_is_batched(t2i, t2i_batched):
    sequential = t2i(**T2I, guidance_batching="sequential")
    assert relative_error(sequential, t2i_batched) <= TOLERANCE
    # the comparison can fail: the negative branch moves the latents
    unguided = t2i(**{**T2I, "guidance_scale": 1.0})
    assert relative_error(unguided, t2i_batched) > 1e-2


def test_t2i_sequential_on_a_mesh_is_batched(t2i, t2i_batched):
    """Each half's rows split over a data axis of 2 devices, one half at a time."""
    from mv2_jax.parallel import make_mesh

    mesh = make_mesh("data:2", devices=jax.devices()[:2])
    sequential = t2i(**T2I, guidance_batching="sequential", mesh=mesh)
    assert relative_error(sequential, t2i_batched) <= TOLERANCE


def test_i2v_with_reference_controlnet_and_prior_sequential_is_batched():
    pipe = _pipeline("i2v")
    assert isinstance(pipe, ImageToVideoPipeline)
    assert pipe.appearance is not None and pipe.controlnet is not None
    batched, sequential = _both(pipe, **I2V)
    assert batched.shape == (2, 3, 8, 8, 4)
    assert relative_error(sequential, batched) <= TOLERANCE


def test_v2v_with_low_res_and_conditionings_sequential_is_batched():
    pipe = _pipeline("v2v")
    assert isinstance(pipe, VideoToVideoPipeline) and pipe.takes_low_res
    assert pipe.appearance is not None and pipe.controlnet is not None
    batched, sequential = _both(pipe, **V2V)
    assert batched.shape == (2, 3, 8, 8, 4)
    assert relative_error(sequential, batched) <= TOLERANCE


def test_split_halves_takes_the_guided_pairs_only():
    batch = 3
    inputs = {
        "context": np.arange(2 * batch * 2.0).reshape(2 * batch, 2),
        "noise": np.zeros((batch, 2 * batch)),  # per video, even with 2B columns
        "added_cond_kwargs": {"image_embeds": np.ones((2 * batch, 4)), "ip_adapter_scale": 0.5},
    }
    stacked, half_inputs = guidance_batching.split_halves(inputs, batch)
    assert [s.shape for s in stacked] == [(2, batch, 4), (2, batch, 2)]
    second = half_inputs([s[1] for s in stacked])
    np.testing.assert_array_equal(second["context"], inputs["context"][batch:])
    assert second["noise"] is inputs["noise"]
    assert second["added_cond_kwargs"]["ip_adapter_scale"] == 0.5


# ------------------------------------------------------------------------------------ auto


def test_auto_is_batched_on_cpu_and_compiles_nothing_to_decide(t2i):
    assert guidance_batching.device_memory_limit(jax.devices()[:1]) is None
    pipe = _sampled_latents(t2i)  # fresh caches
    pipe(**T2I)  # "auto", the default
    assert pipe.trace_count == 1
    assert [p.guidance_batching for p, _ in pipe._cache.programs] == ["batched"]


class _Device:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_limit_is_the_smallest_stated():
    limit = guidance_batching.device_memory_limit
    assert limit([_Device({"bytes_limit": 8}), _Device({"bytes_limit": 5})]) == 5
    assert limit([_Device({"bytes_limit": 8}), _Device(None)]) is None
    assert limit([_Device({"bytes_in_use": 8})]) is None


@pytest.mark.parametrize("limit,mode", [(1_000_000, "sequential"), (1 << 50, "batched")])
def test_auto_follows_the_compiled_memory(t2i, t2i_batched, monkeypatch, caplog, limit, mode):
    """Below the batched program's need the sequential one runs, above it the batched one; the
    choice is logged once, with both figures."""
    monkeypatch.setattr(guidance_batching, "device_memory_limit", lambda devices: limit)
    pipe = _sampled_latents(t2i)
    with caplog.at_level(logging.INFO, logger=guidance_batching.__name__):
        out = pipe(**T2I, guidance_batching="auto")
        again = pipe(**{**T2I, "seed": 5}, guidance_batching="auto")
    (record,) = caplog.records  # once per program
    expected = "one after the other" if mode == "sequential" else "batched"
    holds = guidance_batching._bytes(limit)
    figures = re.fullmatch(
        rf"TextToImagePipeline: the guided batch needs (\d+\.\d\d) (MB|GB), the device holds "
        rf"{holds}: guidance halves {expected}",
        record.getMessage(),
    )
    assert figures and float(figures[1]) > 1.0  # its params alone are more than 1 MB
    assert record.levelno == (logging.WARNING if mode == "sequential" else logging.INFO)
    ran = {p.guidance_batching for p, _ in pipe._cache.programs}
    # the batched program is compiled to be measured; it also runs when it fits
    assert ran == ({"batched", "sequential"} if mode == "sequential" else {"batched"})
    assert pipe.trace_count == len(ran)
    assert relative_error(out, t2i_batched) <= TOLERANCE
    assert np.abs(again - out).max() > 1e-3  # another seed, the same choice, nothing logged


def test_sequential_needs_less_memory_than_batched(t2i):
    """The point of it: the sequential program's temporaries are smaller (XLA:CPU's figures)."""
    figures = {}
    for mode in ("batched", "sequential"):
        prepared = t2i.prepare(t2i.request(**T2I, guidance_batching=mode))
        generate, (params, inputs, scalars) = t2i._program_and_args(prepared, None)
        compiled = generate.lower(params, inputs, dict(scalars, call=np.int32(0))).compile()
        figures[mode] = compiled.memory_analysis().temp_size_in_bytes
    assert figures["sequential"] < figures["batched"]


# ------------------------------------------------------------------------------ requests


def test_a_bad_setting_is_named():
    with pytest.raises(ValueError, match=r"guidance_batching 'halves'; choose from \('auto'"):
        TextToImagePipeline.request(None, "a fox", guidance_batching="halves")


def test_without_guidance_every_setting_is_one_program(t2i):
    programs = {
        t2i.prepare(t2i.request(**{**T2I, "guidance_scale": 1.0}, guidance_batching=mode)).program
        for mode in ("auto", "batched", "sequential")
    }
    assert len(programs) == 1


SUBCOMMANDS = {
    "t2i": (TextToImagePipeline, ("--prompt", "a fox"), ("a fox",)),
    "t2v": (TextToVideoPipeline, ("--prompt", "a fox"), ("a fox",)),
    "i2v": (ImageToVideoPipeline, ("--image", "k.png", "--prompt", "a fox"), (KEY, "a fox")),
    "v2v": (VideoToVideoPipeline, ("--input", "l.mp4", "--prompt", "a fox"), (V2V["video"], "a")),
}


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_the_flag_reaches_each_subcommands_request(command, tmp_path):
    cls, required, positional = SUBCOMMANDS[command]
    (tmp_path / "model_index.json").write_text("{}")
    argv = [command, "--model", str(tmp_path), *required, "--guidance-batching", "Sequential"]
    args = sample.build_parser().parse_args(argv)
    flags = from_namespace(SamplingFlags, args), from_namespace(DeviceFlags, args)
    kwargs = sampling_kwargs(*flags, None)
    assert cls.request(None, *positional, **kwargs).guidance_batching == "sequential"
    default = sample.build_parser().parse_args(argv[:-2])
    assert from_namespace(DeviceFlags, default).guidance_batching == "auto"


def test_a_bad_flag_is_one_line_before_loading(capsys):
    with pytest.raises(SystemExit) as exit_:
        sample.build_parser().parse_args(["cascade", "a fox", "--guidance-batching", "halves"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--guidance-batching: invalid choice: 'halves'" in line


class _Stage:
    """A stand-in for a diffusion stage: the request each call makes, frames of the asked
    size."""

    default_size, vae_scale_factor = 16, 8

    def __init__(self, cls):
        self.cls, self.requests = cls, []
        self.unet = type("Unet", (), {"motion_max_seq_length": 8})

    def _request(self, *args, **kwargs):
        self.requests.append(self.cls.request(None, *args, **kwargs))
        return self.requests[-1]

    def __call__(self, *args, **kwargs):
        request = self._request(*args, **kwargs)
        frames = () if self.cls is TextToImagePipeline else (request.num_frames or 2,)
        return np.zeros((1, *frames, request.height, request.width, 3), np.float32)

    def precompile(self, *args, **kwargs):
        self._request(*args, **kwargs)

    def unet_calls(self, *args, **kwargs):
        self._request(*args, **kwargs)
        return 2


def test_the_cascade_flag_reaches_every_guided_stage():
    flags = stage_run_flags(
        sample.build_parser().parse_args(["cascade", "a fox", "--guidance-batching", "batched"])
    )
    assert flags.device.guidance_batching == "batched"
    stages = {name: _Stage(cls) for name, cls in (("t2i", TextToImagePipeline),
              ("i2v", ImageToVideoPipeline), ("v2v", VideoToVideoPipeline))}  # fmt: skip
    cascade = TextToVideoCascade(
        text_to_image=stages["t2i"], image_to_video=stages["i2v"], video_to_video=stages["v2v"],
        report=lambda line: None,
    )  # fmt: skip
    size = StageSettings(height=16, width=16)
    cascade("a fox", t2i=size, i2v=size, v2v=StageSettings(height=32, width=32), num_frames=2,
            guidance_batching=flags.device.guidance_batching)  # fmt: skip
    for stage in stages.values():  # compiled ahead, counted, run
        assert len(stage.requests) == 3
        assert {r.guidance_batching for r in stage.requests} == {"batched"}


# -------------------------------------------------------------------------------- torch


@pytest.mark.torch
def test_sdxl_pooled_embeddings_and_time_ids_sequential_are_batched(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from tests.pipelines.tiny import tiny_sdxl_pipeline

    tiny_sdxl_pipeline(tmp_path / "sdxl")
    pipe = _sampled_latents(mv2_jax.load_pipeline(tmp_path / "sdxl"))
    assert pipe.text.sdxl
    call = dict(prompt=["a red car", "a cat"], negative_prompt="dark", num_inference_steps=3,
                guidance_scale=5.0, guidance_rescale=0.7, original_size=(32, 24))  # fmt: skip
    batched, sequential = _both(pipe, **call)
    assert relative_error(sequential, batched) <= TOLERANCE


@pytest.mark.torch
def test_ip_adapter_image_embeddings_sequential_are_batched(tmp_path):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file

    from mv2_jax.weights.ip_adapter import load_ip_adapter
    from tests.models.test_ip_adapter import random_adapter
    from tests.pipelines.tiny import tiny_animatediff_pipeline

    tiny_animatediff_pipeline(tmp_path / "t2v")
    t2v = mv2_jax.load_pipeline(tmp_path / "t2v")
    reference_unet = diffusers.UNetMotionModel.from_pretrained(tmp_path / "t2v" / "unet")
    save_file(random_adapter(reference_unet, cross=32, image_dim=12), tmp_path / "ip.safetensors")
    unet, params = load_ip_adapter(tmp_path / "ip.safetensors", t2v.unet, t2v.unet_params)
    config = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, projection_dim=12,
    )  # fmt: skip
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / "encoder")
    base = {f.name: getattr(t2v, f.name) for f in dataclasses.fields(t2v) if f.init}
    base.update(unet=unet, unet_params=params, trace_count=0)
    encoder = mv2_jax.load_component(tmp_path / "encoder")
    pipe = _sampled_latents(ImageToVideoPipeline(**base, image_encoder=encoder))
    assert pipe.has_ip_adapter
    call = dict(image=np.stack([KEY, KEY[::-1]]), prompt=["a cat", "a dog"], num_frames=3,
                height=16, width=16, num_inference_steps=2, guidance_scale=4.0,
                guidance_rescale=0.5, noise_prior="none", scheduler="ddim")  # fmt: skip
    batched, sequential = _both(pipe, **call)
    assert relative_error(sequential, batched) <= TOLERANCE
