"""The core install's tokenizer (`tokenizers` alone) gives transformers' `CLIPTokenizer` ids:
the shipped tokenizer folder as it is (tokenizer.json), as vocab.json + merges.txt only (how
SD1.5 / SDXL folders come), and with SDXL's second tokenizer's pad token `!`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import CLIPTokenizer

import mv2_jax
from mv2_jax.pipelines.clip_tokenizer import ClipTokenizer

SHIPPED = Path(mv2_jax.__file__).parent / "assets" / "shapes" / "t2i" / "tokenizer"
PROMPTS = [
    "a red circle moving right",
    "  The BLUE   square,\tmoving towards the LEFT!!  ",
    "",
    "café naïve 東京 — it's 2024's 3rd try",
    "a green triangle " * 12,  # longer than max_length: truncated, end token kept
    "<|endoftext|> a yellow <|startoftext|> circle",
]


def _folder(tmp_path: Path, form: str) -> Path:
    folder = tmp_path / form
    shutil.copytree(SHIPPED, folder)
    if form != "tokenizer.json":
        (folder / "tokenizer.json").unlink()
    if form == "sdxl pad":
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "!"}))
    return folder


@pytest.mark.parametrize("form", ["tokenizer.json", "vocab + merges", "sdxl pad"])
@pytest.mark.parametrize("max_length", [None, 8, 40])
def test_ids_match_transformers(tmp_path, form, max_length):
    folder = _folder(tmp_path, form)
    theirs = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    ours = ClipTokenizer.from_folder(folder)
    assert ours.model_max_length == theirs.model_max_length == 16
    assert len(ours) == len(theirs)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        theirs.bos_token_id,
        theirs.eos_token_id,
        theirs.pad_token_id,
    )
    call = dict(padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
    expected = theirs(PROMPTS, **call)["input_ids"]
    np.testing.assert_array_equal(ours(PROMPTS, **call)["input_ids"], expected)
    if form == "sdxl pad":
        assert ours.pad_token_id != ours.eos_token_id


def test_folder_without_vocabulary(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"no vocab\.json"):
        ClipTokenizer.from_folder(tmp_path)
