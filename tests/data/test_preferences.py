"""Preference pairs (mv2_jax.data.preferences, preference_votes, preference_pipeline): a study's
votes, a JSONL of pairs and Pick-a-Pic's parquet layout → records (ties, raters, gold checks,
majority), the batches' shapes and values (each medium says who it is: green = 20·id), sharding
and resume, and precomputed pairs equal to the tiny pipeline's VAE and text encoder run on the
fly."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mv2_jax.data.build import main
from mv2_jax.data.builders import open_dataset
from mv2_jax.data.manifest import ManifestError
from mv2_jax.data.preference_pipeline import (
    make_precomputed_preference_iterator,
    make_preference_iterator,
)
from mv2_jax.data.preference_votes import gold_accuracy, study_pairs
from mv2_jax.data.preferences import NAME, build_preference_dataset
from mv2_jax.media import write_video
from tests.data.conftest import frame_numbers, image_bytes, video_frames

# (pair_id, prompt, video_left, video_right, rater, criterion, vote, gold): left/right are
# shuffled per rater as the study does. Pair 1: v0 beats v1 for r1, r2 (v1 on the left), loses
# for r3 and r4; r4 fails both gold checks, so without r4 v0 wins 2–1, with r4 it is 2–2 (a tie).
# Pair 2: two "same" (a tie). Pair 3: one vote each way (no majority: a tie).
VOTES = [
    (1, "one", "v0", "v1", "r1", "overall", "left", None),
    (1, "one", "v1", "v0", "r2", "overall", "right", None),
    (1, "one", "v0", "v1", "r3", "overall", "right", None),
    (1, "one", "v0", "v1", "r4", "overall", "right", None),
    (1, "one", "v0", "v1", "r1", "visual", "right", None),
    (2, "two", "v2", "v3", "r1", "overall", "same", None),
    (2, "two", "v3", "v2", "r2", "overall", "same", None),
    (3, "three", "v4", "v5", "r1", "overall", "left", None),
    (3, "three", "v5", "v4", "r2", "overall", "left", None),
    (9, "gold", "g0", "g1", "r1", "overall", "left", "left"),
    (9, "gold", "g0", "g0", "r1", "overall", "same", "same"),
    (9, "gold", "g0", "g1", "r4", "overall", "right", "left"),
    (9, "gold", "g0", "g0", "r4", "overall", "left", "same"),
    (9, "gold", "g0", "g1", "r2", "overall", "right", "any"),  # tests nothing: not counted
]
FIELDS = ("pair_id", "prompt", "video_left", "video_right", "rater", "criterion", "vote", "gold")


def names(pairs):
    return sorted((p["chosen"].stem, p["rejected"].stem, round(p["weight"], 4)) for p in pairs)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """votes.jsonl beside six 12-frame videos v0…v5.mp4 (the gold videos do not exist)."""
    root = tmp_path_factory.mktemp("study")
    for i in range(6):
        write_video(video_frames(12, i), root / f"v{i}.mp4", fps=8)
    lines = []
    for row in VOTES:
        record = dict(zip(FIELDS, row), study="s", seed=0, arm_left="a", arm_right="b")
        record["video_left"] += ".mp4"
        record["video_right"] += ".mp4"
        lines.append(json.dumps(record))
    (root / "votes.jsonl").write_text("\n".join(lines) + "\n")
    return root / "votes.jsonl"


def test_gold_accuracy_ignores_any_and_real_rows(study):
    rows = [dict(zip(FIELDS, row)) for row in VOTES]
    assert gold_accuracy(rows) == {"r1": 1.0, "r4": 0.0}


@pytest.mark.parametrize(
    "options, expected",
    [
        ({}, [("v0", "v1", 1.0)]),
        ({"ties": "keep"}, [("v0", "v1", 1.0), ("v2", "v3", 0.5), ("v3", "v2", 0.5),
                            ("v4", "v5", 0.5), ("v5", "v4", 0.5)]),
        ({"aggregate": "each"}, [("v0", "v1", 0.3333), ("v0", "v1", 0.3333), ("v1", "v0", 0.3333),
                                 ("v4", "v5", 0.5), ("v5", "v4", 0.5)]),
        ({"raters": ("r1",)}, [("v0", "v1", 1.0), ("v4", "v5", 1.0)]),
        ({"criteria": ("visual",)}, [("v1", "v0", 1.0)]),
        ({"criteria": ("overall", "visual")}, [("v0", "v1", 1.0), ("v1", "v0", 1.0)]),
        ({"min_gold_accuracy": 0.0, "ties": "keep"},  # r4 kept: pair 1 is 2–2
         [("v0", "v1", 0.5), ("v1", "v0", 0.5), ("v2", "v3", 0.5), ("v3", "v2", 0.5),
          ("v4", "v5", 0.5), ("v5", "v4", 0.5)]),
    ],
)  # fmt: skip
def test_study_rules(study, options, expected):
    assert names(study_pairs(study, **options)) == expected


def test_study_counts_and_errors(study):
    counts = Counter()
    pairs = study_pairs(study, counts=counts)
    assert pairs[0]["origin"] == "votes.jsonl:1" and pairs[0]["prompt"] == "one"
    assert pairs[0]["chosen"] == study.parent / "v0.mp4"
    assert counts == Counter(votes=14, rater_below_gold=3, gold_rows=3, other_criteria=1,
                             ties_dropped=2, pairs=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"no preference pair is left .*--ties keep"):
        study_pairs(study, min_gold_accuracy=0.0)  # pair 1 becomes a tie too
    with pytest.raises(ValueError, match=r"--raters lists \['nobody'\].*'r1', 'r2'"):
        study_pairs(study, raters=("nobody",))
    with pytest.raises(ValueError, match=r"no kept vote on criterion \['structure'\]"):
        study_pairs(study, criteria=("structure",))
    bad = study.parent / "bad.jsonl"
    bad.write_text(json.dumps({"pair_id": 1, "vote": "left"}) + "\n")
    with pytest.raises(ManifestError, match=r"bad.jsonl:1: lacks prompt, video_left"):
        study_pairs(bad)


@pytest.fixture(scope="module")
def study_data(study, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("study_data")
    build_preference_dataset(data_dir, votes=study, ties="keep")
    return data_dir


def test_study_records_and_video_batches(study_data):
    source, metadata = open_dataset(study_data, NAME, "")
    assert (metadata["kind"], metadata["written"], metadata["skipped"]) == ("video", 5, {})
    assert metadata["counts"]["ties_kept"] == 2
    record = source[0]
    assert record["source"] == b"study" and record["criterion"] == b"overall"
    it = make_preference_iterator(study_data, global_batch_size=5, height=16, width=16,
                                  num_frames=4, frame_stride=2, seed=3)  # fmt: skip
    batch = next(it)
    assert batch["chosen"].shape == batch["rejected"].shape == (5, 4, 16, 16, 3)
    assert batch["chosen"].dtype == np.float32 and batch["weight"].dtype == np.float32
    assert batch["chosen"].min() >= -1.0 and batch["chosen"].max() <= 1.0
    assert sorted(batch["weight"].tolist()) == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert not batch["is_image"].any() and "input_ids" not in batch
    # The same frame window for both sides; every pair's sides are the two videos it names.
    starts = frame_numbers(batch["chosen"])
    np.testing.assert_array_equal(starts, frame_numbers(batch["rejected"]))
    np.testing.assert_array_equal(np.diff(starts, axis=1), 2)
    ids = lambda x: np.round((x[:, 0, ..., 1].mean(axis=(1, 2)) + 1) * 127.5 / 20)  # noqa: E731
    sides = sorted(zip(ids(batch["chosen"]).tolist(), ids(batch["rejected"]).tolist()))
    assert sides == [(0, 1), (2, 3), (3, 2), (4, 5), (5, 4)]


@pytest.fixture(scope="module")
def pickapic(tmp_path_factory):
    """Pick-a-Pic v2's layout, 5 rows: labels 1, 0, ½, 1, 0.25 (not a label); image `jpg_k` of
    row r is image id 2r + k (green 20·id), different sizes; extra columns as the real file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [1.0, 0.0, 0.5, 1.0, 0.25]
    table = pa.table({
        "are_different": [True] * 5,
        "caption": [f"prompt {r}" for r in range(5)],
        "jpg_0": [image_bytes(2 * r, size=(40, 30)) for r in range(5)],
        "jpg_1": [image_bytes(2 * r + 1, size=(30, 40)) for r in range(5)],
        "label_0": labels,
        "label_1": [1 - x for x in labels],
        "model_0": ["sdxl"] * 5,
    })  # fmt: skip
    path = tmp_path_factory.mktemp("pickapic") / "train-00000.parquet"
    pq.write_table(table, path)
    return path


