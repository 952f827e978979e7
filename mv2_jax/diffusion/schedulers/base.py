"""The scheduler interface: immutable, hashable objects (static arguments of `jax.jit`) whose
numbers live in host-built `tables` and whose `step` is a pure function of a small state.

Configs are diffusers' `scheduler_config.json` dicts, read with diffusers' `from_config` rules,
so a folder's betas, spacing and prediction type carry over when the algorithm is swapped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from mv2_jax.diffusion import schedules

log = logging.getLogger(__name__)

Tables = dict[str, Any]  # name → np.ndarray on the host, jax.Array inside the loop
State = dict[str, jax.Array]
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def _frozen(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


class FrozenConfig(Mapping):
    """A read-only, hashable config dict (lists become tuples), so a scheduler can be static."""

    def __init__(self, items: Mapping[str, Any]):
        self._items = {k: _frozen(v) for k, v in items.items()}
        self._hash = hash(tuple(sorted(self._items.items())))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrozenConfig) and self._items == other._items

    def __repr__(self) -> str:
        return f"FrozenConfig({self._items!r})"


def x0_from_output(prediction_type: str, sample, model_output, alpha, sigma):
    """x̂₀ under xₜ = α x₀ + σ ε from an ε-, v- (Salimans & Ho 2022, §4) or x₀-prediction."""
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    return model_output


def eps_from_output(prediction_type: str, sample, model_output, x0, alpha, sigma):
    """ε̂ under xₜ = α x₀ + σ ε, given x̂₀ = `x0` (unclipped) from the same model output."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":  # v = α ε − σ x₀  ⇒  ε = α v + σ xₜ
        return alpha * model_output + sigma * sample
    return (sample - alpha * x0) / sigma


def row(tables: Tables, i: jax.Array):
    """Step `i`'s entry of each per-step table, inside the loop: `at = row(tables, i)`,
    `at("sqrt_alpha")`."""
    return lambda key: jnp.asarray(tables[key])[i]


def _pad(table: np.ndarray, n: int, max_steps: int) -> np.ndarray:
    """Pad a per-step table (`n` or `n + 1` long) with its last value up to `max_steps` (+1)."""
    length = table.shape[0]
    target = max_steps + (length - n)
    widths = [(0, target - length)] + [(0, 0)] * (table.ndim - 1)
    return np.pad(table, widths, mode="edge")


@dataclasses.dataclass(frozen=True)
class Scheduler:
    """Base of all schedulers. `config` is the resolved diffusers config (the target class's own
    keys with its defaults, plus the source's other keys, as diffusers keeps them)."""

    config: FrozenConfig

    name: ClassVar[str]
    diffusers_class: ClassVar[str]
    order: ClassVar[int] = 1
    defaults: ClassVar[Mapping[str, Any]]  # the diffusers class's __init__ keys and defaults
    fixed: ClassVar[Mapping[str, tuple]] = {}  # unimplemented keys → the values we accept
    renamed: ClassVar[Mapping[str, dict]] = {}  # key → {value: what diffusers stores instead}
    options: ClassVar[Mapping[str, Any]] = {}  # our own keys that are not diffusers config
    prediction_types: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides) -> Scheduler:
        """diffusers' `XScheduler.from_config(config, **overrides)`: the class's keys come from
        `config` (defaults where missing or listed in `_use_default_values`); keys it does not
        have are kept but ignored. A feature we lack, set to a non-default value, is an error."""
        dropped = set(config.get("_use_default_values", ()))
        config = {
            k: v for k, v in config.items() if k not in dropped and k != "_use_default_values"
        }
        unknown = set(overrides) - set(cls.defaults) - set(cls.options)
        if unknown:
            raise ValueError(f"{cls.name}: unknown option(s) {sorted(unknown)}.")
        resolved = dict(config, **overrides)
        for key, default in {**cls.defaults, **cls.options}.items():
            value = resolved.get(key, default)
            if key in cls.renamed:
                value = cls.renamed[key].get(value, value)
            allowed = cls.fixed.get(key)
            if allowed is not None and _frozen(value) not in allowed:
                raise NotImplementedError(
                    f"{cls.name} ({cls.diffusers_class}): config sets {key}={value!r}, which "
                    f"mv2_jax does not implement (supported: {allowed})."
                )
            resolved[key] = value
        resolved["_class_name"] = cls.diffusers_class
        if resolved["prediction_type"] not in cls.prediction_types:
            raise NotImplementedError(
                f"{cls.name}: prediction_type={resolved['prediction_type']!r} is not supported "
                f"(supported: {cls.prediction_types})."
            )
        if resolved["trained_betas"] is None and resolved["beta_schedule"] not in BETA_SCHEDULES:
            raise NotImplementedError(
                f"{cls.name}: config sets beta_schedule={resolved['beta_schedule']!r}, which "
                f"mv2_jax does not implement (supported: {BETA_SCHEDULES} or trained_betas)."
            )
        if resolved["timestep_spacing"] not in ("linspace", "leading", "trailing"):
            raise ValueError(
                f"{cls.name}: unknown timestep_spacing {resolved['timestep_spacing']!r}"
            )
        return cls(FrozenConfig(resolved))

    # ---- host side -------------------------------------------------------------------------

    def train_alphas_cumprod(self) -> np.ndarray:
        """ᾱ `[T]` (float32) of the training schedule, zero-SNR rescaled if the config says so."""
        c = self.config
        betas = schedules.make_betas(
            c["beta_schedule"], c["beta_start"], c["beta_end"], c["num_train_timesteps"],
            c["trained_betas"],
        )  # fmt: skip
        if c["rescale_betas_zero_snr"]:
            betas = schedules.rescale_zero_terminal_snr(betas)
        return schedules.alphas_cumprod(betas)

    def step_tables(self, num_inference_steps: int) -> Tables:
        """Unpadded tables: per-step arrays (`num_steps` or `num_steps + 1` long) and scalars."""
        raise NotImplementedError

    def tables(
        self, num_inference_steps: int, max_steps: int, **schedule_options
    ) -> dict[str, np.ndarray]:
        """Everything the loop needs for `num_inference_steps`, per-step arrays padded (with
        their last, finite value) to `max_steps` (+1), so every step count has the same shapes.
        `num_steps` can exceed `num_inference_steps` by one: diffusers' `trailing` spacing gives
        n + 1 timesteps for some n (e.g. 61), and so do we. `schedule_options` go to
        `step_tables` (the consistency schedulers' `strength`)."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be ≥ 1, got {num_inference_steps}.")
        raw = self.step_tables(num_inference_steps, **schedule_options)
        n = len(raw["timesteps"])
        if n > max_steps:
            raise ValueError(f"{self.name}: {n} steps do not fit in max_steps={max_steps}.")
        out = {}
        for key, value in raw.items():
            value = np.asarray(value)
            out[key] = _pad(value, n, max_steps) if value.ndim else value
        out["timesteps"] = out["timesteps"].astype(np.float32)
        out["num_steps"] = np.int32(n)
        out["init_noise_sigma"] = np.float32(raw.get("init_noise_sigma", 1.0))
        return out

    def start_index(self, num_inference_steps: int, strength: float) -> int:
        """First step of an img2img / SDEdit run, as diffusers pipelines' `get_timesteps`."""
        n = num_inference_steps
        t_start = max(n - min(int(n * strength), n), 0)
        return t_start * self.order

    # ---- traced side -----------------------------------------------------------------------

    def init_state(self, sample: jax.Array) -> State:
        """The solver state before the first step; `count` is the number of steps taken."""
        del sample
        return {"count": jnp.zeros((), jnp.int32)}

    def scale_model_input(self, tables: Tables, sample: jax.Array, i: jax.Array) -> jax.Array:
        """The model's input at step `i` (identity unless the scheduler preconditions it)."""
        del tables, i
        return sample

    def step(
        self, tables: Tables, state: State, i: jax.Array, sample, model_output, noise
    ) -> tuple[jax.Array, State]:
        """x_{i+1} from xᵢ = `sample` and the model's output at step `i` (a traced int32)."""
        raise NotImplementedError

    def add_noise(self, tables: Tables, original, noise, i) -> jax.Array:
        """The forward process to the noise level of step `i`: q(x_{tᵢ} | x₀) with `noise`."""
        raise NotImplementedError


