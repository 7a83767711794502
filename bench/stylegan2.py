"""StyleGAN2 training speed: images per second of full G+D training steps, converted to sec/kimg.

A step is what `StyleGAN2GAN.train_step` does through the engine: the discriminator phase (G forward without
gradients, D on fakes and reals), lazy R1 every 16 steps, the generator phase (G and D forward and backward, style
mixing) and lazy path-length regularisation every 4 steps on half the batch; the timed window covers a whole
number of 16-step cycles when `--steps` is a multiple of 16, so the lazy terms weigh what they weigh in training.

Configurations: at 256 px, NVIDIA stylegan2-ada-pytorch's `--cfg=auto` for one GPU (channel_base 16384, i.e.
channel multiplier 1, channel_max 512, 2 mapping layers, batch 16, minibatch-std group 4), whose README reports
21.6-24.2 sec/kimg on one V100; at 64 px the same rule (batch 32). Variants measured side by side in one run: the
layout (NHWC activations, ours, against NCHW), and on CUDA bf16 autocast and torch.compile.
Run: .venv/bin/python bench/stylegan2.py [--sizes 64,256] [--steps 16] [--device auto] [--compile]
"""
import argparse, tempfile, time
import torch
from disentangle.core import get_device
from disentangle.engine import Engine, EngineConfig
from disentangle.stylegan2 import GANConfig, StyleGAN2Config, StyleGAN2GAN
import disentangle.stylegan2 as sg

AUTO_BATCH = {64: 32, 128: 32, 256: 16, 512: 8, 1024: 4}


def nchw(on):
    "Switch the NHWC activation layout off (on=True) by making `contiguous(memory_format=...)` keep NCHW."
    orig = getattr(nchw, 'orig', None)
    if on and orig is None:
        nchw.orig = torch.Tensor.contiguous
        torch.Tensor.contiguous = lambda t, memory_format=torch.contiguous_format: nchw.orig(t)
    elif not on and orig is not None:
        torch.Tensor.contiguous = orig; nchw.orig = None


def run(size, steps, device, precision, compile_, batch, layout='nhwc'):
    cfg = StyleGAN2Config(size=size, style_dim=512, n_mlp=2, channel_multiplier=1, channel_max=512)
    torch.manual_seed(0)
    gan = StyleGAN2GAN(cfg, GANConfig(batch=batch))
    real = torch.randn(batch, 3, size, size)
    nchw(layout == 'nchw')
    try:
        with tempfile.TemporaryDirectory() as d:
            ec = EngineConfig(steps=2, out_dir=d, device=device, precision=precision, compile=compile_, channels_last=layout == 'nhwc',
                              log_every=10 ** 9, ckpt_every=10 ** 9, progress=False, resume=False)
            eng = Engine(gan, lambda s, r, w: {'image': real}, ec)
            eng.fit()                                              # warm-up (and compilation)
            sync = torch.cuda.synchronize if eng.device.type == 'cuda' else (lambda: None)
            eng.cfg.steps = 2 + steps
            sync(); t = time.perf_counter(); eng.fit(); sync()
            dt = (time.perf_counter() - t) / steps
    finally:
        nchw(False)
    return batch / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--sizes', default='64,256'); ap.add_argument('--steps', type=int, default=16)
    ap.add_argument('--device', default='auto'); ap.add_argument('--compile', action='store_true')
    ap.add_argument('--batch', type=int, default=0, help='override the auto batch (0: NVIDIA auto rule)')
    a = ap.parse_args()
    dev = get_device(a.device)
    variants = [('fp32', False, 'nhwc'), ('fp32', False, 'nchw')]
    if dev.type == 'cuda': variants = [('bf16', False, 'nhwc'), ('fp32', False, 'nhwc'), ('bf16', False, 'nchw')] + ([('bf16', True, 'nhwc')] if a.compile else [])
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f"\n### StyleGAN2 training step (`bench/stylegan2.py --sizes {a.sizes} --steps {a.steps}`, {name}, torch {torch.__version__})\n")
    print('| size | batch | precision | compile | layout | img/s | sec/kimg | ratio to first row of its size |\n|---|---|---|---|---|---|---|---|')
    for size in map(int, a.sizes.split(',')):
        batch = a.batch or AUTO_BATCH[size]; first = None
        for prec, comp, layout in variants:
            ips = run(size, a.steps, a.device, prec, comp, batch, layout)
            first = first or ips
            print(f'| {size} | {batch} | {prec} | {comp} | {layout} | {ips:.3g} | {1000 / ips:.4g} | {ips / first:.2f} |', flush=True)
    print('\nAnchor: NVIDIA stylegan2-ada-pytorch README, 256 px `--cfg=auto`, one V100: 21.6-24.2 sec/kimg. Target on one H100: at most 5 sec/kimg.')


if __name__ == '__main__':
    main()
