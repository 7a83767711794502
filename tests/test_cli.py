"End-to-end tests of `disentangle run` / `disentangle list` on tiny experiment notebooks built here."
from __future__ import annotations
import datetime, json, os, shutil, subprocess, sys, zipfile
from pathlib import Path

import nbformat
import pytest

from disentangle import cli
from disentangle.cli import RunFailed, UsageError, check_metrics, list_experiments, main, run_experiment

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "disentangle"
SOURCE_MARKER = "SECRET_SOURCE_MARKER"  # appears only in an input cell, never in an output


def write_nb(path: Path, cells: list[tuple[str, str]]) -> Path:
    "A notebook from (kind, source) pairs; kind 'parameters' is a code cell tagged `parameters`."
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, src in cells:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        else:
            c = nbformat.v4.new_code_cell(src)
            if kind == "parameters":
                c.metadata["tags"] = ["parameters"]
            nb.cells.append(c)
    nbformat.write(nb, path)
    return path


PROBE = [
    ("markdown", "# Probe: echoes its parameters into metrics\n\nMore text."),
    ("parameters", 'n = 3  # an int\nscale = 0.5  # a float\nflag = False\nword = "abc"\nitems = [1, 2]\nckpt = None'),
    ("code", "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
             "from disentangle.core import save_metrics\n"
             f"{SOURCE_MARKER} = 41\n"
             "print('visible output', n * scale)\n"
             "plt.plot(range(n)); plt.savefig('fig.png')\n"
             "save_metrics({'n': n, 'scaled': n * scale, 'flag': int(flag), 'wordlen': len(word),\n"
             "              'items': sum(items), 'ckpt_set': int(ckpt is not None), 'nothing': float('nan')}, 'metrics.json')"),
]
# The other experiments avoid importing torch so that their kernels start quickly.
QUICK = [("parameters", "x = 1"), ("code", "import json\njson.dump({'x': x}, open('metrics.json', 'w'))")]
BOOM = [("markdown", "# Boom"), ("parameters", "x = 1"), ("code", "y = x + 1\nprint('before the failure')"),
        ("code", "raise RuntimeError(f'boom-marker x={x}')"), ("code", "print('never printed')")]
NOMETRICS = [("parameters", "x = 1"), ("code", "print('forgot the metrics')")]


