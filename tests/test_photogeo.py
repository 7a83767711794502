"The photo-geometric forward model: exact answers on planes and a sphere, gradients, metrics by hand, CUDA."
from __future__ import annotations
import math

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
