"""transformers, imported for its CLIP tokenizer only (`load_tokenizer` prefers it where it is
installed). At import, transformers advises that PyTorch was not found, which reads like a
failure to someone who only samples; the advice concerns transformers' models, which sampling
does not use, so the commands import it here first, without the advice."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable

_NO_ADVICE = "TRANSFORMERS_NO_ADVISORY_WARNINGS"  # read by transformers' `warning_advice`


def import_transformers_quietly(report: Callable[[str], None] | None = None) -> None:
    """`import transformers` (said first through `report`) without its advisory warnings; the
    environment is as it was after. A no-op once transformers is imported, or where it is not
    installed."""
    if "transformers" in sys.modules or importlib.util.find_spec("transformers") is None:
        return
    if report is not None:
        report("importing transformers (the CLIP tokenizer)")
    before = os.environ.get(_NO_ADVICE)
    os.environ[_NO_ADVICE] = "1"
    try:
        import transformers  # noqa: F401
    finally:
        if before is None:
            del os.environ[_NO_ADVICE]
        else:
            os.environ[_NO_ADVICE] = before
