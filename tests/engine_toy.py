"A toy method trained by the engine; run by tests/test_engine.py directly and under torchrun."
import argparse, sys, time
import torch, torch.nn as nn
from disentangle.engine import Engine, EngineConfig, Method, ShardedBatches


class Toy(Method):
    def __init__(self, dropout=0.0, sleep=0.0):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 1))
        self.modules = {'net': self.net}
        self.optimizers = {'net': torch.optim.Adam(self.net.parameters(), 1e-2)}
        self.schedulers = {'net': torch.optim.lr_scheduler.StepLR(self.optimizers['net'], 7, 0.9)}
        self.ema, self.sleep = ('net',), sleep

    def train_step(self, b, engine):
        if self.sleep: time.sleep(self.sleep)
        x, y = b
        return {'loss': (engine['net'](x) - y).pow(2).mean()}


def data(batch_size):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(512, 4, generator=g); Y = torch.sin(X @ torch.tensor([[1.], [-2.], [0.5], [3.]]))
    return ShardedBatches(torch.utils.data.TensorDataset(X, Y), batch_size, seed=0)


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--out'); ap.add_argument('--steps', type=int, default=20); ap.add_argument('--batch', type=int, default=32)
    ap.add_argument('--ckpt-every', type=int, default=10); ap.add_argument('--dropout', type=float, default=0.0)
    ap.add_argument('--sleep', type=float, default=0.0); ap.add_argument('--params')
    a = ap.parse_args()
    torch.set_num_threads(1)
    toy = Toy(a.dropout, a.sleep)
    e = Engine(toy, data(a.batch), EngineConfig(steps=a.steps, out_dir=a.out, ckpt_every=a.ckpt_every, keep=1000, log_every=5, progress=False)).fit()
    if a.params and e.rank == 0:
        torch.save({'params': [p.detach() for p in toy.net.parameters()], 'ema': e.ema['net']}, a.params)
