"""Hostile and malformed input, from outside, as a hostile user would give it: no code runs from any weights file, no
image is silently wrong, every bad value stops before work, and each loader refuses what it cannot read with an error
naming the file. Every file is made here. The fuzz sends >= 1,000 hostile weights files through every loader in a
subprocess whose address space is capped at 1 GiB above what its imports take: a loader that allocated more would die
of it; a marker file, a marker module and a TorchScript print show that nothing in the files ran."""
from __future__ import annotations
import io, json, math, os, pickle, re, struct, subprocess, sys, time, warnings, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

HERE = Path(__file__).resolve().parent
EXPS = HERE.parent / "nbs" / "experiments"
torch.set_num_threads(1)
MARK_TS = "HX-TORCHSCRIPT-RAN"


# ---------------------------------------------------------------------------------------------------------------------
# File makers (raw pickle opcodes where the standard pickler would refuse to write them)

def tiny_generator(seed=0):
    from disentangle.stylegan2 import Discriminator, Generator, StyleGAN2Config
    torch.manual_seed(seed)
    cfg = StyleGAN2Config(size=8, style_dim=8, n_mlp=1, channel_multiplier=0.0625, channel_max=8)
    return Generator(cfg), Discriminator(cfg)


def global_pickle(module: str, name: str, args: tuple, proto: int = 2, wrap: str | None = None) -> bytes:
    "A pickle that calls module.name(*args) (GLOBAL up to protocol 3, STACK_GLOBAL from 4), optionally as {wrap: call}."
    a = pickle.dumps(args, protocol=2)[2:-1]                          # the argument tuple, protocol-2 opcodes
    if proto >= 4:
        s = lambda t: b"\x8c" + bytes([len(t.encode())]) + t.encode() if len(t.encode()) < 256 else b"X" + struct.pack("<I", len(t.encode())) + t.encode()
        g = s(module) + s(name) + b"\x93"
    else: g = b"c" + module.encode() + b"\n" + name.encode() + b"\n"
    call = g + a + b"R"
    if wrap is not None: call = b"}" + b"X" + struct.pack("<I", len(wrap)) + wrap.encode() + call + b"s"
    return b"\x80" + bytes([proto]) + call + b"."


def torch_zip(data_pkl: bytes, records: dict | None = None, root: str = "archive") -> bytes:
    "A torch.save-style zip around `data_pkl` (stored records, as torch writes them)."
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", data_pkl)
        z.writestr(f"{root}/byteorder", "little")
        for k, v in (records or {}).items(): z.writestr(f"{root}/data/{k}", v)
        z.writestr(f"{root}/version", "3\n")
    return b.getvalue()


def legacy(main_pkl: bytes, storages: bytes = b"", keys=()) -> bytes:
    "torch's legacy format: magic, protocol, system info, the main pickle, the storage keys, the storages' bytes."
    b = io.BytesIO()
    pickle.dump(0x1950a86a20f9469cfc6c, b, protocol=2); pickle.dump(1001, b, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, b, protocol=2)
    b.write(main_pkl); pickle.dump(list(keys), b, protocol=2); b.write(storages)
    return b.getvalue()


def storage_pid(key: str, numel: int, legacy_format: bool, cls="FloatStorage") -> bytes:
    "Opcodes of a persistent storage id ('storage', torch.<cls>, key, 'cpu', numel[, None]) and BINPERSID."
    u = lambda t: b"X" + struct.pack("<I", len(t)) + t.encode()
    n = b"J" + struct.pack("<i", numel) if numel < 2 ** 31 else b"\x8a\x08" + struct.pack("<q", numel)
    return b"(" + u("storage") + b"ctorch\n" + cls.encode() + b"\n" + u(key) + u("cpu") + n + (b"N" if legacy_format else b"") + b"tQ"


def rebuild(pid: bytes, size: int, stride: int) -> bytes:
    "Opcodes of torch._utils._rebuild_tensor_v2(storage, 0, (size,), (stride,), False, OrderedDict())."
    i = lambda v: b"J" + struct.pack("<i", v) if v < 2 ** 31 else b"\x8a\x08" + struct.pack("<q", v)
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00" + i(size) + b"\x85" + i(stride) + b"\x85\x89"
            + b"ccollections\nOrderedDict\n)Rt" + b"R")


def nested(depth: int, kind: str = "list") -> bytes:
    "A pickle of containers nested `depth` deep (the standard pickler would hit the recursion limit)."
    if kind == "list": return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."
    if kind == "tuple": return b"\x80\x04" + b")" + b"\x85" * depth + b"."
    if kind == "dict": return b"\x80\x04" + b"}\x8c\x01k" * depth + b"N" + b"s" * depth + b"."
    raise KeyError(kind)

