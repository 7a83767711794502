"""Seconds per training step of every method's and baseline's default model at its default batch, on 1 and 2 threads,
against what this CPU's large GEMMs reach, and (with --vs REV) side by side against the same steps at an older commit.

    python bench/train_step.py                       # the table: every model, fp32 and 'fast' (bf16 where the CPU has bf16 units)
    python bench/train_step.py --vs ea78375          # old/new ratios, ABAB, for the models that both commits train
    python bench/train_step.py --curves              # 500-step loss curves, fp32 against bf16 (and fp32 with another seed)
    python bench/train_step.py --device cuda         # the same on a GPU

Each figure is measured in a fresh process (`--worker`), so every measurement starts from the same state and an
older commit's code can be timed beside today's. A step is the engine's `run_step` (batch, forward, backward,
optimizer, EMA), timed after warm-up steps; FLOPs are counted once by `torch.utils.flop_counter` over one step.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ['ae', 'beta_vae', 'beta_tcvae', 'semi_vae', 'subspaces', 'zerodim', 'idmap', 'photogeo', 'stylegan2',
          'embedder', 'landmarks', 'parser', 'factors']


# ---------------------------------------------------------------------------------------------------------------- worker
def _engine_step(eng):
    "One step of `eng`: its run_step, or, at commits whose engine has none, the same body as its fit loop ran it."
    if hasattr(eng, 'run_step'): return eng.run_step()
    import torch.nn as nn
    from disentangle.engine import _to
    m, cfg = eng.method, eng.cfg
    for micro in range(cfg.grad_accum):
        b = _to(eng.batch_fn(eng.global_step * cfg.grad_accum + micro, eng.rank, eng.world), eng.device, eng.channels_last)
        with eng.autocast(): losses = m.train_step(b, eng)
        if not m.manual: eng.backward(losses['loss'])
    if not m.manual:
        for name in m.optimizers: eng.step(name)
    eng._update_ema(); eng.global_step += 1
    return losses


def _engine(method, batches, precision, device, tmp):
    from disentangle.engine import Engine, EngineConfig
    kw = dict(steps=10 ** 9, out_dir=tmp, device=device, precision=precision, ckpt_every=10 ** 9, log_every=10 ** 9, progress=False)
    if 'ckpt_minutes' in EngineConfig.__dataclass_fields__: kw['ckpt_minutes'] = 0.
    import disentangle.engine as E
    if precision == 'fast' and 'fast' not in getattr(E, 'PRECISIONS', ()): kw['precision'] = 'auto'   # older commits: fp32 on CPU
    eng = Engine(method, batches, EngineConfig(**kw))
    for mod in method.modules.values(): mod.train()
    return lambda: _engine_step(eng)


def build(name, precision, device, tmp):
    "A closure running one training step of model `name` as its experiment trains it, and its batch size."
    import numpy as np, torch
    from disentangle import baselines as B
    if name in ('ae', 'beta_vae', 'beta_tcvae'):
        from disentangle.groundtruth import DSprites
        cfg = B.BaselineConfig(name, pool=2048)
        if hasattr(B, 'BaselineMethod'):   # through the engine, as train_baseline trains it now
            if 'precision' in B.BaselineConfig.__dataclass_fields__: cfg.precision = precision
            model = B.Baseline(cfg, channels=1)
            return _engine(B.BaselineMethod(model), B.GroundTruthBatches(DSprites(), cfg.batch_size, 0, cfg.pool),
                           cfg.precision if hasattr(cfg, 'precision') else precision, device, tmp), cfg.batch_size
        # older commits: train_baseline's own loop, fp32
        data = DSprites(); model = B.Baseline(cfg, channels=1).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr); pool = B.ImagePool(data, cfg.pool, 0); rng = np.random.default_rng(1)
        def step():
            x = pool.batch(torch.from_numpy(rng.integers(0, len(pool), cfg.batch_size)))
            out = model.loss(x.to(device)); opt.zero_grad(set_to_none=True); out['loss'].backward(); opt.step()
        return step, cfg.batch_size
    if name == 'semi_vae':
        from disentangle import zerodim as Z
        from disentangle.groundtruth import Shapes3D
        sh = Shapes3D(); y = sh.sample_factors(1024, np.random.default_rng(0))
        x = (sh.observations(y) * 255).round().to(torch.uint8); lab = np.full((1024, 3), -1); lab[:256] = y[:256, :3]
        data = Z.LabeledImages(x, lab); cfg = Z.SemiVAEConfig(3)
        model = Z.SemiVAE(cfg, 3)
        if hasattr(Z, 'SemiVAEMethod'):
            return _engine(Z.SemiVAEMethod(model, (10, 10, 10)), Z.PairedBatches(data, cfg.batch_size, 0), precision, device, tmp), cfg.batch_size
        opt = torch.optim.Adam(model.parameters(), cfg.lr); batches = Z.PairedBatches(data, cfg.batch_size, 0); it = iter(range(10 ** 9))
        def step():
            b = batches(next(it))
            out = model.loss(b['all']['image'], b['labeled']['image'], b['labeled']['labels'], (10, 10, 10))
            opt.zero_grad(set_to_none=True); out['loss'].backward(); opt.step()
        return step, cfg.batch_size
    if name == 'subspaces':
        from disentangle import subspaces as S, synthfaces as sf
        from disentangle.engine import ShardedBatches
        ds = sf.SynthFaces(200, 4, 64, 0, cache_dir=str(Path(tmp) / 'faces'))
        return _engine(S.SubspaceMethod(S.SubspaceConfig()), ShardedBatches(ds, 32, 0), precision, device, tmp), 32
    if name == 'zerodim':
        from disentangle import zerodim as Z
        from disentangle.groundtruth import Shapes3D
        sh = Shapes3D(); y = sh.sample_factors(1024, np.random.default_rng(0))
        x = (sh.observations(y) * 255).round().to(torch.uint8); lab = np.full((1024, 3), -1); lab[:256] = y[:256, :3]
        data = Z.LabeledImages(x, lab)
        cfg = Z.ZeroDIMConfig(('floor_hue', 'wall_hue', 'object_hue'), (10, 10, 10))
        model = Z.ZeroDIM(cfg, len(data))
        return _engine(Z.LatentStage(model, len(data)), Z.PairedBatches(data, cfg.batch_size, 0), precision, device, tmp), cfg.batch_size
    if name == 'idmap':
        from disentangle import idmap as I, perception as P
        from disentangle.stylegan2 import pretrained_generator
        G, E_id, L = pretrained_generator(), P.pretrained('id_train'), P.pretrained('landmarks_dense')
        gen = I.GeneratedFaces(G, 256, E_id, L, seed=0, progress=False)
        cfg = I.IDMapConfig()
        import dataclasses
        cfg = dataclasses.replace(cfg, w_dim=G.cfg.style_dim, id_dim=gen.z_id.shape[1])
        model = I.IDDisentangler(cfg, G, E_id)
        return _engine(I.IDMapTraining(model, L), I.SwapBatches(gen, cfg.batch_size, 0, cfg.cross_every), precision, device, tmp), cfg.batch_size
    if name == 'photogeo':
        from disentangle import photogeo as PG
        return _engine(PG.PhotoGeoMethod(PG.PhotoGeoConfig(), PG.perceptual_net('factors')), PG.synthfaces_batches(16, 0), precision, device, tmp), 16
    if name == 'stylegan2':
        from disentangle import stylegan2 as SG, synthfaces as sf
        from disentangle.engine import ShardedBatches
        ds = sf.SynthFaces(200, 4, 64, 0, cache_dir=str(Path(tmp) / 'faces'))
        mc = SG.StyleGAN2Config(size=64, style_dim=256, n_mlp=8, channel_multiplier=0.0625, channel_max=64)
        return _engine(SG.StyleGAN2GAN(mc, SG.GANConfig(batch=16)), ShardedBatches(ds, 16, 0), precision, device, tmp), 16
    if name in ('embedder', 'landmarks', 'parser', 'factors'):
        from disentangle import perception as P, synthfaces as sf
        from disentangle.engine import ShardedBatches
        ds = sf.SynthFaces(200, 4, 64, 0, cache_dir=str(Path(tmp) / 'faces'))
        net = {'embedder': lambda: P.FaceEmbedder(P.EmbedderConfig('resnet')), 'landmarks': lambda: P.LandmarkNet(P.LandmarkConfig('resnet')),
               'parser': lambda: P.FaceParser(P.ParserConfig()), 'factors': lambda: P.FactorRegressor(P.RegressorConfig('resnet'))}[name]()
        cfg = P.TrainConfig()
        if not hasattr(P, 'PerceptionMethod'): return None, cfg.batch_size   # older commits trained these outside the engine
        obj = P.LOSSES[type(net).__name__](net, ds, cfg)
        return _engine(P.PerceptionMethod(net.to(memory_format=torch.channels_last), obj, cfg), ShardedBatches(ds, cfg.batch_size, 0),
                       precision, device, tmp), cfg.batch_size
    raise SystemExit(f"unknown model {name!r}; valid: {MODELS}")


def worker(name, precision, threads, steps, warmup, device, flops):
    import torch
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        step, batch = build(name, precision, device, tmp)
        if step is None: return {'model': name, 'missing': True}
        for _ in range(warmup): step()
        sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
        times = []
        for _ in range(steps):
            sync(); t = time.perf_counter(); step(); sync(); times.append(time.perf_counter() - t)
        out = {'model': name, 'precision': precision, 'threads': threads, 'batch': batch,
               'seconds': statistics.median(times), 'seconds_min': min(times)}
        if flops:
            from torch.utils.flop_counter import FlopCounterMode
            try:
                with FlopCounterMode(display=False) as fc: step()
                out['flops'] = fc.get_total_flops()
            except RuntimeError as e:   # the counter cannot follow a double backward (an R1 penalty): no count, said so
                out['flops'], out['flops_error'] = None, str(e).splitlines()[0][:120]
        return out


def gemm_peak(threads, device):
    "GFLOP/s of a 4096x4096 matmul in fp32 and bf16."
    import torch
    torch.set_num_threads(threads)
    out = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(4096, 4096, dtype=dt, device=device), torch.randn(4096, 4096, dtype=dt, device=device)
        for _ in range(2): a @ b
        if device == 'cuda': torch.cuda.synchronize()
        t, n = time.perf_counter(), 3 if device == 'cpu' else 50
        for _ in range(n): a @ b
        if device == 'cuda': torch.cuda.synchronize()
        out[str(dt).split('.')[-1]] = 2 * 4096 ** 3 * n / (time.perf_counter() - t) / 1e9
    return out


def curves(name, precision, seed, steps):
    "The loss of each of `steps` steps (one thread)."
    import torch
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        step, _ = build(name, precision, 'cpu', tmp)
        out = []
        for _ in range(steps):
            losses = step()
            out.append(float(losses['loss'] if 'loss' in losses else losses['reconstruction']))
        return out


# ---------------------------------------------------------------------------------------------------------------- tables
def markdown(results: dict) -> str:
    "The BENCHMARKS.md tables of one results file (steps, --vs or --curves)."
    out = [f"Measured {results['date']} on {results['hardware']}, torch {results['torch']}."]
    if 'gemm_gflops' in results:
        pk = results['gemm_gflops']
        out += ['', 'Large GEMM (4096 x 4096) in the same run: ' + '; '.join(f"{t} thread(s) fp32 {p['float32']:.0f}, bf16 {p['bfloat16']:.0f} GFLOP/s" for t, p in pk.items()) + '.',
                '', '| model | batch | GFLOP/step | precision | threads | ms/step | GFLOP/s | of fp32 peak | of bf16 peak |', '|---|---|---|---|---|---|---|---|---|']
        for r in results['steps']:
            prec = r['precision'] if r['precision'] == 'fp32' else 'fast (bf16)'
            if 'error' in r:
                out.append(f"| {r['model']} | | | {prec} | {r['threads']} | fails: {r['error'].split('; last good')[0]} | | | |"); continue
            if not r.get('flops'):
                out.append(f"| {r['model']} | {r['batch']} | not counted (double backward) | {prec} | {r['threads']} | {r['seconds'] * 1000:.1f} | - | - | - |")
                continue
            out.append(f"| {r['model']} | {r['batch']} | {r['flops'] / 1e9:.2f} | {prec} | {r['threads']} | {r['seconds'] * 1000:.1f} | {r['gflops_per_s']:.1f} | "
                       f"{100 * r['of_fp32_peak']:.0f}% | {100 * r['of_bf16_peak']:.0f}% |")
    if 'vs' in results:
        v = results['vs']
        out += ['', f"Old (`{v['old']}`, fp32, its own training loop) against new (`{v['new']}`, the engine with precision 'fast'), measured in turn:",
                '', '| model | threads | old ms/step | new ms/step | old/new (median of pairs) | pairs |', '|---|---|---|---|---|---|']
        for k, r in v['rows'].items():
            m, t = k.split('/')
            out.append(f"| {m} | {t} | {r['old_s'] * 1000:.1f} | {r['new_s'] * 1000:.1f} | **{r['speedup']:.2f}x** | {', '.join(f'{x:.2f}' for x in r['ratios'])} |")
    if 'curves' in results:
        out += ['', 'Mean loss of the last fifth of an N-step run from the same start (1 thread): bf16 against fp32, beside fp32 with another seed:',
                '', '| model | N | fp32, seed 0 | bf16, seed 0 | fp32, seed 1 | bf16 - fp32 | seed 1 - seed 0 |', '|---|---|---|---|---|---|---|']
        for m, r in results['curves'].items():
            out.append(f"| {m} | {r.get('steps', 500)} | {r['fp32 seed 0']:.4g} | {r['bf16 seed 0']:.4g} | {r['fp32 seed 1']:.4g} | {r['bf16 - fp32']:+.3g} | {r['seed 1 - seed 0']:+.3g} |")
    return '\n'.join(out)


# ---------------------------------------------------------------------------------------------------------------- driver
def run_worker(args, src=REPO, timeout=1800):
    env = {**os.environ, 'PYTHONPATH': str(src), 'OMP_NUM_THREADS': str(args.get('threads', 1))}
    cmd = [sys.executable, str(Path(__file__).resolve()), '--worker', json.dumps(args)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir())
    if r.returncode: raise RuntimeError(f"{args} at {src} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def checkout(rev):
    "A worktree of commit `rev` under bench/_work (reused when it is there)."
    path = REPO / 'bench' / '_work' / rev
    if not path.exists():
        subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(path), rev], check=True, capture_output=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    ap.add_argument('--models', default=','.join(MODELS))
    ap.add_argument('--threads', default='1,2')
    ap.add_argument('--precisions', default='fp32,fast')
    ap.add_argument('--steps', type=int, default=12)
    ap.add_argument('--warmup', type=int, default=4)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--vs', metavar='REV', help='old commit: old/new ratios, measured in turn (A B A B ...)')
    ap.add_argument('--pairs', type=int, default=3)
    ap.add_argument('--curves', action='store_true', help='loss curves, fp32 against bf16')
    ap.add_argument('--curve-steps', type=int, default=500)
    ap.add_argument('--json', help='also write the results here')
    ap.add_argument('--markdown', nargs='+', metavar='JSON', help='print the BENCHMARKS.md tables of saved results files, and stop')
    a = ap.parse_args()
    if a.markdown:
        print('\n\n'.join(markdown(json.loads(Path(f).read_text())) for f in a.markdown)); return
    if a.worker:
        w = json.loads(a.worker)
        if w['kind'] == 'step': out = worker(w['model'], w['precision'], w['threads'], w['steps'], w['warmup'], w['device'], w.get('flops', False))
        elif w['kind'] == 'gemm': out = gemm_peak(w['threads'], w['device'])
        else: out = curves(w['model'], w['precision'], w['seed'], w['steps'])
        print(json.dumps(out)); return
    import torch
    models, threads, precs = a.models.split(','), [int(t) for t in a.threads.split(',')], a.precisions.split(',')
    cpu = 'cpu' == a.device
    from disentangle.core import cpu_name
    hw = cpu_name() if cpu else torch.cuda.get_device_name()
    results = {'hardware': hw, 'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d')}
    if a.curves:
        rows = {}
        for name in models:
            runs = {(p, s): run_worker(dict(kind='curve', model=name, precision=p, seed=s, steps=a.curve_steps), timeout=7200)
                    for p, s in (('fp32', 0), ('fast', 0), ('fp32', 1))}
            tail = {k: statistics.mean(v[-max(1, a.curve_steps // 5):]) for k, v in runs.items()}
            rows[name] = {'steps': a.curve_steps, 'fp32 seed 0': tail[('fp32', 0)], 'bf16 seed 0': tail[('fast', 0)], 'fp32 seed 1': tail[('fp32', 1)],
                          'bf16 - fp32': tail[('fast', 0)] - tail[('fp32', 0)], 'seed 1 - seed 0': tail[('fp32', 1)] - tail[('fp32', 0)]}
            print(f"{name:12s} " + '  '.join(f"{k} {v:.4g}" for k, v in rows[name].items()), flush=True)
            if a.json: Path(a.json).write_text(json.dumps({**results, 'curves': rows}, indent=1))
        results['curves'] = rows
    elif a.vs:
        old = checkout(a.vs); rows = {}
        for name in models:
            for t in threads:
                spec = dict(kind='step', model=name, threads=t, steps=a.steps, warmup=a.warmup, device=a.device)
                pairs = []
                for _ in range(a.pairs):
                    o = run_worker({**spec, 'precision': 'fp32'}, src=old)
                    n = run_worker({**spec, 'precision': 'fast'})
                    if o.get('missing') or n.get('missing'): break
                    pairs.append((o['seconds'], n['seconds']))
                if not pairs: continue
                ratio = statistics.median(o / n for o, n in pairs)
                rows[f"{name}/{t}"] = {'old_s': statistics.median(o for o, _ in pairs), 'new_s': statistics.median(n for _, n in pairs), 'speedup': ratio,
                                       'ratios': [o / n for o, n in pairs]}
                print(f"{name:12s} {t} thread(s): old {rows[f'{name}/{t}']['old_s'] * 1000:7.1f} ms  new {rows[f'{name}/{t}']['new_s'] * 1000:7.1f} ms  "
                      f"old/new {ratio:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in rows[f'{name}/{t}']['ratios'])})", flush=True)
        results['vs'] = {'old': a.vs, 'new': subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip(),
                         'rows': rows}
    else:
        peaks = {t: run_worker(dict(kind='gemm', threads=t, device=a.device)) for t in threads}
        results['gemm_gflops'] = peaks
        print('GEMM GFLOP/s: ' + '; '.join(f"{t} thread(s) fp32 {p['float32']:.0f}, bf16 {p['bfloat16']:.0f}" for t, p in peaks.items()), flush=True)
        rows = []
        for name in models:
            for p in precs:
                for t in threads:
                    try: r = run_worker(dict(kind='step', model=name, precision=p, threads=t, steps=a.steps, warmup=a.warmup, device=a.device, flops=True))
                    except RuntimeError as e:   # a model that cannot train so (e.g. a loss that overflows in bf16) is a finding, kept in the table
                        why = [l for l in str(e).splitlines() if l.strip()][-1][:160]
                        rows.append(dict(model=name, precision=p, threads=t, error=why)); print(f"{name:12s} {p:5s} {t} thread(s): fails: {why}", flush=True)
                        continue
                    if r['flops']:
                        r['gflops_per_s'] = r['flops'] / r['seconds'] / 1e9
                        r['of_fp32_peak'] = r['gflops_per_s'] / peaks[t]['float32']; r['of_bf16_peak'] = r['gflops_per_s'] / peaks[t]['bfloat16']
                        counted = (f"{r['flops'] / 1e9:6.2f} GFLOP  {r['gflops_per_s']:6.1f} GFLOP/s  ({100 * r['of_fp32_peak']:.0f}% of fp32 peak, "
                                   f"{100 * r['of_bf16_peak']:.0f}% of bf16)")
                    else: counted = f"FLOPs not counted ({r['flops_error']})"
                    rows.append(r)
                    print(f"{name:12s} {p:5s} {t} thread(s) batch {r['batch']:4d}: {r['seconds'] * 1000:8.1f} ms/step  {counted}", flush=True)
                    results['steps'] = rows
                    if a.json: Path(a.json).write_text(json.dumps(results, indent=1))   # as it goes: a failure keeps what was measured
        results['steps'] = rows
    if a.json: Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == '__main__':
    main()
