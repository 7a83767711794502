"""SynthFaces speed on this machine, side by side in one run.

(a) images/s rendered at 64 px with all ground truth: one process, and one process per core (each 1 thread);
    eager and with render_factors(compiled=True) (torch.compile; its warm-up reported apart).
(b) images/s served from the SynthFaces uint8 memmap cache vs decoding + centre-cropping + resizing the same number
    of 178x218 JPEG files with PIL (CelebA's aligned size), both through a DataLoader with 2 workers.
Run: .venv/bin/python bench/synthfaces.py [--n 4096]; saves bench/results/synthfaces.json (or --out), whose table
BENCHMARKS.md shows through `markdown(results)` (`--markdown FILE`), never typed.
"""
import argparse, json, os, sys, tempfile, time
import multiprocessing as mp
from pathlib import Path
import numpy as np
import torch
from PIL import Image
from disentangle import synthfaces as sf

def _render_worker(args):
    n, chunk, seed, compiled = args
    torch.set_num_threads(1)
    f, ids = sf.sample_factors(n, seed=seed)
    t = time.perf_counter(); sf.render_factors(f[:chunk], 64, chunk=chunk, compiled=compiled); warm = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, chunk):   # batch by batch, as a training loop consumes them
        sf.render_factors(f[i:i + chunk], 64, identity=ids[i:i + chunk], chunk=chunk, compiled=compiled)
    return n, time.perf_counter() - t, warm

class JpegFolder(torch.utils.data.Dataset):
    "CelebA-style loading: decode a 178x218 JPEG, centre-crop 178x178, resize to 64, to a tensor in [-1, 1]."
    def __init__(self, files): self.files = files
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        im = Image.open(self.files[i]).convert('RGB')
        w, h = im.size; s = min(w, h); l, t = (w - s) // 2, (h - s) // 2
        im = im.crop((l, t, l + s, t + s)).resize((64, 64), Image.BILINEAR)
        return torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 127.5 - 1

def _drain(loader):
    n = 0; t = time.perf_counter()
    for b in loader: n += len(b['image'] if isinstance(b, dict) else b)
    return n, time.perf_counter() - t

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--n', type=int, default=4096)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'synthfaces.json'))
    ap.add_argument('--markdown', help='print the table of this saved results file and stop')
    a = ap.parse_args(); n = a.n; cores = os.cpu_count() or 1
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    r = {}
    # (a) rendering
    m, dt, _ = _render_worker((n, 64, 0, False)); r['render_one'] = m / dt
    for compiled in (False, True):
        with mp.get_context('spawn').Pool(cores) as pool:
            res = pool.map(_render_worker, [(n // cores, 64, s, compiled) for s in range(cores)])
        r['render_compiled' if compiled else 'render_eager'] = sum(x[0] for x in res) / max(x[1] for x in res)
        if compiled: r['compile_warmup_s'] = max(x[2] for x in res)
    # (b) cache vs JPEG, same number of images, DataLoader with 2 workers each
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        n_id = n // 8
        t = time.perf_counter(); ds = sf.SynthFaces(n_id, 8, size=64, seed=0, split='all', cache_dir=d / 'cache'); build = time.perf_counter() - t
        faces = sf.render(256, size=178, seed=1)['image']
        files = []
        for i in range(n):
            p = d / 'jpg' / f'{i:06d}.jpg'; p.parent.mkdir(exist_ok=True)
            if i < 256:
                im = ((faces[i] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
                canvas = np.zeros((218, 178, 3), np.uint8); canvas[20:198] = im
                Image.fromarray(canvas).save(p, quality=95)
            else: os.link(d / 'jpg' / f'{i % 256:06d}.jpg', p)
            files.append(p)
        torch.set_num_threads(1)
        kw = dict(batch_size=64, shuffle=True, num_workers=2, persistent_workers=True)
        cache, jpeg = ds.loader(seed=0, **kw), torch.utils.data.DataLoader(JpegFolder(files), generator=torch.Generator().manual_seed(0), **kw)
        _drain(cache); _drain(jpeg)   # first epoch: start the workers, warm the page cache
        cache_n, cache_t = _drain(cache)
        jpeg_n, jpeg_t = _drain(jpeg)
    r.update(cache=cache_n / cache_t, jpeg=jpeg_n / jpeg_t, cache_build_s=build)
    from disentangle.core import cpu_name; hw = cpu_name()
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, cores=cores, torch=torch.__version__, n=n,
                   load=os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'), images_per_s=r)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + '\n')
    print('\n' + markdown(results))

TARGETS = dict(render=2000., cache_vs_jpeg=4.)      # the foundation issue's: compiled renders per second, cache over PIL

def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file, with the targets' verdicts computed from it."
    r, n, cores = results['images_per_s'], results['n'], results['cores']
    one, c, j = r['render_one'], r['cache'], r['jpeg']
    rows = [('render 64 px, all ground truth, eager, 1 process x 1 thread', one, '1.00x'),
            (f'render 64 px, all ground truth, eager, {cores} processes x 1 thread', r['render_eager'], f"{r['render_eager'] / one:.2f}x"),
            (f"render 64 px, all ground truth, `compiled=True` (warm-up {r['compile_warmup_s']:.0f} s, apart), {cores} processes x 1 thread", r['render_compiled'], f"{r['render_compiled'] / one:.2f}x"),
            (f"serve from SynthFaces memmap cache ({n} images, 2 workers; built once in {r['cache_build_s']:.1f} s)", c, f'{c / j:.1f}x PIL JPEG'),
            (f'PIL: decode 178x218 JPEG, crop, resize to 64 ({n} images, 2 workers)', j, '1.0x')]
    met = lambda ok: 'met' if ok else 'not met'
    return '\n'.join([f"Measured {results['date']} on {results['hardware']} (`bench/synthfaces.py --n {n}`, {cores} cores, load average "
                       f"{results['load']:.1f}), torch {results['torch']}.", '', '| what | speed | ratio |', '|---|---|---|',
                       *[f'| {w} | {v:,.0f} img/s | {q} |' for w, v, q in rows], '',
                       f"Targets: rendering at least {TARGETS['render']:,.0f} img/s ({met(r['render_compiled'] >= TARGETS['render'])} in this run: "
                       f"{r['render_compiled']:,.0f} compiled), serving from the cache at least {TARGETS['cache_vs_jpeg']:.0f}x PIL "
                       f"({met(c / j >= TARGETS['cache_vs_jpeg'])}: {c / j:.1f}x)."])

if __name__ == '__main__':
    main()
