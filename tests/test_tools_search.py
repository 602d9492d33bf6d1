"""The search tool: BM25 over a local corpus, and its on-disk cache under concurrent writers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archer.core.tools.search import SearchCache, SearchTool, load_corpus, normalise_query
from archer.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def test_bm25_finds_the_document_from_a_folder_and_a_parquet(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("fizono has 5650 keys.")
    (folder / "b.md").write_text("kebozi has 8687 towers.")
    (folder / "skip.bin").write_bytes(b"\x00")
    tool = SearchTool(folder, cache_path=tmp_path / "cache.json")
    assert tool.search("kebozi towers") == ("kebozi has 8687 towers.", False)
    assert tool.search("Kebozi  'towers'") == ("kebozi has 8687 towers.", True)  # normalised: a cache hit
    assert tool.search("zzz qqq")[0] == "no results"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"text": "alpha beta"}, {"text": "gamma delta"}]), tmp_path / "c.parquet"
    )
    assert SearchTool(tmp_path / "c.parquet").search("delta")[0] == "gamma delta"
    with pytest.raises(DataError):
        load_corpus(tmp_path / "missing")


WRITER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from archer.core.tools.search import SearchCache
cache = SearchCache(sys.argv[2])
who = sys.argv[3]
for i in range(int(sys.argv[4])):
    cache.put(f"{who}-q{i}", f"result {who} {i}")
"""

READER = r"""
import json, sys, time
path, end = sys.argv[1], time.time() + float(sys.argv[2])
reads = 0
while time.time() < end:
    try:
        text = open(path).read()
    except FileNotFoundError:
        continue
    json.loads(text)  # raises on a torn or partial file
    reads += 1
print(reads)
"""


def test_cache_under_concurrent_writers_stays_valid_and_keeps_every_entry(tmp_path):
    path = tmp_path / "search" / "cache.json"
    SearchCache(path).put("seed", "seed result")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), str(path), f"w{k}", "25"])
        for k in range(4)
    ]
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), "3"], stdout=subprocess.PIPE, text=True
    )
    for w in writers:
        assert w.wait(timeout=120) == 0
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and int(out) > 0  # every read of the file parsed as JSON
    entries = json.loads(path.read_text())["entries"]
    assert len(entries) == 1 + 4 * 25
    assert all(entries[f"w{k}-q{i}"] == f"result w{k} {i}" for k in range(4) for i in range(25))
    assert not list(path.parent.glob("*.tmp"))  # no temp file left behind


def test_a_reader_picks_up_entries_written_by_another_process(tmp_path):
    path = tmp_path / "cache.json"
    reader = SearchCache(path)
    assert reader.get("q") is None
    subprocess.run([sys.executable, "-c", WRITER, str(ROOT), str(path), "other", "3"], check=True, timeout=60)
    assert reader.get("other-q2") == "result other 2" and len(reader) == 3


def test_normalise_query_strips_quotes_case_and_spaces():
    assert normalise_query(' "Fizono"   KEYS ') == "fizono keys"
