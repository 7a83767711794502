"""Engine overhead: the same model and batches trained by a bare PyTorch loop and by `disentangle.engine.Engine`.

The model is the beta-VAE baseline (disentanglement_lib's conv encoder/decoder, 64x64, batch 64); the engine
logs every 10 steps, keeps an EMA copy and checkpoints once at the end of each round, as in a real run. Rounds of
bare and engine steps alternate so that drifts in machine load hit both; prints the per-step times and the
overhead (target: at most 5%). The results file (default bench/results/engine.json) keeps every round's times;
BENCHMARKS.md's table is `markdown(results)` of it (`--markdown FILE`), never typed.
Run: .venv/bin/python bench/engine.py [--steps 20] [--rounds 3]
"""
import argparse, json, os, statistics, tempfile, time
from pathlib import Path
import numpy as np, torch
from disentangle.baselines import Baseline, BaselineConfig
from disentangle.engine import Engine, EngineConfig, Method
from disentangle.groundtruth import DSprites

class VAE(Method):
    def __init__(self):
        torch.manual_seed(0)
        self.model = Baseline(BaselineConfig('beta_vae'))
        self.modules = {'model': self.model}; self.optimizers = {'model': torch.optim.Adam(self.model.parameters(), 1e-4)}
        self.ema = ('model',)
    def train_step(self, x, engine): return self.model.loss(x)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--steps', type=int, default=20); ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'engine.json'))
    ap.add_argument('--markdown', help='print the table of this saved results file and stop')
    a = ap.parse_args()
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    torch.set_num_threads(1)
    data = DSprites(); pool = data.observations(data.sample_factors(64 * 8, np.random.default_rng(0)))
    batch = lambda step, rank=0, world=1: pool[(step % 8) * 64:(step % 8 + 1) * 64]
    bare_t, eng_t = [], []
    for r in range(a.rounds):
        m = VAE(); opt = m.optimizers['model']; m.model.train()
        for s in range(2): opt.zero_grad(); m.model.loss(batch(s))['loss'].backward(); opt.step()   # warm-up
        t = time.perf_counter()
        for s in range(a.steps):
            loss = m.model.loss(batch(s))['loss']; opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        bare_t.append((time.perf_counter() - t) / a.steps)
        with tempfile.TemporaryDirectory() as d:
            m = VAE(); e = Engine(m, batch, EngineConfig(steps=2, out_dir=d, log_every=10, ckpt_every=10**9, progress=False, resume=False)).fit()   # warm-up
            e.cfg.steps = 2 + a.steps
            t = time.perf_counter(); e.fit(); eng_t.append((time.perf_counter() - t) / a.steps)
        print(f"round {r}: bare {bare_t[-1] * 1e3:.1f} ms/step, engine {eng_t[-1] * 1e3:.1f} ms/step", flush=True)
    from disentangle.core import cpu_name; hw = cpu_name()
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, torch=torch.__version__, steps=a.steps, rounds=a.rounds,
                   load=os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'), bare_s=bare_t, engine_s=eng_t)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + '\n')
    print('\n' + markdown(results))

def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file."
    b, e = statistics.median(results['bare_s']), statistics.median(results['engine_s'])
    over = 100 * (e / b - 1)
    return '\n'.join([
        f"Measured {results['date']} on {results['hardware']} (`bench/engine.py --steps {results['steps']} --rounds {results['rounds']}`, 1 thread, "
        f"load average {results['load']:.1f}), torch {results['torch']}.", '',
        '| loop | time per step (median of rounds) | ratio |', '|---|---|---|',
        f'| bare PyTorch (forward, backward, Adam) | {b * 1e3:.1f} ms | 1.000 |',
        f'| Engine (plus NaN/Inf guard on loss and gradients, gradient norm, EMA copy, JSONL log every 10 steps, one atomic checkpoint per round) | {e * 1e3:.1f} ms | {e / b:.3f} |',
        '', f"Rounds (bare / engine, ms): {', '.join(f'{x * 1e3:.1f} / {y * 1e3:.1f}' for x, y in zip(results['bare_s'], results['engine_s']))}. "
        f"Target: at most 5% overhead ({'met' if over <= 5 else 'not met'}: {over:+.1f}%)."])

if __name__ == '__main__':
    main()