CYCLES = [b"\x80\x04]\x94h\x00a.",                                    # a list that holds itself (through the memo)
          b"\x80\x04}\x94\x8c\x01k\x94h\x00s.",                           # a dict that holds itself
          b"\x80\x04}\x94\x8c\x05g_ema\x94]\x94h\x00as.",                  # {'g_ema': [itself]}
          b"\x80\x04]\x94]\x94h\x00ah\x01a."]                              # two lists that hold each other


class SetStateModule(nn.Module):
    "A module whose TorchScript __setstate__ prints a marker: torch.jit.load would run it."
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
    @torch.jit.export
    def __getstate__(self): return (self.lin.weight.shape[0], self.training)
    @torch.jit.export
    def __setstate__(self, state: tuple[int, bool]):
        print("HX-TORCHSCRIPT-RAN", state[0])
        self.training = state[1]
    def forward(self, x): return self.lin(x)


def torchscript_file(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)                      # torch.jit.script is deprecated, still written
        torch.jit.save(torch.jit.script(SetStateModule()), str(path))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# 1. No code runs from a TorchScript file (or any pickle global outside the allow-list), in any loader

def every_loader(tmp: Path) -> dict:
    "Every weights loader of the workspace, by name: path -> object (each must refuse a hostile file by name)."
    from disentangle import adapters as ad, checkpoints as ck, core, engine as en, perception as P, photogeo as PG, stylegan2 as sg
    sys.path.insert(0, str(HERE))
    from engine_toy import Toy, data
    eng = en.Engine(Toy(), data(8), en.EngineConfig(steps=1, out_dir=str(tmp / "engine"), progress=False, device="cpu"))
    def pretrained(p):                                   # load_pretrained takes a path ending in .safetensors
        q = Path(str(p) + ".safetensors") if not str(p).endswith(".safetensors") else Path(p)
        if not q.exists(): os.link(p, q)
        return P.load_pretrained(q)
    out = {"stylegan2.load_generator": sg.load_generator, "stylegan2.load_discriminator": sg.load_discriminator,
           "stylegan2.safe_load": sg.safe_load, "engine.load_checkpoint": en.load_checkpoint, "engine.Engine.load": eng.load,
           "adapters.read_state_dict": ad.read_state_dict, "adapters.load_facenet": ad.load_facenet,
           "adapters.load_clip_visual": ad.load_clip_visual, "adapters.load_clip_text": ad.load_clip_text,
           "perception.load_pretrained": pretrained, "photogeo.load_photogeo": PG.load_photogeo, "photogeo.load_vgg16": PG.load_vgg16,
           "core.load_tensors": core.load_tensors, "checkpoints.read_pickled": ck.read_pickled}
    try:
        import onnxruntime  # noqa: F401
        out["adapters.ArcFaceONNX"] = ad.ArcFaceONNX
    except ImportError: pass
    return out


