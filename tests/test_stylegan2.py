"StyleGAN2 key layouts against the official ones, recorded from rosinality's and NVIDIA's own state_dict()."
from __future__ import annotations
import json, pickle, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch

from disentangle.stylegan2 import (Discriminator, Generator, StyleGAN2Config, _nvidia_names_D, _nvidia_names_G,
                                   _nvidia_shape, export_rosinality, load_discriminator, load_generator, safe_load,
                                   write_nvidia_layout, _module_tensors)

OFFICIAL = json.loads((Path(__file__).parent / "data" / "stylegan2_official_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(OFFICIAL["rosinality"]))
def test_rosinality_layout(name):
    spec = OFFICIAL["rosinality"][name]
    cfg = StyleGAN2Config(**spec["ours"])
    g = {k: list(v.shape) for k, v in Generator(cfg).state_dict().items() if k != "w_avg"}
    d = {k: list(v.shape) for k, v in Discriminator(cfg).state_dict().items()}
    assert g == spec["Generator"]
    assert d == spec["Discriminator"]


@pytest.mark.parametrize("name", sorted(OFFICIAL["nvidia"]))
def test_nvidia_layout(name, tmp_path):
    "Every official NVIDIA tensor maps onto one of ours with the right shape, and our writer emits exactly the official keys."
    spec = OFFICIAL["nvidia"][name]
    cfg = StyleGAN2Config(**spec["ours"])
    G, D = Generator(cfg), Discriminator(cfg)
    for names, module, official in ((_nvidia_names_G(cfg), G, spec["G"]), (_nvidia_names_D(cfg), D, spec["D"])):
        own = module.state_dict()
        filters = {k for k in official if k.endswith("resample_filter")}
        assert set(official) - filters == set(names)
        for nv, ours in names.items():
            assert list(_nvidia_shape(ours, own[ours].shape)) == official[nv], (nv, ours)
    path = write_nvidia_layout(G, tmp_path / "snap.pkl", D)
    snap = safe_load(path)
    assert {k: list(v.shape) for k, v in _module_tensors(snap["G_ema"]).items()} == spec["G"]
    assert {k: list(v.shape) for k, v in _module_tensors(snap["D"]).items()} == spec["D"]


def test_round_trips_and_errors(tmp_path):
    torch.manual_seed(0)
    cfg = StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channel_multiplier=0.0625, channel_max=32)
    G, D = Generator(cfg), Discriminator(cfg)
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()): p.add_(torch.randn_like(p) * 0.1)
        G.w_avg.normal_()
    z, x = torch.randn(2, 32), torch.randn(4, 3, 32, 32)
    for path in (export_rosinality(G, tmp_path / "g.pt", D), write_nvidia_layout(G, tmp_path / "g.pkl", D)):
        torch.testing.assert_close(load_generator(path)(z, truncation_psi=0.5, noise_mode="const"), G(z, truncation_psi=0.5, noise_mode="const"))
        torch.testing.assert_close(load_discriminator(path)(x), D(x))
    # a rosinality training checkpoint: no latent_avg, optimizer states and argparse args beside the weights
    import argparse
    ck = {"g": G.state_dict(), "g_ema": {k: v for k, v in G.state_dict().items() if k != "w_avg"}, "d": D.state_dict(),
          "g_optim": torch.optim.Adam(G.parameters()).state_dict(), "args": argparse.Namespace(size=32, iter=10), "ada_aug_p": 0.0}
    del ck["g"]["w_avg"]
    torch.save(ck, tmp_path / "train.pt")
    G2 = load_generator(tmp_path / "train.pt")
    assert G2.w_avg.abs().sum() > 0                      # estimated from the mapping network
    torch.testing.assert_close(G2.synthesis(G2.mapping(z), noise_mode="const"), G.synthesis(G.mapping(z), noise_mode="const"))
    assert safe_load(tmp_path / "train.pt")["args"].state == {"size": 32, "iter": 10}
    with pytest.raises(KeyError, match="no 'g_ema'"):
        torch.save({"generator": {}}, tmp_path / "other.pt"); load_generator(tmp_path / "other.pt")
    with pytest.raises(KeyError, match="holds no discriminator"):
        export_rosinality(G, tmp_path / "gonly.pt"); load_discriminator(tmp_path / "gonly.pt")


MALICIOUS = [("posix", "system"), ("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"), ("builtins", "getattr"),
             ("importlib", "import_module"), ("runpy", "run_path")]


