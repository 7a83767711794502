"Method 1 (independent subspaces): region table, decoder locality, training through the engine, swaps and their metrics."
from __future__ import annotations
import json, math
from pathlib import Path

import numpy as np
import pytest
import torch

from disentangle import subspaces as S, synthfaces as sf
from disentangle.engine import Engine, EngineConfig, ShardedBatches
from disentangle.perception import FactorRegressor, RegressorConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def faces():
    return sf.SynthFaces(12, 4, size=64, seed=11, split="all")


@pytest.mark.parametrize("regions", list(S.REGION_SETS))
def test_region_table_partitions_classes_and_factors(regions):
    lut = S.class_to_region(regions)
    assert (lut >= 0).all() and lut.max() == len(S.region_names(regions)) - 1
    groups = S.factor_groups(regions)
    assert sorted(i for g in groups.values() for i in g) == list(range(len(sf.FACTORS)))
    assert [sf.FACTOR_NAMES[i] for i in groups["global"]] == ["yaw", "pitch", "roll", "light_x", "light_y", "ambient", "diffuse"]


def test_decoder_k_depends_on_its_code_only():
    torch.manual_seed(0)
    m = S.SubspaceAE(S.SubspaceConfig(regions="fine")).eval()
    z, g = torch.randn(3, 8, 16), torch.randn(3, 8)
    with torch.no_grad():
        a = m.decode(z, g)
        for k in range(8):
            z2 = z.clone(); z2[:, k] += 1
            b = m.decode(z2, g)
            moved = (b["rgb"] - a["rgb"]).abs().flatten(2).amax(2).amax(0)
            assert moved[k] > 0 and (moved[torch.arange(8) != k] == 0).all(), (k, moved)
    assert torch.allclose(a["masks"].sum(1), torch.ones(3, 64, 64), atol=1e-5)


def test_train_resume_swap_and_score(faces, tmp_path):
    cfg = S.SubspaceConfig()
    eng = Engine(S.SubspaceMethod(cfg), ShardedBatches(faces, 8, seed=0),
                 EngineConfig(steps=4, out_dir=str(tmp_path), progress=False, log_every=1, ckpt_every=2)).fit()
    log = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    assert len(log) == 4 and all(math.isfinite(r[k]) for r in log for k in ("loss", "reconstruction", "mask", "tc", "disc"))
    fresh = Engine(S.SubspaceMethod(cfg), ShardedBatches(faces, 8), EngineConfig(steps=4, out_dir=str(tmp_path), progress=False))
    fresh.load(fresh.checkpoints()[-1])
    for p, q in zip(eng.method.model.parameters(), fresh.method.model.parameters()): assert torch.equal(p, q)

    sw = S.subspace_swapper(eng.method.model)
    b = faces.__getitems__(list(range(16)))
    grid = S.swap_grid(sw, b["image"][:2], b["image"][2:5], 3)
    assert grid.shape == (3, 4, 3, 64, 64) and torch.equal(grid[1:, 0], b["image"][:2])
    rec = sw.decode(sw.encode(b["image"][2:3]))
    assert torch.allclose(S.swap_grid(sw, b["image"][2:3], b["image"][2:3], 1)[1, 1], rec[0], atol=1e-5)

    reg = FactorRegressor(RegressorConfig(width=8)).eval()
    rcp = {k: v[:8] for k, v in b.items()}; don = {k: v[8:] for k, v in b.items()}
    res, swapped, _ = S.evaluate_swaps(sw, rcp, don, reg)
    assert 0 <= res["locality"] <= 1 and set(swapped) == set(S.region_names("paper"))
    assert all(math.isfinite(res[k]) for k in ("donor_r2", "kept_r2", "psnr", "ssim"))


def test_no_independence_ablation_leaves_the_discriminator_alone(faces, tmp_path):
    meth = S.SubspaceMethod(S.SubspaceConfig(w_ind=0.0))
    before = [p.detach().clone() for p in meth.disc.parameters()]
    Engine(meth, ShardedBatches(faces, 8), EngineConfig(steps=2, out_dir=str(tmp_path), progress=False, log_every=1)).fit()
    log = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    assert "tc" not in log[-1] and "disc" not in log[-1]
    assert all(torch.equal(a, p) for a, p in zip(before, meth.disc.parameters()))


