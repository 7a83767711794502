"""Explorer redraw latency at 64 px on CPU, side by side in one run, against the 100 ms target of a slider move.

For each explorer, one widget change (a slider move or a toggle) is made `--moves` times, alternating between two
values; each triggers the explorer's observer, which renders and re-encodes the view, as in a notebook. Reported: the
median and 90th percentile of the redraw time and the target / median ratio (above 1: fast enough), and for the
direction explorer the share taken by the generator's synthesis alone, timed in the same run.
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/explore.py [--moves 40] [--threads 1] [--out bench/results/explore.json]
The results file keeps every redraw time; BENCHMARKS.md's table is `markdown(results)` of it (`--markdown FILE`, or
`disentangle.results.write_tables()`), never typed.
"""
import argparse, json, os, time
from pathlib import Path
import numpy as np
import torch
from disentangle import explore as X, stylegan2 as sg, synthfaces as sf, subspaces as S, perception as P, idmap as I


def moves(ex, widget, values, n):
    "Redraw times (s) of n changes of `widget`, alternating over `values`."
    out = []
    for k in range(n):
        widget.value = values[k % len(values)]
        out.append(ex.last_redraw_s)
    return np.array(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moves", type=int, default=40); ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "explore.json"))
    ap.add_argument("--markdown", help="print the table of this saved results file and stop")
    a = ap.parse_args()
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    torch.set_num_threads(a.threads)
    G = sg.pretrained_generator()
    w = G.mapping(torch.randn(8, 256, generator=torch.Generator().manual_seed(0))).detach()
    d = torch.nn.functional.normalize(torch.randn(256, generator=torch.Generator().manual_seed(1)), dim=0) * 3
    faces = sf.render(8, size=64, seed=2)
    r = {}
    ex = X.DirectionExplorer(G, w, {f'd{k}': d.roll(k) for k in range(4)}, judge=None)
    r["direction slider (generator only)"] = moves(ex, ex.sliders['d0'], [1.0, -1.0], a.moves)
    ex = X.DirectionExplorer(G, w, {f'd{k}': d.roll(k) for k in range(4)})
    r["direction slider + identity metric"] = moves(ex, ex.sliders['d0'], [1.0, -1.0], a.moves)
    with torch.no_grad():
        syn = []
        for k in range(a.moves):
            t = time.perf_counter(); G.synthesis(w[:1] + d, noise_mode='const'); syn.append(time.perf_counter() - t)
    r["(generator synthesis alone, 1 face)"] = np.array(syn)
    sw = S.subspace_swapper(S.SubspaceAE(S.SubspaceConfig()))
    sx = X.SwapExplorer(sw, faces['image'], factors=faces['factors'])   # with the perfect swap as reference
    r["method 1 region slider + locality metric"] = moves(sx, sx.mix['eyes'], [0.5, 1.0], a.moves)
    r["method 1 swap button + locality metric"] = moves(sx, sx.toggles['mouth'], [True, False], a.moves)
    E_id = P.pretrained('id_train')
    mx = X.IdentityMixer(I.IDDisentangler(I.IDMapConfig(id_dim=E_id(faces['image'][:1]).shape[1], attr_init='scratch'), G, E_id), faces['image'])
    r["method 2 identity face change + identity metric"] = moves(mx, mx.identity, [1, 2], a.moves)
    from disentangle import zoo
    _, x = zoo.held_out('zerodim-shapes3d')
    fx = X.FactorExplorer(zoo.load('zerodim-shapes3d'), x[:8].float() / 255)
    r["method 4 factor value + the model's reading"] = moves(fx, fx.value, [2, 7], a.moves)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from disentangle.core import cpu_name; hw = cpu_name()
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, cores=os.cpu_count(), load=load, torch=torch.__version__,
                   moves=a.moves, threads=a.threads, ms={k: (1000 * v).round(3).tolist() for k, v in r.items()})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + markdown(results))


def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file."
    out = [f"Measured {results['date']} on {results['hardware']} (`bench/explore.py --moves {results['moves']} --threads {results['threads']}`, "
           f"{results['cores']} cores, load average {results['load']:.1f}), torch {results['torch']}.", "",
           "| widget change | median ms | p90 ms | 100 ms target / median |", "|---|---|---|---|"]
    for k, v in results['ms'].items():
        v = np.asarray(v)
        out.append(f"| {k} | {np.median(v):.1f} | {np.percentile(v, 90):.1f} | {100 / np.median(v):.1f}x |")
    worst = max(np.percentile(np.asarray(v), 90) for v in results['ms'].values())
    out += ["", "Each change redraws through the widget's observer (render, then PNG encode at the explorer's scale: 4x, the swap explorer 2x), as a user's move does; "
            "the synthesis row is the generator's share, timed in the same run. Weights do not change the cost, so the "
            "method 1 and 2 models are untrained; method 4's is the zoo's `zerodim-shapes3d` on its held-out images. "
            f"The slowest redraw at the 90th percentile: {worst:.1f} ms ({'within' if worst <= 100 else 'over'} the 100 ms target)."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
