"""The shapes judge on rendered shapes-world clips, through H.264 and back as a study serves
them: identical and equally clean videos are "same", degraded copies (shuffled frames, heavy
blur, wrong colour, a frozen object, flicker, an extra blob) lose the criteria they touch."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from mv2_jax.data.shapes import Background, ShapeClip, caption, render, sample_clip
from mv2_jax.media import read_video, to_uint8, write_video
from mv2_jax.studies.judges import CRITERIA, MARGINS, ShapesJudge, make_judge, prompt_elements

SIZE, FRAMES = 128, 16
JUDGE = ShapesJudge()


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    """Video [F, H, W, 3] → the same after an MP4 round trip (what the study server serves)."""
    folder = tmp_path_factory.mktemp("videos")
    count = iter(range(10**6))

    def encode(frames):
        return read_video(write_video(frames, folder / f"{next(count)}.mp4"))[0]

    return encode


def world_clip(seed: int, **changes) -> ShapeClip:
    clip = sample_clip(np.random.default_rng(seed), num_frames=FRAMES)
    return dataclasses.replace(clip, **changes)


def frames_of(clip: ShapeClip, size: int = SIZE) -> np.ndarray:
    return render(clip, size, np.arange(FRAMES))


def blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(frames, (0, sigma, sigma, 0))


def votes_both_ways(better, worse, prompt) -> tuple[dict, dict]:
    """The votes with the better video on the left, and with it on the right."""
    return JUDGE.judge(better, worse, prompt).votes, JUDGE.judge(worse, better, prompt).votes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_videos_are_the_same_on_every_criterion(h264, seed):
    clip = world_clip(seed)
    video = h264(frames_of(clip))
    judgement = JUDGE.judge(video, video.copy(), caption(clip))
    assert judgement.votes == dict.fromkeys(CRITERIA, "same")
    assert judgement.left.as_dict() == judgement.right.as_dict()
    assert judgement.margins == MARGINS
    # a clean render scores near the top on everything
    assert min(judgement.left.criterion(c) for c in CRITERIA) > 0.9


def test_clean_renders_of_one_prompt_are_the_same(h264):
    """Other sizes, positions and backgrounds of the same prompt: equally good videos."""
    rng = np.random.default_rng(100)
    for _ in range(4):
        first = sample_clip(rng, num_frames=FRAMES)
        second = sample_clip(rng, num_frames=FRAMES)
        while second.motion != first.motion:  # the start is drawn for the motion
            second = sample_clip(rng, num_frames=FRAMES)
        second = dataclasses.replace(second, colour=first.colour, shape=first.shape)
        judgement = JUDGE.judge(h264(frames_of(first)), h264(frames_of(second)), caption(first))
        assert judgement.votes == dict.fromkeys(CRITERIA, "same"), judgement.as_dict()


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_shuffled_frames_lose_consistency_and_overall_only(h264, seed):
    clip = world_clip(seed)
    frames = frames_of(clip)
    order = np.random.default_rng(seed).permutation(FRAMES)
    original, shuffled = h264(frames), h264(frames[order])
    ahead, behind = votes_both_ways(original, shuffled, caption(clip))
    assert ahead == {"overall": "left", "visual": "same", "consistency": "left",
                     "structure": "same"}  # fmt: skip
    assert behind == {"overall": "right", "visual": "same", "consistency": "right",
                      "structure": "same"}  # fmt: skip
    scores = JUDGE.judge(original, shuffled, caption(clip))
    assert scores.left.details["evenness"] > 0.95 > 0.5 > scores.right.details["evenness"]
    assert scores.left.consistency - scores.right.consistency > 0.2


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
def test_heavy_blur_loses_visual_and_overall(h264, shape):
    clip = world_clip(6, shape=shape)
    original, blurred = h264(frames_of(clip)), h264(blur(frames_of(clip), 3.0))
    ahead, behind = votes_both_ways(original, blurred, caption(clip))
    assert (ahead["visual"], ahead["overall"]) == ("left", "left")
    assert (behind["visual"], behind["overall"]) == ("right", "right")
    assert ahead["consistency"] == "same"
    # blur rounds a triangle's corners (a structural change), not a circle's outline
    assert ahead["structure"] == ("left" if shape == "triangle" else "same")
    scores = JUDGE.judge(original, blurred, caption(clip))
    assert scores.left.details["edge_spread_px"] < 1.5
    assert 3.5 < scores.right.details["edge_spread_px"] < 5.0  # ≈ 1.4σ


def test_sharper_beats_blurrier(h264):
    clip = world_clip(7)
    sharper, blurrier = h264(blur(frames_of(clip), 1.0)), h264(blur(frames_of(clip), 3.0))
    judgement = JUDGE.judge(sharper, blurrier, caption(clip))
    assert (judgement.votes["visual"], judgement.votes["overall"]) == ("left", "left")
    assert 1.2 < judgement.left.details["edge_spread_px"] < 2.2
    assert judgement.left.visual - judgement.right.visual > 0.15
    assert JUDGE.judge(blurrier, sharper, caption(clip)).votes["visual"] == "right"


def test_wrong_colour_loses_visual(h264):
    clip = world_clip(8, colour="red")
    prompt = caption(clip)
    wrong = h264(frames_of(dataclasses.replace(clip, colour="blue")))
    judgement = JUDGE.judge(h264(frames_of(clip)), wrong, prompt)
    assert judgement.votes["visual"] == "left" and judgement.votes["overall"] == "left"
    assert (judgement.left.details["colour_match"], judgement.right.details["colour_match"]) == (
        1.0,
        0.0,
    )


def test_frozen_object_loses_consistency(h264):
    clip = world_clip(9)
    frozen = h264(frames_of(dataclasses.replace(clip, speed=0.0)))
    judgement = JUDGE.judge(frozen, h264(frames_of(clip)), caption(clip))
    assert judgement.votes["consistency"] == "right"
    assert judgement.left.details["motion_match"] == 0.0


def test_flicker_loses_consistency(h264):
    clip = world_clip(10)
    frames = frames_of(clip)
    gain = 1 + 0.2 * (-1.0) ** np.arange(FRAMES)  # brightness ±20 % every other frame
    flickering = h264(np.clip(frames * gain[:, None, None, None], 0, 1))
    judgement = JUDGE.judge(h264(frames), flickering, caption(clip))
    assert judgement.votes["consistency"] == "left"
    assert judgement.left.details["flicker"] < 0.01 < 0.05 < judgement.right.details["flicker"]


def test_extra_blob_loses_structure(h264):
    plain = Background(level=0.05, tint=(0.0, 0.0, 0.0))
    clip = ShapeClip("square", "red", "right", 0.3, (0.25, 0.3), 0.3 / (FRAMES - 1), plain)
    frames = frames_of(clip)
    blobbed = frames.copy()
    blobbed[:, 100:114, 60:74] = frames[0, 38, 32]  # a second red patch below the path
    judgement = JUDGE.judge(h264(frames), h264(blobbed), caption(clip))
    assert judgement.votes["structure"] == "left"
    assert judgement.left.structure > 0.97 > 0.93 > judgement.right.structure


def test_empty_video_loses_everything(h264):
    clip = world_clip(11)
    empty = h264(np.broadcast_to(frames_of(clip)[:1] * 0 + 0.1, frames_of(clip).shape))
    judgement = JUDGE.judge(empty, h264(frames_of(clip)), caption(clip))
    assert judgement.votes == dict.fromkeys(CRITERIA, "right")
    assert (judgement.left.visual, judgement.left.structure) == (0.0, 0.0)


def test_deterministic_and_indifferent_to_dtype_and_size():
    clip = world_clip(12)
    frames = frames_of(clip)
    prompt = caption(clip)
    assert JUDGE.score(frames, prompt).as_dict() == JUDGE.score(frames.copy(), prompt).as_dict()
    as_uint8 = JUDGE.judge(to_uint8(frames), frames, prompt)
    assert as_uint8.votes == dict.fromkeys(CRITERIA, "same")
    # a 256² render is compared at 128² (area-averaged): the same clip, the same video
    larger = JUDGE.judge(frames_of(clip, 256), frames, prompt)
    assert larger.votes == dict.fromkeys(CRITERIA, "same")
    assert abs(larger.left.overall - larger.right.overall) < 0.01


def test_margins_decide_same():
    clip = world_clip(13)
    sharp, blurred = frames_of(clip), blur(frames_of(clip), 3.0)
    lenient = ShapesJudge(margins={"overall": 1.0, "visual": 1.0})
    assert lenient.judge(sharp, blurred, caption(clip)).votes["visual"] == "same"
    strict = ShapesJudge(margins=dict.fromkeys(CRITERIA, 0.0))  # equal scores stay "same"
    assert strict.judge(sharp, sharp, caption(clip)).votes == dict.fromkeys(CRITERIA, "same")
    only = JUDGE.judge(sharp, blurred, caption(clip), criteria=["visual"])
    assert only.votes == {"visual": "left"} and only.margins == {"visual": MARGINS["visual"]}


def test_prompt_elements_it_does_not_name_are_not_scored(h264):
    clip = world_clip(15, shape="triangle", colour="green")
    frames = frames_of(clip)
    order = np.random.default_rng(15).permutation(FRAMES)
    judgement = JUDGE.judge(h264(frames), h264(frames[order]), "a green triangle")
    assert judgement.votes["consistency"] == "left"  # evenness alone still tells
    assert "motion_match" not in judgement.left.details
    assert judgement.left.details["colour_match"] == judgement.left.details["shape_match"] == 1
    assert prompt_elements("The blue square heading upwards") == {
        "colour": "blue",
        "shape": "square",
        "motion": "up",
    }
    assert prompt_elements("a red blue circle") == {"shape": "circle"}


def test_clear_errors():
    frames = frames_of(world_clip(14))
    with pytest.raises(ValueError, match=r"reads only shapes-world prompts.*names no colour"):
        JUDGE.score(frames, "a cat playing the piano")
    with pytest.raises(ValueError, match=r"cannot vote on \['beauty'\]"):
        JUDGE.judge(frames, frames, "a red circle moving left", criteria=["beauty"])
    with pytest.raises(ValueError, match=r"expected a video \[F, H, W, 3\]"):
        JUDGE.score(frames[0], "a red circle moving left")
    with pytest.raises(ValueError, match="unknown judge 'clip'; judges: shapes"):
        make_judge("clip")
    with pytest.raises(ValueError, match="margins for unknown criteria"):
        ShapesJudge(margins={"beauty": 0.1})
    assert isinstance(make_judge("shapes"), ShapesJudge)
