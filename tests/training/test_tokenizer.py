"""The project's CLIP BPE tokenizer: world words are single tokens, any text tokenises and
decodes back (checked through transformers' `CLIPTokenizer`, whose API has decoding), the
pipelines' `load_tokenizer` gives the same ids, and the build is deterministic."""

from __future__ import annotations

import pytest

from mv2_jax.pipelines.text import load_tokenizer
from mv2_jax.training.tokenizer import (
    DEFAULT_MERGES,
    byte_alphabet,
    learn_merges,
    world_words,
    write_bpe_tokenizer,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_bpe_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", max_length=16)


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def test_alphabet_is_cliptext_bytes():
    alphabet = byte_alphabet()
    assert len(set(alphabet)) == 256
    assert alphabet[ord("a")] == "a" and alphabet[ord(" ")] == "Ġ" and alphabet[0] == "Ā"


def test_size_and_special_tokens(tokenizer):
    assert len(tokenizer) == 2 * 256 + DEFAULT_MERGES + 2
    assert tokenizer.model_max_length == 16
    assert tokenizer.convert_ids_to_tokens([0, 256, len(tokenizer) - 2, len(tokenizer) - 1]) == [
        "!",
        "!</w>",
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == len(tokenizer) - 1


def test_world_words_are_single_tokens(tokenizer):
    words = world_words()
    assert {"magenta", "triangle", "towards", "upwards", "moving"} <= set(words)
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"]
    ids = tokenizer("The Red Circle moving to the left.")["input_ids"]
    assert len(ids) == 2 + 7 + 1  # start, seven words, ".", end


@pytest.mark.parametrize(
    "text",
    [
        "a photo of an astronaut riding a horse",
        "zebra quokka xylophone 1234",
        "Ünïcödé text, 日本語 and emoji 🙂",
    ],
)
def test_any_text_round_trips(tokenizer, text):
    """Up to CLIP's own normalisation: lower case, and a space after every pre-token (each
    digit, each run of punctuation), which decoding puts back as word ends."""
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.eos_token_id not in ids[1:-1]  # nothing became the unknown token
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")
    if text.replace(" ", "").isalpha():
        assert decoded == text


def test_pipelines_tokenize_as_transformers(folder, tokenizer):
    ours = load_tokenizer(folder)
    assert len(ours) == len(tokenizer)
    texts = ["a cyan square moves up over a dark background", "Ünïcödé 🙂 1234"]
    call = dict(padding="max_length", max_length=16, truncation=True, return_tensors="np")
    assert (ours(texts, **call)["input_ids"] == tokenizer(texts, **call)["input_ids"]).all()


def test_build_is_deterministic(folder, tmp_path):
    again = write_bpe_tokenizer(tmp_path / "again", max_length=16)
    for name in ("vocab.json", "merges.txt"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()


def test_merges_take_the_most_frequent_pair_first():
    # pairs: l o ×9, w e ×7 (lower, lowest, newer), o w ×6 (+ o w</w> ×3), e r</w> ×4, …
    merges = learn_merges(["low lower lowest"] * 3 + ["newer"], 3)
    assert merges[:2] == ["l o", "w e"]
    assert merges[2] == "lo we"  # ×6, ahead of we r</w> ×4
    # equal counts: the pair that sorts first
    assert learn_merges(["cd ab"], 2) == ["a b</w>", "c d</w>"]
