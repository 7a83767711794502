"Long runs: an experiment killed with SIGKILL mid-training and resumed with `--resume` ends exactly as a run never killed."
from __future__ import annotations
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest

from disentangle.cli import run_experiment, run_status, UsageError

REPO = Path(__file__).resolve().parent.parent
EXPS = REPO / "nbs" / "experiments"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TIMING = ("seconds", "timing_s.", "train_seconds", "eval_seconds")   # wall times differ from run to run; nothing else may


def launch(name, params, out, resume=None):
    cmd = [sys.executable, "-m", "disentangle.cli", "--experiments", str(EXPS), "run", name, "--out", str(out)]
    for k, v in params.items(): cmd += ["-p", k, str(v)]
    if resume: cmd += ["--resume", str(resume)]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def alive(pid) -> bool:
    try: os.kill(pid, 0); return True
    except ProcessLookupError: return False


def steps_of(run: Path) -> dict:
    "Each training's step, by its folder."
    out = {}
    for p in run.rglob("progress.json"):
        try: out[p.parent] = json.loads(p.read_text())
        except ValueError: pass
    return out


def training_under_way(run: Path, before: dict) -> bool:
    "Some training of the run has taken a step since `before` (steps_of at the launch) and is not finished."
    return any(not t["finished"] and t["step"] > before.get(k, {}).get("step", 0) for k, t in steps_of(run).items())


def kill_mid_training(name, params, out, kills, seed):
    "Start the run, then SIGKILL it `kills` times at a random moment of a training, resuming after each; return its folder."
    rng, run, done = random.Random(seed), None, 0
    while done < kills:
        before = steps_of(run) if run else {}
        p = launch(name, params, out, resume=run)
        deadline = time.time() + 300
        while p.poll() is None and time.time() < deadline:
            if run is None and out.exists() and list(out.iterdir()): run = next(out.iterdir())
            if run is not None and training_under_way(run, before): break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if p.poll() is not None:
            raise AssertionError(f"{name} ended before kill {done + 1} of {kills}: make the run longer ({p.stderr.read()[-2000:]})")
        assert training_under_way(run, before), "the kill would not land mid-training"
        p.send_signal(signal.SIGKILL); p.wait(); done += 1
        assert run_status(run)["state"] == "killed"
        for t in steps_of(run).values():        # its kernel notices within about a second that its parent is gone
            while alive(t["pid"]): time.sleep(0.1)
    p = launch(name, params, out, resume=run); _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]
    return run


def same_metrics(a: Path, b: Path):
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    keep = lambda m: {k: v for k, v in m.items() if not any(t in k for t in TIMING)}
    assert keep(ma) == keep(mb), {k: (keep(ma).get(k), keep(mb).get(k)) for k in set(keep(ma)) | set(keep(mb)) if keep(ma).get(k) != keep(mb).get(k)}
    assert len(keep(ma)) > 10


BASELINES = dict(datasets="dsprites", models="beta_vae,beta_tcvae", steps=160, pool=256, metric_scale=0.002, metric_batch=8, ckpt_minutes=0.01)


def test_baselines_sigkill_resume_is_exact(tmp_path):
    ref = run_experiment("baselines", {k: str(v) for k, v in BASELINES.items()}, out=tmp_path / "ref", experiments=EXPS)
    run = kill_mid_training("baselines", BASELINES, tmp_path / "crashy", kills=3, seed=0)
    same_metrics(run, ref)
    s = run_status(run)
    assert s["state"] == "finished" and all(t["finished"] for t in s["trainings"]) and len(s["trainings"]) == 2
    assert json.loads((run / "run.json").read_text())["resumes"] == 3
    with pytest.raises(UsageError, match=r"parameter 'steps' is 160 in .*params.json but 200 on the command line"):
        run_experiment("baselines", {"steps": "200"}, experiments=EXPS, resume=run)


ZERODIM = dict(datasets="shapes3d", train_size=1024, n_labels=200, epochs=8, amortization_epochs=3, synthesis_epochs=3, batch_size=64,
               baseline_steps=40, n_eval=400, n_boot=5, ckpt_minutes=0.01)


def test_zerodim_sigkill_resume_is_exact(tmp_path):
    ref = run_experiment("zerodim", {k: str(v) for k, v in ZERODIM.items()}, out=tmp_path / "ref", experiments=EXPS)
    run = kill_mid_training("zerodim", ZERODIM, tmp_path / "crashy", kills=3, seed=1)
    same_metrics(run, ref)
    stages = {t["where"] for t in run_status(run)["trainings"]}
    assert {"train/shapes3d/latent", "train/shapes3d/amortization", "train/shapes3d/synthesis"} <= stages
