"""Without the [train] extra, `train.py` and `python -m mv2_jax.data.build` stop with one line
naming `pip install "mv2-jax[train]"` (the packages are hidden from a child process through
`sys.modules[name] = None`, which makes both `import` and `find_spec` miss them); the list the
check uses is the extra's in pyproject.toml."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mv2_jax.extras import EXTRAS, TRAIN_INSTALL, missing_train_packages

ROOT = Path(__file__).resolve().parents[1]
HIDE = "import runpy, sys; sys.modules.update(dict.fromkeys({hidden!r})); sys.argv = {argv!r}; "


def _run_without(hidden: list[str], argv: list[str], run: str, cwd: Path):
    code = HIDE.format(hidden=hidden, argv=argv) + run
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("argv", "run", "program"),
    [
        (
            ["train.py", "--config", "configs/t2i.py:tiny", "--workdir", "runs/x"],
            "runpy.run_path('train.py', run_name='__main__')",
            "train.py",
        ),
        (
            ["build", "image", "--parquet", "x.parquet", "--data-dir", "data"],
            "runpy.run_module('mv2_jax.data.build', run_name='__main__', alter_sys=True)",
            "python -m mv2_jax.data.build",
        ),
    ],
    ids=["train.py", "data.build"],
)
def test_training_without_the_extra_says_how_to_install_it(tmp_path, argv, run, program):
    result = _run_without(["grain", "tensorboardX"], argv, run, cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr  # one line, no traceback
    line = result.stderr.strip()
    assert line.startswith(f"{program}: ")
    assert "grain, tensorboardX missing" in line
    assert line.endswith(TRAIN_INSTALL) and 'pip install "mv2-jax[train]"' in line
    assert not (ROOT / "runs" / "x").exists()


def test_with_the_extra_nothing_is_missing():
    assert missing_train_packages() == []  # the test extra pulls [train] in


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_the_check_lists_the_extra_of_pyproject(extra):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert names == {d.lower() for d in EXTRAS[extra][1].values()}
    assert any("mv2-jax[" in r and extra in r for r in project["optional-dependencies"]["test"])


def test_studies_without_the_extra_says_how_to_install_it():
    argv = ["mv2_jax.studies", "export", "--db", "x.db", "--name", "s", "--out", "v.jsonl"]
    run = "runpy.run_module('mv2_jax.studies', run_name='__main__', alter_sys=True)"
    result = _run_without(["sqlalchemy", "krippendorff"], argv, run, cwd=ROOT)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.strip() == (
        "python -m mv2_jax.studies: studies needs the [studies] extra (sqlalchemy, "
        'krippendorff missing): pip install "mv2-jax[studies]"'
    )
