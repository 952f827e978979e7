"""The shapes world: its invariants (object inside the frame, exact geometry and linear motion
at fractional times, held-out pairs, determinism), captions and prompt parsing, the dataset
builder read back through `make_train_iterator`, and `measure` on clean and degraded clips."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import ndimage

from mv2_jax.data.shapes import (
    COLOURS,
    HELDOUT,
    MOTIONS,
    SHAPES,
    Background,
    ShapesSource,
    caption,
    caption_variations,
    parse_prompt,
    render,
    render_background,
    sample_clip,
)
from mv2_jax.data.shapes_measure import measure

PLAIN = Background(level=0.1, tint=(0.0, 0.0, 0.0))


def clips(count: int, seed: int = 0, heldout: bool = False):
    rng = np.random.default_rng(seed)
    return [sample_clip(rng, heldout=heldout) for _ in range(count)]


def coverage(clip, size: int, times) -> np.ndarray:
    """The object's coverage `[F, size, size]` from a render over a plain background."""
    clip = dataclasses.replace(clip, background=PLAIN)
    frames = render(clip, size, times)
    colour = np.asarray(COLOURS[clip.colour])
    channel = int(np.argmax(np.abs(colour - 0.1)))
    return (frames[..., channel] - 0.1) / (colour[channel] - 0.1)


def test_objects_stay_inside_the_frame_at_the_stated_size_and_speed():
    for clip in clips(400) + clips(100, heldout=True):
        half = clip.size / 2
        centres = clip.centre(np.linspace(0, 7, 29))
        assert (centres - half >= 0).all() and (centres + half <= 1).all()
        assert 0.22 <= clip.size <= 0.38 and 0.25 <= 7 * clip.speed <= 0.45
        direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
        travel = clip.centre([7])[0] - clip.centre([0])[0]
        np.testing.assert_allclose(travel, np.multiply(direction[clip.motion], 7 * clip.speed))
    for clip in clips(6):  # nothing of the object reaches the border pixels
        ring = np.ones((64, 64), bool)
        ring[1:-1, 1:-1] = False
        assert np.abs(coverage(clip, 64, [0, 7])[:, ring]).max() < 1e-6


@pytest.mark.parametrize("shape, area, centroid_dy", [
    ("circle", np.pi / 4, 0.0), ("square", 1.0, 0.0), ("triangle", 0.5, 1 / 6)
])  # fmt: skip
def test_geometry_and_linear_motion_at_fractional_times(shape, area, centroid_dy):
    """Anti-aliased coverage integrates to the shape's area, its centroid sits where the
    geometry says (the upright triangle's is a sixth of its size below the box centre), and
    at t = 2.5 it is exactly halfway between frames 2 and 3."""
    clip = dataclasses.replace(clips(1, seed=3)[0], shape=shape, motion="right")
    clip = dataclasses.replace(clip, size=0.3, start=(0.2, 0.45), speed=0.06)
    size = 96
    cover = coverage(clip, size, [2, 2.5, 3])
    assert cover.min() > -1e-5 and cover.max() < 1 + 1e-5
    edge = ((cover > 0.01) & (cover < 0.99)).sum(axis=(1, 2))  # anti-aliased: one pixel wide
    assert (edge > 2 * clip.size * size).all() and (edge < 5 * clip.size * size).all()
    grid = (np.arange(size) + 0.5) / size
    mass = cover.sum(axis=(1, 2))
    np.testing.assert_allclose(mass / size**2, area * clip.size**2, rtol=0.01)
    cx = (cover * grid[None, None, :]).sum(axis=(1, 2)) / mass
    cy = (cover * grid[None, :, None]).sum(axis=(1, 2)) / mass
    expected = clip.centre([2, 2.5, 3])
    np.testing.assert_allclose(cx, expected[:, 0], atol=2e-3)
    np.testing.assert_allclose(cy, expected[:, 1] + centroid_dy * clip.size, atol=2e-3)
    np.testing.assert_allclose(cx[1], (cx[0] + cx[2]) / 2, atol=3e-4)  # 0.03 px
    if shape == "triangle":  # apex up: the top half holds a quarter of the area
        top = cover[:, : round(expected[0, 1] * size)].sum(axis=(1, 2))
        np.testing.assert_allclose(top / mass, 0.25, atol=0.02)


def test_backgrounds_are_dark_and_low_contrast_at_every_resolution():
    backgrounds = [clip.background for clip in clips(200)]
    assert {b.amplitude > 0 for b in backgrounds} == {True, False}
    for background in backgrounds[:20]:
        image = render_background(background, 64)
        assert image.max() < 0.25 and image.std(axis=(0, 1)).max() < 0.06
        np.testing.assert_allclose(render_background(background, 128)[1::2, 1::2], image, atol=0.02)