def test_torchscript_is_refused_by_every_loader_and_never_runs(tmp_path):
    ts = torchscript_file(tmp_path / "model.pt")
    control = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(ts)!r})"], capture_output=True, text=True)
    assert MARK_TS in control.stdout, "the control: torch.jit.load runs the file's __setstate__"
    code = f"""
import sys, contextlib, io; sys.path.insert(0, {str(HERE)!r})
from pathlib import Path
from test_hostile import every_loader
out = {{}}
for name, load in every_loader(Path({str(tmp_path)!r})).items():
    try: load({str(ts)!r}); out[name] = 'loaded'
    except Exception as e: out[name] = f'{{type(e).__name__}}: {{e}}'
print('RESULT', repr(out))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert MARK_TS not in r.stdout + r.stderr, "a loader ran the TorchScript file"
    out = eval(r.stdout.split("RESULT ", 1)[1])
    for name, res in out.items():
        assert str(ts) in res and ("TorchScript" in res or "not an ONNX model" in res or "not safetensors" in res), (name, res)


@pytest.mark.parametrize("module,name", [("posix", "system"), ("builtins", "exec"), ("subprocess", "Popen"), ("torch", "load"),
                                         ("torch.jit", "load"), ("importlib", "import_module"), ("builtins", "open")])
def test_globals_outside_the_allow_list_are_refused_before_they_run(module, name, tmp_path):
    from disentangle.checkpoints import read_pickled, scan_pickle, tensor_globals
    marker = tmp_path / "ran"
    args = {"system": (f"touch {marker}",), "exec": (f"open({str(marker)!r}, 'w')",), "Popen": (["touch", str(marker)],),
            "open": (str(marker), "w"), "load": (str(marker),), "import_module": ("os",)}[name]
    data = global_pickle(module, name, args, proto=4, wrap="g_ema")
    (tmp_path / "evil.pkl").write_bytes(data)
    torch_file = tmp_path / "evil.pt"; torch_file.write_bytes(torch_zip(data))
    for f in (tmp_path / "evil.pkl", torch_file):
        with pytest.raises(pickle.UnpicklingError, match=f"{re.escape(str(f))}: refusing to load global {re.escape(module)}.{name}"):
            read_pickled(f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):     # refused by the scan, before any unpickling
        scan_pickle(io.BytesIO(data), "evil.pkl", tensor_globals)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------------
# 2. Every image mode is converted correctly to 8-bit RGB or refused by name; tiny images are refused

def test_image_modes_convert_or_are_refused(tmp_path):
    from disentangle import realdata as rd
    g16 = np.full((24, 24), 32768, np.uint16); g16[:12] = 4000                     # mid-grey and dark
    Image.fromarray(g16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    Image.fromarray(np.full((24, 24), 65535, np.int32), "I").save(tmp_path / "int16range.tif")
    Image.fromarray(np.full((24, 24), 70000, np.int32), "I").save(tmp_path / "int32.tif")
    Image.fromarray(np.full((24, 24), 0.5, np.float32), "F").save(tmp_path / "float.tif")
    pal = Image.new("P", (24, 24), 1); pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    for x in range(12): pal.putpixel((x, 0), 0)
    pal.save(tmp_path / "palette.png", transparency=0)
    Image.new("LA", (24, 24), (90, 128)).save(tmp_path / "la.png")                    # half transparent over black: 45
    Image.new("RGBA", (24, 24), (200, 100, 50, 255)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)   # red
    Image.new("1", (24, 24), 1).save(tmp_path / "bits.png")
    Image.new("RGB", (1, 1), (7, 7, 7)).save(tmp_path / "tiny.png")
    load = lambda f, size=8: rd.load_image(tmp_path / f, size, "full")
    assert load("grey16.png")[0, 0].tolist() == [16, 16, 16] and load("grey16.png")[7, 7].tolist() == [128, 128, 128]
    assert load("int16range.tif")[4, 4].tolist() == [255, 255, 255]
    assert load("palette.png", 24)[0, 0].tolist() == [0, 0, 0] and load("palette.png", 24)[12, 12].tolist() == [200, 100, 50]
    assert load("la.png")[4, 4].tolist() == [45, 45, 45]
    assert load("rgba.png")[4, 4].tolist() == [200, 100, 50]
    r, gg, b = load("cmyk.jpg")[4, 4].tolist(); assert r > 240 and gg < 15 and b < 15
    assert load("bits.png")[4, 4].tolist() == [255, 255, 255]
    for f, msg in (("int32.tif", "32-bit integer image (mode I) with values 70000..70000"), ("float.tif", "32-bit float image (mode F)"),
                   ("tiny.png", "image is 1x1: its crop 1x1 would be upscaled 8.0 times")):
        with pytest.raises(rd.DataError, match=re.escape(f"{tmp_path / f}: {msg}")): load(f)
    # through a data set: the tiny image is skipped and counted once, the 16-bit one loads as grey, not white
    folder = tmp_path / "folder"; folder.mkdir()
    for f in ("grey16.png", "tiny.png", "la.png", "palette.png"): (folder / f).write_bytes((tmp_path / f).read_bytes())
    with pytest.raises(rd.DataError, match="tiny.png: image is 1x1"): rd.ImageFolder(folder, size=8, cache_dir=tmp_path / "c1")
    with pytest.warns(rd.BadDataWarning, match="skipped 1 bad item"):
        ds = rd.ImageFolder(folder, size=8, skip_bad=True, cache_dir=tmp_path / "c2")
    assert len(ds) == 3 and [Path(s.path).name for s in ds.skipped] == ["tiny.png"]
    x = ds.__getitems__([0, 1])["image"]                                           # [-1, 1]: grey16.png is first (sorted)
    assert abs(float(x[0, :, 6, 6].mean()) - (128 / 127.5 - 1)) < 1e-6 and abs(float(x[1, :, 4, 4].mean()) - (45 / 127.5 - 1)) < 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# 3. The CLI checks values, not only types, before any work; --out that cannot be one is one line

def run_cli(capsys, *args):
    from disentangle.cli import main
    code = main(["--experiments", str(EXPS), *args])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("exp,key,value,allowed", [
    ("reproduce", "size", "65", "[32..256, multiple of 16]"), ("reproduce", "baseline_steps", "-5", "[1..]"),
    ("reproduce", "data", "celebx", "[one of synthfaces, celeba, celebamask_hq, ffhq, folder]"),
    ("subspaces", "lr", "nan", "[> 0]"), ("train_stylegan2", "size", "96", "[32..1024, power of two]"),
    ("train_stylegan2", "r1_gamma", "inf", "a finite number"), ("subspaces", "regions", "coarse", "[one of paper, fine]"),
    ("baselines", "models", "ae,vae", "[each of ae, beta_vae, beta_tcvae]"), ("idmap", "device", "gpu", "[device]"),
    ("zerodim", "classifier", "both", "[one of shared, separate]"), ("train_stylegan2", "mixing", "1.5", "[0..1]")])
def test_cli_refuses_bad_values_before_any_work(exp, key, value, allowed, tmp_path, capsys):
    out = tmp_path / "runs"
    code, err = run_cli(capsys, "run", exp, "-p", key, value, "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"parameter {key!r} must be {allowed}, got" in err, err
    assert not out.exists(), "a run folder was made for a value the experiment does not take"


def test_cli_out_that_cannot_hold_a_run_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "runs", Path("/proc/disentangle-hostile")):
        code, err = run_cli(capsys, "run", "reproduce", "-p", "size", "32", "--out", str(out))
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"--out {out}: cannot make a run folder there" in err, err
        assert "Traceback" not in err


def test_every_experiment_declares_its_values():
    "Sizes, data sets, counts and rates carry a rule in every experiment; every default obeys its own rule."
    from disentangle.cli import check_value, list_experiments
    from disentangle.realdata import DATA_CHOICES
    exps = list_experiments(EXPS)
    for name, e in exps.items():
        ps = e["parameters"]
        for k, p in ps.items():
            assert check_value(p["default"], p["rule"]), (name, k, p["default"], p["rule"])
            if k in ("size", "seed", "steps", "batch", "batch_size", "lr", "device", "precision") or k.endswith("_steps"):
                assert p["rule"] is not None, f"{name}: parameter {k!r} declares no valid values"
        assert ps["data"]["rule"]["alternatives"] == [[("in", list(DATA_CHOICES))]], name


# ---------------------------------------------------------------------------------------------------------------------
# 4. Metrics check test codes and factors against the training ones; no silent NaN

def test_metrics_check_test_against_train():
    from disentangle import metrics as M
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (300, 2)); z = y + 0.1 * rng.normal(size=y.shape)
    tr, te = slice(0, 200), slice(200, 300)
    for f in (M.sap, M.modularity_explicitness, M.dci):
        with pytest.raises(ValueError, match=r"z_test/y_test: shapes \(100, 1\)/\(100, 2\) do not match"): f(z[tr], y[tr], z[te, :1], y[te])
        with pytest.raises(ValueError, match=r"z_test/y_test: shapes \(100, 2\)/\(100, 1\) do not match"): f(z[tr], y[tr], z[te], y[te, :1])
        with pytest.raises(ValueError, match="z_test: 1 codes are not finite"): f(z[tr], y[tr], np.where(np.arange(200).reshape(100, 2) == 5, np.nan, z[te]), y[te])
        with pytest.raises(ValueError, match="y_test: factors must be integer classes"): f(z[tr], y[tr], z[te], y[te] + 0.5)
        with pytest.raises(ValueError, match="y_test: expected 100 rows to match the codes, got 50"): f(z[tr], y[tr], z[te], y[te][:50])
    with pytest.raises(ValueError, match="y_train: modularity .* needs at least 2 factors, got 1"):
        M.modularity_explicitness(z[tr], y[tr, :1], z[te], y[te, :1])
    with pytest.raises(ValueError, match=r"y_train: factors must have shape \(N, F\) with F >= 1"):
        M.sap(z[tr], y[tr, :0], z[te], y[te, :0])
    assert np.isfinite(M.sap(z[tr], y[tr], z[te], y[te])["SAP_score"])


# ---------------------------------------------------------------------------------------------------------------------
# 5. Checkpoint edge cases name the file and the reason

def test_checkpoint_edge_cases_name_the_file(tmp_path):
    from disentangle import engine as en
    from disentangle.stylegan2 import export_rosinality, load_generator, save_generator
    from disentangle.core import CheckpointError
    sys.path.insert(0, str(HERE))
    from engine_toy import Toy, data
    eng = en.Engine(Toy(), data(8), en.EngineConfig(steps=2, out_dir=str(tmp_path / "e"), progress=False, ckpt_every=2)).fit()
    ck = en.load_checkpoint(eng.checkpoints()[-1])
    del ck["modules"]["net"]; torch.save(ck, tmp_path / "nomodule.pt")
    fresh = en.Engine(Toy(), data(8), en.EngineConfig(steps=2, out_dir=str(tmp_path / "f"), progress=False))
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'nomodule.pt'}: no module ['net'] in the checkpoint")): fresh.load(tmp_path / "nomodule.pt")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'empty.pkl'}: empty file (0 bytes)")): load_generator(tmp_path / "empty.pkl")
    G, D = tiny_generator()
    full = export_rosinality(G, tmp_path / "g.pt", D).read_bytes()
    (tmp_path / "cut.pt").write_bytes(full[: len(full) // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'cut.pt'}: a damaged or truncated zip archive")): load_generator(tmp_path / "cut.pt")
    tiny = b"\x80\x04\x95" + struct.pack("<Q", 60) + b"\x8e" + struct.pack("<Q", 1 << 30) + b"\x00" * 52   # 72 bytes, claims 1 GB
    assert len(tiny) == 72
    (tmp_path / "tiny.pkl").write_bytes(tiny)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'tiny.pkl'}: malformed pickle")): load_generator(tmp_path / "tiny.pkl")
    p = save_generator(G, tmp_path / "ours.safetensors")                            # a config far larger than the tensors
    from safetensors.torch import load_file, save_file
    save_file(load_file(p), tmp_path / "inflated.safetensors", metadata={"format": '"disentangle.stylegan2"',
              "config": json.dumps({"size": 1024, "style_dim": 8192, "channel_max": 8192, "n_mlp": 8})})
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'inflated.safetensors'} does not fit the model")):
        load_generator(tmp_path / "inflated.safetensors")                           # checked on the meta device: ~10 GB never allocated


# ---------------------------------------------------------------------------------------------------------------------
# 6. Counting: each left-out image once; a UTF-8 BOM is accepted

def test_skip_bad_counts_each_left_out_image_once(tmp_path):
    from disentangle import realdata as rd
    from test_realdata import Layouts, mutated, text_mutation
    lay = Layouts(tmp_path)
    files = [("celeba", lay.celeba / "list_attr_celeba.txt", rd.CELEBA_ATTR), ("celeba", lay.celeba / "identity_CelebA.txt", rd.CELEBA_IDENTITY),
             ("celeba", lay.celeba / "list_landmarks_align_celeba.txt", rd.CELEBA_LANDMARKS),
             ("hq", lay.hq / "CelebAMask-HQ-attribute-anno.txt", rd.HQ_ATTR), ("hq", lay.hq / "CelebA-HQ-to-CelebA-mapping.txt", rd.HQ_MAPPING)]
    texts = {p: p.read_text() for _, p, _ in files}
    clean = {w: set(lay.make(w, False).meta["path"]) for w in ("celeba", "hq")}
    g, checked = np.random.default_rng(7), 0
    for i in range(250):
        what, path, fmt = files[i % len(files)]
        data, kind = text_mutation(g, texts[path], fmt)
        with mutated(path, data), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try: ds = lay.make(what, True)
            except rd.DataError: continue                                           # a broken header is fatal
        said = [int(m.group(1)) for x in w for m in [re.search(r"skipped (\d+) bad item", str(x.message))] if m]
        dropped = len(clean[what] - set(ds.meta["path"]))
        assert (said[0] if said else 0) == dropped, (i, path.name, kind, said, dropped, ds.skipped)
        items = [s.item for s in ds.skipped if s.item]
        assert len(items) == len(set(items)) == dropped, (i, path.name, kind, ds.skipped)
        rows = [(s.path, s.line) for s in ds.skipped if s.line]                     # a bad row is listed once
        assert len(rows) == len(set(rows)), (i, path.name, kind, ds.skipped)
        checked += 1
    assert checked > 200


def test_utf8_bom_is_accepted(tmp_path):
    from disentangle import realdata as rd
    from test_realdata import write_celeba
    root = write_celeba(tmp_path / "c", n=4, parts=(0, 0, 1, 2))
    for f in ("list_attr_celeba.txt", "identity_CelebA.txt", "list_landmarks_align_celeba.txt", "list_eval_partition.txt"):
        (root / f).write_bytes(b"\xef\xbb\xbf" + (root / f).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = rd.CelebA(root, size=8, split="all")
    assert len(ds) == 4 and not ds.skipped and ds.attribute_names[0] == "5_o_Clock_Shadow"


# ---------------------------------------------------------------------------------------------------------------------
# The fuzz: >= 1,000 hostile weights files through every loader, in a memory-capped subprocess

DANGEROUS = [("posix", "system"), ("os", "system"), ("subprocess", "Popen"), ("subprocess", "call"), ("builtins", "exec"),
             ("builtins", "eval"), ("builtins", "open"), ("builtins", "__import__"), ("builtins", "getattr"), ("builtins", "compile"),
             ("importlib", "import_module"), ("runpy", "run_path"), ("shutil", "copyfile"), ("pickle", "loads"), ("_pickle", "loads"),
             ("marshal", "loads"), ("torch", "load"), ("torch.jit", "load"), ("torch.serialization", "load"), ("torch", "from_file"),
             ("torch.storage", "_load_from_bytes_unsafe"), ("hx_evil", "run"), ("io", "open"), ("codecs", "open"), ("pathlib", "Path"),
             ("sys", "exit"), ("ctypes", "CDLL"), ("webbrowser", "open"), ("code", "interact"), ("pty", "spawn")]


def make_hostile_files(folder: Path, marker: Path, evil_py: Path, n_min=1000, seed=0) -> dict:
    "Write the fuzz's files into `folder`; returns {file name: family}: random, truncated, global, torchscript, nested, cyclic, bomb, model bomb."
    from disentangle.stylegan2 import export_rosinality, save_generator, write_nvidia_layout
    g = np.random.default_rng(seed)
    fam, k = {}, [0]
    def put(data: bytes, family: str, suffix=None):
        name = f"{k[0]:05d}{suffix or ['.pt', '.pkl', '.safetensors', '.pth', '.bin', '.onnx'][k[0] % 6]}"
        (folder / name).write_bytes(data); fam[name] = family; k[0] += 1
    G, D = tiny_generator()
    base = {"rosinality": export_rosinality(G, folder.parent / "b.pt", D).read_bytes(),
            "nvidia": write_nvidia_layout(G, folder.parent / "b.pkl", D).read_bytes(),
            "ours": save_generator(G, folder.parent / "b.safetensors").read_bytes()}
    b = io.BytesIO(); torch.save(G.state_dict(), b, _use_new_zipfile_serialization=False); base["legacy"] = b.getvalue()
    b = io.BytesIO(); torch.save({"step": 3, "modules": {"net": nn.Linear(4, 2).state_dict()}, "rng": [1, 2]}, b); base["engine"] = b.getvalue()
    try:
        from onnx import helper, numpy_helper, TensorProto
        gr = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 192])])
        m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 13)]); m.ir_version = 8
        base["onnx"] = m.SerializeToString()
    except ImportError: pass
    magics = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04", b"\x80\x05", pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2),
              struct.pack("<Q", 64) + b"{", struct.pack("<Q", 1 << 40) + b"{", b"\x08\x07\x12"]
    for i in range(250):                                                          # random bytes behind every magic
        put(magics[i % len(magics)] + g.bytes(int(g.integers(0, 4000))), "random")
    names = sorted(base)
    for i in range(260):                                                          # truncated archives and files
        src = base[names[i % len(names)]]
        put(src[: int(g.integers(0, len(src)))], "truncated")
    payload = {"system": (f"touch {marker}",), "Popen": (["touch", str(marker)],), "call": (["touch", str(marker)],),
               "exec": (f"open({str(marker)!r}, 'w')",), "eval": (f"open({str(marker)!r}, 'w')",), "compile": ("1", "x", "eval"),
               "open": (str(marker), "w"), "__import__": ("hx_evil",), "import_module": ("hx_evil",), "run_path": (str(evil_py),),
               "copyfile": (str(evil_py), str(marker)), "loads": (pickle.dumps(print),), "load": (str(marker),), "getattr": ("os", "system")}
    ident = lambda: "".join(chr(c) for c in g.integers(97, 123, int(g.integers(1, 12))))
    for i in range(300):                                                          # pickles naming globals off the allow-list
        if i % 5 == 4: module, name = "x" + ".".join(ident() for _ in range(int(g.integers(1, 4)))), ident()   # no record root
        else: module, name = DANGEROUS[i % len(DANGEROUS)]
        data = global_pickle(module, name, payload.get(name, (str(marker),)), proto=int(g.integers(2, 6)),
                             wrap=["g_ema", "G_ema", "modules", None][i % 4])
        put([data, torch_zip(data), legacy(data)][i % 3], "global")
    ts = torchscript_file(folder.parent / "ts.pt").read_bytes()
    for i in range(30):                                                           # TorchScript archives, whole and renamed
        put(ts if i % 3 else ts.replace(b"ts/", b"xx/"), "torchscript", ".pt" if i % 2 else ".pkl")
    for i in range(60):                                                           # containers nested 1,001 to 5,000 deep
        data = nested(int(np.exp(g.uniform(np.log(1001), np.log(5000)))), ["list", "tuple", "dict"][i % 3])
        put([data, torch_zip(data), legacy(data)][(i // 3) % 3], "nested")
    for i in range(24):                                                           # containers that hold themselves
        put([CYCLES[i % 4], torch_zip(CYCLES[i % 4]), legacy(CYCLES[i % 4])][(i // 4) % 3], "cyclic")
    bombs = [b"\x80\x04\x8e" + struct.pack("<Q", 1 << 33) + b"x" * 40,               # BINBYTES8: 8 GB declared
             b"\x80\x04\x8d" + struct.pack("<Q", 1 << 33) + b"x" * 40,               # BINUNICODE8
             b"\x80\x05\x96" + struct.pack("<Q", 1 << 33) + b"x" * 40,               # BYTEARRAY8
             b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",                  # FRAME
             b"\x80\x02Nr" + struct.pack("<I", 0xFFFFFFF0) + b".",                  # LONG_BINPUT: a 64 GB memo
             b"\x80\x02X" + struct.pack("<I", 0xFFFFFFF0) + b"ab.",                 # BINUNICODE
             global_pickle("builtins", "bytearray", (2 ** 31 - 1,)), global_pickle("builtins", "bytes", (2 ** 31 - 1,)),
             global_pickle("builtins", "range", (2 ** 62,)),
             legacy(b"\x80\x02" + storage_pid("0", 2 ** 30, True) + b".", b"", ["0"]),                           # 4 GB declared storage
             legacy(b"\x80\x02" + rebuild(storage_pid("0", 1, True), 2 ** 28, 0) + b".", struct.pack("<q", 1) + b"\0" * 4, ["0"]),
             torch_zip(b"\x80\x02" + rebuild(storage_pid("0", 2 ** 30, False), 2 ** 30, 1) + b".", {"0": b"\0" * 16}),
             torch_zip(b"\x80\x02" + rebuild(storage_pid("0", 1, False), 2 ** 28, 0) + b".", {"0": b"\0" * 4})]  # a 1 GB stride-0 view
    ones = io.BytesIO(); torch.save({"w": torch.ones(1).expand(2 ** 28)}, ones); bombs.append(ones.getvalue())
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2 ** 31], "data_offsets": [0, 2 ** 33]}}).encode()
    bombs.append(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16)
    stored = torch_zip(b"\x80\x02}.")                                              # a central directory that lies about sizes
    for at in [m.start() for m in re.finditer(b"PK\x01\x02", stored)]: stored = stored[:at + 24] + struct.pack("<I", 0xFFFFFFF0) + stored[at + 28:]
    bombs.append(stored)
    for i in range(70): put(bombs[i % len(bombs)], "bomb")
    # readable data that would make a model loader build a model far larger than the file (plain readers may read them)
    sd, model_bombs = G.state_dict(), []
    b = io.BytesIO(); torch.save({"g_ema": {"style.1.weight": torch.zeros(8, 8), "input.input": torch.zeros(1, 2048, 4, 4),
                                            **{f"to_rgbs.{j}.conv.weight": torch.zeros(1, 3, 2048, 1, 1) for j in range(8)}}}, b)
    model_bombs.append(b.getvalue())
    from safetensors.torch import save as st_save
    model_bombs.append(st_save({k: v.contiguous() for k, v in sd.items()}, metadata={"format": '"disentangle.stylegan2"', "config": json.dumps(
        {"size": 1024, "style_dim": 8192, "channel_max": 8192, "n_mlp": 8})}))
    model_bombs.append(st_save({"w": torch.zeros(2)}, metadata={"net": '"PhotoGeo"', "config": json.dumps({"nf": 100000, "zdim": 4096})}))
    model_bombs.append(st_save({"w": torch.zeros(2)}, metadata={"net": '"FaceEmbedder"', "config": json.dumps({"width": 100000})}))
    for i in range(20): put(model_bombs[i % len(model_bombs)], "model bomb")
    zb = folder / f"{k[0]:05d}.pt"                                                  # a 1.1 GB deflated record in a 1 MB file
    with zipfile.ZipFile(zb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}.")
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(66): f.write(chunk)
    fam[zb.name] = "bomb"; k[0] += 1
    assert len(fam) >= n_min, len(fam)
    return fam


def _inert(obj) -> str | None:
    "None when `obj` is made only of plain data, tensors and Opaque records; else the first foreign type."
    from disentangle.stylegan2 import Opaque
    ok = (type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset, slice, torch.Tensor,
          torch.Size, torch.dtype, torch.device, Opaque)
    seen, todo = set(), [obj]
    while todo:
        o = todo.pop()
        if id(o) in seen: continue
        seen.add(id(o))
        if isinstance(o, type) and issubclass(o, Opaque) or type(o) is object: continue
        if not isinstance(o, ok): return type(o).__name__
        if isinstance(o, dict): todo += list(o.keys()) + list(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)): todo += list(o)
        elif isinstance(o, Opaque): todo += [o.args, o.kw, o.state, o.items, o.list]
    return None


GENERIC = {"stylegan2.safe_load", "engine.load_checkpoint", "checkpoints.read_pickled"}   # read any plain data they are given
READERS = GENERIC | {"adapters.read_state_dict", "core.load_tensors"}                   # ... and these any tensors


def fuzz_worker(folder: Path, families: dict) -> dict:
    "Run in the capped subprocess: every file through every loader; the problems found."
    import resource
    loaders = every_loader(folder.parent)
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))       # 1 GiB above the imports
    try: bytearray(1 << 30); capped = False                                         # the cap holds: 1 GiB more cannot be had
    except MemoryError: capped = True
    problems, calls, t0 = [], 0, time.perf_counter()
    warnings.simplefilter("ignore")
    for name, family in sorted(families.items()):
        path = folder / name
        for lname, load in loaders.items():
            calls += 1
            try: obj = load(path)
            except MemoryError as e: problems.append(f"{name} ({family}) {lname}: MemoryError {e}"); continue
            except (ValueError, KeyError) as e:
                if str(path) not in str(e): problems.append(f"{name} ({family}) {lname}: error without the file's name: {type(e).__name__}: {str(e)[:200]}")
                continue
            except Exception as e:
                problems.append(f"{name} ({family}) {lname}: {type(e).__name__}: {str(e)[:200]}"); continue
            if (lname in GENERIC and family == "cyclic") or (lname in READERS and family == "model bomb"):
                foreign = _inert(obj)                                               # plain data may be read, and only that
                if foreign: problems.append(f"{name} ({family}) {lname}: read a {foreign}")
                continue
            problems.append(f"{name} ({family}) {lname}: accepted")
    peak = int(open("/proc/self/status").read().split("VmPeak:")[1].split()[0]) * 1024
    return dict(files=len(families), calls=calls, problems=problems, seconds=time.perf_counter() - t0, headroom=vm + (1 << 30) - peak, capped=capped)


@pytest.mark.timeout(600)
def test_fuzz_hostile_weights_files_through_every_loader(tmp_path):
    folder = tmp_path / "files"; folder.mkdir()
    marker, evil = tmp_path / "marker", tmp_path / "evilpath"
    evil.mkdir()
    (evil / "hx_evil.py").write_text("import os\nopen(os.environ['HX_MARKER'], 'w').write('imported')\ndef run(*a): open(os.environ['HX_MARKER'], 'w')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HX_MARKER": str(marker), "PYTHONPATH": os.pathsep.join([str(evil), str(HERE), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "control.pkl").write_bytes(global_pickle("hx_evil", "run", ()))
    control = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())", str(tmp_path / "control.pkl")],
                             capture_output=True, text=True, env=env)
    assert marker.exists(), f"the control: the standard unpickler imports the module a file names ({control.stderr[-300:]})"
    marker.unlink()
    families = make_hostile_files(folder, marker, evil / "hx_evil.py")
    (tmp_path / "families.json").write_text(json.dumps(families))
    code = ("import sys, json; from pathlib import Path; from test_hostile import fuzz_worker; "
            f"print('RESULT ' + json.dumps(fuzz_worker(Path({str(folder)!r}), json.loads(Path({str(tmp_path / 'families.json')!r}).read_text()))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=540)
    assert r.returncode == 0, f"the fuzz process died (code {r.returncode}): {r.stderr[-3000:]}"
    res = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert res["files"] >= 1000 and res["calls"] >= 14 * res["files"], res
    assert not res["problems"], f"{len(res['problems'])} problems, the first: " + "\n".join(res["problems"][:25])
    assert not marker.exists(), "a file's payload ran (or a module named in a file was imported)"
    assert MARK_TS not in r.stdout + r.stderr, "a TorchScript file ran"
    assert res["capped"] and res["headroom"] > 0, res
    print(f"{res['files']} files, {res['calls']} loads in {res['seconds']:.1f} s; peak address space {(1 << 30) - res['headroom']} bytes over the imports")
