"Method 4 (ZeroDIM): partial labels, the three training stages, annotators, scores, and the experiment end to end."
from __future__ import annotations
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from disentangle import zerodim as Z
from disentangle.groundtruth import DSprites

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sprites():
    data = DSprites()
    y = data.sample_factors(192, np.random.default_rng(0))
    return y, data.observations(y)


def small_cfg(**kw):
    base = dict(factor_names=("scale", "posX", "posY"), factor_sizes=(6, 32, 32), channels=1, reconstruction="bce", batch_size=32,
                epochs=1, epochs_before_entropy=0, amortization_epochs=1, synthesis_epochs=1, classifier="shared")
    return Z.ZeroDIMConfig(**{**base, **kw})


def test_bad_inputs_name_what_is_wrong(sprites, tmp_path):
    y, x = sprites
    with pytest.raises(ValueError, match=r"labels: expected \(192, F\)"): Z.LabeledImages(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"images: expected \(N, C, H, W\)"): Z.LabeledImages(x[:, 0], np.zeros((192, 3)))
    labels = np.full((192, 3), -1); labels[:20] = y[:20, [1, 3, 4]]; labels[3, 0] = 6
    with pytest.raises(ValueError, match="factor 'scale' has 6 values but a label 6 appears"):
        Z.train_zerodim(small_cfg(), Z.LabeledImages(x, labels), tmp_path, progress=False)
    with pytest.raises(ValueError, match="no image has a label"):
        Z.PairedBatches(Z.LabeledImages(x, np.full((192, 3), -1)), 32)
    with pytest.raises(ValueError, match="images have 1 channels, the config says 3"):
        Z.train_zerodim(small_cfg(channels=3), Z.LabeledImages(x, labels.clip(max=5)), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="n_labels=500 is more than the 192 images"):
        Z.GroundTruthAnnotator(("a",), (2,), 500)(None, np.zeros((192, 1), int))


def test_stages_resume_and_labeled_codes(sprites, tmp_path):
    "Three stages run; a second call loads every finished stage; labeled images take their table rows in stage 1."
    y, x = sprites
    labels = Z.GroundTruthAnnotator(("scale", "posX", "posY"), (6, 32, 32), 48, seed=1)(None, y[:, [1, 3, 4]])
    data = Z.LabeledImages(x, labels)
    model = Z.train_zerodim(small_cfg(), data, tmp_path, progress=False, log_every=1)
    steps = {s: len((tmp_path / s / "log.jsonl").read_text().splitlines()) for s in ("latent", "amortization", "synthesis")}
    assert steps == {"latent": 6, "amortization": 6, "synthesis": 6}
    again = Z.train_zerodim(small_cfg(), data, tmp_path, progress=False, log_every=1)
    assert len((tmp_path / "latent" / "log.jsonl").read_text().splitlines()) == 6
    with torch.no_grad():
        torch.testing.assert_close(again.reconstruct(x[:8]), model.reconstruct(x[:8]))
        row = int(np.flatnonzero((labels >= 0).all(1))[0])
        out = model.factor_model(x[row:row + 1], torch.as_tensor(labels[row:row + 1]))
        want = torch.stack([model.factor_model.tables[f][labels[row, f], 0] for f in range(3)])
        torch.testing.assert_close(out["codes"][0], want)
        edit = model.manipulate(x[:4], "posX", 31)
        assert edit.shape == (4, 1, 64, 64) and 0 <= edit.min() and edit.max() <= 1
        assert not torch.allclose(edit, model.manipulate(x[:4], "posX", 0))


def test_semi_vae_supervised_term():
    cfg = Z.SemiVAEConfig(n_factors=2, num_latent=4, gamma=10.)
    vae = Z.SemiVAE(cfg, channels=1)
    x = torch.rand(6, 1, 64, 64); y = torch.tensor([[0, 1], [2, -1], [1, 3]])
    out = vae.loss(x, x[:3], y, sizes=(3, 4))
    assert "supervised" in out and torch.isclose(out["loss"], out["reconstruction"] + 4 * out["kl"] + 10 * out["supervised"])
    assert "supervised" not in Z.SemiVAE(Z.SemiVAEConfig(n_factors=2, num_latent=4, gamma=0.), 1).loss(x, x[:3], y, (3, 4))
    p = vae.predict(x, (3, 4))
    assert p.shape == (6, 2) and (p[:, 0] <= 2).all() and (p[:, 1] <= 3).all() and (p >= 0).all()