@pytest.mark.parametrize("module,name", MALICIOUS)
def test_malicious_pickles_are_refused(module, name, tmp_path):
    "A REDUCE of any dangerous global is refused before the call; a marker file proves nothing ran."
    marker = tmp_path / "ran"
    payload = (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"\x85R.")
    (tmp_path / "evil.pkl").write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global {module}.{name}"):
        load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_loading_imports_nothing_from_the_file(tmp_path):
    "Reading an NVIDIA-layout snapshot in a fresh interpreter imports no module named in it."
    G = Generator(StyleGAN2Config(size=8, style_dim=8, n_mlp=1, channel_max=8))
    write_nvidia_layout(G, tmp_path / "s.pkl")
    code = ("import sys; from disentangle.stylegan2 import load_generator; before = set(sys.modules); "
            f"load_generator({str(tmp_path / 's.pkl')!r}); new = set(sys.modules) - before; "
            "assert not any(m.split('.')[0] in ('torch_utils', 'dnnlib', 'training') for m in sys.modules), new; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_train_stylegan2_tiny(tmp_path):
    "The experiment trains through the engine, resumes from its checkpoints, and writes a loadable EMA generator."
    from disentangle.cli import run_experiment
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    p = dict(size=32, kimg=0.064, batch=8, n_identities=20, images_per_identity=4, channel_max=16, style_dim=32, n_mlp=2,
             fid_n=32, ckpt_every=4, train_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "cache"))
    run = run_experiment("train_stylegan2", p, out=tmp_path / "a", experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 8 and m["fid_in_domain"] > 0 and m["fid_in_domain_real_halves"] >= 0
    G = load_generator(run / "stylegan2-synthfaces-64.safetensors")
    assert G.cfg.size == 32 and G(torch.randn(2, 32)).shape == (2, 3, 32, 32)
    assert (run / "samples.png").read_bytes()[:4] == b"\x89PNG"
    run2 = run_experiment("train_stylegan2", {**p, "kimg": 0.096}, out=tmp_path / "b", experiments=exps)   # resumes at step 8
    assert json.loads((run2 / "metrics.json").read_text())["steps"] == 12
    assert json.loads((tmp_path / "train" / "log.jsonl").read_text().splitlines()[-1])["step"] == 12
    # score=FILE trains nothing and scores that generator with the same code: the first run's FID again
    log = (tmp_path / "train" / "log.jsonl").read_text()
    scored = run_experiment("train_stylegan2", {**p, "score": str(run / "stylegan2-synthfaces-64.safetensors")}, out=tmp_path / "c", experiments=exps)
    s = json.loads((scored / "metrics.json").read_text())
    assert s["scored_only"] == 1 and "steps" not in s and s["kimg"] == m["kimg"] == 0.064
    assert s["fid_in_domain"] == pytest.approx(m["fid_in_domain"], rel=1e-5) and s["fid_in_domain_real_halves"] == pytest.approx(m["fid_in_domain_real_halves"])
    assert (tmp_path / "train" / "log.jsonl").read_text() == log and not (scored / "losses.png").exists()
    with pytest.raises(Exception, match="nothing to bundle"):
        run_experiment("train_stylegan2", {**p, "score": "bundled", "bundle": True}, out=tmp_path / "d", experiments=exps)


def test_train_stylegan2_on_a_real_layout(tmp_path):
    "data=/data_root= train on a real data set's training split (tiny CelebA in its official layout) and hold out its test split."
    from test_realdata import write_celeba
    from disentangle.cli import run_experiment
    exps = Path(__file__).resolve().parent.parent / "nbs" / "experiments"
    root = write_celeba(tmp_path / "celeba", n=10, parts=(0,) * 6 + (2,) * 4)
    p = dict(data="celeba", data_root=str(root), size=32, kimg=0.016, batch=4, channel_max=16, style_dim=32, n_mlp=2,
             fid_n=4, ckpt_every=4, train_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "cache"), out_name="g-celeba")
    run = run_experiment("train_stylegan2", p, out=tmp_path / "a", experiments=exps)
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 4 and m["fid_n"] == 4 and np.isfinite(m["fid_in_domain"])
    assert json.loads((run / "run_info.json").read_text())["data"] == "celeba"
    assert load_generator(run / "g-celeba.safetensors").cfg.size == 32
    assert any((tmp_path / "cache").iterdir())                 # the resized CelebA images were cached
    with pytest.raises(Exception, match="needs data_root"):
        run_experiment("train_stylegan2", {**p, "data_root": ""}, out=tmp_path / "b", experiments=exps)
