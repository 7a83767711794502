"The training engine across processes and crashes: torchrun DDP equivalence and exact resume after SIGKILL."
from __future__ import annotations
import os, random, signal, subprocess, sys, time
from pathlib import Path

import torch

from disentangle.engine import load_checkpoint

HERE = Path(__file__).resolve().parent
TOY = HERE / "engine_toy.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


def run(args, **kw):
    return subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600, **kw)


def test_torchrun_two_processes_match_one(tmp_path):
    one = run([sys.executable, str(TOY), "--out", str(tmp_path / "one"), "--steps", "20", "--params", str(tmp_path / "one.pt")])
    assert one.returncode == 0, one.stderr
    torchrun = Path(sys.executable).parent / "torchrun"
    two = run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(29500 + random.randrange(1000)), str(TOY),
               "--out", str(tmp_path / "two"), "--steps", "20", "--params", str(tmp_path / "two.pt")])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    for p, q in zip(a["params"], b["params"]):
        assert (p - q).abs().max() < 1e-5
    assert len(list((tmp_path / "two").glob("ckpt-*.pt"))) == 2   # rank 0 alone writes


def test_sigkill_resume_is_exact(tmp_path):
    "Ten kills, each landing mid-training: a kill comes within 0.3 s of the first step logged after a (re)start, so ten of them use up at most about 3 of the run's 6 s of steps."
    args = ["--steps", "600", "--ckpt-every", "7", "--dropout", "0.2", "--sleep", "0.01"]
    ref = run([sys.executable, str(TOY), "--out", str(tmp_path / "ref"), *args, "--params", str(tmp_path / "ref.pt")])
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "crashy"; rng = random.Random(0); kills = 0
    while kills < 10:
        before = (out / "log.jsonl").stat().st_size if (out / "log.jsonl").exists() else 0
        p = subprocess.Popen([sys.executable, str(TOY), "--out", str(out), *args, "--params", str(tmp_path / "crashy.pt")],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while p.poll() is None and not ((out / "log.jsonl").exists() and (out / "log.jsonl").stat().st_size != before): time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        assert p.poll() is None, f"the run ended before kill {kills + 1}: {p.stderr.read().decode()[-2000:]}"
        p.send_signal(signal.SIGKILL); p.wait(); kills += 1
    fin = run([sys.executable, str(TOY), "--out", str(out), *args, "--params", str(tmp_path / "crashy.pt")])
    assert fin.returncode == 0, fin.stderr
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "crashy.pt")
    for p, q in zip(a["params"] + a["ema"], b["params"] + b["ema"]):
        assert torch.equal(p, q)
    for ck in out.glob("ckpt-*.pt"):   # every checkpoint on disk loads
        assert load_checkpoint(ck)["step"] == int(ck.stem.split("-")[1])
    assert not list(out.glob(".*.tmp"))   # a temporary file left by a kill is removed on the next start
