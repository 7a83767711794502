"""Real-data loaders on tiny copies of the official layouts, written here from the published formats (not with the
package's own helpers), and a fuzz test: corrupted images, masks and annotation lines end in a DataError or a
counted skip, never in another exception or a hang."""
from __future__ import annotations
import contextlib, os, shutil, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from disentangle import realdata as rd
from disentangle.synthfaces import CLASSES

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(120)          # nothing here may hang: loaders with workers included

ATTR_NAMES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
              "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
              "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
              "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
              "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young")
LM_HEADER = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
PARTS = ["skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip", "l_lip",
         "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]


# ----------------------------------------------------------------------------------------------------------------
# Tiny official layouts

def grey(k):            # background grey level of image k: tells which file a batch row came from
    return 30 + 20 * k

def attr_row(k):        # image k's 40 attributes in {-1, 1}
    return np.where((np.arange(40) + k) % 3 == 0, 1, -1)

def landmarks(k):       # image k's five landmarks (x, y) in the 178x218 aligned image
    return np.array([[60, 110], [118, 110], [89, 135], [66, 160], [112, 160]]) + np.array([k % 4 - 2, k % 3 - 1])

def write_celeba(root: Path, n=6, parts=(0, 0, 0, 0, 1, 2), quality=95):
    """img_align_celeba/%06d.jpg (178x218, grey background, 3x3 white dots at the landmarks) and the four text files,
    values right-aligned as in the official files (several spaces between values)."""
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    attr, ident, lms, part = [], [], [], []
    for k in range(1, n + 1):
        a = np.full((218, 178, 3), grey(k), np.uint8)
        for x, y in landmarks(k): a[y - 1:y + 2, x - 1:x + 2] = 255
        Image.fromarray(a).save(root / "img_align_celeba" / f"{k:06d}.jpg", quality=quality)
        attr.append(f"{k:06d}.jpg " + " ".join(f"{v:2d}" for v in attr_row(k)))
        ident.append(f"{k:06d}.jpg {1000 + k % 3}")
        lms.append(f"{k:06d}.jpg" + "".join(f"{v:6d}" for v in landmarks(k).reshape(-1)))
        part.append(f"{k:06d}.jpg {parts[k - 1]}")
    return write_celeba_texts(root, attr, ident, lms, part)

def write_celeba_texts(root: Path, attr, ident, lms, part):
    "CelebA's four annotation files from their rows (the attribute header ends in a space, as the official one does)."
    n = len(attr)
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{ATTR_NAMES} \n" + "\n".join(attr) + "\n")
    (root / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")
    (root / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{LM_HEADER}\n" + "\n".join(lms) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return root

def write_hq(root: Path, n=3, image_size=1024, mask_size=512, orig=(0, 4, 5), quality=90):
    """CelebA-HQ-img/<k>.jpg, CelebAMask-HQ-mask-anno/<k//2000>/<k:05d>_<part>.png (image 0: 18 stripes, one per part,
    over the top half; bottom half skin, then nose, then hair over part of the nose), the attribute and mapping files."""
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((image_size, image_size, 3), grey(k), np.uint8)).save(root / "CelebA-HQ-img" / f"{k}.jpg", quality=quality)
        d = root / "CelebAMask-HQ-mask-anno" / str(k // 2000); d.mkdir(parents=True, exist_ok=True)
        h, w = mask_size // 2, mask_size // 32
        for j, part in enumerate(PARTS):
            a = np.zeros((mask_size, mask_size), np.uint8)
            if k == 0: a[:h, j * w:(j + 1) * w] = 255                          # stripe j
            if part == "skin": a[h:] = 255
            if part == "nose": a[h:, : mask_size // 2] = 255
            if part == "hair": a[h:, mask_size // 4: 3 * mask_size // 4] = 255    # painted after the nose: wins
            if a.any(): Image.fromarray(a).save(d / f"{k:05d}_{part}.png")
    rows = [f"{k}.jpg  " + " ".join(str(v) for v in attr_row(k)) for k in range(n)]
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(f"{n}\n{ATTR_NAMES}\n" + "\n".join(rows) + "\n")
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx    orig_file   \n" + "".join(f"{k:<12d}{orig[k]:<12d}{orig[k] + 1:06d}.jpg\n" for k in range(n)))
    return root

def centroid(img, x, y, r=3):
    "Centre of mass of the brightness above the background in the (2r+1)^2 pixels around (x, y) of a (H, W) image."
    xi, yi = int(round(float(x))), int(round(float(y)))
    w = (img[yi - r:yi + r + 1, xi - r:xi + r + 1] - img.median()).clamp(min=0)
    ys, xs = torch.meshgrid(torch.arange(yi - r, yi + r + 1.), torch.arange(xi - r, xi + r + 1.), indexing="ij")
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()    # symmetric filters keep the centre of mass

@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    return write_celeba(tmp_path_factory.mktemp("celeba"))

@pytest.fixture(scope="module")
def hq(tmp_path_factory):
    return write_hq(tmp_path_factory.mktemp("hq"))


# ----------------------------------------------------------------------------------------------------------------
# CelebA

def test_celeba_batches_splits_identities_attributes(celeba):
    tr, va, te, al = (rd.CelebA(celeba, size=32, split=s) for s in ("train", "valid", "test", "all"))
    assert (len(tr), len(va), len(te), len(al)) == (4, 1, 1, 6)
    assert va.meta["key"].tolist() == [5] and te.meta["key"].tolist() == [6]
    b = tr.__getitems__([0, 1, 2, 3])
    assert sorted(b) == ["attributes", "identity", "image", "landmarks"]
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    assert b["landmarks"].shape == (4, 5, 2) and b["landmarks"].dtype == torch.float32
    assert b["identity"].tolist() == [1001, 1002, 1000, 1001] and b["identity"].dtype == torch.long
    assert b["attributes"].dtype == torch.long and b["attributes"].shape == (4, 40)
    assert b["attributes"].tolist() == [((attr_row(k) + 1) // 2).tolist() for k in (1, 2, 3, 4)]
    assert tr.attribute_names == tuple(ATTR_NAMES.split()) == rd.CELEBA_ATTRIBUTES
    corner = (b["image"][:, :, 0, 0].mean(1) + 1) * 127.5     # each row is its own file
    assert torch.allclose(corner, torch.tensor([grey(k) for k in (1, 2, 3, 4)], dtype=torch.float32), atol=3)
    one = tr[2]
    assert one["image"].shape == (3, 32, 32) and int(one["identity"]) == 1000


@pytest.mark.parametrize("size,crop", [(64, (0, 20, 178, 198)), (48, (15, 40, 163, 188)), (37, (10, 30, 170, 190))])
def test_celeba_landmarks_move_with_crop_and_scale(celeba, size, crop):
    ds = rd.CelebA(celeba, size=size, crop=crop, split="all", annotations=("landmarks",))
    b = ds.__getitems__(list(range(len(ds))))
    assert sorted(b) == ["image", "landmarks"]
    l, t, r, bt = crop
    for i, k in enumerate(ds.meta["key"]):
        want = (landmarks(k) + 0.5 - [l, t]) * [size / (r - l), size / (bt - t)] - 0.5
        assert np.allclose(b["landmarks"][i].numpy(), want, atol=1e-4)
        img = b["image"][i].mean(0)
        for xy in b["landmarks"][i]:             # the dot is where the landmark says (found within 0.14 px; a
            assert torch.allclose(centroid(img, *xy), xy, atol=0.2), (k, xy, centroid(img, *xy))   # half-pixel slip: 0.32)


def test_celeba_missing_annotation_file(tmp_path):
    root = write_celeba(tmp_path / "c")
    (root / "identity_CelebA.txt").unlink()
    with pytest.raises(rd.DataError, match="identity_CelebA.txt: missing annotation file"):
        rd.CelebA(root, size=16)
    with pytest.warns(rd.BadDataWarning, match=r"skipped 0 bad item\(s\), 4 images left; `.skipped` lists the 1 problem"):
        ds = rd.CelebA(root, size=16, skip_bad=True)
    assert "identity" not in ds[0] and "attributes" in ds[0]
    assert [(Path(s.path).name, s.line) for s in ds.skipped] == [("identity_CelebA.txt", 0)]
    assert "identity" not in rd.CelebA(root, size=16, annotations=("landmarks",))[0]
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(rd.DataError, match="list_eval_partition.txt: missing annotation file.*needed for the split"):
        rd.CelebA(root, size=16, skip_bad=True, annotations=())
    assert len(rd.CelebA(root, size=16, split="all", annotations=())) == 6


def test_celeba_bad_rows_name_file_and_line(tmp_path):
    root = write_celeba(tmp_path / "c")
    f = root / "list_attr_celeba.txt"
    lines = f.read_text().split("\n")
    lines[3] = lines[3].replace(" 1", " 7", 1)                       # image 000002.jpg, line 4
    f.write_text("\n".join(lines))
    with pytest.raises(rd.DataError, match=r"list_attr_celeba.txt:4: column \d+: expected one of \[-1, 1\], found '7'") as e:
        rd.CelebA(root, size=16)
    assert e.value.line == 4 and e.value.path.endswith("list_attr_celeba.txt")
    with pytest.warns(rd.BadDataWarning):
        ds = rd.CelebA(root, size=16, skip_bad=True)
    assert ds.meta["key"].tolist() == [1, 3, 4]                      # dropped once, recorded once
    assert [(Path(s.path).name, s.line) for s in ds.skipped] == [("list_attr_celeba.txt", 4)]
    f.write_text("\n".join(write_celeba(tmp_path / "c2").joinpath("list_attr_celeba.txt").read_text().split("\n")[:-2]) + "\n")
    with pytest.raises(rd.DataError, match="list_attr_celeba.txt:1: the count line says 6 rows, found 5"):
        rd.CelebA(root, size=16, split="all")


def test_celeba_wrong_image_size_and_config_errors(tmp_path):
    root = write_celeba(tmp_path / "c")
    Image.new("RGB", (100, 120)).save(root / "img_align_celeba" / "000003.jpg")
    ds = rd.CelebA(root, size=16)
    with pytest.raises(rd.DataError, match="000003.jpg: image is 100x120, expected 178x218"):
        ds.__getitems__([0, 1, 2])
    with pytest.raises(ValueError, match="crop must be"):
        rd.CelebA(root, crop=(0, 0, 200, 100))
    with pytest.raises(ValueError, match="split must be one of"):
        rd.CelebA(root, split="validation")
    with pytest.raises(ValueError, match="unknown annotation"):
        rd.CelebA(root, annotations=("pose",))
    with pytest.raises(rd.DataError, match="img_align_celeba: missing image folder"):
        rd.CelebA(tmp_path / "nowhere", skip_bad=True)


# ----------------------------------------------------------------------------------------------------------------
# CelebAMask-HQ

def test_celebamask_hq_masks_merged_with_official_ids(hq):
    ds = rd.CelebAMaskHQ(hq, size=32)
    assert len(ds) == 3 and sorted(ds[0]) == ["attributes", "image", "mask"]
    b = ds.__getitems__([0, 1, 2])
    m = b["mask"]
    assert m.shape == (3, 32, 32) and m.dtype == torch.uint8
    for j, part in enumerate(PARTS):                 # image 0, top half: stripe j -> id of part j
        assert (m[0, :16, j] == CLASSES.index(part)).all(), (part, m[0, :16, j])
    assert (m[0, :16, 18:] == 0).all()               # no part there: background
    assert (m[:, 16:, 8:24] == CLASSES.index("hair")).all()              # hair, painted after the nose, wins
    assert (m[:, 16:, :8] == CLASSES.index("nose")).all() and (m[:, 16:, 24:] == CLASSES.index("skin")).all()
    assert (m[1:, :16] == 0).all()
    assert b["attributes"].tolist() == [((attr_row(k) + 1) // 2).tolist() for k in range(3)]
    corner = (b["image"][:, :, 0, 0].mean(1) + 1) * 127.5
    assert torch.allclose(corner, torch.tensor([grey(k) for k in range(3)], dtype=torch.float32), atol=3)
    assert ds.attribute_names == tuple(ATTR_NAMES.split())


def test_celebamask_hq_splits_and_identities_through_celeba(hq, celeba):
    # HQ images 0, 1, 2 are CelebA 000001 (train), 000005 (valid), 000006 (test)
    ids = {0: 1001, 1: 1002, 2: 1000}                # identity_CelebA.txt: 000001 -> 1001, 000005 -> 1002, 000006 -> 1000
    for split, keys in (("train", [0]), ("valid", [1]), ("test", [2]), ("all", [0, 1, 2])):
        ds = rd.CelebAMaskHQ(hq, size=16, split=split, celeba_root=str(celeba))
        assert ds.meta["key"].tolist() == keys
        assert sorted(ds[0]) == ["attributes", "identity", "image", "mask"]
        assert ds.__getitems__(list(range(len(ds))))["identity"].tolist() == [ids[k] for k in keys]
    with pytest.raises(ValueError, match="set celeba_root"):
        rd.CelebAMaskHQ(hq, split="train")
    only = rd.CelebAMaskHQ(hq, size=16, annotations=("mask",))
    assert sorted(only[0]) == ["image", "mask"]


def test_celebamask_hq_mask_problems(tmp_path):
    root = write_hq(tmp_path / "h", image_size=64, mask_size=32)
    a = np.zeros((16, 16), np.uint8); a[:4] = 255
    Image.fromarray(a).save(root / "CelebAMask-HQ-mask-anno" / "0" / "00001_nose.png")
    ds = rd.CelebAMaskHQ(root, size=8, image_size=64, mask_size=32)
    with pytest.raises(rd.DataError, match="00001_nose.png: mask is 16x16, expected 32x32"):
        ds.__getitems__([0, 1, 2])
    with pytest.warns(rd.BadDataWarning, match="skipped 1 unreadable"):
        s = rd.CelebAMaskHQ(root, size=8, image_size=64, mask_size=32, skip_bad=True)
        assert s.__getitems__([0, 1, 2])["mask"].shape == (2, 8, 8)
    assert [Path(x.path).name for x in s.skipped] == ["00001_nose.png"]
    for p in (root / "CelebAMask-HQ-mask-anno" / "0").glob("00002_*.png"): p.unlink()
    with pytest.raises(rd.DataError, match="no mask files 00002_<part>.png for image 2"):
        rd.CelebAMaskHQ(root, size=8, image_size=64, mask_size=32)
    Image.fromarray(a).save(root / "CelebAMask-HQ-mask-anno" / "0" / "00000_beard.png")
    with pytest.raises(rd.DataError, match="00000_beard.png: unknown part 'beard'"):
        rd.CelebAMaskHQ(root, size=8, image_size=64, mask_size=32)


# ----------------------------------------------------------------------------------------------------------------
# FFHQ and folders

def test_image_folder_recursive_sorted_and_formats(tmp_path):
    root = tmp_path / "imgs"
    spec = [("b/x", "z.PNG", (40, 30)), ("a", "1.jpg", (30, 50)), ("a", "0.jpeg", (64, 64)), ("b", "q.webp", (32, 32)),
            ("c", "w.bmp", (20, 20))]
    for i, (sub, name, size) in enumerate(spec):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (grey(i),) * 3).save(root / sub / name)
    (root / "a" / "._1.jpg").write_bytes(b"\0\5\26\7")                # macOS resource fork: hidden, left out
    (root / ".hidden").mkdir(); Image.new("RGB", (8, 8)).save(root / ".hidden" / "h.png")
    (root / "a" / "notes.txt").write_text("x")
    ds = rd.ImageFolder(root, size=12)
    assert list(ds.meta["path"]) == ["a/0.jpeg", "a/1.jpg", "b/q.webp", "b/x/z.PNG", "c/w.bmp"]
    b = ds.__getitems__(list(range(5)))
    assert sorted(b) == ["image"] and b["image"].shape == (5, 3, 12, 12)
    got = (b["image"].mean((1, 2, 3)) + 1) * 127.5
    assert torch.allclose(got, torch.tensor([grey(i) for i in (2, 1, 3, 0, 4)], dtype=torch.float32), atol=2)
    assert rd.ImageFolder(root, size=12, crop="full")[3]["image"].shape == (3, 12, 12)
    empty = tmp_path / "empty"; empty.mkdir(); (empty / "readme.txt").write_text("no images")
    with pytest.raises(rd.DataError, match="empty: no images"):
        rd.ImageFolder(empty, size=8)


def test_ffhq_layout_splits_and_resolution(tmp_path):
    root = tmp_path / "ffhq"
    for k in (0, 1, 59999, 60000, 69999):
        for sub, s in (("images1024x1024", 256), ("thumbnails128x128", 128)):   # 256: a stand-in for 1024, to keep it fast
            d = root / sub / f"{k // 1000 * 1000:05d}"; d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (s, s), (k % 200,) * 3).save(d / f"{k:05d}.png")
    (root / "LICENSE.txt").write_text("CC BY-NC-SA 4.0")
    small, big = rd.FFHQ(root, size=64), rd.FFHQ(root, size=256)
    assert all(p.startswith("thumbnails128x128/") for p in small.meta["path"]) and len(small) == 5
    assert all(p.startswith("images1024x1024/") for p in big.meta["path"])
    assert [Path(p).stem for p in rd.FFHQ(root, size=64, split="train").meta["path"]] == ["00000", "00001", "59999"]
    assert [Path(p).stem for p in rd.FFHQ(root, size=64, split="valid").meta["path"]] == ["60000", "69999"]
    assert rd.FFHQ(root, size=64, resolution="images1024x1024").meta["path"][0].startswith("images1024x1024/")
    assert rd.open_dataset("ffhq", root, size=16)[0]["image"].shape == (3, 16, 16)


# ----------------------------------------------------------------------------------------------------------------
# Loaders, workers, cache

def test_loader_workers_seeds_and_cover(celeba):
    ds = rd.CelebA(celeba, size=16, split="all")
    def order(seed, workers):
        return [i for b in ds.loader(batch_size=4, seed=seed, num_workers=workers) for i in b["identity"].tolist()]
    a0, a2, b0 = order(3, 0), order(3, 2), order(4, 0)
    assert a0 == a2 and sorted(a0) == sorted(ds.meta["identity"].tolist())
    batches = list(ds.loader(batch_size=4, shuffle=False, num_workers=2))
    direct = ds.__getitems__([0, 1, 2, 3])
    assert all(torch.equal(batches[0][k], direct[k]) for k in direct) and len(batches) == 2
    assert len(list(ds.loader(batch_size=4, drop_last=True))) == 1
    orders = {tuple(order(s, 0)) for s in range(6)}
    assert len(orders) > 1                                            # the seed changes the order


def test_cache_equals_decoding_and_is_atomic(tmp_path, celeba, hq):
    cache = tmp_path / "cache"
    plain, cached = rd.CelebA(celeba, size=24, split="all"), rd.CelebA(celeba, size=24, split="all", cache_dir=str(cache), cache_workers=1)
    x, y = plain.__getitems__([5, 0, 3]), cached.__getitems__([5, 0, 3])
    assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)
    assert [p.name for p in cache.iterdir()] == [cached.cache_name]   # no temporary folder left
    again = rd.CelebA(celeba, size=24, split="all", cache_dir=cache)  # found by name: not rebuilt
    assert (cache / cached.cache_name / "done").stat().st_mtime_ns == (cache / again.cache_name / "done").stat().st_mtime_ns
    assert rd.CelebA(celeba, size=20, split="all", cache_dir=cache).cache_name != cached.cache_name
    assert rd.CelebA(celeba, size=24, split="all", crop=(0, 0, 178, 178), cache_dir=cache).cache_name != cached.cache_name
    h1, h2 = rd.CelebAMaskHQ(hq, size=16), rd.CelebAMaskHQ(hq, size=16, cache_dir=cache)
    x, y = h1.__getitems__([2, 0]), h2.__getitems__([2, 0])
    assert all(torch.equal(x[k], y[k]) for k in x) and "mask" in y
    b = next(iter(h2.loader(batch_size=3, num_workers=1)))
    assert b["mask"].shape == (3, 16, 16) and b["image"].shape == (3, 3, 16, 16)


def test_failed_cache_build_leaves_nothing(tmp_path):
    root = write_celeba(tmp_path / "c")
    (root / "img_align_celeba" / "000004.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(rd.DataError, match="000004.jpg: unreadable image"):
        rd.CelebA(root, size=16, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.warns(rd.BadDataWarning):
        ds = rd.CelebA(root, size=16, cache_dir=tmp_path / "cache", skip_bad=True)
    assert ds.meta["key"].tolist() == [1, 2, 3] and len(ds.skipped) == 1
    assert ds.__getitems__([0, 1, 2])["identity"].tolist() == [1001, 1002, 1000]


def test_bad_image_through_workers(tmp_path):
    root = write_celeba(tmp_path / "c")
    f = root / "img_align_celeba" / "000002.jpg"; f.write_bytes(f.read_bytes()[:400])
    strict = rd.CelebA(root, size=16)
    with pytest.raises(rd.DataError, match="000002.jpg: unreadable image"):
        list(strict.loader(batch_size=2, shuffle=False, num_workers=1))
    ds = rd.CelebA(root, size=16, skip_bad=True)
    with pytest.warns(rd.BadDataWarning, match="000002.jpg"):
        got = [b["identity"].tolist() for b in ds.loader(batch_size=2, shuffle=False, num_workers=1)]
    assert got == [[1001], [1000, 1001]]                              # the batch is one shorter
    assert [(Path(s.path).name, s.line) for s in ds.skipped] == [("000002.jpg", 0)]
    list(ds.loader(batch_size=2, shuffle=False, num_workers=1))       # a second epoch: the same item, listed once
    assert len(ds.skipped) == 1
    with pytest.raises(rd.DataError, match="000002.jpg: item 1 is unreadable and was skipped"):
        ds[1]


def test_fast_and_reference_parsers_agree(tmp_path):
    g = np.random.default_rng(0)
    for fmt in (rd.CELEBA_ATTR, rd.CELEBA_LANDMARKS, rd.CELEBA_IDENTITY, rd.CELEBA_PARTITION, rd.HQ_ATTR, rd.HQ_MAPPING):
        body = []
        for n, k in enumerate(g.permutation(500)[:200] + 1):
            vals = g.choice(fmt.allowed, fmt.columns - 1) if fmt.allowed else g.integers(-300, 300, fmt.columns - 1)
            toks = [fmt.key_fmt.format(k)] + [str(v) for v in vals]
            if fmt is rd.HQ_MAPPING: toks[2] = f"{abs(int(vals[1])) + 1:06d}.jpg"
            body.append((n + 3, (" " * g.integers(1, 4)).join(toks)))
        fast = rd._parse_fast(fmt, body)
        ref, lines, bad, *_ = rd._parse_rows(Path("x"), fmt, body, rd.Problems())
        assert np.array_equal(fast, ref) and fast.dtype == ref.dtype and not bad


# ----------------------------------------------------------------------------------------------------------------
# Fuzz: >= 1,000 corrupted files and lines, fixed seed

JUNK_INT = ["x", "1.5", "nan", "inf", "--1", "0x1", "\u0661", "1_0", "\u00bd", "1e3", '"1"', "+-1", "\u2167", "1,0",
            "\uff11", "-", "+", ".", "1.", "True", "\x00", "1\x002", "9" * 30, "-1-", "1-"]
JUNK_FLOAT = ["x", "nan", "inf", "-inf", "--1", "0x1", "\u0661", "1_0", "\u00bd", '"1"', "+-1", "1,0", "\uff11", "-", "+",
              ".", "e5", "1e", "NaN", "True", "\x00", "1..2", "1e3.5"]
BAD_NAMES = {r"(\d{6})\.jpg": ["00001.jpg", "0000001.jpg", "abcdef.jpg", "000001.png", "000001", "000001.jpg.jpg", "\u0661" * 6 + ".jpg"],
             r"(\d{1,9})\.jpg": ["a.jpg", "1.png", ".jpg", "1", "1" * 12 + ".jpg", "-1.jpg"],
             r"(\d{1,9})": ["a", "1.0", "-1", "1" * 12, "1a"]}
FATAL = ("missing image folder", "expected the header line", "needed for the split", "missing mask folder", "no images")


class Layouts:
    "Small layouts for the fuzz, mutated in place one case at a time and restored."
    def __init__(self, root: Path):
        self.celeba = write_celeba(root / "celeba", n=4, parts=(0, 0, 1, 2), quality=85)
        self.hq = write_hq(root / "hq", n=3, image_size=64, mask_size=32, orig=(0, 2, 3))
        self.folder = root / "folder"; self.folder.mkdir()
        for i in range(3): Image.new("RGB", (20 + i, 24), (grey(i),) * 3).save(self.folder / f"{i}.{('png', 'jpg', 'webp')[i]}")

    def make(self, what, skip):
        if what == "celeba": return rd.CelebA(self.celeba, size=8, split="all", skip_bad=skip)
        if what == "celeba_split": return rd.CelebA(self.celeba, size=8, split="train", skip_bad=skip)
        if what == "hq": return rd.CelebAMaskHQ(self.hq, size=8, image_size=64, mask_size=32, celeba_root=str(self.celeba), skip_bad=skip)
        if what == "folder": return rd.ImageFolder(self.folder, size=8, skip_bad=skip)
        raise KeyError(what)


@contextlib.contextmanager
def mutated(path: Path, data: bytes | None, mkdir=False):
    "Replace `path` by `data` (None: delete it; mkdir: a folder in its place) for the duration; restore afterwards."
    old = path.read_bytes() if path.is_file() else None
    if path.is_file(): path.unlink()
    if mkdir: path.mkdir()
    elif data is not None: path.write_bytes(data)
    try: yield
    finally:
        if path.is_dir(): shutil.rmtree(path)
        elif path.exists(): path.unlink()
        if old is not None: path.write_bytes(old)


def text_mutation(g, text: str, fmt: rd.TableFormat):
    "A corrupted copy of an annotation file's text that is always invalid, and what was done."
    lines = text.split("\n")[:-1]
    h = int(fmt.count_line) + int(fmt.header is not None)
    r = int(g.integers(h, len(lines)))
    tok = lines[r].split()
    name_cols = {0} | {c for c, _ in fmt.names}
    kinds = ["drop_token", "add_token", "junk_value", "bad_name", "dup_row", "del_row", "junk_line", "del_tail"]
    if fmt.allowed: kinds.append("bad_value")
    if fmt.count_line: kinds.append("bad_count")
    kind = kinds[int(g.integers(len(kinds)))]
    if kind == "drop_token": del tok[int(g.integers(len(tok)))]; lines[r] = " ".join(tok)
    elif kind == "add_token": tok.insert(int(g.integers(1, len(tok) + 1)), str(int(g.integers(-1, 2)) or 1)); lines[r] = "  ".join(tok)
    elif kind == "junk_value":
        c = int(g.choice([c for c in range(1, len(tok)) if c not in name_cols]))
        junk = JUNK_FLOAT if fmt.dtype == "float" else JUNK_INT
        tok[c] = junk[int(g.integers(len(junk)))]; lines[r] = " ".join(tok)
    elif kind == "bad_name":
        c = int(g.choice(sorted(name_cols)))
        pat = fmt.key if c == 0 else dict(fmt.names)[c]
        tok[c] = BAD_NAMES[pat][int(g.integers(len(BAD_NAMES[pat])))]; lines[r] = " ".join(tok)
    elif kind == "bad_value":
        c = int(g.integers(1, len(tok)))
        tok[c] = str(int(g.choice([v for v in range(-3, 12) if v not in fmt.allowed]))); lines[r] = " ".join(tok)
    elif kind == "dup_row": lines.insert(int(g.integers(h, len(lines) + 1)), lines[r])
    elif kind == "del_row": del lines[r]
    elif kind == "del_tail": lines = lines[:max(h, len(lines) - int(g.integers(1, 3)))]
    elif kind == "bad_count": lines[0] = str(len(lines) - h + int(g.choice([-2, -1, 1, 3]))) if g.random() < 0.7 else "two hundred"
    elif kind == "junk_line":
        junk = bytes(g.integers(0, 256, int(g.integers(1, 60)), dtype=np.uint8)).replace(b"\n", b"\x01")
        data = ("\n".join(lines[:r]) + "\n").encode() + junk + ("\n" + "\n".join(lines[r + 1:]) + "\n").encode()
        return data, kind
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"), kind


def image_mutation(g, data: bytes, kind: str, png=False):
    if kind == "truncate": return data[:int(g.integers(0, len(data) - (24 if png else 1)))]
    if kind == "random": return bytes(g.integers(0, 256, int(g.integers(0, 3000)), dtype=np.uint8))
    if kind == "empty": return b""
    if kind == "header_only": return data[:int(g.integers(2, 40))]
    raise KeyError(kind)


def run_case(lay, what, detectable: bool):
    "Strict: a DataError (or a clean load when not `detectable`); skip: a counted skip or a documented fatal DataError."
    for skip in (False, True):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                ds = lay.make(what, skip)
                b = ds.__getitems__(list(range(len(ds))))
            except rd.DataError as e:
                assert e.path and str(e).startswith(f"{e.path}:{e.line}:" if e.line else e.path), str(e)   # file and line
                if skip: assert any(f in e.reason for f in FATAL), f"skip_bad=True raised a non-fatal problem: {e}"
                continue
        if not skip:
            assert not detectable, "strict loading accepted corrupt data"
            continue
        if detectable:
            assert ds.skipped, "skip_bad=True dropped nothing and recorded nothing"
            assert any(issubclass(x.category, rd.BadDataWarning) for x in w), "no BadDataWarning"
        lazily = len(ds) - len(b["image"])                             # images dropped while loading are listed
        assert lazily <= len(ds.skipped)


@pytest.mark.timeout(180)
def test_fuzz_corrupted_files_and_lines(tmp_path):
    g = np.random.default_rng(20240607)
    lay = Layouts(tmp_path)
    files = [("celeba", lay.celeba / "list_attr_celeba.txt", rd.CELEBA_ATTR),
             ("celeba", lay.celeba / "identity_CelebA.txt", rd.CELEBA_IDENTITY),
             ("celeba", lay.celeba / "list_landmarks_align_celeba.txt", rd.CELEBA_LANDMARKS),
             ("celeba_split", lay.celeba / "list_eval_partition.txt", rd.CELEBA_PARTITION),
             ("hq", lay.hq / "CelebAMask-HQ-attribute-anno.txt", rd.HQ_ATTR),
             ("hq", lay.hq / "CelebA-HQ-to-CelebA-mapping.txt", rd.HQ_MAPPING)]
    texts = {p: p.read_text() for _, p, _ in files}
    images = [("celeba", p) for p in sorted((lay.celeba / "img_align_celeba").iterdir())] + \
             [("hq", p) for p in sorted((lay.hq / "CelebA-HQ-img").iterdir())] + [("folder", p) for p in sorted(lay.folder.iterdir())]
    masks = sorted((lay.hq / "CelebAMask-HQ-mask-anno" / "0").iterdir())
    n = {"lines": 0, "missing": 0, "images": 0, "masks": 0, "headers": 0, "valid": 0, "bitflip": 0}

    for i in range(560):                                        # annotation lines
        what, path, fmt = files[i % len(files)]
        data, kind = text_mutation(g, texts[path], fmt)
        with mutated(path, data):
            try: run_case(lay, what, detectable=True)
            except AssertionError as e: raise AssertionError(f"case {i}: {path.name} {kind}: {data[:300]!r}: {e}") from None
        n["lines"] += 1
    for what, path, fmt in files:                                  # missing annotation files; broken headers
        with mutated(path, None): run_case(lay, what, detectable=True)
        n["missing"] += 1
        if fmt.header is not None:
            lines = texts[path].split("\n"); h = int(fmt.count_line)
            for j in range(8):
                t = lines[h].split(); del t[int(g.integers(len(t)))]
                with mutated(path, ("\n".join(lines[:h] + [" ".join(t)] + lines[h + 1:])).encode()): run_case(lay, what, detectable=True)
                n["headers"] += 1
    for i in range(60):                                            # harmless spacing changes must load as they are
        what, path, fmt = files[i % len(files)]
        text = texts[path].replace(" ", [" \t", "\t", "   "][i % 3]) + ("\n" if i % 2 else "")
        with mutated(path, text.encode()):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                for skip in (False, True):
                    ds = lay.make(what, skip); ds.__getitems__(list(range(len(ds))))
                    assert not ds.skipped, (path.name, ds.skipped)
        n["valid"] += 1
    for i in range(330):                                           # images: truncated, random bytes, empty, wrong size, missing
        what, path = images[int(g.integers(len(images)))]
        kind = ["truncate", "random", "empty", "header_only", "wrong_size", "missing", "folder", "bitflip"][i % 8]
        data, is_dir = None, False
        if kind == "wrong_size":
            if what == "folder": continue                          # a folder takes any size
            w, h = Image.open(path).size
            buf = Image.new("RGB", (w + int(g.integers(1, 9)), h)); path_tmp = path.with_suffix(".tmp.jpg"); buf.save(path_tmp, "JPEG")
            data = path_tmp.read_bytes(); path_tmp.unlink()
        elif kind == "missing":
            if what == "folder": continue                          # a folder is what is in it
        elif kind == "folder":
            if what == "folder": continue                          # an empty folder named x.png is no image
            is_dir = True
        elif kind == "bitflip":
            b = bytearray(path.read_bytes())
            for _ in range(int(g.integers(1, 8))): b[int(g.integers(len(b)))] ^= 1 << int(g.integers(8))
            data = bytes(b)
        else: data = image_mutation(g, path.read_bytes(), kind, png=path.suffix == ".png")
        with mutated(path, data, mkdir=is_dir):
            try: run_case(lay, what, detectable=kind != "bitflip")
            except AssertionError as e: raise AssertionError(f"image case {i}: {path} {kind}: {e}") from None
        n["bitflip" if kind == "bitflip" else "images"] += 1
    mask_dir = lay.hq / "CelebAMask-HQ-mask-anno"
    for i in range(200):                                           # masks
        path = masks[int(g.integers(len(masks)))]
        kind = ["truncate", "random", "empty", "wrong_size", "unknown_part", "wrong_folder", "all_missing", "folder_missing"][i % 8]
        if kind in ("truncate", "random", "empty"):
            ctx = mutated(path, image_mutation(g, path.read_bytes(), kind, png=True))
        elif kind == "wrong_size":
            s = [(16, 16), (32, 31), (64, 64), (31, 32)][i // 8 % 4]
            tmp = path.with_suffix(".tmp.png"); Image.new("L", s, 255).save(tmp); data = tmp.read_bytes(); tmp.unlink()
            ctx = mutated(path, data)
        elif kind == "unknown_part": ctx = mutated(path.with_name(path.name[:6] + ["beard", "Skin", "eye", "x_y"][i % 4] + ".png"), path.read_bytes())
        elif kind == "wrong_folder":
            (mask_dir / "3").mkdir(exist_ok=True); ctx = mutated(mask_dir / "3" / path.name, path.read_bytes())
        elif kind == "all_missing":
            ctx = contextlib.ExitStack()
            for p in mask_dir.glob(f"0/{path.name[:5]}_*.png"): ctx.enter_context(mutated(p, None))
        else:
            ctx = contextlib.ExitStack(); moved = tmp_path / "moved_masks"
            shutil.move(mask_dir, moved); ctx.callback(shutil.move, moved, mask_dir)
        with ctx:
            try: run_case(lay, "hq", detectable=True)
            except AssertionError as e: raise AssertionError(f"mask case {i}: {path.name} {kind}: {e}") from None
        if (mask_dir / "3").exists(): shutil.rmtree(mask_dir / "3")
        n["masks"] += 1
    total = sum(n.values())
    print(n, total)
    assert total >= 1000, n
    for what in ("celeba", "celeba_split", "hq", "folder"):        # everything restored: loads clean
        ds = lay.make(what, False); ds.__getitems__(list(range(len(ds))))


def test_base_class_is_abstract(tmp_path):
    with pytest.raises(TypeError, match="abstract"): rd.RealFaces(tmp_path)
