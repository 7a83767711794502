"The shipped model zoo: complete cards, the data card's table generated from them, entries that load and replay their recipe."
from __future__ import annotations
import os
from pathlib import Path

import pytest

from disentangle import zoo

REPO = Path(__file__).resolve().parent.parent
SLOW = os.environ.get("DISENTANGLE_SLOW") == "1"        # every entry's replay (minutes): `DISENTANGLE_SLOW=1 pytest tests/test_zoo.py`


def test_data_card_zoo_table_is_generated_from_the_cards():
    "data_card.md's zoo table is exactly `zoo.table()`: regenerate it with `zoo.write_table('data_card.md')`."
    text = (REPO / "data_card.md").read_text()
    block = text.split(zoo.TABLE_BEGIN, 1)[1].split(zoo.TABLE_END, 1)[0].strip("\n")
    assert block == zoo.table(), "data_card.md's zoo table differs from the cards: run zoo.write_table('data_card.md')"


def test_every_card_is_complete_and_every_entry_loads():
    for name in zoo.names():
        c = zoo.card(name)
        assert not [k for k in zoo.CARD_KEYS if k not in c], name
        assert c["command"].startswith("disentangle") and " run " in c["command"], (name, c["command"])
        assert len(c["first_losses"]) == min(20, c["steps"]) and c["scores"], name
        assert zoo._path(name).stat().st_size <= zoo.MAX_BYTES, name
        model = zoo.load(name)
        assert not model.training and sum(p.numel() for p in model.parameters()) > 0, name
    assert sum(p.stat().st_size for p in zoo.ZOO.glob("*.safetensors")) <= 60_000_000     # the zoo at most 60 MB


@pytest.mark.skipif(not zoo.names(), reason="the zoo has no entries")
def test_verify_one_entry():
    "The first 20 steps of the cheapest entry's recipe, replayed from scratch, give its card's losses (1e-3 relative)."
    cost = {"ae": 0, "beta_vae": 0, "beta_tcvae": 0, "subspaces": 1}     # the others draw their whole training set again (minutes)
    name = min(zoo.names(), key=lambda n: (cost.get(zoo.card(n)["method"], 2), zoo._path(n).stat().st_size))
    assert zoo.verify(name)


@pytest.mark.skipif(not SLOW, reason="slow: DISENTANGLE_SLOW=1 replays every entry")
@pytest.mark.parametrize("name", zoo.names())
def test_verify_every_entry(name):
    assert zoo.verify(name)


def test_idmap_faces_through_a_file_are_the_runs_faces(tmp_path):
    """A run that found its training faces in its cache file is replayed on faces generated in another process and
    loaded from a file, as that run loaded them: the same faces to the bit as generating them here."""
    import json, torch
    r = zoo.card("idmap-synthfaces-64")["recipe"]
    assert r["faces_cached"] is True                                  # its run loaded them (no 'generating' bar in its log)
    here, via_file = zoo._idmap_faces(r, 6, 3)[0], zoo._idmap_faces(r, 6, 3, cached=True)[0]
    for k in ("image", "w", "z_id", "landmarks"):
        assert torch.equal(getattr(here, k), getattr(via_file, k)), k
    (tmp_path / "params.json").write_text(json.dumps({"generator": "bundled"}))
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="run_info.json: no 'faces_cached'"):
        zoo.add_idmap_entries(tmp_path)
