"""backward_warp against torch grid_sample (bilinear, border, align_corners=True) and against
plain JAX autodiff of the same sampling: values and both gradients, plus jit / vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mv2_jax.models.warp import backward_warp

SHAPES = [(2, 7, 9, 3), (1, 12, 5, 8), (1, 1, 6, 3)]


def _inputs(shape, seed=0):
    b, h, w, _ = shape
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(shape).astype(np.float32)
    # Flows up to ~1.5× the image size: many samples land outside and are clamped to the border.
    scale = np.array([w, h], np.float32) * 0.75
    flow = (rng.uniform(-1, 1, (b, h, w, 2)) * scale).astype(np.float32)
    cotangent = rng.standard_normal(shape).astype(np.float32)
    return image, flow, cotangent


def _autodiff_warp(image, flow):
    """The same bilinear sampling as four gathers; JAX differentiates it (with scatters)."""
    _, h, w, _ = image.shape
    grid_y, grid_x = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    x = jnp.clip(grid_x + flow[..., 0], 0, w - 1)
    y = jnp.clip(grid_y + flow[..., 1], 0, h - 1)
    x0 = jax.lax.stop_gradient(jnp.clip(jnp.floor(x), 0, max(w - 2, 0))).astype(jnp.int32)
    y0 = jax.lax.stop_gradient(jnp.clip(jnp.floor(y), 0, max(h - 2, 0))).astype(jnp.int32)
    x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    batch = jnp.arange(image.shape[0])[:, None, None]
    return (
        image[batch, y0, x0] * (1 - fx) * (1 - fy)
        + image[batch, y0, x1] * fx * (1 - fy)
        + image[batch, y1, x0] * (1 - fx) * fy
        + image[batch, y1, x1] * fx * fy
    )


def _value_and_grads(warp, image, flow, cotangent):
    """(output, image gradient, flow gradient) for the given output cotangent, in one jit."""

    @jax.jit
    def run(image, flow, cotangent):
        out, vjp = jax.vjp(warp, image, flow)
        return (out, *vjp(cotangent))

    return tuple(map(np.asarray, run(image, flow, cotangent)))


def _torch_value_and_grads(image, flow, cotangent):
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    _, h, w, _ = image.shape
    image_t = torch.tensor(image).permute(0, 3, 1, 2).requires_grad_(True)
    flow_t = torch.tensor(flow).requires_grad_(True)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    # pixel → [-1, 1] with align_corners=True; a size-1 axis maps everything to 0 (its centre)
    nx = 2 * (grid_x + flow_t[..., 0]) / max(w - 1, 1) - 1
    ny = 2 * (grid_y + flow_t[..., 1]) / max(h - 1, 1) - 1
    out = f.grid_sample(
        image_t,
        torch.stack([nx, ny], dim=-1),
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    out.backward(torch.tensor(cotangent).permute(0, 3, 1, 2))
    return (
        out.detach().permute(0, 2, 3, 1).numpy(),
        image_t.grad.permute(0, 2, 3, 1).numpy(),
        flow_t.grad.numpy(),
    )


@pytest.mark.torch
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_grid_sample_and_autodiff(shape):
    image, flow, cotangent = _inputs(shape)
    ours = _value_and_grads(backward_warp, image, flow, cotangent)
    references = {
        "torch": _torch_value_and_grads(image, flow, cotangent),
        "autodiff": _value_and_grads(_autodiff_warp, image, flow, cotangent),
    }
    for reference, theirs in references.items():
        for name, a, b in zip(("output", "image grad", "flow grad"), ours, theirs):
            err = np.abs(a - b).max() / (np.abs(b).max() + 1e-12)
            print(f"{shape} {name} vs {reference}: max relative error {err:.2e}")
            np.testing.assert_allclose(
                a, b, atol=1e-5 * np.abs(b).max(), rtol=1e-5, err_msg=f"{name} vs {reference}"
            )


def test_zero_flow_is_identity_and_integer_flow_shifts():
    image, _, _ = _inputs((1, 6, 8, 3))
    zero = np.zeros((1, 6, 8, 2), np.float32)
    warp = jax.jit(backward_warp)
    np.testing.assert_array_equal(np.asarray(warp(image, zero)), image)
    shift = zero.copy()
    shift[..., 0] = 2.0  # out(y, x) = image(y, min(x + 2, W − 1))
    expected = image[:, :, np.minimum(np.arange(8) + 2, 7)]
    np.testing.assert_allclose(np.asarray(warp(image, shift)), expected, atol=1e-6)


def test_jit_and_vmap():
    image, flow, cotangent = _inputs((2, 6, 7, 3), seed=2)

    def loss(image, flow):
        return jnp.sum(backward_warp(image, flow) * cotangent)

    expected = _value_and_grads(backward_warp, image, flow, cotangent)
    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)))(image, flow)
    for a, b in zip(jitted, expected[1:]):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-5)
    # vmap over an extra leading axis (e.g. several flows per frame pair)
    stacked = jax.jit(jax.vmap(backward_warp))(image[:, None], flow[:, None])
    np.testing.assert_allclose(np.asarray(stacked[:, 0]), expected[0], atol=1e-6)
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(None, 0)))(image, flow[None])
    np.testing.assert_allclose(np.asarray(grads[1][0]), expected[2], atol=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"flow \[B,H,W,2\]"):
        backward_warp(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="share batch, height and width"):
        backward_warp(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 5, 2)))
