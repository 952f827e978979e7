"""The project's own CLIP-format BPE tokenizer, for text encoders trained here (stage "clip").

No installed package ships CLIP's vocabulary (`bpe_simple_vocab_16e6.txt.gz`, or a
vocab.json + merges.txt), and nothing may be downloaded, so the vocabulary is built here: a
byte-level BPE in exactly CLIP's format, which `transformers.CLIPTokenizer` reads like the
real one:

- text is NFC-normalised, whitespace-collapsed and lower-cased, split by CLIP's pattern
  (letter runs, single digits, punctuation runs, English contractions), and each piece is
  written in CLIP's byte → printable-character alphabet (`byte_alphabet`);
- the vocabulary is the 256 byte characters (in CLIP's order), the same 256 with the
  end-of-word mark `</w>`, one token per merge (in merge order), then `<|startoftext|>` and
  `<|endoftext|>` (CLIP's beginning, end, padding and unknown token); every byte is a token,
  so any text tokenises (into pieces at worst), never into the unknown token;
- the merges are learned (`learn_merges`, on words split by transformers' own CLIP
  pre-tokeniser, so training splits text as the tokenizer later does) from the shapes
  world's captions, all of their variations, weighted so each world word becomes one token,
  plus a few thousand common English words (`tokenizer_words.py`) for everything else.

The build is deterministic: the same arguments give the same files, byte for byte.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from mv2_jax.training.tokenizer_words import common_words
from mv2_jax.weights.new_folder import check_new_folder, new_folder

START, END = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
DEFAULT_MERGES = 1400  # vocabulary 2·256 + 1400 + 2 = 1914 tokens
WORLD_WEIGHT = 50  # each world caption counts this many times in the merge statistics


def _visible_bytes() -> list[int]:
    return [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]


def byte_alphabet() -> list[str]:
    """The printable character standing for each byte 0…255 (CLIP's / GPT-2's alphabet): bytes
    that are visible Latin-1 characters stand for themselves; the others (controls, space,
    soft hyphen, …) take the characters from U+0100 on, in byte order."""
    visible = set(_visible_bytes())
    hidden = [b for b in range(256) if b not in visible]
    return [chr(b) if b in visible else chr(256 + hidden.index(b)) for b in range(256)]


def alphabet_in_vocab_order() -> list[str]:
    """The byte characters in the order CLIP's vocabulary lists them: visible bytes first."""
    alphabet, visible = byte_alphabet(), _visible_bytes()
    return [alphabet[b] for b in visible] + [
        alphabet[b] for b in range(256) if b not in set(visible)
    ]


def world_captions() -> list[str]:
    """Every caption of the shapes world: each (colour, shape, motion), held-out pairs too
    (prompts name them), in every variation `mv2_jax.data.shapes.caption` makes."""
    import itertools

    import numpy as np

    from mv2_jax.data import shapes

    template = shapes.sample_clip(np.random.default_rng(0))
    captions = []
    for colour, shape, motion in itertools.product(shapes.COLOURS, shapes.SHAPES, shapes.MOTIONS):
        clip = dataclasses.replace(template, colour=colour, shape=shape, motion=motion)
        captions.extend(shapes.caption_variations(clip))
    return captions


def world_words() -> list[str]:
    """The words of the world's captions (each must be a single token)."""
    return sorted({word for caption in world_captions() for word in caption.split()})


def _backend(vocab: dict[str, int], merges: list[str]):
    """CLIP's normaliser and pre-tokeniser, from transformers' own `CLIPTokenizer`."""
    from transformers import CLIPTokenizer

    pairs = [tuple(m.split(" ")) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs).backend_tokenizer


def pre_tokenize(texts: Iterable[str]) -> Counter:
    """How often each word occurs in `texts`, words as CLIP's tokenizer splits and spells them
    (normalised, in the byte alphabet)."""
    clip = _backend({START: 0, END: 1}, [])
    words: Counter = Counter()
    for text, n in Counter(texts).items():
        normal = clip.normalizer.normalize_str(text)
        for piece, _ in clip.pre_tokenizer.pre_tokenize_str(normal):
            words[piece] += n
    return words


