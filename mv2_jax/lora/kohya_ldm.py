"""kohya's SDXL LoRAs name UNet modules by the original (LDM / SGM) UNet: `input_blocks_4_1_…`,
`middle_block_1_…`, `output_blocks_2_2_conv`, flat (dots as underscores). `ldm_renamer` gives,
for one model, the diffusers flat name of each (`down_blocks_1_attentions_0_…`), counting each
level's layers off the model's own params instead of assuming SDXL's two per level.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# LDM ResBlock parts → diffusers ResnetBlock2D names.
RESNET_PARTS = {
    "in_layers_0": "norm1",
    "in_layers_2": "conv1",
    "emb_layers_1": "time_emb_proj",
    "out_layers_0": "norm2",
    "out_layers_3": "conv2",
    "skip_connection": "conv_shortcut",
}
# Modules outside the blocks.
OUTER = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding_linear_1",
    "time_embed_2": "time_embedding_linear_2",
    "label_emb_0_0": "add_embedding_linear_1",
    "label_emb_0_2": "add_embedding_linear_2",
    "out_0": "conv_norm_out",
    "out_2": "conv_out",
}
MIDDLE = {"0": "resnets_0", "1": "attentions_0", "2": "resnets_1"}
_BLOCK = re.compile(r"(input_blocks|output_blocks)_(\d+)_(\d+)(?:_(.+))?")
_MIDDLE = re.compile(r"middle_block_(\d)_(.+)")


def ldm_renamer(param_paths: Iterable[tuple[str, ...]]) -> Callable[[str], str | None]:
    """A function from a kohya LDM flat name to the diffusers flat name of the model whose
    Flax params have these paths (None for names of no LDM form)."""
    paths = list(param_paths)
    down = _levels(paths, "down_blocks", "downsamplers")
    up = _levels(paths, "up_blocks", "upsamplers")
    # input_blocks: conv_in, then each level's layers and its downsampler; output_blocks: each
    # level's layers, the upsampler in the last one.
    inputs = [None] + [(b, j) for b, (n, sampler) in enumerate(down) for j in range(n + sampler)]
    outputs = [(b, j) for b, (n, _) in enumerate(up) for j in range(n)]

    def rename(flat: str) -> str | None:
        if flat in OUTER:
            return OUTER[flat]
        if match := _MIDDLE.fullmatch(flat):
            return f"mid_block_{MIDDLE.get(match[1], '?')}_{_resnet(match[2])}"
        match = _BLOCK.fullmatch(flat)
        if match is None:
            return None
        kind, index, inner, rest = match[1], int(match[2]), match[3], match[4] or ""
        table, blocks, counts = (
            (inputs, "down_blocks", down) if kind == "input_blocks" else (outputs, "up_blocks", up)
        )
        if index >= len(table) or table[index] is None:
            return None
        block, layer = table[index]
        if layer == counts[block][0]:  # past the layers: the downsampler (`op`)
            return f"{blocks}_{block}_downsamplers_0_conv" if rest == "op" else None
        if rest == "conv" and kind == "output_blocks":
            return f"{blocks}_{block}_upsamplers_0_conv"
        if inner == "0":
            return f"{blocks}_{block}_resnets_{layer}_{_resnet(rest)}"
        return f"{blocks}_{block}_attentions_{layer}_{rest}"

    return rename


def _levels(paths, blocks: str, sampler: str) -> list[tuple[int, int]]:
    """Per level of `blocks`: (number of resnets, 1 if it has a down/upsampler else 0)."""
    resnets: dict[int, set[str]] = {}
    samplers: set[int] = set()
    for path in paths:
        if len(path) > 1 and (match := re.fullmatch(rf"{blocks}_(\d+)", path[0])):
            level = int(match[1])
            resnets.setdefault(level, set())
            if path[1].startswith("resnets_"):
                resnets[level].add(path[1])
            samplers.update([level] if path[1].startswith(sampler) else [])
    return [(len(resnets[b]), int(b in samplers)) for b in sorted(resnets)]


def _resnet(rest: str) -> str:
    for ldm, diffusers in RESNET_PARTS.items():
        if rest == ldm:
            return diffusers
    return rest
