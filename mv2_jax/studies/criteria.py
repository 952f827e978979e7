"""What raters judge: MagicVideo-V2's three aspects (frame quality and visual appeal; temporal
consistency, motion range and validity; structural errors) and the paper's single `overall`
vote that weighs them. A study asks for one vote per criterion it lists."""

from __future__ import annotations

from collections.abc import Sequence

CRITERIA: dict[str, str] = {
    "overall": "Which video is better overall? Weigh the three aspects together: frame quality "
    "and visual appeal, temporal consistency and motion, and structural errors.",
    "visual": "Frame quality and visual appeal: sharpness, colour, detail, how good each frame "
    "looks and how well it shows the prompt.",
    "consistency": "Temporal consistency, motion range and validity: objects keep their look "
    "from frame to frame, nothing flickers, and the motion is large enough and plausible.",
    "structure": "Structural errors: distorted or broken shapes, extra or missing parts, "
    "objects that melt or merge.",
}
DEFAULT_CRITERIA = ("overall",)
VOTES = ("left", "same", "right")


def parse_criteria(text: str | Sequence[str]) -> tuple[str, ...]:
    """`"visual,consistency,structure"` (or a list) → the criteria, checked: known names, no
    repeats, at least one. A ValueError names the unknown ones and lists the known."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CRITERIA]
    if unknown or not names:
        raise ValueError(
            f"unknown criteria {unknown or '(none given)'}; choose from {', '.join(CRITERIA)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"criteria repeated: {names}")
    return tuple(names)
