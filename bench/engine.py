"""Engine overhead: the same model and batches trained by a bare PyTorch loop and by `disentangle.engine.Engine`.

The model is the beta-VAE baseline (disentanglement_lib's conv encoder/decoder, 64x64, batch 64); the engine
logs every 10 steps, keeps an EMA copy and checkpoints once at the end of each round, as in a real run. Rounds of
bare and engine steps alternate so that drifts in machine load hit both; prints the per-step times and the
overhead (target: at most 5%).
Run: .venv/bin/python bench/engine.py [--steps 20] [--rounds 3]
"""
import argparse, statistics, tempfile, time
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
    a = ap.parse_args(); torch.set_num_threads(1)
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
    b, e = statistics.median(bare_t), statistics.median(eng_t)
    print(f"\n### Engine overhead (bench/engine.py --steps {a.steps} --rounds {a.rounds}, beta-VAE 64x64 batch 64, 1 thread, torch {torch.__version__})\n")
    print('| loop | time per step (median of rounds) | ratio |\n|---|---|---|')
    print(f'| bare PyTorch (forward, backward, Adam) | {b * 1e3:.1f} ms | 1.000 |')
    print(f'| Engine (same, plus NaN guard, gradient norm, EMA, JSONL log every 10, one checkpoint) | {e * 1e3:.1f} ms | {e / b:.3f} |')
    print(f'\noverhead {100 * (e / b - 1):+.1f}% of step time (target at most +5%)')

if __name__ == '__main__':
    main()
