"The photo-geometric forward model: exact answers on planes and a sphere, gradients, metrics by hand, CUDA."
from __future__ import annotations
import math
from pathlib import Path

import pytest
import torch

from disentangle import photogeo as G
from disentangle import synthfaces as sf

torch.set_num_threads(1)


@pytest.mark.parametrize("view", [[0., 0., 0., 0.5, -0.3, 0.], [0.2, 0., 0., 0., 0., 0.], [0., -0.3, 0.2, 0., 0., 0.]])
def test_view_depth_of_a_plane_is_exact(view):
    "Translations and rotations of the plane d = 1: the fixed point meets the analytic ray-plane intersection."
    S = 24
    v = torch.tensor([view])
    z, q = G.view_depth(torch.ones(1, S, S), v, iters=25)
    R, t = G.view_transform(v)
    n = R[0] @ torch.tensor([0., 0., 1.])
    point = torch.tensor(G.ROT_CENTER) + t[0]                 # the pivot, moved with the plane
    f, c = G.intrinsics(S)
    xy = G.pixel_grid(S)
    ray = torch.stack([(xy[..., 0] - c) / f, (xy[..., 1] - c) / f, torch.ones(S, S)], -1)
    torch.testing.assert_close(z[0], (n @ point) / (ray @ n), atol=1e-4, rtol=0)


def test_normals_of_a_sphere():
    "Normals of the depth map of a sphere in front of the camera match its analytic normals (Unsup3d's orientation: +z facing)."
    S, fov = 64, 10.
    C, rho = torch.tensor([0., 0., 1.5]), 0.1                      # fills most of the 10-degree view at depth 1.4
    f, c = G.intrinsics(S, fov)
    xy = G.pixel_grid(S, dtype=torch.float64)
    ray = torch.stack([(xy[..., 0] - c) / f, (xy[..., 1] - c) / f, torch.ones(S, S, dtype=torch.float64)], -1)
    b, a = (ray @ C.double()), (ray * ray).sum(-1)
    disc = b * b - a * (C.double() @ C.double() - rho ** 2)
    hit = disc > 0
    t = (b - disc.clamp(min=0).sqrt()) / a                          # the nearer intersection; z of t * ray is t
    depth = torch.where(hit, t, torch.full_like(t, 2.))[None]
    n = G.depth_normals(depth, fov)[0]
    X = t[..., None] * ray
    gt = torch.nn.functional.normalize(C.double() - X, dim=-1)
    inner = torch.nn.functional.max_pool2d((~hit).double()[None, None], 7, 1, 3)[0, 0] == 0
    ang = torch.rad2deg(torch.acos((n * gt).sum(-1).clamp(-1, 1)))
    assert inner.sum() > 500 and ang[inner].max() < 1.0, (inner.sum(), ang[inner].max())


