"""The stage contract (`mv2_jax.training.stage_contract.TrainingStage`): every stage of the
trainer has all of it, and a stage class that lacks a hook or misspells one stops the run at
start-up with an error naming it, before anything is written or loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from mv2_jax.training import trainer
from mv2_jax.training.stage import FreshModelStage
from mv2_jax.training.stage_contract import contract_members, missing_members
from tests.training.conftest import tiny_config


@pytest.mark.parametrize("name", sorted(trainer.STAGES))
def test_every_stage_has_the_whole_contract(name):
    cls = trainer.stage_class(name)
    assert missing_members(cls) == []
    assert isinstance(cls.needs_pipeline, bool) and isinstance(cls.uses_config_data, bool)


def test_the_contract_lists_every_hook():
    assert set(contract_members()) == {
        "needs_pipeline", "uses_config_data", "param_dtype", "consts", "from_config",
        "param_shapes", "param_shardings", "load_params", "trainable_patterns",
        "make_data_iterator", "prepare", "loss",
    }  # fmt: skip


@dataclass(kw_only=True)
class MisspeltStage(FreshModelStage):
    """A stage that makes its own data, with the hook's name misspelt."""

    uses_config_data: ClassVar[bool] = False

    def make_data_iterater(self, config):  # the typo under test
        raise AssertionError("never called")

    def prepare(self, batch):
        return batch

    def loss(self, params, consts, batch, keys):
        raise AssertionError("never called")

    @classmethod
    def from_config(cls, config, pipeline, mesh, workdir=None):
        raise AssertionError("the check comes first")


class HalfStage:
    """Not built on a base: most of the contract is missing."""

    needs_pipeline = False

    def loss(self, params, consts, batch, keys):
        raise AssertionError("never called")


def test_a_misspelt_hook_stops_the_run_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setitem(trainer.STAGES, "t2i", f"{__name__}:MisspeltStage")
    workdir = tmp_path / "run"
    with pytest.raises(TypeError) as error:
        trainer.train(tiny_config(tmp_path / "no_pipeline"), workdir)
    message = str(error.value)
    assert "stage 't2i'" in message and "MisspeltStage" in message
    assert "make_data_iterator (it has 'make_data_iterater': misspelt?)" in message
    assert not workdir.exists()  # stopped before anything was written


def test_every_missing_member_is_listed(monkeypatch):
    monkeypatch.setitem(trainer.STAGES, "vfi", f"{__name__}:HalfStage")
    with pytest.raises(TypeError) as error:
        trainer.stage_class("vfi")
    missing = set(contract_members()) - {"needs_pipeline", "loss"}
    listed = str(error.value).split(" lacks ")[1].split(":")[0]
    assert set(listed.split(", ")) == missing