def learn_merges(texts: Iterable[str], num_merges: int) -> list[str]:
    """The first `num_merges` BPE merges ("a b" strings, CLIP's `</w>` end-of-word mark) of
    `texts`: repeatedly the most frequent adjacent pair of symbols, ties going to the pair
    that sorts first. (Learned here rather than by the `tokenizers` trainer, whose choice
    among equally frequent pairs changes from run to run.)"""
    counts = pre_tokenize(texts)
    words = [[*w[:-1], w[-1] + END_OF_WORD] for w in sorted(counts)]
    freqs = [counts[w] for w in sorted(counts)]
    pair_counts: Counter = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair → words holding it
    for i, symbols in enumerate(words):
        for pair in itertools.pairwise(symbols):
            pair_counts[pair] += freqs[i]
            holders[pair].add(i)
    heap = [(-n, pair) for pair, n in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap and len(merges) < num_merges:
        n, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -n or n == 0:
            continue  # an outdated entry: the pair's count has changed since
        merges.append(" ".join(pair))
        changed = set()
        for i in sorted(holders.pop(pair)):
            for old in itertools.pairwise(words[i]):
                pair_counts[old] -= freqs[i]
                changed.add(old)
            words[i] = _merge(words[i], pair)
            for new in itertools.pairwise(words[i]):
                pair_counts[new] += freqs[i]
                holders[new].add(i)
                changed.add(new)
        pair_counts.pop(pair, None)
        for other in changed - {pair}:
            if pair_counts[other] > 0:
                heapq.heappush(heap, (-pair_counts[other], other))
    return merges


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def clip_vocabulary(merges: Sequence[str]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes + `</w>`, one token per merge, the two specials."""
    alphabet = alphabet_in_vocab_order()
    tokens = [*alphabet, *(c + END_OF_WORD for c in alphabet)]
    tokens += [merge.replace(" ", "") for merge in merges]
    tokens += [START, END]
    vocab = {}
    for token in tokens:  # a merge can rebuild an existing token; keep the first id
        vocab.setdefault(token, len(vocab))
    return vocab


def training_corpus(world_weight: int = WORLD_WEIGHT) -> list[str]:
    """The world's captions (`world_weight` times each) and the common English words."""
    return world_captions() * world_weight + list(common_words())


def write_bpe_tokenizer(
    folder: str | Path,
    max_length: int = 77,
    num_merges: int = DEFAULT_MERGES,
    texts: Sequence[str] | None = None,
) -> Path:
    """Write a CLIP BPE tokenizer to `folder` (vocab.json, merges.txt, tokenizer_config.json,
    …) that `transformers.CLIPTokenizer.from_pretrained(folder)` and
    `mv2_jax.pipelines.text.load_tokenizer` read; `max_length` is its `model_max_length`.
    `texts` is the corpus the merges are learned from (default: `training_corpus()`, and then
    every world word is checked to be one token). `folder` must not exist; it appears whole or
    not at all (`new_folder`)."""
    from transformers import CLIPTokenizer

    folder = check_new_folder(folder, "write the tokenizer")
    merges = learn_merges(training_corpus() if texts is None else texts, num_merges)
    vocab = clip_vocabulary(merges)
    with new_folder(folder, "write the tokenizer") as partial:
        (partial / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
        (partial / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
        tokenizer = CLIPTokenizer(
            vocab=str(partial / "vocab.json"),
            merges=str(partial / "merges.txt"),
            model_max_length=max_length,
        )
        if texts is None:
            check_single_tokens(tokenizer, world_words())
        tokenizer.save_pretrained(str(partial))
    return folder


def check_single_tokens(tokenizer, words: Iterable[str]) -> None:
    """Raise if any of `words` is more than one token."""
    split = {w: t for w in words if len(t := tokenizer.tokenize(w)) != 1}
    if split:
        raise ValueError(
            f"words split into several tokens: {split}; raise num_merges or the corpus weight "
            "of the texts they come from"
        )