SCHEDULERS: dict[str, type[Scheduler]] = {}


def register(cls: type[Scheduler]) -> type[Scheduler]:
    SCHEDULERS[cls.name] = cls
    return cls


# diffusers classes we do not implement, run with the nearest algorithm of the same time
# discretisation (their configs' betas, spacing and prediction type are kept): PNDM (PLMS, SD1.x's
# default) → DDIM, the k-diffusion family → Euler / Euler ancestral, other DPM-Solver variants →
# DPM-Solver++(2M). Flow-matching and other families are refused.
FALLBACKS = {
    "PNDMScheduler": "ddim",
    "LMSDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "euler",
    "KDPM2DiscreteScheduler": "euler",
    "KDPM2AncestralDiscreteScheduler": "euler_a",
    "DPMSolverSinglestepScheduler": "dpmpp_2m",
    "DEISMultistepScheduler": "dpmpp_2m",
}


def from_diffusers_name(class_name: str) -> str:
    """Our scheduler name for a diffusers `_class_name`; unimplemented classes of the same family
    map to `FALLBACKS` (with a warning), anything else is a ValueError."""
    for name, cls in SCHEDULERS.items():
        if cls.diffusers_class == class_name:
            return name
    if class_name in FALLBACKS:
        log.warning("%s is not implemented; using %r with its config", class_name,
                    FALLBACKS[class_name])  # fmt: skip
        return FALLBACKS[class_name]
    known = sorted([c.diffusers_class for c in SCHEDULERS.values()] + list(FALLBACKS))
    raise ValueError(f"scheduler class {class_name!r} is not supported (known: {known}).")


def make_scheduler(config: Mapping[str, Any], name: str | None = None, **overrides) -> Scheduler:
    """A scheduler from a diffusers `scheduler_config.json` dict: the class in `_class_name`, or
    algorithm `name` (one of `SCHEDULERS`) with the config's betas / spacing / prediction type,
    as `XScheduler.from_config(config)`; `overrides` replace config keys (`eta` too, for DDIM)."""
    if name is None:
        if "_class_name" not in config:
            raise ValueError("config has no '_class_name'; pass name= (one of "
                             f"{sorted(SCHEDULERS)}).")  # fmt: skip
        name = from_diffusers_name(config["_class_name"])
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r} (known: {sorted(SCHEDULERS)}).")
    return SCHEDULERS[name].from_config(config, **overrides)
