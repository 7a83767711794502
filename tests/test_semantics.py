"Linear semantics: the regression recovers a planted linear encoding, edits are calibrated, the augmentation data are as described."
from __future__ import annotations
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from disentangle import photogeo as pg, semantics as se, stylegan2 as sg, synthfaces as sf

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent


def planted(n=400, D=24, seed=0):
    "Latents w and a 'decomposition' whose every semantic is a known linear function of w plus noise."
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, D, generator=g)
    faces = sf.render(8, size=64, seed=seed, yaw=0., pitch=0., roll=0.)   # frontal faces, so the parser finds the regions
    canon = faces['image'][torch.arange(n) % 8]
    A = torch.randn(D, 7, generator=g)
    env = w @ A
    B = torch.randn(D, 64 * 64, generator=g) * 0.01
    depth = 1 + (w @ B).view(n, 64, 64) * 0.01
    C = torch.randn(D, 3 * 64 * 64, generator=g) * 0.01
    albedo = (w @ C).view(n, 3, 64, 64) * 0.1
    dec = dict(view=env[:, :3], light=env[:, 3:], depth=depth, albedo=albedo, canon=canon)
    return w, dec, A


@pytest.mark.parametrize("encoding", ["forward", "inverse"])
def test_fit_recovers_a_planted_linear_encoding(encoding):
    w, dec, A = planted()
    ls = se.fit_semantics(w, dec, se.SemanticsConfig(template_frac=0.3, ridge=1e-6, forward_ridge=1e-6, lasso=1e-3, encoding=encoding))
    assert ls.names[:7] == list(se.ENVIRONMENT) and len(ls.names) == 7 + 5 * 3
    assert (ls.r2 > 0.99).all(), ls.r2                                    # every semantic is exactly linear in w
    for k in range(7):                                                    # one std along d_k moves s_k by one std, the others not
        d = ls.direction(ls.names[k], sparse=False)
        ds = d @ A                                                        # change of every environmental semantic
        assert abs(float(ds[k]) / float(ls.s_std[k]) - 1) < 0.1, (k, ds[k], ls.s_std[k])
        others = [j for j in range(7) if j != k]
        assert (ds[others].abs() / ls.s_std[others]).max() < 0.1
    assert (ls.sparsity() >= 0).all() and (ls.sparsity() <= 1).all()
    sparse = ls.edit(w[:2], 'yaw', 1.0) - w[:2]
    torch.testing.assert_close(sparse[0], ls.D_sparse[1])


def test_fit_errors():
    w, dec, _ = planted(n=60)
    with pytest.raises(ValueError, match="at least 50 samples, got 10"): se.fit_semantics(w[:10], {k: v[:10] for k, v in dec.items()})
    with pytest.raises(ValueError, match="w has 59 rows but the decomposition 60"): se.fit_semantics(w[:59], dec)
    with pytest.raises(KeyError, match="unknown region 'ears'"): se.region_templates(dec['canon'], regions=('ears',))
    ls = se.fit_semantics(w, dec, se.SemanticsConfig(template_frac=0.3))
    with pytest.raises(KeyError, match="unknown semantic 'smile'"): ls.direction('smile')
    with pytest.raises(ValueError, match="encoding must be 'forward' or 'inverse', got 'sideways'"):
        se.fit_semantics(w, dec, se.SemanticsConfig(template_frac=0.3, encoding='sideways'))
    J = se.judges()
    G = sg.pretrained_generator()
    with pytest.raises(KeyError, match="unknown factor 'tan'"): se.measure_edit(G, se.sample_w(G, 2), torch.zeros(256), 'tan', 0.1, J)


def test_measure_edit_calibrates_the_step():
    "InterFaceGAN's yaw normal is calibrated so that the judge sees the asked yaw change; a zero direction cannot be."
    G = sg.pretrained_generator(); J = se.judges()
    w = se.sample_w(G, 200, seed=3)
    ifg = se.interfacegan(w, se.generate(G, w), ['yaw'])
    wt = w[:24]
    r = se.measure_edit(G, wt, ifg['yaw'], 'yaw', 0.15, J, region='nose')
    assert abs(r['achieved'] - 0.15) < 0.03 and r['error'] < 0.2 and -1 <= r['identity'] <= 1 and r['locality'] > 0
    z = se.measure_edit(G, wt, torch.zeros(256), 'yaw', 0.15, J)
    assert z['error'] == pytest.approx(1.0) and z['identity'] == pytest.approx(1.0, abs=1e-5)
    axes, stds = se.ganspace(G, 500, 4)
    torch.testing.assert_close(axes @ axes.T, torch.eye(4), atol=1e-4, rtol=0)
    assert (stds[:-1] >= stds[1:]).all()


