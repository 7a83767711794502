"""StyleGAN2 training speed: images per second of full G+D training steps, converted to sec/kimg.

A step is what `StyleGAN2GAN.train_step` does through the engine: the discriminator phase (G forward without
gradients, D on fakes and reals), lazy R1 every 16 steps, the generator phase (G and D forward and backward, style
mixing) and lazy path-length regularisation every 4 steps on half the batch; the timed window covers a whole
number of 16-step cycles when `--steps` is a multiple of 16, so the lazy terms weigh what they weigh in training.

Configurations: at 256 px, NVIDIA stylegan2-ada-pytorch's `--cfg=auto` for one GPU (channel_base 16384, i.e.
channel multiplier 1, channel_max 512, 2 mapping layers, batch 16, minibatch-std group 4), whose README reports
21.6-24.2 sec/kimg on one V100; at 64 px the same rule (batch 32). Variants measured side by side in one run: the
layout (NHWC activations, ours, against NCHW), and on CUDA bf16 autocast and torch.compile.
Run: .venv/bin/python bench/stylegan2.py [--sizes 64,256] [--steps 16] [--device auto] [--compile]; saves
bench/results/stylegan2.json (or --out), whose table BENCHMARKS.md shows through `markdown(results)` (`--markdown FILE`).
"""
import argparse, json, os, tempfile, time
from pathlib import Path
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
    ap.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'stylegan2.json'))
    ap.add_argument('--markdown', help='print the table of this saved results file and stop')
    a = ap.parse_args()
    if a.markdown: print(markdown(json.loads(Path(a.markdown).read_text()))); return
    dev = get_device(a.device)
    variants = [('fp32', False, 'nhwc'), ('fp32', False, 'nchw')]
    if dev.type == 'cuda': variants = [('bf16', False, 'nhwc'), ('fp32', False, 'nhwc'), ('bf16', False, 'nchw')] + ([('bf16', True, 'nhwc')] if a.compile else [])
    from disentangle.core import cpu_name
    hw = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else cpu_name()
    rows = []
    for size in map(int, a.sizes.split(',')):
        batch = a.batch or AUTO_BATCH[size]
        for prec, comp, layout in variants:
            rows.append(dict(size=size, batch=batch, precision=prec, compile=comp, layout=layout, images_per_s=run(size, a.steps, a.device, prec, comp, batch, layout)))
            print(rows[-1], flush=True)
    results = dict(date=time.strftime('%Y-%m-%d'), hardware=hw, device=dev.type, threads=torch.get_num_threads(), torch=torch.__version__,
                   sizes=a.sizes, steps=a.steps, load=os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'), rows=rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(json.dumps(results, indent=1) + '\n')
    print('\n' + markdown(results))


NVIDIA_V100_SEC_PER_KIMG = (21.6, 24.2)        # stylegan2-ada-pytorch README, 256 px --cfg=auto, one V100
H100_TARGET_SEC_PER_KIMG = 5.

def markdown(results: dict) -> str:
    "BENCHMARKS.md's table of one saved results file."
    out = [f"Measured {results['date']} on {results['hardware']} ({results['device']}, {results['threads']} threads, load average {results['load']:.1f}; "
           f"`bench/stylegan2.py --sizes {results['sizes']} --steps {results['steps']}`), torch {results['torch']}.", '',
           '| size | batch | precision | compile | layout | img/s | sec/kimg | ratio to the first row of its size |', '|---|---|---|---|---|---|---|---|']
    first = {}
    for r in results['rows']:
        f = first.setdefault(r['size'], r['images_per_s'])
        out.append(f"| {r['size']} | {r['batch']} | {r['precision']} | {r['compile']} | {'NHWC (ours)' if r['layout'] == 'nhwc' else 'NCHW'} | "
                   f"{r['images_per_s']:.3g} | {1000 / r['images_per_s']:,.0f} | {r['images_per_s'] / f:.2f} |")
    at256 = [1000 / r['images_per_s'] for r in results['rows'] if r['size'] == 256 and r['layout'] == 'nhwc' and not r['compile']]
    lo, hi = NVIDIA_V100_SEC_PER_KIMG
    if at256: out += ['', f"At 256 px: {min(at256):,.0f} sec/kimg, {min(at256) / hi:,.0f} to {min(at256) / lo:,.0f} times NVIDIA's {lo}-{hi} sec/kimg on one V100. "
                      f"Target on one H100: at most {H100_TARGET_SEC_PER_KIMG:g} sec/kimg "
                      f"({'met' if results['device'] == 'cuda' and min(at256) <= H100_TARGET_SEC_PER_KIMG else 'not measured here' if results['device'] != 'cuda' else 'not met'})."]
    return '\n'.join(out)


if __name__ == '__main__':
    main()
