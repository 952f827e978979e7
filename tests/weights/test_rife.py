"""RIFE v4.0–4.6 IFNet weights → FrameInterpolator: a PyTorch IFNet of that layout (small
widths, random weights, saved as a DataParallel `flownet.pkl`) and the converted folder give
the same frame; v4.7+ files and foreign state dicts are refused with the reason."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from mv2_jax.weights.rife import rife_to_vfi

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional
pytestmark = pytest.mark.torch


class _ResConv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        return F.leaky_relu(self.conv(x) * self.beta + x, 0.2)


class _IFBlock(nn.Module):
    """RIFE v4's IFBlock as its paper and state dict describe it (names kept for the keys)."""

    def __init__(self, in_planes, c, num_res):
        super().__init__()
        self.conv0 = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_planes, c // 2, 3, 2, 1), nn.LeakyReLU(0.2)),
            nn.Sequential(nn.Conv2d(c // 2, c, 3, 2, 1), nn.LeakyReLU(0.2)),
        )
        self.convblock = nn.Sequential(*[_ResConv(c) for _ in range(num_res)])
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(c, 4 * 6, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x, flow, scale):
        def resize(v, f):
            return F.interpolate(v, scale_factor=f, mode="bilinear", align_corners=False)

        x = resize(x, 1 / scale)
        if flow is not None:
            x = torch.cat([x, resize(flow, 1 / scale) / scale], 1)
        out = resize(self.lastconv(self.convblock(self.conv0(x))), scale)
        return out[:, :4] * scale, out[:, 4:5]


def _warp(image, flow):
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = torch.stack([xs + flow[:, 0], ys + flow[:, 1]], -1)
    grid = grid / torch.tensor([(w - 1) / 2, (h - 1) / 2]) - 1
    return F.grid_sample(image, grid, "bilinear", "border", align_corners=True)


class _IFNet(nn.Module):
    def __init__(self, channels=(16, 12, 8, 8), num_res=2):
        super().__init__()
        for i, c in enumerate(channels):
            setattr(self, f"block{i}", _IFBlock(7 if i == 0 else 12, c, num_res))
        self.n = len(channels)

    def forward(self, img0, img1, t):
        t = t.view(-1, 1, 1, 1).expand(-1, 1, *img0.shape[2:])
        flow = mask = None
        warped0, warped1 = img0, img1
        for i in range(self.n):
            scale = 2 ** (self.n - 1 - i)
            block = getattr(self, f"block{i}")
            if flow is None:
                flow, mask = block(torch.cat([img0, img1, t], 1), None, scale)
            else:
                d_flow, d_mask = block(torch.cat([warped0, warped1, t, mask], 1), flow, scale)
                flow, mask = flow + d_flow, mask + d_mask
            warped0, warped1 = _warp(img0, flow[:, :2]), _warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


def _random_ifnet(**kw):
    torch.manual_seed(0)
    net = _IFNet(**kw).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():  # non-zero everywhere, betas ≠ 1, sizeable flows
            p.copy_(torch.randn_like(p) * (0.5 if "beta" in name else 0.15))
    return net


def _cli():
    """convert/rife_to_vfi.py as a module."""
    script = Path(__file__).resolve().parents[2] / "convert" / "rife_to_vfi.py"
    spec = importlib.util.spec_from_file_location("rife_to_vfi", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converted_flownet_matches_the_pytorch_ifnet(tmp_path):
    import mv2_jax
    from mv2_jax.pipelines.vfi import load_vfi_pipeline

    net = _random_ifnet()
    path = tmp_path / "flownet.pkl"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    folder = tmp_path / "rife"
    assert _cli().main([str(path), "--out", str(folder)]) == 0
    module, params = mv2_jax.load_component(folder)
    assert module.block_scales == (8, 4, 2, 1) and module.block_channels == (16, 12, 8, 8)

    rng = np.random.default_rng(0)
    frames = rng.random((2, 2, 64, 64, 3), np.float32)
    t = np.array([0.3, 0.75], np.float32)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, frames[0], frames[1], t))
    with torch.no_grad():
        image0, image1 = (torch.from_numpy(f).permute(0, 3, 1, 2) for f in frames)
        theirs = net(image0, image1, torch.from_numpy(t)).permute(0, 2, 3, 1).numpy()
    assert np.abs(theirs - frames[0]).max() > 0.05  # the flows move pixels: not a blend
    print(f"max abs error vs the PyTorch IFNet: {np.abs(ours - np.clip(theirs, 0, 1)).max():.2e}")
    np.testing.assert_allclose(ours, np.clip(theirs, 0, 1), atol=1e-4)
    assert load_vfi_pipeline(folder).module == module


def test_v47_encoders_and_foreign_state_dicts_are_refused():
    state = {k: v.numpy() for k, v in _random_ifnet(num_res=1).state_dict().items()}
    with pytest.raises(NotImplementedError, match=r"RIFE v4\.7 or later"):
        rife_to_vfi({**state, "encode.0.weight": np.zeros((16, 3, 3, 3))})
    with pytest.raises(ValueError, match="unexpected keys"):
        rife_to_vfi({**state, "fusion.weight": np.zeros(3)})
    wide = dict(state, **{"block0.conv0.0.0.weight": np.zeros((8, 23, 3, 3), np.float32)})
    with pytest.raises(ValueError, match="takes 23 input channels"):
        rife_to_vfi(wide)


def test_cli_names_a_missing_file(tmp_path, capsys):
    assert _cli().main([str(tmp_path / "flownet.pkl"), "--out", str(tmp_path / "o")]) == 1
    assert "flownet.pkl: no such file" in capsys.readouterr().err
