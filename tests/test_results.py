"Every results table of the checkout is generated from a kept run: regenerating them changes nothing."
from __future__ import annotations
import json

from disentangle import results


def test_every_results_table_is_generated_from_its_kept_run():
    stale = results.stale_tables()
    assert not stale, f"results tables differ from their kept runs in {[str(p) for p in stale]}: run disentangle.results.write_tables()"


def test_every_block_is_registered_and_every_table_is_shown():
    shown = {i for ids in results.block_ids().values() for i in ids}
    assert shown, "no results table in the checkout"
    assert shown <= set(results.TABLES), sorted(shown - set(results.TABLES))
    assert set(results.TABLES) <= shown, f"registered tables shown nowhere: {sorted(set(results.TABLES) - shown)}"


def test_every_kept_run_is_complete():
    runs = [d for d in results.RESULTS.glob("*/*") if d.is_dir()]
    assert runs
    for d in runs:
        r = results.saved_run(d.parent.name, d.name)
        assert r["run"]["state"] == "finished" and r["run"]["command"].startswith("disentangle run "), d
        assert r["metrics"] and r["params"], d
        assert all(p.stat().st_size <= 400_000 for p in d.iterdir()), d      # small files only (disentangle keep's limit)


def test_readme_methods_have_zoo_entries_and_experiments():
    "Every method the README's 'What you get' list offers names an experiment that exists and a zoo entry of that method."
    import re
    from disentangle import zoo
    readme = (results.RESULTS.parent / "README.md").read_text()
    block = readme.split("**What you get.**", 1)[1].split("\n\n", 1)[0]
    items = re.findall(r"^\d\. (.+?)(?=^\d\. |\Z)", block, re.S | re.M)
    assert len(items) == 4, block
    have = zoo.names()
    for item in items:
        m = re.search(r"experiment `(\w+)`, zoo `([\w-]+)`", " ".join(item.split()))
        assert m, f"the README's item {item[:60]!r} names no experiment and zoo entry"
        experiment, entry = m.groups()
        assert (results.RESULTS.parent / "nbs" / "experiments" / f"{experiment}.ipynb").exists(), experiment
        assert entry in have, f"the README offers zoo entry {entry!r}, which the zoo does not hold ({have})"
        assert zoo.card(entry)["method"] == experiment, (entry, zoo.card(entry)["method"])