def test_render_gradients():
    "Double-precision gradcheck of render on a tiny bumpy surface."
    torch.manual_seed(0)
    S = 8
    depth = (1 + 0.02 * torch.rand(1, S, S, dtype=torch.float64)).requires_grad_()
    img = torch.rand(1, 1, S, S, dtype=torch.float64, requires_grad=True)
    view = torch.tensor([[0.02, 0.05, 0., 0.1, 0., 0.]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda d, x: G.render(x, d, view, iters=3)[0], (depth, img), atol=1e-5)


def test_metrics_by_hand():
    d = torch.ones(1, 2, 2); g = torch.tensor([[[1., 1.], [1., math.e]]])
    # delta = (0, 0, 0, -1): mean -1/4, mean square 1/4 -> SIDE = sqrt(1/4 - 1/16)
    torch.testing.assert_close(G.side(d, g), torch.tensor([math.sqrt(3) / 4]))
    n = torch.tensor([[[[0., 0., 1.], [1., 0., 0.]]]])
    torch.testing.assert_close(G.mad(n, torch.tensor([[[[0., 0., 1.], [0., 0., 1.]]]])), torch.tensor([45.]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu():
    r = sf.render(2, size=64, seed=2, yaw=0., pitch=0., roll=0.)
    depth, J = 0.9 + 0.2 * r["depth"][:, 0], r["image"]
    view = torch.tensor([[0.1, 0.2, 0., 0., 0., 0.]]).repeat(2, 1)
    cpu = G.render(J, depth, view)[0]
    gpu = G.render(J.cuda(), depth.cuda(), view.cuda())[0].cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)


def test_save_load_and_errors(tmp_path):
    "A decomposer round-trips through safetensors (float32 and float16); a file of another net is refused by name."
    torch.manual_seed(0)
    m = G.PhotoGeo(G.PhotoGeoConfig(nf=8, zdim=16, kd_min=0.3)).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    back = G.load_photogeo(G.save_photogeo(m, tmp_path / "a.safetensors", note="x"))
    torch.testing.assert_close(back.depth(x), m.depth(x)); assert back.cfg.kd_min == 0.3 and back.info == {"note": "x"}
    half = G.load_photogeo(G.save_photogeo(m, tmp_path / "h.safetensors", half=True))
    assert (half.light(x) - m.light(x)).abs().max() < 1e-2
    from disentangle.core import save_tensors
    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, metadata={"net": "FaceParser", "config": {}})
    with pytest.raises(ValueError, match="other.safetensors: not a PhotoGeo"): G.load_photogeo(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"): G.load_photogeo(tmp_path / "missing.safetensors")


def test_stabilisers():
    "The diffuse light never drops below kd_min; the curvature penalty is zero on planes and grows with bumps."
    m = G.PhotoGeo(G.PhotoGeoConfig(nf=8, zdim=16, kd_min=0.25))
    torch.nn.init.constant_(m.net_light[-3].bias, -50.)             # drive the light encoder's outputs to -1
    assert (m.light(torch.rand(2, 3, 64, 64))[:, 1] >= 0.25 - 1e-6).all()
    ramp = 1 + 0.003 * torch.arange(32.)[None, :, None].expand(1, 32, 32)
    assert G.depth_smoothness(ramp).item() < 1e-3
    bumps = ramp + 0.002 * torch.randn(1, 32, 32)
    assert G.depth_smoothness(bumps).item() > 1


def test_train_photogeo_tiny(tmp_path):
    "Two engine steps on fresh renders: a finite EMA model comes back and the checkpoint is written."
    model = G.train_photogeo(G.PhotoGeoConfig(nf=8, zdim=16), steps=2, batches=G.synthfaces_batches(4, seed=3),
                             out_dir=tmp_path, progress=False, ckpt_every=2, log_every=1)
    out = model(sf.render(2, size=64, seed=1)["image"])
    assert torch.isfinite(out["depth"]).all() and not model.training
    assert any(p.name.startswith("ckpt-") for p in tmp_path.iterdir())
    b1, b2 = G.synthfaces_batches(4, seed=3)(5), G.synthfaces_batches(4, seed=3)(5)
    torch.testing.assert_close(b1["image"], b2["image"])


def _true_decomposition(n=3, seed=11):
    "SynthFaces' own depth and albedo of n faces as a PhotoGeo decomposition, seen from a turned view."
    r = sf.render(n, size=64, seed=seed)
    depth = 1 - (1 - r["depth"][:, 0]) * math.tan(math.radians(10.) / 2)
    view = torch.tensor([[-0.1, 0.15, 0.0, 0., 0., 0.]]).repeat(n, 1)
    return r, {"depth": depth, "albedo": r["albedo"] * 2 - 1, "view": view}


def test_fit_light_recovers_the_light_it_rendered():
    "Rendering a decomposition under lights on the search grid and fitting gives those lights back, on any weights."
    r, out = _true_decomposition()
    m = G.PhotoGeo(G.PhotoGeoConfig(nf=8, zdim=16)).eval()
    L = torch.tensor([[0.45, 0.35, -0.4, 0.2], [0.3, 0.5, 0.85, -0.7], [0.6, 0.3, 0.0, 0.55]])
    img = G.render(G.canonical_image(out["albedo"], out["depth"], L), out["depth"], out["view"], 6)[0]
    for weight in (G.face_mask(r["mask_canon"]).float(), torch.ones(3, 64, 64)):
        torch.testing.assert_close(G.fit_light(m, img, weight, out=out, max_climb=8), L, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match=r"fit_light takes images \(B, 3, H, W\)"): G.fit_light(m, img[:, 0], out=out)
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 64, 64\)"): G.fit_light(m, img, torch.ones(3, 64), out=out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_light_on_cuda_matches_cpu():
    r, out = _true_decomposition()
    m = G.PhotoGeo(G.PhotoGeoConfig(nf=8, zdim=16)).eval()
    L = torch.tensor([[0.45, 0.35, -0.4, 0.2], [0.3, 0.5, 0.85, -0.7], [0.6, 0.3, 0.0, 0.55]])
    img = G.render(G.canonical_image(out["albedo"], out["depth"], L), out["depth"], out["view"], 6)[0]
    w = G.face_mask(r["mask_canon"]).float()
    cpu = G.fit_light(m, img, w, out=out, max_climb=8)
    gpu = G.fit_light(m.cuda(), img.cuda(), w.cuda(), out={k: v.cuda() for k, v in out.items()}, max_climb=8).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=0)


def test_photogeo_experiment_tiny(tmp_path):
    "The decomposer's probe experiment: two recipes, two seeds each, scores against the truth and the seeds' agreement."
    import json
    from disentangle.cli import run_experiment
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    run = run_experiment("photogeo", dict(variants="unsup3d,stabilised", seeds="0,1", steps=3, n_score=16, threads=1), out=tmp_path, experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    for key in ("unsup3d.s0", "unsup3d.s1", "stabilised.s0", "stabilised.s1"):
        assert 0 < m[f"{key}.side"] < 1 and 0 <= m[f"{key}.mad"] <= 180 and -1 <= m[f"{key}.corr_yaw"] <= 1, key
        assert (run / f"photogeo-{key.replace('.', '-')}.safetensors").exists()
    assert m["stabilised.s0.diffuse_mean"] >= 0.2 > 0 <= m["unsup3d.s0.diffuse_mean"]      # the floor holds k_d at 0.2 or more
    assert 0 <= m["agreement.stabilised.s0-s1.mad_between"] <= 180 and m["mad_flat"] > 0
    with pytest.raises(Exception, match="unknown"):
        run_experiment("photogeo", dict(variants="nope", steps=1, threads=1), out=tmp_path, experiments=exps)