def green_ids(pixels: np.ndarray) -> list[int]:
    return np.round((pixels[..., 1].mean(axis=(-1, -2)) + 1) * 127.5 / 20).astype(int).tolist()


def test_pickapic_records_and_image_batches(pickapic, tmp_path, capsys):
    args = ["preferences", "--pickapic", str(pickapic), "--data-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 3 examples" in out and "'bad_label': 1, 'ties_dropped': 1" in out
    source, metadata = open_dataset(tmp_path, NAME, "")
    assert metadata["kind"] == "image" and metadata["source"] == "pickapic"
    assert [source[i]["origin"] for i in range(3)] == [b"train-00000.parquet:0",
                                                       b"train-00000.parquet:1",
                                                       b"train-00000.parquet:3"]  # fmt: skip
    tokenizer = _char_tokenizer(tmp_path)
    it = make_preference_iterator(tmp_path, global_batch_size=3, height=16, width=16,
                                  tokenizer=tokenizer, seed=1)  # fmt: skip
    batch = next(it)
    assert batch["chosen"].shape == batch["rejected"].shape == (3, 16, 16, 3)
    assert batch["input_ids"].shape == (3, 77) and batch["input_ids"].dtype == np.int32
    assert batch["is_image"].all() and (batch["weight"] == 1.0).all()
    chosen = dict(zip(batch["caption"], green_ids(batch["chosen"])))
    rejected = dict(zip(batch["caption"], green_ids(batch["rejected"])))
    assert chosen == {"prompt 0": 0, "prompt 1": 3, "prompt 3": 6}  # label_0 = 1 → jpg_0
    assert rejected == {"prompt 0": 1, "prompt 1": 2, "prompt 3": 7}
    np.testing.assert_allclose(batch["chosen"][..., 0], 50 / 127.5 - 1, atol=1e-7)  # red 50
    assert main([*args, "--ties", "keep", "--overwrite"]) == 0
    assert "wrote 5 examples" in capsys.readouterr().out


def _char_tokenizer(tmp_path):
    from mv2_jax.training.random_pipeline import write_char_tokenizer

    return write_char_tokenizer(tmp_path / "tokenizer")


def test_jsonl_pairs_skip_missing_and_corrupt_media(tmp_path, caplog):
    for i in range(4):
        (tmp_path / f"i{i}.png").write_bytes(image_bytes(i))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [
        {"prompt": "a", "chosen": "i0.png", "rejected": "i1.png"},
        {"prompt": "b", "chosen": str(tmp_path / "i3.png"), "rejected": "i2.png", "weight": 2.0},
        {"prompt": "c", "chosen": "gone.png", "rejected": "i1.png"},
        {"prompt": "d", "chosen": "i0.png", "rejected": "broken.png"},
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    folder = build_preference_dataset(tmp_path / "out", pairs=tmp_path / "pairs.jsonl")
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["written"] == 2 and metadata["source"] == "jsonl"
    assert metadata["skipped"] == {"missing_file": 1, "unreadable_image": 1}
    assert "pairs.jsonl:3: skipped (missing_file: chosen" in metadata["skipped_examples"][0]
    assert "broken.png" in metadata["skipped_examples"][1] and "pairs.jsonl:4" in caplog.text
    source, _ = open_dataset(tmp_path / "out", NAME, "")
    assert [float(source[i]["weight"]) for i in range(2)] == [1.0, 2.0]


def test_jsonl_video_pairs_skip_truncated_video(tmp_path, capsys):
    for i in range(2):
        write_video(video_frames(6, i), tmp_path / f"v{i}.mp4", fps=8)
    data = (tmp_path / "v1.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    lines = [{"prompt": "a", "chosen": "v0.mp4", "rejected": "v1.mp4"},
             {"prompt": "b", "chosen": "v0.mp4", "rejected": "cut.mp4"}]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    argv = ["preferences", "--pairs", str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote 1 examples" in out and "{'corrupt_video': 1}" in out
    assert "pairs.jsonl:2: skipped (corrupt_video: rejected" in out and "cut.mp4" in out
    _, metadata = open_dataset(tmp_path, NAME, "")
    assert metadata["kind"] == "video"


def test_errors(tmp_path, study, pickapic, capsys):
    write_video(video_frames(4, 0), tmp_path / "v.mp4", fps=8)
    (tmp_path / "i.png").write_bytes(image_bytes(0))
    mixed = [{"prompt": "a", "chosen": "i.png", "rejected": "i.png"},
             {"prompt": "b", "chosen": "v.mp4", "rejected": "v.mp4"}]  # fmt: skip
    (tmp_path / "mixed.jsonl").write_text("\n".join(map(json.dumps, mixed)) + "\n")
    with pytest.raises(ValueError, match=r"mixed.jsonl:2: a video pair among image pairs"):
        build_preference_dataset(tmp_path / "m", pairs=tmp_path / "mixed.jsonl")
    assert not (tmp_path / "m" / NAME / "1.0.0").exists()
    capsys.readouterr()
    (tmp_path / "short.jsonl").write_text('{"prompt": "a", "chosen": "i.png"}\n')
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b""]}), tmp_path / "cols.parquet")
    cases = [
        (["--pairs", str(tmp_path / "short.jsonl")], "short.jsonl:1: lacks ['rejected']"),
        (["--pickapic", str(tmp_path / "cols.parquet")], "missing column(s) ['jpg_1', 'label_0']"),
        (["--votes", str(study), "--raters", "r9"], "--raters lists ['r9']"),
        (["--votes", str(tmp_path / "none.jsonl")], "none.jsonl: no such votes file"),
    ]
    for argv, message in cases:
        assert main(["preferences", *argv, "--data-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # exactly one input
        main(["preferences", "--votes", str(study), "--pickapic", str(pickapic), "--out", "x"])


def test_sharding_and_resume(pickapic, tmp_path):
    build_preference_dataset(tmp_path, pickapic=pickapic, ties="keep")
    kw = dict(height=8, width=8, seed=5)
    whole = make_preference_iterator(tmp_path, global_batch_size=4, **kw)
    halves = [make_preference_iterator(tmp_path, global_batch_size=4, process_index=p,
                                       process_count=2, **kw) for p in range(2)]  # fmt: skip
    for _ in range(3):
        full = next(whole)["position"].tolist()
        parts = [next(h)["position"].tolist() for h in halves]
        assert full == [parts[k % 2][k // 2] for k in range(4)]
    state = json.loads(json.dumps(whole.get_state()))
    expected = [next(whole) for _ in range(2)]
    resumed = make_preference_iterator(tmp_path, global_batch_size=4, **kw)
    resumed.set_state(state)
    for batch in expected:
        got = next(resumed)
        for key in ("chosen", "rejected", "weight", "position"):
            np.testing.assert_array_equal(got[key], batch[key])


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    """The T2I stage of configs/t2i.py:tiny on a random tiny pipeline (VAE ×2, 2-layer CLIP)."""
    from configs.t2i import get_config, tiny_model
    from mv2_jax.parallel.mesh import make_mesh
    from mv2_jax.training.random_pipeline import write_random_pipeline
    from mv2_jax.training.t2i import TextToImageStage

    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    write_random_pipeline(tiny_model(), folder, seed=0)
    config = get_config("tiny")
    config.model.pipeline = str(folder)
    return TextToImageStage.from_config(config, folder, make_mesh(config.mesh))


@pytest.mark.slow  # the tiny pipeline's random init: ~30 s on two cores
@pytest.mark.parametrize("kind", ["image", "video"])
def test_precomputed_pairs_equal_encoding_on_the_fly(kind, tiny_stage, pickapic, study_data,
                                                     tmp_path):  # fmt: skip
    import jax

    from mv2_jax.data.precompute import precompute_dataset
    from mv2_jax.training.preference_data import preference_encoder

    stage, consts = tiny_stage, tiny_stage.consts
    if kind == "image":
        data_dir, frames, count = tmp_path / "pairs", 1, 3
        build_preference_dataset(data_dir, pickapic=pickapic)
    else:
        data_dir, frames, count = study_data, 2, 5
    raw = dict(global_batch_size=count, height=16, width=16, num_frames=frames, seed=4)
    encode_fn = preference_encoder(stage, consts)
    precompute_dataset(make_preference_iterator(data_dir, **raw), encode_fn, tmp_path / "pre",
                       count)  # fmt: skip
    # The stored records are the pixel pipeline's first batch (one epoch: every pair once),
    # each side through the stage's own precompute encoding (the VAE's posterior mean, scaled)
    # and the prompt through its text encoder. tfds stores them in its own order.
    pixels = next(make_preference_iterator(data_dir, **raw))
    ids = stage.token_ids(pixels["caption"])
    encode = jax.jit(stage.encode_for_precompute)
    chosen = jax.device_get(encode(consts, {"pixels": pixels["chosen"], "input_ids": ids}))
    rejected = jax.device_get(encode(consts, {"pixels": pixels["rejected"], "input_ids": ids}))
    squeeze = (lambda x: x[:, 0]) if kind == "image" else (lambda x: x)
    expected = {"chosen_latents": squeeze(chosen["latents"]), "weight": pixels["weight"],
                "rejected_latents": squeeze(rejected["latents"]),
                "prompt_embeds": chosen["context"]}  # fmt: skip
    assert np.abs(expected["chosen_latents"] - expected["rejected_latents"]).max() > 0.01
    stored, _ = open_dataset(tmp_path / "pre", "precomputed", "")
    matched = []
    for k in range(count):
        record = stored[k]
        rows = [j for j in range(count) if pixels["caption"][j] == record["caption"].decode()]
        j = min(
            rows,
            key=lambda j: np.abs(record["chosen_latents"] - expected["chosen_latents"][j]).max(),
        )
        matched.append(j)
        for key, value in expected.items():
            np.testing.assert_allclose(record[key], value[j], rtol=1e-5, atol=1e-5)
    assert sorted(matched) == list(range(count))
    batch = next(make_precomputed_preference_iterator(tmp_path / "pre", count, seed=9))
    lead = (count,) if kind == "image" else (count, frames)
    assert batch["chosen_latents"].shape == batch["rejected_latents"].shape == (*lead, 8, 8, 4)
    assert batch["prompt_embeds"].shape == (count, 77, 32)
    assert batch["weight"].dtype == np.float32 and batch["weight"].shape == (count,)
    assert sorted(batch["caption"].tolist()) == sorted(pixels["caption"].tolist())
    plain = lambda b: {"latents": b["chosen"]}  # noqa: E731  (a t2i-style precompute)
    precompute_dataset(make_preference_iterator(data_dir, **raw), plain, tmp_path / "t2i", count)
    with pytest.raises(ValueError, match="not one of preference pairs"):
        make_precomputed_preference_iterator(tmp_path / "t2i", count)


def test_preference_iterator_reads_config_data(pickapic, tmp_path):
    from configs.t2i import get_config
    from mv2_jax.data.preferences import preference_iterator

    build_preference_dataset(tmp_path, pickapic=pickapic)
    config = get_config("tiny")
    config.data.preference_dir = str(tmp_path)
    config.batch_size, config.data.height, config.data.width = 3, 8, 12
    batch = next(preference_iterator(config))
    assert batch["chosen"].shape == (3, 8, 12, 3)
    assert batch["prompt"].tolist() == batch["caption"].tolist()
    assert sorted(batch["prompt"].tolist()) == ["prompt 0", "prompt 1", "prompt 3"]
    config.data.precomputed_dir = str(tmp_path)
    with pytest.raises(ValueError, match=r"set one of config\.data\.preference_dir"):
        preference_iterator(config)
