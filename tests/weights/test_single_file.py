"""Single-file (LDM layout) checkpoints through `convert/to_flax.py`: a tiny SD1.x-style file gives
the Flax UNet / VAE / CLIP that diffusers' own `from_single_file` gives; `.ckpt` and bf16 files;
model-type detection; the shipped default configs; and the errors."""

import json
import shutil
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

import mv2_jax  # noqa: E402
from mv2_jax.weights.load import build_module  # noqa: E402
from mv2_jax.weights.registry import family_for, param_shapes  # noqa: E402
from mv2_jax.weights.single_file import (  # noqa: E402
    DEFAULT_CONFIGS,
    MODEL_TYPES,
    UnknownModelTypeError,
    component_configs,
    detect_model_type,
)
from tests.reference import nchw_to_nhwc, relative_error  # noqa: E402
from tests.weights.tiny_models import (  # noqa: E402
    check_ldm_inversion,
    ldm_checkpoint,
    load_cli,
    tiny_pipeline,
)

TOL = 1e-4
COMPONENTS = ("unet", "vae", "text_encoder")
to_flax = load_cli()


class Payload:
    """Any object that is not a tensor: `weights_only` loading must refuse it."""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(work folder, pipeline, LDM state dict); `sd.safetensors` converted into `out/`."""
    root = tmp_path_factory.mktemp("single_file")
    pipe = tiny_pipeline(root / "pipe")
    checkpoint = ldm_checkpoint(pipe)
    save_file(checkpoint, root / "sd.safetensors")
    argv = [root / "sd.safetensors", "--out", root / "out", "--config", root / "pipe"]
    assert to_flax.main([str(a) for a in argv]) == 0
    return root, pipe, checkpoint


def _params(folder):
    return mv2_jax.load_component(folder)[1]


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_ldm_layout_is_the_exact_inverse_of_diffusers_converters(converted):
    _, pipe, checkpoint = converted
    check_ldm_inversion(checkpoint, pipe)


def test_matches_diffusers_from_single_file(converted):
    root, _, _ = converted
    reference = diffusers.StableDiffusionPipeline.from_single_file(
        str(root / "sd.safetensors"), config=str(root / "pipe"), local_files_only=True
    )
    gen = torch.Generator().manual_seed(0)
    errors = {}

    unet, params = mv2_jax.load_component(root / "out" / "unet")
    x, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 6, 32, generator=gen)
    t = torch.tensor([5.0, 900.0])
    with torch.no_grad():
        expected = reference.unet(x, t, ctx).sample.numpy()
    actual = jax.jit(unet.apply)(
        {"params": params}, nchw_to_nhwc(x.numpy()), t.numpy(), ctx.numpy()
    )
    errors["unet"] = relative_error(actual, nchw_to_nhwc(expected))

    vae, params = mv2_jax.load_component(root / "out" / "vae")
    image = torch.randn(1, 3, 16, 16, generator=gen)
    with torch.no_grad():
        mean = reference.vae.encode(image).latent_dist.mean
        decoded = reference.vae.decode(mean).sample
    encode = jax.jit(partial(vae.apply, method="encode"))
    posterior = encode({"params": params}, nchw_to_nhwc(image.numpy()))
    errors["vae.encode"] = relative_error(posterior.mean, nchw_to_nhwc(mean.numpy()))
    decode = jax.jit(partial(vae.apply, method="decode"))
    actual = decode({"params": params}, nchw_to_nhwc(mean.numpy()))
    errors["vae.decode"] = relative_error(actual, nchw_to_nhwc(decoded.numpy()))

    clip, params = mv2_jax.load_component(root / "out" / "text_encoder")
    ids = reference.tokenizer(
        ["a photo of a cat", "ph"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        out = reference.text_encoder(ids)
    actual = jax.jit(clip.apply)({"params": params}, ids.numpy())
    errors["clip.last_hidden_state"] = relative_error(
        actual.last_hidden_state, out.last_hidden_state.numpy()
    )
    errors["clip.pooler_output"] = relative_error(actual.pooler_output, out.pooler_output.numpy())
    print(errors)
    assert max(errors.values()) <= TOL, errors


def test_same_params_as_the_diffusers_folder(converted):
    root, _, _ = converted
    for name in COMPONENTS:
        _assert_same(_params(root / "out" / name), _params(root / "pipe" / name))
    for name in ("tokenizer", "scheduler", "model_index.json"):
        assert (root / "out" / name).exists()


def test_lightning_ckpt_gives_the_same_params(converted, tmp_path):
    root, _, checkpoint = converted
    torch.save({"state_dict": checkpoint, "global_step": 7, "epoch": 1}, tmp_path / "sd.ckpt")
    argv = [tmp_path / "sd.ckpt", "--out", tmp_path / "out", "--config", root / "pipe" / "vae"]
    assert to_flax.main([str(a) for a in argv]) == 0
    _assert_same(_params(tmp_path / "out"), _params(root / "out" / "vae"))


def test_bf16_file_to_one_bf16_component(converted, tmp_path):
    root, _, checkpoint = converted
    save_file({k: v.to(torch.bfloat16) for k, v in checkpoint.items()}, tmp_path / "sd.safetensors")
    argv = [tmp_path / "sd.safetensors", "--out", tmp_path / "unet", "--dtype", "bf16"]
    assert to_flax.main([str(a) for a in [*argv, "--config", root / "pipe" / "unet"]]) == 0
    _, params = mv2_jax.load_component(tmp_path / "unet", dtype=jnp.bfloat16)
    # torch and ml_dtypes both round fp32 → bf16 to nearest even: the same bits.
    _, expected = mv2_jax.load_component(root / "pipe" / "unet", dtype=jnp.bfloat16)
    _assert_same(params, expected)


def test_parts_the_file_does_not_hold(converted, tmp_path, capsys):
    """A text-encoder-only file with a config folder that also lists a safety checker."""
    root, _, checkpoint = converted
    text_only = {k: v for k, v in checkpoint.items() if k.startswith("cond_stage_model.")}
    save_file(text_only, tmp_path / "te.safetensors")
    config = tmp_path / "config"
    shutil.copytree(root / "pipe", config)
    (config / "safety_checker").mkdir()
    checker = {"architectures": ["StableDiffusionSafetyChecker"]}
    (config / "safety_checker" / "config.json").write_text(json.dumps(checker))
    index = json.loads((config / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (config / "model_index.json").write_text(json.dumps(index))
    argv = [tmp_path / "te.safetensors", "--out", tmp_path / "out", "--config", config]
    assert to_flax.main([str(a) for a in argv]) == 0
    log = capsys.readouterr().out
    assert "safety_checker: a StableDiffusionSafetyChecker is not part of single-file" in log
    assert "unet: not in" in log and "vae: not in" in log and "tokenizer: copied" in log
    written = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert written["safety_checker"] == [None, None]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
    ]
    _assert_same(_params(tmp_path / "out" / "text_encoder"), _params(root / "out" / "text_encoder"))


def _fails(argv, capsys, *patterns):
    assert to_flax.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    for pattern in patterns:
        assert pattern in err, err


def test_unreadable_files(converted, tmp_path, capsys):
    root, _, checkpoint = converted
    data = (root / "sd.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _fails(
        [tmp_path / "cut.safetensors", "--out", tmp_path / "o"],
        capsys,
        "cut.safetensors: truncated",
    )
    torch.save({"state_dict": checkpoint}, tmp_path / "sd.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "sd.ckpt").read_bytes()[:5000])
    _fails([tmp_path / "cut.ckpt", "--out", tmp_path / "o"], capsys, "cut.ckpt: cannot be read")
    torch.save({"state_dict": checkpoint, "payload": Payload()}, tmp_path / "evil.ckpt")
    _fails([tmp_path / "evil.ckpt", "--out", tmp_path / "o"], capsys, "not unpickled here")
    (tmp_path / "w.gguf").write_bytes(b"GGUF")
    _fails([tmp_path / "w.gguf", "--out", tmp_path / "o"], capsys, "unknown checkpoint format")


def test_checkpoint_and_config_that_disagree(converted, tmp_path, capsys):
    root, _, checkpoint = converted
    extra = dict(checkpoint)
    extra["model.diffusion_model.input_blocks.1.2.proj.weight"] = torch.zeros(2, 2)
    save_file(extra, tmp_path / "extra.safetensors")
    argv = [tmp_path / "extra.safetensors", "--out", tmp_path / "o", "--config", root / "pipe"]
    _fails(argv, capsys, "model.diffusion_model.input_blocks.1.2.proj.weight", "--config")
    # The shipped SD1.5 configs describe a far larger model than this file.
    argv = [root / "sd.safetensors", "--out", tmp_path / "o2", "--model-type", "sd15"]
    _fails(argv, capsys, "does not match the model config")
    assert not (tmp_path / "o2").exists()  # nothing half-written is left behind
    _fails([*argv, "--config", root / "pipe"], capsys, "not both")


def _keys(*names, width=768, in_channels=4):
    state = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1, in_channels, 1, 1)}
    state.update({name: torch.zeros(1, width) for name in names})
    return state


V2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(
    "state, step, expected",
    [
        (
            _keys("cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"),
            None,
            "sd15",
        ),
        (_keys(V2_KEY, width=1024), None, "sd2_768v"),
        (_keys(V2_KEY, width=1024), 875000, "sd2_512"),
        (
            _keys("conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"),
            None,
            "sdxl_base",
        ),
        (
            _keys("conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"),
            None,
            "sdxl_refiner",
        ),
    ],
)
def test_detect_model_type(state, step, expected):
    assert detect_model_type(state, step) == expected


def test_undetectable_model_types():
    with pytest.raises(UnknownModelTypeError, match=r"'inpainting'.*--config"):
        detect_model_type(_keys(in_channels=9))
    with pytest.raises(UnknownModelTypeError, match="already in diffusers layout"):
        detect_model_type({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(UnknownModelTypeError, match=r"not an original SD1\.x"):
        detect_model_type({"foo.weight": torch.zeros(1)})


# Parameter counts of the published models.
PUBLISHED_SIZES = {
    "unet": {
        "sd15": 859_520_964,
        "sd2_512": 865_910_724,
        "sd2_768v": 865_910_724,
        "sdxl_base": 2_567_463_684,
        "sdxl_refiner": 2_259_526_660,
    },
    "vae": dict.fromkeys(MODEL_TYPES, 83_653_863),
    "text_encoder": {"sd15": 123_060_480, "sd2_512": 340_387_840, "sd2_768v": 340_387_840},
    "text_encoder_2": {"sdxl_base": 694_659_840, "sdxl_refiner": 694_659_840},
}
PUBLISHED_SIZES["text_encoder"]["sdxl_base"] = PUBLISHED_SIZES["text_encoder"]["sd15"]


def _torch_size(config: dict) -> int:
    with torch.device("meta"):  # shapes only, no memory
        if "_class_name" in config:
            model = getattr(diffusers, config["_class_name"]).from_config(config)
        else:
            config_class = transformers.CLIPTextConfig
            model = getattr(transformers, config["architectures"][0])(
                config_class.from_dict(config)
            )
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", sorted(MODEL_TYPES))
def test_shipped_configs_describe_the_published_models(model_type):
    """diffusers / transformers build the published sizes from the JSON, and mv2_jax accepts
    every key of it."""
    folder = DEFAULT_CONFIGS / model_type
    configs = component_configs(folder)
    expected = {
        name: sizes[model_type] for name, sizes in PUBLISHED_SIZES.items() if model_type in sizes
    }
    assert set(configs) == set(expected)
    for name, config in configs.items():
        assert _torch_size(config) == expected[name], name
        build_module(config, jnp.float32, where=str(folder / name))
    assert (folder / "scheduler" / "scheduler_config.json").exists()


@pytest.mark.slow
def test_flax_builds_the_published_sdxl():
    """Every family at full size (UNet with text-time embedding, VAE, CLIP-L, bigG with
    projection): the Flax param trees hold exactly the published parameter counts."""
    folder = DEFAULT_CONFIGS / "sdxl_base"
    for name, config in component_configs(folder).items():
        module, family = build_module(config, jnp.float32, where=str(folder / name))
        assert family is family_for(config)[1]
        shapes = param_shapes(module, family)
        count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
        assert count == PUBLISHED_SIZES[name]["sdxl_base"], name
