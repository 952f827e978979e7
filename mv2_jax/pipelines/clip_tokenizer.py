"""CLIP's tokenizer from a model folder through the `tokenizers` library alone: what every
pipeline and training stage tokenizes with (`text.load_tokenizer`), so that sampling neither
needs transformers (~140 MB with what it pulls; the [train] extra) nor spends the ~0.3 s of
importing it; tests hold its ids equal to transformers' `CLIPTokenizer`.

The pipeline is the one transformers' `CLIPTokenizer` builds: NFC, whitespace runs → one
space, lower case; CLIP's split regex, byte-level; BPE with `</w>` word ends; then
`<|startoftext|> ids <|endoftext|>`, truncated to `max_length` and padded with the folder's pad
token (`!` for SDXL's second tokenizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

# transformers' CLIPTokenizer defaults, for folders whose tokenizer_config.json leaves one out.
_DEFAULT_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)


class ClipTokenizer:
    """Prompts → `{"input_ids": [B, L] int}`, called as pipelines call transformers' tokenizer:
    `tokenizer(prompts, padding="max_length", max_length=L, truncation=True,
    return_tensors="np")`."""

    def __init__(self, backend: Tokenizer, *, model_max_length: int, tokens: dict[str, str]):
        backend.no_truncation()  # a tokenizer.json may carry its own; __call__ does both
        backend.no_padding()
        self.backend = backend
        self.model_max_length = model_max_length
        ids = {name: backend.token_to_id(token) for name, token in tokens.items()}
        missing = [tokens[name] for name, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"special tokens not in the vocabulary: {missing}")
        self.bos_token_id = ids["bos_token"]
        self.eos_token_id = ids["eos_token"]
        self.pad_token_id = ids["pad_token"]

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """`tokenizer.json` where the folder has one, else `vocab.json` + `merges.txt`;
        special tokens and `model_max_length` from `tokenizer_config.json`."""
        folder = Path(folder)
        config = _read_json(folder / "special_tokens_map.json") | _read_json(
            folder / "tokenizer_config.json"
        )
        tokens = {name: _content(config.get(name, t)) for name, t in _DEFAULT_TOKENS.items()}
        if (folder / "tokenizer.json").is_file():
            backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        else:
            backend = _clip_backend(folder, tokens)
        return cls(backend, model_max_length=int(config.get("model_max_length", 77)), tokens=tokens)

    def __len__(self) -> int:
        """The vocabulary's size, added tokens included (as `len` of transformers')."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(
        self,
        prompts: Sequence[str],
        *,
        padding: str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str = "np",
    ) -> dict[str, np.ndarray]:
        if padding != "max_length" or not truncation or return_tensors != "np":
            raise NotImplementedError(
                "ClipTokenizer pads and truncates to max_length and returns numpy; "
                "transformers' CLIPTokenizer offers the other forms"
            )
        length = max_length or self.model_max_length
        ids = np.full((len(prompts), length), self.pad_token_id, np.int64)
        for row, encoding in enumerate(
            self.backend.encode_batch(list(prompts), add_special_tokens=False)
        ):
            tokens = [self.bos_token_id, *encoding.ids[: length - 2], self.eos_token_id]
            ids[row, : len(tokens)] = tokens
        return {"input_ids": ids}


def _clip_backend(folder: Path, tokens: dict[str, str]) -> Tokenizer:
    """The `tokenizers` pipeline that transformers' `CLIPTokenizer.__init__` builds."""
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name} (and no tokenizer.json)")
    vocab, merges = BPE.read_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
    bpe = BPE(
        vocab,
        merges,
        continuing_subword_prefix="",
        end_of_word_suffix="</w>",
        fuse_unk=False,
        unk_token=tokens["unk_token"],
    )
    backend = Tokenizer(bpe)
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(sorted(set(tokens.values())))
    return backend


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _content(token: str | dict) -> str:
    """A special token as tokenizer configs write it: a string or an AddedToken dict."""
    return token["content"] if isinstance(token, dict) else token
