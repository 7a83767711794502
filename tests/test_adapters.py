"Adapters for published perception nets: official key layouts, file round trips, errors by key, and reference computations."
from __future__ import annotations
import json, sys, zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from disentangle.adapters import (ArcFaceONNX, CLIPVisual, InceptionResnetV1, check_images, clip_visual_config, fit_to,
                                  load_clip_visual, load_facenet, read_state_dict)
from disentangle.metrics import identity_similarity

DATA = Path(__file__).resolve().parent / "data"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ---------------------------------------------------------------------------------------------------------------------
# facenet-pytorch InceptionResnetV1

@pytest.fixture(scope="module")
def facenet(tmp_path_factory):
    "One randomly initialised full-size net with randomised BatchNorm statistics, and its official-layout file."
    torch.manual_seed(0)
    net = InceptionResnetV1().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 2.0); m.weight.normal_(1, 0.1)
    sd = {**net.state_dict(), "logits.weight": torch.randn(8631, 512) * 0.01, "logits.bias": torch.randn(8631) * 0.01}
    path = tmp_path_factory.mktemp("facenet") / "20180402-114759-vggface2.pt"
    torch.save(sd, path)
    return net, sd, path


def test_facenet_keys_and_shapes_are_the_official_ones(facenet):
    official = json.loads((DATA / "facenet_keys.json").read_text())
    assert len(official) == 714
    assert {k: list(v.shape) for k, v in facenet[0].state_dict().items()} == official
    assert {k: list(v.shape) for k, v in InceptionResnetV1(num_classes=10575).state_dict().items()} == \
           {**official, "logits.weight": [10575, 512], "logits.bias": [10575]}


def test_facenet_file_round_trip(facenet):
    net, _, path = facenet
    loaded = load_facenet(path)
    assert not hasattr(loaded, "logits") and not loaded.training
    x = torch.rand(2, 3, 160, 160) * 2 - 1
    with torch.no_grad(): a, b = net(x), loaded(x)
    assert a.shape == (2, 512)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])                                   # distinct images, distinct embeddings


def test_facenet_standardisation_and_resizing(facenet):
    net = facenet[0]
    x = torch.rand(1, 3, 200, 200) * 2 - 1
    pixels = (fit_to(x, 160) + 1) * 127.5                                   # facenet's input: pixels in [0, 255]
    with torch.no_grad():
        torch.testing.assert_close(net(x), F.normalize(net.features((pixels - 127.5) / 128), dim=1))


def test_facenet_logits_and_old_files_without_counters(facenet, tmp_path):
    net, sd, _ = facenet
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}   # files from old PyTorch lack them
    torch.save(old, tmp_path / "old.pt")
    model = load_facenet(tmp_path / "old.pt", keep_logits=True)
    x = torch.rand(1, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.classify(x), F.linear(net.features(net.prepare(x)), sd["logits.weight"], sd["logits.bias"]))
    with pytest.raises(ValueError, match="no classifier"): net.classify(x)


def test_facenet_errors_name_the_keys(facenet, tmp_path):
    _, sd, _ = facenet
    missing = {k: v for k, v in sd.items() if k != "mixed_7a.branch2.1.conv.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \(1\): mixed_7a\.branch2\.1\.conv\.weight"):
        load_facenet(tmp_path / "missing.pt")
    torch.save({**sd, "repeat_1.2.conv2d.weight": torch.zeros(256, 64, 1, 1)}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"repeat_1\.2\.conv2d\.weight: file \(256, 64, 1, 1\), model \(256, 96, 1, 1\)"):
        load_facenet(tmp_path / "shape.pt")
    torch.save({**sd, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): extra\.weight"):
        load_facenet(tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="no logits.weight"):
        torch.save({k: v for k, v in sd.items() if not k.startswith("logits")}, tmp_path / "nologits.pt")
        load_facenet(tmp_path / "nologits.pt", keep_logits=True)
    with pytest.raises(FileNotFoundError, match="no such weights file"): load_facenet(tmp_path / "absent.pt")


class Payload:   # an object that a full unpickler would rebuild (and could run code through)
    def __reduce__(self): return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.zeros(1), "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: refusing to load global builtins.print"): read_state_dict(tmp_path / "evil.pt")


# ---------------------------------------------------------------------------------------------------------------------
# insightface ArcFace ONNX