@pytest.fixture(scope="module")
def exps(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("experiments")
    for name, cells in dict(probe=PROBE, quick=QUICK, boom=BOOM, nometrics=NOMETRICS).items():
        write_nb(d / f"{name}.ipynb", cells)
    return d


def script(*args: str, exps: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISENTANGLE_EXPERIMENTS": str(exps)}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def run_dirs(out: Path) -> list[Path]:
    return sorted(out.iterdir()) if out.exists() else []


@pytest.fixture(scope="module")
def default_run(exps, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    "`disentangle run probe` through the console script, with no --out (so ./runs in its working directory)."
    cwd = tmp_path_factory.mktemp("cwd")
    return script("run", "probe", exps=exps, cwd=cwd), cwd


def test_console_script_exists():
    assert SCRIPT.exists(), f"expected the console script next to {sys.executable}"


def test_list(exps, tmp_path):
    r = script("list", exps=exps, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for line in ["probe: Probe: echoes its parameters into metrics", "n: int = 3", "# an int", "scale: float = 0.5",
                 "flag: bool = False", 'word: str = "abc"', "items: list = [1, 2]", "ckpt: None = None",
                 "quick", "boom: Boom", "nometrics"]:
        assert line in out, f"{line!r} not in:\n{out}"
    assert not (tmp_path / "runs").exists()


def test_list_api_and_option(exps, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISENTANGLE_EXPERIMENTS", raising=False)
    e = list_experiments(exps)
    assert sorted(e) == ["boom", "nometrics", "probe", "quick"]
    ps = e["probe"]["parameters"]
    assert {k: p["type"] for k, p in ps.items()} == dict(n="int", scale="float", flag="bool", word="str", items="list", ckpt="None")
    assert {k: p["default"] for k, p in ps.items()} == dict(n=3, scale=0.5, flag=False, word="abc", items=[1, 2], ckpt=None)
    assert ps["scale"]["help"] == "a float"
    # --experiments beats the environment variable
    monkeypatch.setenv("DISENTANGLE_EXPERIMENTS", str(tmp_path / "does-not-exist"))
    assert main(["--experiments", str(exps), "list"]) == 0
    assert "probe" in capsys.readouterr().out
    assert main(["list"]) == 2
    assert "does-not-exist" in capsys.readouterr().err


def test_python_m(exps, tmp_path):
    env = {**os.environ, "DISENTANGLE_EXPERIMENTS": str(exps)}
    r = subprocess.run([sys.executable, "-m", "disentangle.cli", "list"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "n: int = 3" in r.stdout


def test_run_defaults(default_run):
    r, cwd = default_run
    assert r.returncode == 0, r.stderr
    run = Path(r.stdout.strip().splitlines()[-1])
    assert run.is_dir() and run.parent == cwd / "runs"
    assert run.name.endswith("-probe") and datetime.datetime.strptime(run.name[:15], "%Y%m%d-%H%M%S")
    assert {p.name for p in run.iterdir()} >= {"probe.ipynb", "params.json", "metrics.json", "fig.png", "report.html"}
    assert json.loads((run / "params.json").read_text()) == dict(n=3, scale=0.5, flag=False, word="abc", items=[1, 2], ckpt=None)
    m = json.loads((run / "metrics.json").read_text())
    assert m == dict(n=3, scaled=1.5, flag=0, wordlen=3, items=3, ckpt_set=0, nothing=None)
    assert (run / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nb = nbformat.read(run / "probe.ipynb", as_version=4)
    assert any("visible output 1.5" in "".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_report_hides_inputs(default_run):
    r, _ = default_run
    html = (Path(r.stdout.strip().splitlines()[-1]) / "report.html").read_text()
    assert "visible output 1.5" in html                       # outputs are there
    assert "Probe: echoes its parameters" in html             # markdown too
    for src in [SOURCE_MARKER, "save_metrics(", "plt.savefig", "scale = 0.5"]:
        assert src not in html, f"input source {src!r} leaked into report.html"


def test_run_overrides(exps, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--experiments", str(exps), "run", "probe", "-p", "n", "5", "-p", "scale", "2", "-p", "flag", "yes",
               "-p", "word", "hello", "-p", "items", "[3, 4, 5]", "-p", "ckpt", "some/file.pt", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    run = Path(cap.out.strip().splitlines()[-1])
    assert run.parent == out
    m = json.loads((run / "metrics.json").read_text())
    assert m == dict(n=5, scaled=10.0, flag=1, wordlen=5, items=12, ckpt_set=1, nothing=None)
    p = json.loads((run / "params.json").read_text())
    assert p == dict(n=5, scale=2.0, flag=True, word="hello", items=[3, 4, 5], ckpt="some/file.pt")


@pytest.mark.parametrize("args,needles", [
    (["-p", "nn", "5"], ["'nn'", "valid parameters", "n (int = 3)", "scale (float = 0.5)", "flag (bool = False)"]),
    (["-p", "n", "3.5"], ["'n'", "expected int", "'3.5'", "valid parameters"]),
    (["-p", "scale", "big"], ["'scale'", "expected float", "'big'"]),
    (["-p", "flag", "maybe"], ["'flag'", "expected bool", "'maybe'"]),
    (["-p", "items", "[1, 2"], ["'items'", "expected list", "'[1, 2'"]),
    (["-p", "n", "4", "-p", "word", "x", "-p", "bogus", "1"], ["'bogus'", "valid parameters"]),
])
def test_usage_errors_main(exps, tmp_path, capsys, args, needles):
    out = tmp_path / "out"
    assert main(["--experiments", str(exps), "run", "probe", *args, "--out", str(out)]) == 2
    cap = capsys.readouterr()
    for s in needles:
        assert s in cap.err, f"{s!r} not in {cap.err!r}"
    assert cap.out == ""
    assert not out.exists(), "a usage error must create nothing"


def test_usage_errors_script(exps, tmp_path):
    r = script("run", "probe", "-p", "stepz", "3", exps=exps, cwd=tmp_path)
    assert r.returncode == 2 and "'stepz'" in r.stderr and "n (int = 3)" in r.stderr
    r = script("run", "probe", "-p", "n", "three", exps=exps, cwd=tmp_path)
    assert r.returncode == 2 and "'n' expected int, got 'three'" in r.stderr
    r = script("run", "nope", exps=exps, cwd=tmp_path)
    assert r.returncode == 2 and "unknown experiment 'nope'" in r.stderr and "probe" in r.stderr
    r = script("run", exps=exps, cwd=tmp_path)  # argparse: NAME missing
    assert r.returncode == 2
    assert not (tmp_path / "runs").exists()


def test_api_errors(exps, tmp_path):
    with pytest.raises(ValueError, match="valid parameters"):
        run_experiment("probe", {"nn": 1}, out=tmp_path / "o", experiments=exps)
    with pytest.raises(UsageError, match="expected int, got True"):
        run_experiment("probe", {"n": True}, out=tmp_path / "o", experiments=exps)
    assert not (tmp_path / "o").exists()


def test_failing_notebook_script(exps, tmp_path):
    r = script("run", "boom", "-p", "x", "7", exps=exps, cwd=tmp_path)
    assert r.returncode == 1
    run = next((tmp_path / "runs").iterdir())
    assert "RuntimeError" in r.stderr and "boom-marker x=7" in r.stderr and str(run) in r.stderr
    assert "In [" in r.stderr  # names the failing cell
    nb = nbformat.read(run / "boom.ipynb", as_version=4)
    texts = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("before the failure" in t for t in texts)
    assert not any("never printed" in t for t in texts)
    assert any(o.get("ename") == "RuntimeError" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert (run / "report.html").exists() and (run / "params.json").exists()


def test_failing_notebook_api(exps, tmp_path):
    with pytest.raises(RunFailed, match="boom-marker x=1") as e:
        run_experiment("boom", out=tmp_path, experiments=exps)
    assert (e.value.run_dir / "boom.ipynb").exists()


def test_missing_metrics(exps, tmp_path):
    r = script("run", "nometrics", exps=exps, cwd=tmp_path)
    assert r.returncode == 1
    assert "metrics.json" in r.stderr and "missing" in r.stderr
    run = next((tmp_path / "runs").iterdir())
    assert (run / "nometrics.ipynb").exists() and not (run / "metrics.json").exists()


def test_check_metrics(tmp_path):
    p = tmp_path / "metrics.json"
    p.write_text('{"a": 1, "b": 2.5, "c": null}')
    assert check_metrics(p) == {"a": 1, "b": 2.5, "c": None}
    for bad, msg in [('{"a": {"b": 1}}', "metrics['a']"), ('{"a": "x"}', "metrics['a']"), ('{"a": true}', "metrics['a']"),
                     ("[1, 2]", "JSON object"), ("{", "not valid JSON")]:
        p.write_text(bad)
        with pytest.raises(ValueError, match=msg.replace("[", r"\[")):
            check_metrics(p)


def test_same_second(exps, tmp_path, monkeypatch, capsys):
    t = datetime.datetime(2030, 1, 2, 3, 4, 5)
    monkeypatch.setattr(cli, "_now", lambda: t)
    runs = []
    for x in ["1", "2"]:
        assert main(["--experiments", str(exps), "run", "quick", "-p", "x", x, "--out", str(tmp_path)]) == 0
        runs.append(Path(capsys.readouterr().out.strip().splitlines()[-1]))
    assert [r.name for r in runs] == ["20300102-030405-quick", "20300102-030405-quick-1"]
    assert [json.loads((r / "metrics.json").read_text())["x"] for r in runs] == [1, 2]


def test_wheel_ships_experiments(tmp_path):
    "Build a wheel from a copy of the repo tree (plus one experiment) and check the notebooks are package data."
    src = tmp_path / "src"
    src.mkdir()
    for f in ["setup.py", "settings.ini", "pyproject.toml", "README.md", "MANIFEST.in"]:
        if (REPO / f).exists():
            shutil.copy(REPO / f, src / f)
    shutil.copytree(REPO / "disentangle", src / "disentangle", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    exp_src = REPO / "nbs" / "experiments"
    (src / "nbs" / "experiments").mkdir(parents=True)
    shipped = sorted(p.name for p in exp_src.glob("*.ipynb")) if exp_src.is_dir() else []
    for name in shipped:
        shutil.copy(exp_src / name, src / "nbs" / "experiments" / name)
    write_nb(src / "nbs" / "experiments" / "zz_wheel_probe.ipynb", QUICK)
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                        "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    whl = next(dist.glob("disentangle-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for name in [*shipped, "zz_wheel_probe.ipynb"]:
        assert f"disentangle/experiments/{name}" in names, f"{name} not in {sorted(names)}"
    assert "disentangle/cli.py" in names
    # Installed (not editable), the package finds its experiments through importlib.resources.
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(whl)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k != "DISENTANGLE_EXPERIMENTS"}
    env["PYTHONPATH"] = str(target)
    code = "import disentangle.cli as c; print(c.__file__); print(c.experiments_dir()); print(sorted(c.list_experiments()))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    mod, d, names = r.stdout.strip().splitlines()
    assert mod.startswith(str(target)) and d == str(target / "disentangle" / "experiments"), r.stdout
    assert "zz_wheel_probe" in names


def test_every_notebook_names_its_kernel():
    "JupyterLab opens every notebook in nbs/ without asking for a kernel: each names python3 (nbdev_clean keeps it)."
    import json
    root = Path(__file__).resolve().parent.parent / "nbs"
    missing = [str(p.relative_to(root)) for p in sorted(root.rglob("*.ipynb"))
               if json.loads(p.read_text()).get("metadata", {}).get("kernelspec", {}).get("name") != "python3"]
    assert not missing, f"notebooks without a python3 kernelspec: {missing}"


def test_reader_that_leaves_early(exps):
    "`disentangle list | head -1`: when the reader closes the pipe, the command ends quietly with 0 (no BrokenPipeError traceback)."
    code = ("import os, sys; from disentangle.cli import main\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, sys.stdout.fileno())\n"
            f"rc = main(['--experiments', {str(exps)!r}, 'list']); sys.stdout.flush(); print('rc', rc, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "rc 0" in out.stderr and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_threads_param_starts_the_kernel_at_that_count(tmp_path, monkeypatch):
    "An experiment's `threads` > 0 starts its kernel at that many threads (OMP_NUM_THREADS), as the card records and zoo.verify replays; 0 leaves the environment."
    d = tmp_path / "exps"; d.mkdir()
    write_nb(d / "threaded.ipynb", [("parameters", "threads = 0  # CPU threads (0: the default) [0..]"),
                                    ("code", "import json, os\njson.dump({'omp': int(os.environ.get('OMP_NUM_THREADS') or -1)}, open('metrics.json', 'w'))")])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run = run_experiment("threaded", {"threads": 1}, out=tmp_path / "runs", experiments=d)
    assert json.loads((run / "metrics.json").read_text())["omp"] == 1 and json.loads((run / "run.json").read_text())["threads"] == 1
    assert "OMP_NUM_THREADS" not in os.environ                       # this process is left as it was
    run0 = run_experiment("threaded", {}, out=tmp_path / "runs0", experiments=d)
    assert json.loads((run0 / "metrics.json").read_text())["omp"] == -1
