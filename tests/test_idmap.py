"Method 2 (identity disentanglement by latent mapping): optimiser roles, bad inputs, and the experiment end to end."
from __future__ import annotations
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from disentangle import idmap as I, perception as P
from disentangle.stylegan2 import Generator, StyleGAN2Config, export_rosinality, save_generator

torch.set_num_threads(1)
EXPS = Path(__file__).resolve().parent.parent / "nbs" / "experiments"


def small_G(seed=0):
    torch.manual_seed(seed)
    return Generator(StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channel_multiplier=0.03125, channel_max=16)).eval()


@pytest.fixture(scope="module")
def world():
    G, E = small_G(), P.FaceEmbedder(P.EmbedderConfig(width=4, dim=16)).eval()
    L = P.LandmarkNet(P.LandmarkConfig(width=4, hidden=16)).eval()
    return G, E, L, I.GeneratedFaces(G, 48, E, L, batch=16, progress=False)


def cfg(**kw):
    return I.IDMapConfig(**{**dict(attr_init="scratch", attr_width=4, mapper_hidden=(32,), d_hidden=(16,), batch_size=4, steps=4, lr=1e-3), **kw})


def test_each_optimiser_moves_only_its_networks(world, tmp_path):
    "D_W learns only when the adversarial loss is on; the no-adversarial ablation leaves it at its initialisation."
    G, E, L, data = world
    g_before = [p.clone() for p in G.parameters()]
    for lam, moved in ((1.0, True), (0.0, False)):
        c0 = dataclasses.replace(cfg(), w_dim=32, id_dim=16)
        I.seed_everything(0); I.IDDisentangler(c0, G, E); d0 = I.WDiscriminator(c0).state_dict()   # train_idmap's draws, in order
        meth_dir = tmp_path / f"gan{lam}"
        model = I.train_idmap(cfg(lambda_gan=lam), data, G, E, L, out_dir=meth_dir, device="cpu", progress=False, log_every=1)
        ck = torch.load(sorted(meth_dir.glob("ckpt-*.pt"))[-1], weights_only=True)
        changed = any(not torch.equal(ck["modules"]["D_W"][k], v) for k, v in d0.items())
        assert changed == moved
        rows = [json.loads(l) for l in (meth_dir / "log.jsonl").read_text().splitlines()]
        assert any("g_adv" in r for r in rows) == moved
        assert model.E_id.training is False and not any(p.requires_grad for p in model.G.parameters())
    assert all(torch.equal(a, b) for a, b in zip(g_before, G.parameters()))          # the generator stays frozen


def test_bad_inputs_name_what_is_wrong(world, tmp_path):
    G, E, L, data = world
    with pytest.raises(ValueError, match="w has 32 dimensions, the config says w_dim=256"): I.IDDisentangler(cfg(), G, E)
    with pytest.raises(ValueError, match="needs a landmark net"): I.train_idmap(cfg(), data, G, E, None, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="attr_init must be"): I.AttrEncoder(cfg(attr_init="imagenet"))
    with pytest.raises(ValueError, match="needs E_attr's backbone to be the factor regressor's"): I.AttrEncoder(cfg(attr_init="factors"))
    with pytest.raises(FileNotFoundError, match="nope.safetensors"): I.identity_net(tmp_path / "nope.safetensors")
    I.GeneratedFaces(G, 8, E, L, progress=False, cache=tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match=r"c.safetensors: made for other settings.*n: cache 8, asked 9"):
        I.GeneratedFaces(G, 9, E, L, progress=False, cache=tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="not an idmap model"): I.load_idmap(save_generator(G, tmp_path / "g.safetensors"), G, E)


def test_experiment_with_real_network_formats(tmp_path):
    "The experiment on stand-ins of what users bring: a rosinality checkpoint, facenet as E_id, an ArcFace ONNX judge."
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    from test_adapters import tiny_arcface
    from disentangle.adapters import InceptionResnetV1
    from disentangle.cli import run_experiment
    export_rosinality(small_G(1), tmp_path / "ffhq-stand-in.pt")
    torch.manual_seed(0); torch.save(InceptionResnetV1().state_dict(), tmp_path / "facenet.pt")
    tiny_arcface(tmp_path / "arcface.onnx")
    ffhq = tmp_path / "ffhq"                       # FFHQ's layout: validation photos 60000-69999 are the held-out pairs
    for k in list(range(4)) + list(range(60000, 60010)):
        d = ffhq / "thumbnails128x128" / f"{k // 1000 * 1000:05d}"; d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(d / f"{k:05d}.png")
    params = dict(data="ffhq", data_root=str(ffhq), generator=str(tmp_path / "ffhq-stand-in.pt"), id_net=f"facenet:{tmp_path / 'facenet.pt'}",
                  judge_net=f"arcface:{tmp_path / 'arcface.onnx'}", landmark_net="", factor_judge_net="", fid_net="",
                  attr_init="scratch", ablations="no_adversarial", n_train=32, steps=2, batch=4, w_encoder_steps=2, n_eval=8,
                  n_sequences=0, n_frames=4, threads=1, cache_dir=str(tmp_path / "cache"), train_dir=str(tmp_path / "train"))
    run = run_experiment("idmap", params, out=tmp_path, experiments=EXPS)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("full", "no_adversarial", "baseline_halves", "baseline_layers", "reference_attr_image"):
        assert -1 <= m[f"{name}.id_similarity"] <= 1
    assert "full.attribute_error" not in m and "check.id_similarity_beats_baseline_halves" in m
    assert "sequence.frames_neighbour_similarity" not in m and not (run / "sequence.png").exists()
    info = json.loads((run / "run_info.json").read_text())
    assert info["data"] == "ffhq" and (tmp_path / "cache" / "ffhq").is_dir()
    assert info["config"]["w_dim"] == 32 and info["config"]["id_dim"] == 512 and info["id_net"].startswith("facenet:")


