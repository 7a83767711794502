"Explorers redraw on widget changes, as a user's slider or button does; plotly views build; bad input is named."
from __future__ import annotations
import io

import numpy as np
import pytest
import torch
from PIL import Image

from disentangle import explore as X, perception as P, stylegan2 as sg, synthfaces as sf

torch.set_num_threads(1)


def test_direction_explorer_redraws_and_checks_shapes():
    torch.manual_seed(0)
    G = sg.pretrained_generator()
    w = torch.randn(4, 256)
    d = torch.nn.functional.normalize(torch.randn(256), dim=0) * 3
    ex = X.DirectionExplorer(G, w, {'a': d, 'b': -d}, judge=None)
    before = ex.view.value
    assert Image.open(io.BytesIO(before)).size == (2 * 64 * 4, 64 * 4)
    ex.sliders['a'].value = 1.0
    assert ex.view.value != before
    ex.sliders['b'].value = 1.0                                  # the two cancel: back to the original face
    diff = np.abs(np.asarray(Image.open(io.BytesIO(ex.view.value)), float) - np.asarray(Image.open(io.BytesIO(before)), float))
    assert diff.max() <= 1, diff.max()
    with pytest.raises(ValueError, match=r"must be \(256,\) for this generator, got \{'c': \(3,\)\}"):
        X.DirectionExplorer(G, w, {'c': torch.zeros(3)})
    with pytest.raises(KeyError, match="unknown direction 'z'"): ex.set(z=1.0)


def test_identity_mixer_and_factor_explorer_wiring():
    from disentangle import idmap as I, zerodim as Z
    torch.manual_seed(0)
    G = sg.pretrained_generator()
    E_id = P.pretrained('id_train')
    model = I.IDDisentangler(I.IDMapConfig(id_dim=E_id(torch.zeros(1, 3, 64, 64)).shape[1], attr_init='scratch'), G, E_id)
    faces = sf.render(3, size=64, seed=1)['image']
    mx = X.IdentityMixer(model, faces)
    before = mx.view.value
    mx.identity.value = 2
    assert mx.view.value != before and 'identity similarity' in mx.info.value and 'the attribute face itself' in mx.info.value   # with its reference
    zd = Z.ZeroDIM(Z.ZeroDIMConfig(factor_names=('hue', 'shape'), factor_sizes=(4, 3)))
    fx = X.FactorExplorer(zd, torch.rand(2, 3, 64, 64))
    fx.factor.value = 'shape'
    assert fx.value.max == 2 and 'shape asked' in fx.info.value
    before = fx.view.value
    fx.value.value = 2
    assert fx.view.value != before and 'shape asked 2' in fx.info.value


def test_plotly_views():
    fig = X.latent_scatter(torch.randn(50, 8), np.arange(50), 'yaw')
    assert fig.data[0].x.shape == (50,) and fig.layout.xaxis.title.text == 'PC 1'
    fig = X.latent_scatter(torch.randn(50, 8), np.arange(50), 'yaw', dims=(2, 5))
    assert fig.layout.yaxis.title.text == 'code 5'
    with pytest.raises(ValueError, match=r"got \(50, 8\) and \(49,\)"): X.latent_scatter(torch.randn(50, 8), np.arange(49))
    surf = X.depth_surface(torch.ones(16, 16), torch.zeros(3, 16, 16))
    assert surf.data[0].z.shape == (16, 16)
    with pytest.raises(ValueError, match="must be \\(H, W\\)"): X.depth_surface(torch.ones(1, 16, 16))