def test_augmentation_data():
    cfg = se.AugmentConfig(n_train=300, n_few=5, n_test=20)
    torch.testing.assert_close(se.yaw_class(torch.tensor([-0.3, -0.19, 0., 0.19, 0.25])), torch.tensor([0, 1, 1, 1, 2]))
    (x, y), (xt, yt) = se.unbalanced_data(cfg)
    counts = torch.bincount(y, minlength=3)
    assert counts[0] == 5 and counts[1] > 50 and counts[2] > 50 and len(x) == len(y)
    torch.testing.assert_close(torch.bincount(yt, minlength=3), torch.tensor([20, 20, 20]))
    net = se.train_classifier(x, y, se.AugmentConfig(steps=3, batch=8), oversample=True)
    acc = se.balanced_accuracy(net, xt, yt)
    assert set(acc) == {'balanced_accuracy', 'recall_left', 'recall_frontal', 'recall_right'} and 0 <= acc['balanced_accuracy'] <= 1


def test_semantics_experiment_tiny(tmp_path):
    from disentangle.cli import run_experiment
    run = run_experiment("semantics", dict(n_samples=80, n_compare=6, ganspace_samples=300, ganspace_axes=4, n_score=8,
                                           aug_steps=2, aug_seeds=1, aug_few=3),
                         out=tmp_path, experiments=REPO / "nbs" / "experiments")
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["photogeo.mad"] <= 180 and -1 <= m["photogeo.corr_yaw"] <= 1 and -1 <= m["photogeo.corr_fit_light_x"] <= 1
    assert np.isfinite(m["semantics.r2.yaw"]) and 0 <= m["semantics.sparsity.yaw"] <= 1
    assert -1 <= m["edit.yaw.ours.identity"] <= 1 and -1 <= m["edit.yaw.ganspace.identity"] <= 1
    c = {q: m[f"compare.yaw.ganspace.identity.{q}"] for q in ("diff", "lo", "hi", "verdict")}   # paired interval over the 6 test faces
    assert np.isclose(c["diff"], m["edit.yaw.ours.identity"] - m["edit.yaw.ganspace.identity"], atol=1e-6) and c["lo"] <= c["hi"]
    assert c["verdict"] == (1. if c["lo"] > 0 else -1. if c["hi"] < 0 else 0.)
    assert 0 <= m["augment.augmented.balanced_accuracy"] <= 1 and np.isfinite(m["augment.gain.balanced_accuracy"])
    assert (run / "edits.png").exists() and (run / "decomposition.png").exists() and (run / "directions.safetensors").exists()
    # the encoding is chosen on the validation latents: the better score wins, and the saved directions say which
    fwd, inv = m["choice.encoding.forward.score"], m["choice.encoding.inverse.score"]
    assert m["choice.encoding.forward"] == float(fwd >= inv)
    from safetensors import safe_open
    with safe_open(run / "directions.safetensors", "pt") as f:
        assert json.loads(f.metadata()["encoding"]) == ("forward" if fwd >= inv else "inverse")


def test_semantics_experiment_refuses_real_data_without_training(tmp_path):
    from disentangle.cli import run_experiment
    with pytest.raises(Exception, match="photogeo_steps"):
        run_experiment("semantics", dict(data="celeba", data_root=str(tmp_path)), out=tmp_path, experiments=REPO / "nbs" / "experiments")


def test_decompose_light_readers():
    "The light is the head's, or fitted to the face (the parser's pixels or the confidence); a reader name is checked."
    model = pg.pretrained_photogeo()
    x = sf.render(6, size=64, seed=5)["image"]
    head = se.decompose(model, x, light="head")
    torch.testing.assert_close(head["light"], model.light(x))
    fit = se.decompose(model, x)
    torch.testing.assert_close(fit["light"], pg.fit_light(model, x))
    conf = se.decompose(model, x, light="fit_confidence")
    for d in (fit, conf):
        assert d["light"].shape == (6, 4) and (d["light"][:, 2:].abs() <= 1).all()
        torch.testing.assert_close(d["depth"], head["depth"]); torch.testing.assert_close(d["view"], head["view"])
    assert not torch.allclose(fit["light"], head["light"])
    with pytest.raises(ValueError, match="light must be one of"): se.decompose(model, x, light="sun")