def test_experiment_synthfaces_tiny(tmp_path):
    "The SynthFaces experiment with the bundled generator and nets at a tiny budget: every score, check and figure."
    from disentangle.cli import run_experiment
    params = dict(n_train=64, steps=3, batch=8, w_encoder_steps=3, n_eval=32, n_sequences=1, n_frames=6, threads=1,
                  cache_dir=str(tmp_path / "cache"), train_dir=str(tmp_path / "train"))
    run = run_experiment("idmap", params, out=tmp_path, experiments=EXPS)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("full", "no_adversarial", "no_landmarks", "baseline_halves", "baseline_layers"):
        for k in ("id_similarity", "attribute_error", "landmark_nme", "fid"): assert np.isfinite(m[f"{name}.{k}"]), (name, k)
        assert f"check.attribute_error_beats_{name}" in m or name == "full"
        assert f"check.not_dominated_by_{name}" in m or name not in ("no_adversarial", "no_landmarks")
    for k in ("id_similarity_mean", "neighbour_similarity", "jitter_out_px", "jitter_in_px"): assert np.isfinite(m[f"sequence.full.{k}"])
    assert np.isfinite(m["deidentify.id_similarity"]) and "check.sequence_identity_kept" in m
    # the attribute number the verdict reads: each model against its own drawing of the true swap; a perfect swap scores 0
    assert m["verdict_attribute_relative"] == 1.0 and m["reference_true_swap.attribute_error_relative"] == 0.0
    assert m["reference_attr_image.attribute_error_relative"] > 0.02          # keeping B's person: the judge reads B's attributes differently
    for rival in ("no_adversarial", "no_landmarks", "baseline_halves", "baseline_layers"):   # every verdict carries its paired interval
        assert 0 < m[f"{rival}.attribute_error_relative"] < 1, rival
        for k in ("id_similarity", "attribute_error", "attribute_error_relative", "landmark_nme"):
            c = {q: m[f"compare.full-{rival}.{k}.{q}"] for q in ("diff", "lo", "hi", "verdict")}
            assert c["lo"] <= c["diff"] <= c["hi"] and c["verdict"] in (-1, 0, 1), (rival, k, c)
        # 'beats' only where the interval lies on the better side of zero
        c = {q: m[f"compare.full-{rival}.id_similarity.{q}"] for q in ("lo", "verdict")}
        assert (m[f"check.id_similarity_beats_{rival}"] == 1) == (c["lo"] > 0) == (c["verdict"] == 1)
    assert {"swap_grid.png", "swap_compare.png", "deidentify.png", "sequence.png", "losses.png"} <= {p.name for p in run.glob("*.png")}
    for name in ("full", "no_adversarial", "no_landmarks"): assert (run / f"idmap-{name}.safetensors").exists()
    # the budgets in samples seen: the method and its ablations alike, the W-encoder at its own batch
    assert [m[f"budget.samples.{n}"] for n in ("full", "no_adversarial", "no_landmarks", "w_encoder")] == [3 * 8] * 3 + [3 * 64]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_idmap_trains_on_cuda(world, tmp_path):
    G, E, L, data = world
    model = I.train_idmap(cfg(), data, G, E, L, out_dir=tmp_path, device="cuda", progress=False)
    x = data.__getitems__([0, 1])["image"].cuda()
    with torch.no_grad(): assert model(x, x.flip(0)).is_cuda


def test_experiment_valid_split_is_for_choices(tmp_path):
    "eval_split=valid scores other held-out faces and people (for choices such as lambda_gan); the zoo refuses such a run."
    from disentangle.cli import run_experiment
    from disentangle import zoo
    params = dict(n_train=64, steps=2, batch=8, w_encoder_steps=2, n_eval=16, n_sequences=0, threads=1, ablations="", lambda_gan=0.5,
                  eval_split="valid", cache_dir=str(tmp_path / "cache"), train_dir=str(tmp_path / "train"))
    run = run_experiment("idmap", params, out=tmp_path, experiments=EXPS)
    m = json.loads((run / "metrics.json").read_text())
    assert np.isfinite(m["full.id_similarity"]) and np.isfinite(m["full.attribute_error_relative"])
    assert json.loads((run / "run_info.json").read_text())["config"]["lambda_gan"] == 0.5
    with pytest.raises(ValueError, match="'valid' pairs, a run for choices"):
        zoo.add_idmap_entries(run, zoo=tmp_path / "zoo")