def test_heldout_pairs_are_never_sampled_for_training():
    train = {(c.colour, c.shape) for c in clips(1500)}
    assert train.isdisjoint(HELDOUT) and len(train) == len(COLOURS) * len(SHAPES) - len(HELDOUT)
    assert {c for c, _ in train} == set(COLOURS) and {s for _, s in train} == set(SHAPES)
    held = clips(200, heldout=True)
    assert {(c.colour, c.shape) for c in held} == HELDOUT
    assert {c.motion for c in held} == set(MOTIONS)
    source = ShapesSource(300, size=16, form="image")
    written = {(source[i]["clip"].colour, source[i]["clip"].shape) for i in range(len(source))}
    assert written.isdisjoint(HELDOUT)


def test_source_examples_are_a_function_of_seed_and_index():
    source = ShapesSource(10, size=32, num_frames=4, seed=3)
    later, first = source[9], source[5]
    again = ShapesSource(10, size=32, num_frames=4, seed=3)[5]
    assert first["clip"] == again["clip"] and first["caption"] == again["caption"]
    np.testing.assert_array_equal(first["pixels"], again["pixels"])
    assert first["pixels"].shape == (4, 32, 32, 3) and first["pixels"].dtype == np.float32
    assert later["clip"] != first["clip"]
    assert ShapesSource(10, size=32, num_frames=4, seed=4)[5]["clip"] != first["clip"]
    image = ShapesSource(10, size=32, num_frames=4, seed=3, form="image")[5]
    np.testing.assert_array_equal(image["pixels"], first["pixels"][:1])
    with pytest.raises(IndexError, match="out of range"):
        source[10]


def test_captions_and_every_variation_parse_back():
    clip = dataclasses.replace(clips(1)[0], colour="red", shape="circle", motion="right")
    assert caption(clip) == "a red circle moving right"
    rng = np.random.default_rng(0)
    drawn = {caption(clip, rng) for _ in range(300)}
    assert len(drawn) > 8 and drawn <= set(caption_variations(clip))
    assert {"the red circle moving right", "red circle moving to the right"} <= drawn
    for colour, shape, motion in itertools.product(COLOURS, SHAPES, MOTIONS):
        clip = dataclasses.replace(clip, colour=colour, shape=shape, motion=motion)
        for text in caption_variations(clip):
            assert parse_prompt(text) == (colour, shape, motion), text
            messy = "  " + text.upper().replace(" ", "   ") + "!."
            assert parse_prompt(messy) == (colour, shape, motion), messy
    assert parse_prompt("The Cyan Circle, moving towards the LEFT.") == ("cyan", "circle", "left")


@pytest.mark.parametrize("prompt, message", [
    ("a purple circle moving up", "no colour in 'a purple circle moving up'; colours: red, green"),
    ("a red blob moving up", "no shape in 'a red blob moving up'; shapes: circle, square, triangle"),  # noqa: E501
    ("a red circle", "no motion in 'a red circle'; motions: left, right, up, down"),
    ("a red or blue circle moving up", "more than one colour (blue, red)"),
    ("a red circle moving up then left", "more than one motion (left, up)"),
])  # fmt: skip
def test_bad_prompts_name_the_problem_and_the_choices(prompt, message):
    with pytest.raises(ValueError) as error:
        parse_prompt(prompt)
    assert message in str(error.value)


def _find(pixels: np.ndarray, examples: list[np.ndarray]) -> int:
    errors = [np.abs(pixels - e).max() if e.shape == pixels.shape else 9 for e in examples]
    return int(np.argmin(errors))


