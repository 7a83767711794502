"""dlib's real models (the `faces` extra) on a real photograph, scikit-image's `astronaut` (NASA's portrait of Eileen
Collins, public domain): its landmarks on CelebA-style crops read back through the CelebA loader against the five
CelebA points (NME), the embedder as the identity judge of method 2, and the errors when the extra is missing."""
from __future__ import annotations
import math, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from disentangle import adapters as A
from disentangle import realdata as rd
from disentangle.metrics import identity_similarity, landmark_nme

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(300)

# The astronaut's five CelebA points (eye centres, nose tip, mouth corners; image left first), marked by eye at 6x zoom.
HAND = np.array([[204.2, 101.3], [244.7, 103.3], [223.3, 126.7], [204.0, 141.0], [244.5, 140.5]])
# Where CelebA's img_align_celeba (178x218) puts the eyes: about (69, 111) and (107, 111).
CELEBA_EYES = np.array([[69.0, 111.0], [107.0, 111.0]])
LM_HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage.data import astronaut
    return astronaut()                                  # (512, 512, 3) uint8


@pytest.fixture(scope="module")
def lmk():
    return A.load_dlib_landmarks()


def celeba_style(img: np.ndarray, points: np.ndarray, eyes=CELEBA_EYES, size=(178, 218)):
    """The similarity transform of `img` that puts `points`' eye centres at `eyes` (CelebA's alignment), as a
    (218, 178, 3) image, and `points` moved with it. Pixel centres at integers, as dlib's and CelebA's points."""
    src, dst = points[:2], eyes
    s = np.linalg.norm(dst[1] - dst[0]) / np.linalg.norm(src[1] - src[0])
    a = math.atan2(*(dst[1] - dst[0])[::-1]) - math.atan2(*(src[1] - src[0])[::-1])
    M = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])       # photo -> crop
    t = dst[0] - M @ src[0]
    Mi = np.linalg.inv(M); ti = -Mi @ t                                                # crop -> photo
    c = ti + 0.5 - Mi @ [0.5, 0.5]                                                     # in PIL's corner coordinates
    out = Image.fromarray(img).transform(size, Image.AFFINE, (Mi[0, 0], Mi[0, 1], c[0], Mi[1, 0], Mi[1, 1], c[1]), Image.BILINEAR)
    return np.asarray(out), points @ M.T + t


def write_celeba(root: Path, images, points):
    """A CelebA folder in the official layout (img_align_celeba/, list_landmarks_align_celeba.txt with its count and
    header lines, integer pixels as the official file)."""
    (root / "img_align_celeba").mkdir(parents=True)
    rows = []
    for k, (im, p) in enumerate(zip(images, points), 1):
        Image.fromarray(im).save(root / "img_align_celeba" / f"{k:06d}.jpg", quality=95)
        rows.append(f"{k:06d}.jpg " + " ".join(f"{int(round(v)):>4d}" for v in p.reshape(-1)))
    (root / "list_landmarks_align_celeba.txt").write_text(f"{len(rows)}\n{LM_HEADER}\n" + "\n".join(rows) + "\n")


def test_celeba_style_crops_nme(photo, lmk, tmp_path):
    """dlib's 68 landmarks, reduced to CelebA's five, against the five CelebA points of CelebA-style crops of the
    photograph and of its mirror image, read back through `realdata.CelebA` (crop and resize included)."""
    crop, pts = celeba_style(photo, HAND)
    mirror = np.ascontiguousarray(crop[:, ::-1])
    mpts = pts.copy(); mpts[:, 0] = crop.shape[1] - 1 - mpts[:, 0]
    mpts = mpts[[1, 0, 2, 4, 3]]                               # image left stays first: the eyes and mouth corners swap
    write_celeba(tmp_path / "celeba", [crop, mirror], [pts, mpts])
    for size in (178, 128):
        ds = rd.CelebA(tmp_path / "celeba", size=size, split="all", annotations=("landmarks",))
        b = ds.__getitems__([0, 1])
        pred = A.five_points(lmk(b["image"]))                  # (2, 5, 2)
        nme = landmark_nme(pred, b["landmarks"])
        print(f"CelebA-style crops at {size} px: dlib five points vs the CelebA points, NME {nme:.3f}")
        assert nme < 0.08


def test_align_then_embed(photo, lmk):
    "A CelebA-style crop and the FFHQ crop of the whole photo are the same person to dlib; SynthFaces are not."
    from disentangle.synthfaces import SynthFaces
    emb = A.load_dlib_embedder()
    crop, _ = celeba_style(photo, HAND)
    as_t = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 127.5 - 1
    celeba = as_t(crop[20:198])                               # CelebA's default 178x178 square
    ffhq = rd.align_ffhq(as_t(photo), 256)
    d = emb.descriptors(torch.stack([rd.align_ffhq(celeba, 178), celeba]))
    f = emb.descriptors(ffhq[None])
    synth = emb.descriptors(SynthFaces(size=128, split="test").__getitems__([0, 1])["image"])
    same, other = (d - f).norm(dim=1), (synth - f).norm(dim=1)
    print(f"dlib distances to the FFHQ crop: re-aligned CelebA crop {same[0]:.3f}, CelebA crop {same[1]:.3f}; SynthFaces {other.tolist()}")
    assert same.max() < A.DlibEmbedder.threshold < other.min()


def test_dlib_judge_in_idmap(photo):
    "identity_net('dlib') is a judge (no gradients) that scores the photo against its mirror as one person."
    from disentangle.idmap import identity_net
    judge = identity_net("dlib")
    x = rd.align_ffhq(torch.from_numpy(photo).permute(2, 0, 1).float() / 127.5 - 1, 160)[None]
    assert identity_similarity(judge, x, x.flip(-1)) > 0.95
    with pytest.raises(RuntimeError, match="no gradients"): judge(x.requires_grad_())


def test_missing_extra_errors(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "dlib", None)                      # dlib not installed
    with pytest.raises(ImportError, match=r"disentangle\[faces\]"): A.import_dlib()
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda name: None)   # face-recognition-models not installed
    with pytest.raises(ImportError, match="face-recognition-models is not installed"): A.dlib_model_path("landmarks68")
    with pytest.raises(FileNotFoundError, match="dlib_face_recognition_resnet_model_v1.dat"): A.dlib_model_path("recognition", tmp_path)


def test_no_face_in_folder_photo(tmp_path):
    "An aligned image folder names the photo without a face; `align_ffhq` on it raises NoFaceError."
    Image.new("RGB", (120, 90), (200, 180, 160)).save(tmp_path / "blank.jpg")
    with pytest.raises(rd.DataError, match="blank.jpg: no face to align"): rd.ImageFolder(tmp_path, size=32, aligned=True)[0]
    with pytest.raises(A.NoFaceError, match="no face"): rd.align_ffhq(Image.open(tmp_path / "blank.jpg"), 64)
