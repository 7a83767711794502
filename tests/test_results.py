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