@pytest.mark.parametrize("form", ["video", "image"])
def test_built_dataset_reads_back_through_the_training_pipeline(form, tmp_path, capsys):
    from mv2_jax.data import make_train_iterator
    from mv2_jax.data.build import main

    argv = ["shapes", "--form", form, "--num-examples", "6", "--size", "32", "--num-frames", "4",
            "--seed", "7", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert "wrote 6 examples" in capsys.readouterr().out
    source = ShapesSource(6, size=32, num_frames=4, seed=7, form=form)
    examples = [source[i] for i in range(6)]
    is_image = form == "image"
    batches = make_train_iterator(
        video_dir=None if is_image else tmp_path,
        image_dir=tmp_path if is_image else None,
        image_ratio=float(is_image),
        global_batch_size=6,
        num_frames=4,
        height=32,
        width=32,
        read_threads=1,
    )
    batch = next(batches)
    truth = [e["pixels"] * 2 - 1 for e in examples]
    matched = [_find(pixels, truth) for pixels in batch["pixels"]]
    assert sorted(matched) == list(range(6))  # every example once
    for pixels, i in zip(batch["pixels"], matched):
        assert np.abs(pixels - truth[i]).max() <= 1.01 / 255  # lossless up to 8-bit rounding
    assert [str(c) for c in batch["caption"]] == [examples[i]["caption"] for i in matched]


def _labelled_clips(per_combination: int) -> list:
    """Clips covering every (colour, shape, motion) `per_combination` times, starts valid."""
    rng = np.random.default_rng(11)
    out = []
    for colour, shape, motion in itertools.product(COLOURS, SHAPES, MOTIONS):
        found = 0
        while found < per_combination:
            clip = sample_clip(rng, heldout=(colour, shape) in HELDOUT)
            if clip.motion == motion:
                out.append(dataclasses.replace(clip, colour=colour, shape=shape))
                found += 1
    return out


def _accuracy(clip_list, degrade) -> dict[str, float]:
    right = {"colour": 0, "shape": 0, "motion": 0}
    for clip in clip_list:
        result = measure(degrade(render(clip, 64, np.arange(8))))
        assert result.found and result.frames_found == 8
        for key, ok in result.agrees(clip.colour, clip.shape, clip.motion).items():
            right[key] += ok
    return {key: value / len(clip_list) for key, value in right.items()}


def test_measure_reads_every_combination_back():
    clip_list = _labelled_clips(2)  # 168 clips at 64²
    assert _accuracy(clip_list, lambda frames: frames) == {"colour": 1, "shape": 1, "motion": 1}
    rng = np.random.default_rng(0)

    def noisy_blurred(frames):
        frames = ndimage.gaussian_filter(frames, (0, 1, 1, 0))
        return np.clip(frames + rng.normal(0, 0.05, frames.shape), 0, 1)

    accuracy = _accuracy(clip_list, noisy_blurred)
    assert min(accuracy.values()) >= 0.98, accuracy


def test_measure_centroids_static_and_empty_clips():
    clip = dataclasses.replace(clips(1, seed=5)[0], shape="square", motion="down")
    clip = dataclasses.replace(clip, start=(0.4, 0.3), speed=0.05)
    result = measure(render(clip, 64, np.arange(8)))
    np.testing.assert_allclose(result.centroids, clip.centre(np.arange(8)), atol=0.01)
    np.testing.assert_allclose(result.travel, (0, 0.35), atol=0.01)
    assert abs(result.fill_ratio - 1) < 0.05 and result.motion == "down"
    static = measure(render(dataclasses.replace(clip, speed=0.002), 64, np.arange(8)))
    assert static.found and static.motion == "none" and static.shape == "square"
    empty = measure(render_background(clip.background, 64)[None].repeat(8, axis=0))
    assert not empty.found and empty.colour is None and np.isnan(empty.centroids).all()
    shift = np.array([0.08, -0.08, 0.08], np.float32)
    shifted = measure(np.clip(render(clip, 64, [0]) + shift, 0, 1))
    assert shifted.colour == clip.colour and shifted.motion == "none"


@pytest.mark.parametrize("scale", [0.5, 1.28])
def test_a_travel_scale_scales_the_travel_and_keeps_objects_inside(scale):
    rng = np.random.default_rng(3)
    for _ in range(200):
        clip = sample_clip(rng, travel_scale=scale)
        centres = clip.centre(np.linspace(0, 7, 15))
        assert (centres - clip.size / 2 >= 0).all() and (centres + clip.size / 2 <= 1).all()
        assert 0.25 * scale - 1e-9 <= 7 * clip.speed <= 0.45 * scale + 1e-9
    slow = ShapesSource(4, size=32, seed=1, travel_scale=0.5)[2]["clip"]
    usual = ShapesSource(4, size=32, seed=1)[2]["clip"]
    assert slow.speed == pytest.approx(usual.speed / 2)  # the same draws, half the travel


@pytest.mark.parametrize("scale", [0.0, -1.0, 1.3])
def test_a_travel_scale_that_leaves_the_frame_is_refused(scale):
    with pytest.raises(ValueError, match=r"travel_scale=.*use a number in \(0, 1\.28\]"):
        ShapesSource(4, travel_scale=scale)


def test_the_evaluation_reads_travel_along_the_prompted_motion():
    from mv2_jax.evaluation.shapes import Combination, score_video

    clip = dataclasses.replace(clips(1, seed=5)[0], shape="square", colour="red", motion="left")
    clip = dataclasses.replace(clip, start=(0.7, 0.5), speed=0.05)
    frames = render(clip, 64, np.arange(8))
    travel = score_video(frames, Combination("red", "square", "left"))["travel_fraction"]
    assert travel == pytest.approx(0.35, abs=0.01)
    backwards = score_video(frames, Combination("red", "square", "right"))["travel_fraction"]
    assert backwards == pytest.approx(-0.35, abs=0.01)
