"""Model folders written all or nothing (`mv2_jax.weights.new_folder`): the folder appears only
when complete, an error leaves nothing behind, what a killed writer left is removed with a
warning that names it, and `written_once` writes a folder that is not there yet, once."""

from __future__ import annotations

import logging

import pytest

from mv2_jax.weights.new_folder import new_folder, partial_folder, written_once


def test_the_folder_appears_when_the_block_ends(tmp_path):
    out = tmp_path / "model"
    with new_folder(out) as partial:
        assert partial == tmp_path / "model.partial"
        (partial / "config.json").write_text("{}")
        assert not out.exists()
    assert (out / "config.json").read_text() == "{}"
    assert not partial.exists()


def test_an_error_leaves_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError, match="half way"), new_folder(out) as partial:
        (partial / "config.json").write_text("{}")
        raise RuntimeError("half way")
    assert not out.exists() and not partial_folder(out).exists()


def test_a_stale_partial_is_removed_with_a_warning(tmp_path, caplog):
    out = tmp_path / "model"
    stale = partial_folder(out)
    stale.mkdir()
    (stale / "half_written.bin").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING), new_folder(out) as partial:
        assert list(partial.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(stale) in warnings[0]


def test_an_existing_folder_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    refused = pytest.raises(FileExistsError, match="already exists; convert into a new folder")
    with refused, new_folder(tmp_path / "model", "convert"):
        pass


def test_written_once_writes_a_missing_folder_once(tmp_path):
    calls = []

    def write(out):
        calls.append(out)
        with new_folder(out) as partial:
            (partial / "vocab.json").write_text("{}")

    out = tmp_path / "tokenizer"
    assert written_once(out, write) == out
    assert written_once(out, write) == out
    assert calls == [out] and (out / "vocab.json").is_file()