def test_swap_metrics_on_hand_made_cases():
    before = torch.zeros(1, 3, 8, 8); after = before.clone()
    mr = torch.zeros(1, 8, 8, dtype=torch.uint8); md = mr.clone()
    mr[:, :2, :2] = sf.C["mouth"]; md[:, 6:, 6:] = sf.C["u_lip"]
    after[:, :, :2, :2] = 1; after[:, :, 6:, 6:] = 1
    assert S.swap_locality(before, after, mr, md, 4) == pytest.approx(1.0)
    after[:, :, 4, :] = 1
    assert S.swap_locality(before, after, mr, md, 4) == pytest.approx(0.5)

    fr, fd = torch.rand(200, 5), torch.rand(200, 5)
    r = S.transfer_r2(torch.cat([fr[:, :3], fd[:, 3:]], 1), fd, fr, [3, 4])
    assert torch.allclose(r["donor"], torch.ones(2, dtype=torch.float64)) and torch.allclose(r["kept"], torch.ones(3, dtype=torch.float64))

    R = np.zeros((4, 2)); R[:2, 0] = 1; R[2:, 1] = 1
    d = S.subspace_dci(R, [[0, 1], [2, 3]], [[0], [1]])
    assert d["disentanglement"] == pytest.approx(1.0) and d["completeness"] == pytest.approx(1.0)
    mixed = S.subspace_dci(np.ones((4, 2)), [[0, 1], [2, 3]], [[0], [1]])
    assert mixed["disentanglement"] == pytest.approx(0.0, abs=1e-6)


def test_assign_dims_groups_units_by_correlation():
    f = torch.rand(400, 3)
    codes = torch.stack([-f[:, 1], f[:, 0], f[:, 2] * 3], 1)
    assert S.assign_dims(codes, f, {"a": [0], "b": [1], "c": [2]}) == {"a": [1], "b": [0], "c": [2]}