def tiny_arcface(path, batch="None", mxnet=False, extra_output=False, seed=0):
    "A small ArcFace-shaped ONNX model (input 'input.1' (batch, 3, 112, 112)): Conv 8x8/8 -> Flatten -> Gemm to 16."
    from onnx import TensorProto, helper, numpy_helper
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(4, 3, 8, 8, generator=g) * 0.1, torch.randn(4, generator=g) * 0.1
    fc, fb = torch.randn(16, 4 * 14 * 14, generator=g) * 0.05, torch.randn(16, generator=g) * 0.1
    inits = [numpy_helper.from_array(t.numpy(), n) for t, n in [(w, "w"), (b, "b"), (fc, "fc"), (fb, "fb")]]
    nodes, first = [], "input.1"
    if mxnet:   # MXNet exports normalise inside: (p - 127.5) * (1 / 128) on raw pixels
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 128, np.float32), "scale")]
        nodes += [helper.make_node("Sub", ["input.1", "mean"], ["centred"], name="_minus0"),
                  helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="_mul0")]
        first = "scaled"
    nodes += [helper.make_node("Conv", [first, "w", "b"], ["c"], kernel_shape=[8, 8], strides=[8, 8], name="Conv_0"),
              helper.make_node("Flatten", ["c"], ["f"], axis=1, name="Flatten_1"),
              helper.make_node("Gemm", ["f", "fc", "fb"], ["683"], transB=1, name="Gemm_2")]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, 16])]
    if extra_output: outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [batch, 4, 14, 14]))
    graph = helper.make_graph(nodes, "tiny_arcface",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    Path(path).write_bytes(model.SerializeToString())
    return w, b, fc, fb


def arcface_torch(x, w, b, fc, fb):   # the tiny model in PyTorch, on its input blob
    return F.normalize(F.linear(F.conv2d(x, w, b, stride=8).flatten(1), fc, fb), dim=1)


def test_arcface_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    weights = tiny_arcface(tmp_path / "w600k_tiny.onnx")
    arc = ArcFaceONNX(tmp_path / "w600k_tiny.onnx")
    assert (arc.size, arc.batch, arc.input_name, arc.input_mean, arc.input_std) == (112, None, "input.1", 127.5, 127.5)
    x = torch.rand(5, 3, 150, 130) * 2 - 1                                   # any size: to 112 (shorter side), centre crop
    out = arc(x)
    assert out.shape == (5, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, arcface_torch(fit_to(x, 112), *weights), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(arc(x[:, [2, 1, 0]]), arcface_torch(fit_to(x[:, [2, 1, 0]], 112), *weights), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, arc(x[:, [2, 1, 0]]), atol=1e-3)          # the channel order matters: RGB is fed as given


def test_arcface_mxnet_normalisation_and_fixed_batch(tmp_path):
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    weights = tiny_arcface(tmp_path / "r100_mxnet.onnx", batch=1, mxnet=True)
    arc = ArcFaceONNX(tmp_path / "r100_mxnet.onnx")
    assert (arc.input_mean, arc.input_std, arc.batch) == (0.0, 1.0, 1)
    x = torch.rand(3, 3, 112, 112) * 2 - 1
    torch.testing.assert_close(arc(x), arcface_torch(x * 127.5 / 128, *weights), atol=1e-5, rtol=1e-5)
    forced = ArcFaceONNX(tmp_path / "r100_mxnet.onnx", input_mean=127.5, input_std=127.5)   # overriding the rule
    torch.testing.assert_close(forced(x), arcface_torch((x - 127.5) / 128, *weights), atol=1e-5, rtol=1e-5)


def test_arcface_errors(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    tiny_arcface(tmp_path / "two.onnx", extra_output=True)
    with pytest.raises(ValueError, match=r"one input and one output.*\['683', 'c'\]"): ArcFaceONNX(tmp_path / "two.onnx")
    tiny_arcface(tmp_path / "ok.onnx")
    arc = ArcFaceONNX(tmp_path / "ok.onnx")
    with pytest.raises(RuntimeError, match="no gradients"): arc((torch.rand(1, 3, 112, 112) * 2 - 1).requires_grad_())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"): arc(torch.zeros(1, 112, 112, 3))
    with pytest.raises(FileNotFoundError): ArcFaceONNX(tmp_path / "absent.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)                           # without onnx: give the normalisation
    with pytest.raises(ImportError, match="pip install onnx"): ArcFaceONNX(tmp_path / "ok.onnx")
    assert ArcFaceONNX(tmp_path / "ok.onnx", input_mean=127.5, input_std=127.5).input_std == 127.5
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="pip install onnxruntime"): ArcFaceONNX(tmp_path / "ok.onnx")


# ---------------------------------------------------------------------------------------------------------------------
# CLIP ViT image tower

TINY = dict(image_size=32, patch_size=8, width=64, layers=2, output_dim=16)


def clip_reference(sd, x, heads, quick_gelu=True):
    "CLIP image features of standardised x from state dict sd, step by step, with nn.MultiheadAttention seq-first as in OpenAI's code."
    act = (lambda t: t * torch.sigmoid(1.702 * t)) if quick_gelu else F.gelu
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)
    t = F.conv2d(x, sd["conv1.weight"], stride=sd["conv1.weight"].shape[-1]).flatten(2).permute(2, 0, 1)   # (grid², B, C)
    t = torch.cat([sd["class_embedding"].expand(1, x.shape[0], -1), t]) + sd["positional_embedding"][:, None]
    t = ln(t, "ln_pre")
    layers = sum(k.endswith("attn.in_proj_weight") for k in sd)
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        mha = nn.MultiheadAttention(t.shape[-1], heads)
        mha.load_state_dict({k[len(p + "attn."):]: v for k, v in sd.items() if k.startswith(p + "attn.")})
        h = ln(t, p + "ln_1")
        t = t + mha(h, h, h, need_weights=False)[0]
        h = act(F.linear(ln(t, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]))
        t = t + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return ln(t[0], "ln_post") @ sd["proj"]


def tiny_clip_checkpoint(path, quick_gelu=True, seed=1, half=True):
    "A tiny CLIP saved as a full checkpoint: image keys under visual., some text keys, float16 as in OpenAI's files."
    torch.manual_seed(seed)
    model = CLIPVisual(**TINY, head_width=16, quick_gelu=quick_gelu)
    with torch.no_grad():
        for p in model.parameters(): p.add_(torch.randn_like(p) * 0.05)
    sd = {**{f"visual.{k}": v.half() if half else v for k, v in model.state_dict().items()},
          "text_projection": torch.zeros(32, 16), "positional_embedding": torch.zeros(77, 32),
          "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(96, 32), "logit_scale": torch.tensor(4.6)}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else: torch.save({**sd, "input_resolution": 32}, path)                  # plain numbers beside the tensors are skipped
    return sd


def test_clip_official_key_names():
    keys = set(CLIPVisual(**TINY, head_width=16).state_dict())
    block = {"ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
             "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"}
    assert keys == {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight",
                    "ln_post.bias", "proj"} | {f"transformer.resblocks.{i}.{k}" for i in range(2) for k in block}
    b32 = {k: v.shape for k, v in CLIPVisual().state_dict().items()}            # ViT-B/32's shapes (no forward pass)
    assert (b32["conv1.weight"], b32["positional_embedding"], b32["proj"]) == ((768, 3, 32, 32), (50, 768), (768, 512))
    assert clip_visual_config(CLIPVisual().state_dict()) == dict(image_size=224, patch_size=32, width=768, layers=12, output_dim=512)


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_clip_matches_multihead_attention_reference(tmp_path, quick_gelu):
    sd = tiny_clip_checkpoint(tmp_path / "tiny.pt", quick_gelu=quick_gelu)
    clip = load_clip_visual(tmp_path / "tiny.pt", quick_gelu=quick_gelu, head_width=16)
    assert len(clip.transformer.resblocks) == 2 and clip.transformer.resblocks[0].attn.heads == 4 and not clip.training
    vis = {k[len("visual."):]: v.float() for k, v in sd.items() if k.startswith("visual.")}
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    xn = ((x + 1) / 2 - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / \
         torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(clip.prepare(x), xn)
        ref = clip_reference(vis, xn, heads=4, quick_gelu=quick_gelu)
        torch.testing.assert_close(clip.features(xn), ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(clip(x), F.normalize(ref, dim=1), atol=1e-5, rtol=1e-4)
        other = clip_reference(vis, xn, heads=4, quick_gelu=not quick_gelu)  # the activation is visible in the output
        assert not torch.allclose(clip.features(xn), other, atol=1e-4)


def test_clip_resizes_bicubic_with_centre_crop(tmp_path):
    tiny_clip_checkpoint(tmp_path / "tiny.pt")
    clip = load_clip_visual(tmp_path / "tiny.pt", head_width=16)
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    manual = F.interpolate(x, size=(32, 42), mode="bicubic", antialias=True, align_corners=False)[..., :, 5:37].clamp(-1, 1)
    torch.testing.assert_close(fit_to(x, 32, "bicubic").clamp(-1, 1), manual)
    with torch.no_grad(): torch.testing.assert_close(clip(x), clip(manual))


def test_clip_safetensors_and_visual_only_files(tmp_path):
    sd = tiny_clip_checkpoint(tmp_path / "open_clip_model.safetensors")
    a = load_clip_visual(tmp_path / "open_clip_model.safetensors", head_width=16)
    torch.save({k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}, tmp_path / "visual_only.bin")
    b = load_clip_visual(tmp_path / "visual_only.bin", head_width=16)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad(): assert torch.equal(a(x), b(x))


def test_clip_errors(tmp_path):
    sd = tiny_clip_checkpoint(tmp_path / "tiny.pt")
    with zipfile.ZipFile(tmp_path / "ViT-B-32.pt", "w") as z:               # the layout of a TorchScript archive
        for name in ("ViT-B-32/data.pkl", "ViT-B-32/constants.pkl", "ViT-B-32/code/__torch__/model.py", "ViT-B-32/version"):
            z.writestr(name, b"")
    with pytest.raises(ValueError, match="TorchScript archive.*torch.jit.load"): load_clip_visual(tmp_path / "ViT-B-32.pt")
    broken = {k: v for k, v in sd.items() if k != "visual.transformer.resblocks.1.mlp.c_fc.bias"}
    broken["visual.ln_post.weight"] = torch.ones(65)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"transformer\.resblocks\.1\.mlp\.c_fc\.bias.*ln_post\.weight: file \(65,\), model \(64,\)"):
        load_clip_visual(tmp_path / "broken.pt", head_width=16)
    torch.save({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)}, tmp_path / "hf.bin")
    with pytest.raises(ValueError, match="Hugging Face transformers"): load_clip_visual(tmp_path / "hf.bin")
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1), "visual.attnpool.positional_embedding": torch.zeros(1)}, tmp_path / "rn50.pt")
    with pytest.raises(ValueError, match="ResNet CLIP"): load_clip_visual(tmp_path / "rn50.pt")
    with pytest.raises(ValueError, match="not a multiple"): CLIPVisual(image_size=30, patch_size=8)
    with pytest.raises(TypeError, match="float images"): CLIPVisual(**TINY)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# the common interface

