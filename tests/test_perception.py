"The perception experiment runs end to end with tiny parameters; the bundled nets load, fit the size limit and keep their quality."
from __future__ import annotations
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from disentangle import perception as P
from disentangle import synthfaces as sf
from disentangle.cli import run_experiment

REPO = Path(__file__).resolve().parent.parent
EXPS = REPO / "nbs" / "experiments"


def test_train_perception_tiny(tmp_path):
    params = dict(n_identities=40, images_per_identity=4, batch_size=16, parser_batch_size=8, id_train_steps=6, id_judge_steps=6, landmark_steps=6,
                  parser_steps=4, factor_steps=6, width=4, parser_width=4, invariance_n=6, cache_dir=str(tmp_path / "cache"))
    run = run_experiment("train_perception", params, out=tmp_path, experiments=EXPS)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("id_train", "id_judge"):
        for k in ("tar_far1e-03", "tar_far1e-04"): assert 0 <= m[f"{name}.{k}"] <= 1, (name, k)
        for g in list(P.INVARIANCE_GROUPS) + ["different_identity"]: assert -1 <= m[f"{name}.invariance.{g}"] <= 1, (name, g)
    assert 0 < m["landmarks.nme"] < 10 and 0 <= m["parser.miou"] <= 1 and m["factors.r2_mean"] <= 1
    assert all(f"factors.r2_{n}" in m for n in sf.FACTOR_NAMES) and m["factors.fid_test_halves"] >= 0
    assert m["factor_judge.r2_mean_blur1"] <= 1 and m["factors.fid_blur1"] >= 0
    for name in P.BUNDLED:
        assert m[f"{name}.train_seconds"] > 0 and m[f"{name}.bytes"] <= P.MAX_BYTES
        net = P.load_pretrained(run / f"{name}.safetensors")
        assert net.info["recipe"]["data"]["n_identities"] == 40 and "quality" in net.info
    assert {p.name for p in run.glob("*.png")} >= {"losses.png", "parser_landmarks.png", "verification.png"}
    assert "TAR@FAR=1e-3" in (run / "train_perception.ipynb").read_text()
    # a subset: the same net from the same seed, nothing else trained
    sub = run_experiment("train_perception", dict(params, nets="landmarks"), out=tmp_path / "sub", experiments=EXPS)
    assert {p.name for p in sub.glob("*.safetensors")} == {"landmarks.safetensors"}
    a, b = P.load_pretrained(run / "landmarks.safetensors"), P.load_pretrained(sub / "landmarks.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # train=False measures saved nets with the same cells: the figures of the run that trained them, and no weights written
    measured = run_experiment("train_perception", dict(params, train=False, assets_dir=str(run)), out=tmp_path / "measured", experiments=EXPS)
    mm = json.loads((measured / "metrics.json").read_text())
    for k in ("id_judge.tar_far1e-03", "id_train.invariance.pose", "landmarks.nme", "parser.miou", "factors.r2_mean", "factor_judge.r2_mean_blur1", "factors.fid_blur1"):
        assert mm[k] == pytest.approx(m[k], rel=1e-5, abs=1e-6), k
    assert mm["landmarks.steps"] == 6 and mm["parser.batch_size"] == 8 and mm["id_judge.shared_identities"] == 0
    assert not list(measured.glob("*.safetensors")) and not (measured / "losses.png").exists()
    recipes = json.loads((measured / "recipes.json").read_text())
    assert recipes["id_judge"]["loss"] == "cosface" and recipes["id_train"]["architecture"] == "resnet" and recipes["factor_judge"]["judge"]
    with pytest.raises(Exception, match="bundled id_train: its recipe's data"):   # the package's nets were trained on another SynthFaces set
        run_experiment("train_perception", dict(params, train=False, nets="id_train"), out=tmp_path / "wrong", experiments=EXPS)
    with pytest.raises(Exception, match="nothing to bundle"):
        run_experiment("train_perception", dict(params, train=False, bundle=True), out=tmp_path / "bundle", experiments=EXPS)


@pytest.mark.parametrize("name", P.BUNDLED)
def test_bundled_nets(name):
    path = P.ASSETS / f"{name}.safetensors"
    assert path.exists(), f"{path} is missing: run `disentangle run train_perception -p bundle True`"
    assert path.stat().st_size <= P.MAX_BYTES, f"{path}: {path.stat().st_size} bytes"
    net = P.load_pretrained(name)
    assert not any(p.requires_grad for p in net.parameters())
    x = sf.render(4, size=96, seed=11)["image"]
    out = net(x)
    kind = type(net).__name__
    shape = {"LandmarkNet": (4, getattr(net.cfg, "n_points", 0), 2), "FaceParser": (4, 19, 96, 96), "FactorRegressor": (4, 28)}.get(kind) or (4, net.cfg.dim)
    assert tuple(out.shape) == shape and torch.isfinite(out).all()


def test_bundled_quality_on_held_out_identities():
    "A small held-out sample (identities of another SynthFaces seed) is enough to see that the bundled weights work."
    b = sf.render(64, size=64, seed=123)
    lm = P.pretrained("landmarks")(b["image"])
    assert P.metrics.landmark_nme(lm, b["landmarks"]) < 0.08
    dense = P.pretrained("landmarks_dense")(b["image"])
    assert P.metrics.landmark_nme(dense, sf.landmarks_of(b["factors"], 64, "dense")) < 0.08
    assert P.mean_iou(P.pretrained("parser").parse(b["image"]), b["mask"]) > 0.7
    blurred = P.degrade(b["image"], torch.ones(64), torch.zeros(64))
    r2 = {n: float(P.r2_scores(P.pretrained(n)(blurred), b["factors"]).mean()) for n in ("factors", "factor_judge")}
    assert r2["factor_judge"] > r2["factors"] + 0.1, r2   # the judge reads blurred faces; the FID net is meant not to
    inv = P.invariance(P.pretrained("id_judge"), identities=list(range(900_000, 900_016)))
    assert inv["expression"] > inv["different_identity"] + 0.3


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_net.safetensors does not exist"): P.load_pretrained("missing_net")
    from disentangle.core import load_tensors, save_tensors
    t, meta = load_tensors(P.ASSETS / "landmarks.safetensors"); meta["config"]["hidden"] += 1
    save_tensors(tmp_path / "wrong.safetensors", t, meta)
    with pytest.raises(ValueError, match="wrong.safetensors: weights do not match"): P.load_pretrained(tmp_path / "wrong.safetensors")


def test_train_perception_on_celeba_layout(tmp_path):
    "data=celeba trains the embedders on its identities and the landmark net on its landmarks; nets it cannot teach, and bundling, are refused."
    from test_zerodim import synthfaces_as_celeba
    from disentangle.cli import RunFailed
    root = synthfaces_as_celeba(tmp_path / "celeba")
    params = dict(data="celeba", data_root=str(root), nets="id_train,id_judge,landmarks", batch_size=8, id_train_steps=3, id_judge_steps=3,
                  landmark_steps=3, width=4, cache_dir=str(tmp_path / "cache"))
    run = run_experiment("train_perception", params, out=tmp_path / "a", experiments=EXPS)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("id_train", "id_judge"):
        assert 0 <= m[f"{name}.tar_far1e-03"] <= 1 and not any(k.startswith(f"{name}.invariance") for k in m)
    assert 0 < m["landmarks.nme"] and np.isfinite(m["landmarks.mean_px"])
    assert P.load_pretrained(run / "landmarks.safetensors").info["recipe"]["data"]["data"] == "celeba"
    with pytest.raises(RunFailed, match=r"has no \['mask'\] to train \['parser'\].*set nets=id_train,id_judge,landmarks"):
        run_experiment("train_perception", {**params, "nets": "parser"}, out=tmp_path / "b", experiments=EXPS)
    with pytest.raises(RunFailed, match="bundle=True is for the SynthFaces nets"):
        run_experiment("train_perception", {**params, "bundle": True}, out=tmp_path / "c", experiments=EXPS)


def _recipe(name):
    "A bundled net's recipe and config, as its metadata records them."
    from disentangle.core import load_tensors
    _, meta = load_tensors(P.ASSETS / f"{name}.safetensors")
    info = meta["info"] if isinstance(meta["info"], dict) else eval(meta["info"], {})   # older files kept the info as its repr
    config = meta["config"] if isinstance(meta["config"], dict) else eval(meta["config"], {})
    return info["recipe"], config, meta["net"]


def _people(recipe):
    "The identity ids of the split a net learnt from, from its recipe's data (no image is rendered)."
    d = recipe["data"]
    return set(P.identity_classes(sf.SynthFaces(d["n_identities"], d["images_per_identity"], d["size"], d["seed"], split=d["split"])).tolist())


@pytest.mark.parametrize("judge,partner", [("id_judge", "id_train"), ("landmark_judge", "landmarks_dense"), ("factor_judge", "factors")])
def test_judges_are_independent_of_the_nets_methods_train_with(judge, partner):
    "A judge learnt from other people, with another architecture and another loss, than the net a method trains with."
    (rj, cj, nj), (rp, cp, np_) = _recipe(judge), _recipe(partner)
    assert nj == np_                                                       # the same kind of net ...
    assert rj["judge"] and rj["architecture"] == cj["arch"] != cp["arch"]  # ... of another architecture
    variants = P.LOSS_VARIANTS[nj]
    assert rj["loss"] != (rp.get("loss") or rp["train"].get("loss") or variants[0]) and rj["loss"] in variants
    pj, pp = _people(rj), _people(rp)
    assert len(pj) >= 2000 and len(pp) >= 2000 and not pj & pp            # thousands of people each, none shared
    assert rj["identities"] == dict(count=len(pj), first=min(pj), last=max(pj))