def test_subspaces_experiment_tiny(tmp_path):
    "The experiment runs end to end with tiny parameters: the method, both ablations, the beta-VAE and the renderer's ceiling."
    from disentangle.cli import run_experiment
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    params = dict(steps=4, batch=8, n_identities=40, images_per_identity=4, n_codes=16, n_boot=50,   # the β-VAE at the method's budget (default)
                  w_perc=0.5, w_adv=0.05, spatial_regions="background_hair", ablations="no_mask,no_independence,no_perceptual,no_adversarial", cache_dir=str(tmp_path / "cache"))
    run = run_experiment("subspaces", params, out=tmp_path, experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("subspaces", "no_mask", "no_independence", "beta_vae", "renderer"):
        assert 0 <= m[f"{name}.locality"] <= 1, name
        assert np.isfinite(m[f"{name}.kept_r2"]) and np.isfinite(m[f"{name}.fid_swapped"]), name
    assert m["renderer.locality"] > 0.95 and m["renderer.kept_r2"] > m["subspaces.kept_r2"]   # the ceiling, even on 16 faces
    assert m["budget.samples.beta_vae"] == m["budget.samples.subspaces"] == 4 * 8                 # equal budgets in samples seen
    scores = ("locality", "donor_r2_relative", "kept_r2_relative", "r2_reconstruction", "psnr", "donor_r2", "kept_r2")
    assert all(f"accept.{k}.threshold" in m for k in scores)
    for o in ("no_mask", "no_independence", "beta_vae"):                 # every "beats" rests on a paired interval around the difference
        for k in scores:
            d, lo, hi, v = (m[f"compare.{k}.subspaces-{o}.{q}"] for q in ("diff", "lo", "hi", "verdict"))
            assert (lo <= hi and np.isfinite(d)) or np.isnan(d), (o, k, d, lo, hi)
            assert v == (1.0 if lo > 0 else -1.0 if hi < 0 else 0.0), (o, k, lo, hi, v)
    assert m["accept.beats_beta_vae"] == float(all(m[f"compare.{k}.subspaces-beta_vae.verdict"] == 1 for k in scores))
    for o in ("no_mask", "no_independence"):
        assert m[f"accept.not_dominated.{o}"] == float(not all(m[f"compare.{k}.subspaces-{o}.verdict"] == -1 for k in scores))
    # the renderer redraws the real faces (to 60 dB): judged against its own reconstructions it scores what it scores against the real faces
    for k in ("donor_r2", "kept_r2"): assert m[f"renderer.{k}_relative"] == pytest.approx(m[f"renderer.{k}"], abs=0.01), k
    assert m["renderer.donor_r2_relative"] > m["subspaces.donor_r2_relative"]      # and a 4-step model cannot carry parts as it does
    assert all(np.isfinite(m[f"subspaces.{k}"]) for k in ("donor_r2_true", "kept_r2_true_all_factors", "r2_reconstruction_true"))
    assert {p.name for p in run.glob("*.png")} >= {"swaps-subspaces.png", "swaps-renderer.png", "interpolation.png", "masks.png", "losses.png"}
    logs = {n: [json.loads(l) for l in open(run / f"train-{n}" / "log.jsonl")] for n in ("subspaces", "no_perceptual", "no_adversarial")}
    assert all(r["perceptual"] > 0 for r in logs["subspaces"]) and not any("perceptual" in r for r in logs["no_perceptual"])   # the ablation drops the term
    assert all(np.isfinite(r["g_adv"]) and np.isfinite(r["d_adv"]) for r in logs["subspaces"]) and not any("g_adv" in r for r in logs["no_adversarial"])
    for a in ("no_perceptual", "no_adversarial"):
        assert np.isfinite(m[f"{a}.locality"]) and f"compare.locality.subspaces-{a}.lo" in m
    from disentangle.core import load_tensors
    assert "spatial_w" in load_tensors(run / "model-subspaces.safetensors")[0]          # the hair's subspace reads its layout


def synthfaces_as_celebamask_hq(root: Path, n=20):
    "SynthFaces renders written in CelebAMask-HQ's official layout: 1024 px JPEGs, one 512 px PNG per part, attribute file."
    from PIL import Image
    from disentangle.synthfaces import CLASSES, render
    r = render(n, size=64, seed=3)
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        im = ((r["image"][k].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(im).resize((1024, 1024), Image.NEAREST).save(root / "CelebA-HQ-img" / f"{k}.jpg", quality=90)
        d = root / "CelebAMask-HQ-mask-anno" / str(k // 2000); d.mkdir(parents=True, exist_ok=True)
        m = r["mask"][k].numpy()
        for c in np.unique(m):
            if c: Image.fromarray(((m == c) * 255).astype(np.uint8)).resize((512, 512), Image.NEAREST).save(d / f"{k:05d}_{CLASSES[c]}.png")
    rows = [f"{k}.jpg  " + " ".join("1" if (j + k) % 3 == 0 else "-1" for j in range(40)) for k in range(n)]
    names = " ".join(f"attr{j}" for j in range(40))
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(f"{n}\n{names}\n" + "\n".join(rows) + "\n")
    return root


def test_subspaces_experiment_on_celebamask_hq_layout(tmp_path):
    "data=celebamask_hq trains on the photos and their part masks and scores what needs no factors; sets without masks are refused."
    from disentangle.cli import run_experiment, RunFailed
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    root = synthfaces_as_celebamask_hq(tmp_path / "CelebAMask-HQ")
    params = dict(data="celebamask_hq", data_root=str(root), steps=4, batch=8, n_codes=16, cache_dir=str(tmp_path / "cache"))
    run = run_experiment("subspaces", params, out=tmp_path / "a", experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    for name in ("subspaces", "no_mask", "no_independence"):
        assert 0 <= m[f"{name}.locality"] <= 1 and np.isfinite(m[f"{name}.psnr"]) and np.isfinite(m[f"{name}.fid_swapped"]), name
        assert f"{name}.donor_r2" not in m, name
    assert "beta_vae.locality" not in m and "renderer.locality" not in m and "accept.locality.threshold" in m
    assert {"swaps-subspaces.png", "masks.png", "interpolation.png"} <= {p.name for p in run.glob("*.png")}
    from PIL import Image
    for k in (0, 60000):                                   # FFHQ: photos, no masks
        d = tmp_path / "ffhq" / "thumbnails128x128" / f"{k // 1000 * 1000:05d}"; d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (128, 128), (90, 90, 90)).save(d / f"{k:05d}.png")
    with pytest.raises(RunFailed, match=r"has no \['mask'\]"):
        run_experiment("subspaces", {**params, "data": "ffhq", "data_root": str(tmp_path / "ffhq")}, out=tmp_path / "b", experiments=exps)