def test_every_adapter_is_an_identity_embedder(tmp_path):
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    tiny_arcface(tmp_path / "arc.onnx"); tiny_clip_checkpoint(tmp_path / "clip.pt")
    torch.manual_seed(3)
    embedders = [InceptionResnetV1().eval(), ArcFaceONNX(tmp_path / "arc.onnx"), load_clip_visual(tmp_path / "clip.pt", head_width=16)]
    x, y = torch.rand(2, 3, 96, 96) * 2 - 1, torch.rand(2, 3, 96, 96) * 2 - 1
    for embed in embedders:
        with torch.no_grad(): ex, ey = embed(x), embed(y)
        assert ex.shape == (2, {InceptionResnetV1: 512, ArcFaceONNX: 16, CLIPVisual: 16}[type(embed)])
        torch.testing.assert_close(ex.norm(dim=1), torch.ones(2))
        assert not torch.allclose(ex, ey, rtol=0, atol=1e-6)               # (untrained nets put all images close together)
        assert identity_similarity(embed, x, x) == pytest.approx(1.0, abs=1e-5)
        assert identity_similarity(embed, x, y) < 1
    with pytest.raises(TypeError, match="torch.Tensor"): check_images(np.zeros((1, 3, 8, 8)))


@cuda
def test_cpu_and_cuda_agree(tmp_path, facenet):
    pytest.importorskip("onnxruntime"); pytest.importorskip("onnx")
    tiny_arcface(tmp_path / "arc.onnx"); tiny_clip_checkpoint(tmp_path / "clip.pt")
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    nets = {"facenet": load_facenet(facenet[2]), "arcface": ArcFaceONNX(tmp_path / "arc.onnx", providers=["CPUExecutionProvider"]),
            "clip": load_clip_visual(tmp_path / "clip.pt", head_width=16)}
    for name, net in nets.items():
        with torch.no_grad():
            cpu = net(x)
            gpu = net.to("cuda")(x.cuda())
        assert gpu.device.type == "cuda", name
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3, msg=name)
