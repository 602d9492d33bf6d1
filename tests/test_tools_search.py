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


def _corpus(folder: Path, docs: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        (folder / name).write_text(text)
    return folder


DOCS = {
    "a.txt": "kebozi has 8687 towers and a long history of tower building in the north.",
    "b.txt": "the towers of kebozi are tall; kebozi keeps 12 bridges as well.",
    "c.txt": "fizono has 5650 keys.",
}


def test_cache_key_holds_every_setting_that_changes_the_result(tmp_path):
    """An ablation over top_k / max_chars must compare different outputs, not one cached text."""
    corpus = _corpus(tmp_path / "docs", DOCS)
    cache = tmp_path / "cache.json"
    outputs = {}
    for top_k, max_chars in ((1, 200), (2, 200), (2, 30), (1, 20)):
        tool = SearchTool(corpus, top_k=top_k, max_chars=max_chars, cache_path=cache)
        text, cached = tool.search("kebozi towers")
        assert not cached, f"top_k={top_k} max_chars={max_chars} was served another setting's result"
        assert text == SearchTool(corpus, top_k=top_k, max_chars=max_chars).search("kebozi towers")[0]
        assert tool.search("kebozi towers") == (text, True)  # its own entry is reused
        outputs[(top_k, max_chars)] = text
    assert len(set(outputs.values())) == 4
    assert outputs[(2, 200)].count("Page ") == 2 and len(outputs[(1, 20)]) == 20
    assert len(json.loads(cache.read_text())["entries"]) == 4


def test_cache_key_holds_the_corpus_identity(tmp_path):
    one = _corpus(tmp_path / "one", {"a.txt": "kebozi has 8687 towers."})
    two = _corpus(tmp_path / "two", {"a.txt": "kebozi has 1 tower."})
    cache = tmp_path / "shared.json"
    assert SearchTool(one, cache_path=cache).search("kebozi") == ("kebozi has 8687 towers.", False)
    assert SearchTool(two, cache_path=cache).search("kebozi") == ("kebozi has 1 tower.", False)
    (one / "a.txt").write_text("kebozi has 9 towers now.")  # an edited corpus never reads stale results
    assert SearchTool(one, cache_path=cache).search("kebozi") == ("kebozi has 9 towers now.", False)
    copy = _corpus(tmp_path / "copy", {"a.txt": "kebozi has 1 tower."})  # same documents elsewhere: shared
    assert SearchTool(copy, cache_path=cache).search("kebozi") == ("kebozi has 1 tower.", True)


@pytest.mark.parametrize(
    "content, phrase",
    [
        ('{"version": 1, "entries": {"q": "r"}}', "has version 1"),
        ('{"entries": {}}', "has version None"),
        ("[]", "holds a JSON list"),
        ('"text"', "holds a JSON str"),
        ('{"version": 2, "entries": []}', '"entries" of type list'),
        ('{"version": 2, "entries": {"q": 5}}', "malformed entry 'q': int"),
        ('{"version": 2, "entries": {"q": ', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_a_cache_of_another_version_or_shape_is_an_error_naming_the_file(tmp_path, content, phrase):
    path = tmp_path / "cache.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    tool = SearchTool(_corpus(tmp_path / "docs", DOCS), cache_path=path)
    for action in (lambda: tool.search("kebozi"), lambda: SearchCache(path).put("q", "r")):
        with pytest.raises(DataError) as e:
            action()
        assert str(path) in e.value.message and phrase in e.value.message, e.value.message
        assert "delete it" in e.value.hint
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())  # left as found


def test_default_cache_file_is_per_version_and_corpus(tmp_path):
    from archer.core.tools.search import CACHE_VERSION, default_cache_path

    corpus = _corpus(tmp_path / "docs", DOCS)
    p = default_cache_path(tmp_path / "cache", corpus)
    assert p.parent == tmp_path / "cache" / "search" and p.name.startswith(f"cache-v{CACHE_VERSION}-")