def test_zerodim_experiment_tiny(tmp_path):
    "The experiment runs end to end on the three data sets with tiny budgets: scores, checks and figures."
    from disentangle.cli import run_experiment
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    params = dict(train_size=256, n_labels=64, epochs=1, amortization_epochs=1, synthesis_epochs=1, batch_size=32, n_boot=5,
                  n_eval=200, face_identities=20, face_images_per_identity=4, face_labels=16, face_epochs=1, threads=1, cache_dir=str(tmp_path / "cache"))
    run = run_experiment("zerodim", params, out=tmp_path, experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("shapes3d", "dsprites"):
        for model in ("ZeroDIM", "beta-VAE", "semi-supervised VAE"):
            for k in ("dci_disentanglement", "labeled_accuracy", "residual_leakage", "leakage_above_chance"):
                assert np.isfinite(m[f"{name}.{model}.{k}"]), (name, model, k)
    assert 0 <= m["synthfaces.ZeroDIM.labeled_accuracy"] <= 1
    for n in ("hair_colour", "smile", "glasses"):
        assert 0 <= m[f"synthfaces_manipulation.{n}.edit_accuracy"] <= 1 and np.isfinite(m[f"synthfaces_manipulation.{n}.identity"])
    assert "check.shapes3d DCI >= 0.97" in m
    for name in ("shapes3d", "dsprites"):   # equal budgets by default: the baselines see the samples of ZeroDIM's stage 1
        assert m[f"budget.{name}.baseline_samples"] == m[f"budget.{name}.zerodim_stage1_samples"] == 8 * 32
        for b in ("beta-VAE", "semi-supervised VAE"):
            c = {q: m[f"compare.{name}.{b}.dci_disentanglement.{q}"] for q in ("diff", "lo", "hi", "verdict")}
            assert c["lo"] <= c["hi"] and c["verdict"] in (-1., 0., 1.)
            assert np.isclose(c["diff"], m[f"{name}.ZeroDIM.dci_disentanglement"] - m[f"{name}.{b}.dci_disentanglement"])
            assert m[f"check.{name} DCI above {b}"] == float(c["verdict"] == 1.)
    pngs = {p.name for p in run.glob("*.png")}
    assert {"translate-shapes3d-floor_hue.png", "translate-dsprites-posX.png", "translate-synthfaces-glasses.png"} <= pngs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zerodim_trains_on_cuda(sprites, tmp_path):
    y, x = sprites
    labels = Z.GroundTruthAnnotator(("scale", "posX", "posY"), (6, 32, 32), 48)(None, y[:, [1, 3, 4]])
    model = Z.train_zerodim(small_cfg(), Z.LabeledImages(x, labels), tmp_path, device="cuda", progress=False)
    assert next(model.parameters()).is_cuda
    with torch.no_grad(): assert model.reconstruct(x[:4].cuda()).shape == (4, 1, 64, 64)


def synthfaces_as_celeba(root: Path, n=60):
    """SynthFaces renders in CelebA's official layout: img_align_celeba/%06d.jpg (178x218) and the four text files,
    with Smiling and Eyeglasses set from the faces' own smile and glasses factors (the other 38 attributes -1)."""
    from PIL import Image
    from disentangle import realdata as rd, synthfaces as sf
    r = sf.render(n, size=128, seed=5)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    smile, glasses = r["factors"][:, sf.FI["smile"]], r["factors"][:, sf.FI["glasses"]]
    attr, ident, lms, part = [], [], [], []
    for k in range(n):
        im = ((r["image"][k].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        canvas = np.full((218, 178, 3), 128, np.uint8); canvas[45:173, 25:153] = im
        name = f"{k + 1:06d}.jpg"
        Image.fromarray(canvas).save(root / "img_align_celeba" / name, quality=95)
        a = -np.ones(40, int)
        a[rd.CELEBA_ATTRIBUTES.index("Smiling")] = 1 if smile[k] > smile.median() else -1
        a[rd.CELEBA_ATTRIBUTES.index("Eyeglasses")] = 1 if glasses[k] > 0.5 else -1
        attr.append(f"{name} " + " ".join(f"{v:2d}" for v in a))
        ident.append(f"{name} {k // 4}")                      # four photos a person, split on a person boundary
        lms.append(name + "".join(f"{v:6d}" for v in (70, 110, 108, 110, 89, 130, 72, 150, 106, 150)))
        part.append(f"{name} {0 if k < n * 2 // 3 else 2}")
    from test_realdata import write_celeba_texts
    return write_celeba_texts(root, attr, ident, lms, part)


def test_zerodim_experiment_on_celeba_layout(tmp_path):
    "data=celeba: the face part learns CelebA attributes named in face_factors from a few of its labels; bad names are refused."
    from disentangle.cli import run_experiment, RunFailed
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    root = synthfaces_as_celeba(tmp_path / "celeba")
    params = dict(datasets="synthfaces", data="celeba", data_root=str(root), face_factors="Smiling:2,Eyeglasses:2", face_labels=16,
                  face_epochs=1, batch_size=16, n_eval=20, threads=1, cache_dir=str(tmp_path / "cache"))
    run = run_experiment("zerodim", params, out=tmp_path / "a", experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    for k in ("dci_disentanglement", "labeled_accuracy", "leakage_above_chance", "accuracy_Smiling", "accuracy_Eyeglasses"):
        assert np.isfinite(m[f"celeba.ZeroDIM.{k}"]), k
    assert not any(k.startswith("synthfaces") for k in m)
    assert {"translate-celeba-Smiling.png", "translate-celeba-Eyeglasses.png"} <= {p.name for p in run.glob("*.png")}
    with pytest.raises(RunFailed, match=r"has no attribute\(s\) \['Smile'\]"):
        run_experiment("zerodim", {**params, "face_factors": "Smile:2"}, out=tmp_path / "b", experiments=exps)
    with pytest.raises(RunFailed, match="binary"):
        run_experiment("zerodim", {**params, "face_factors": "Smiling:3"}, out=tmp_path / "c", experiments=exps)
