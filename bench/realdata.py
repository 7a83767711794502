"""Real-data loader speed on this machine, side by side in one run.

A generated folder of n CelebA-sized JPEGs (178x218, SynthFaces renders on a canvas; 256 distinct files, the rest hard
links) is read at 64 px as batches of 64 images in [-1, 1], centre square crop, by:
  PIL        open + convert + crop + resize (bilinear) per image, then a tensor: a plain loop, and a torch
             DataLoader with `--workers` workers;
  ours       `realdata.ImageFolder(...).loader()`: decoding (JPEG draft decode) with 0 and `--workers` workers, and
             served from its uint8 memmap cache (built once, time reported apart) with 0 and `--workers` workers.
Every loader reads one warm-up epoch (page cache, worker start-up) and is then timed over one epoch; ratios are
against the PIL loop measured in the same run. Prints a markdown section and writes it to --out.
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/realdata.py [--n 2048] [--workers 2] [--out /tmp/realdata_bench.md]
"""
import argparse, json, os, tempfile, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from disentangle import realdata as rd, synthfaces as sf


def pil_image(path, size=64):
    im = Image.open(path).convert("RGB")
    w, h = im.size; s = min(w, h); l, t = (w - s) // 2, (h - s) // 2
    im = im.crop((l, t, l + s, t + s)).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1


class PilFolder(torch.utils.data.Dataset):
    def __init__(self, files): self.files = files
    def __len__(self): return len(self.files)
    def __getitem__(self, i): return pil_image(self.files[i])


def pil_loop(files, batch=64):
    for i in range(0, len(files), batch): yield torch.stack([pil_image(f) for f in files[i:i + batch]])


def drain(make):
    "Images/s over one epoch, after a warm-up epoch (the iterable is made afresh by `make`)."
    for _ in make(): pass
    n, t = 0, time.perf_counter()
    for b in make(): n += len(b["image"] if isinstance(b, dict) else b)
    return n / (time.perf_counter() - t)


def write_folder(d: Path, n: int):
    faces = sf.render(256, size=178, seed=1)["image"]
    for i in range(n):
        p = d / f"{i:06d}.jpg"
        if i < 256:
            canvas = np.full((218, 178, 3), 90, np.uint8)
            canvas[20:198] = ((faces[i] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(canvas).save(p, quality=95)
        else: os.link(d / f"{i % 256:06d}.jpg", p)
    return sorted(d.glob("*.jpg"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048); ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "realdata.json"))
    ap.add_argument("--markdown", help="print the table of this saved results file and stop")
    a = ap.parse_args(); w = a.workers
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); (d / "jpg").mkdir()
        files = write_folder(d / "jpg", a.n)
        kw = dict(batch_size=64, shuffle=True, seed=0)
        pil_w = torch.utils.data.DataLoader(PilFolder(files), batch_size=64, shuffle=True, num_workers=w,
                                            generator=torch.Generator().manual_seed(0), persistent_workers=w > 0)
        ours = rd.ImageFolder(d / "jpg", size=64)
        ours_w = ours.loader(num_workers=w, persistent_workers=w > 0, **kw)
        t = time.perf_counter(); cached = rd.ImageFolder(d / "jpg", size=64, cache_dir=str(d / "cache"), cache_workers=w); build = time.perf_counter() - t
        cached_w = cached.loader(num_workers=w, persistent_workers=w > 0, **kw)
        r = {}                                  # measured in turn, in one run
        r["pil"] = drain(lambda: pil_loop(files))
        r["pil_w"] = drain(lambda: pil_w)
        r["ours"] = drain(lambda: ours.loader(num_workers=0, **kw))
        r["ours_w"] = drain(lambda: ours_w)
        r["cache"] = drain(lambda: cached.loader(num_workers=0, **kw))
        r["cache_w"] = drain(lambda: cached_w)
    from disentangle.core import cpu_name; hw = cpu_name()
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, cores=os.cpu_count() or 1, torch=torch.__version__, n=a.n, workers=w,
                   load=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"), build_s=build, images_per_s=r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + markdown(results))


def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file."
    r, w, n = results["images_per_s"], results["workers"], results["n"]
    rows = [("PIL open + crop + resize, plain loop", r["pil"]),
            (f"PIL open + crop + resize, DataLoader {w} workers", r["pil_w"]),
            ("ours, decoding (JPEG draft), 0 workers", r["ours"]),
            (f"ours, decoding (JPEG draft), {w} workers", r["ours_w"]),
            ("ours, uint8 memmap cache, 0 workers", r["cache"]),
            (f"ours, uint8 memmap cache, {w} workers", r["cache_w"])]
    out = [f"Measured {results['date']} on {results['hardware']} (`bench/realdata.py --n {n} --workers {w}`: {n} 178x218 JPEGs -> 64 px, "
           f"{results['cores']} cores, load average {results['load']:.1f}), torch {results['torch']}.", "",
           "| loader | images/s | vs PIL loop |", "|---|---|---|"]
    out += [f"| {name} | {v:,.0f} | {v / r['pil']:.2f}x |" for name, v in rows]
    out += ["", f"Cache built once in {results['build_s']:.1f} s ({n / results['build_s']:,.0f} images/s, {w} workers), not counted above. "
            f"Same seed, batch 64, one warm-up epoch before each timed epoch."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
