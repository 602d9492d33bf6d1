"""The search tool: BM25 (bm25s) over a local corpus, with a shared on-disk query cache.

No network search: the corpus is a folder of text files (one document per .txt/.md file, the
file name as its title) or a parquet/jsonl of documents (`text`, optional `title`/`id` columns).

The cache follows ARPO's design (a JSON object query -> formatted result, shared by every worker
and run) with its races closed: a writer takes an exclusive `flock` on `<file>.lock`, re-reads the
file, merges its own entries into what is on disk, writes a temporary file in the same folder and
renames it over the old one, so readers only ever see a complete JSON file and no writer loses
another's entries. Readers reload when the file's mtime (or size) changes.

An entry's key is the normalised query prefixed by its scope (`SearchTool.scope`): the corpus
identity, every setting that changes the text (top_k, max_chars) and the ranker, so one file can
serve several tools, an ablation over top_k compares different outputs, and a changed corpus
never reads stale results. The file carries `version`; another version, or a file that is not
`{"version": 2, "entries": {str: str}}`, is an error naming it (it is only a cache: delete it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.errors import DataError

CACHE_VERSION = 2  # 1: keys were the bare query (results of one top_k/max_chars served for another)
RANKER = "bm25s/en-stopwords"  # changes with the tokenizer or scoring below


@dataclass
class Document:
    id: str
    title: str
    text: str


def load_corpus(path: str | os.PathLike) -> list[Document]:
    """Documents of a folder of .txt/.md files, or of a parquet/jsonl file with a `text` column."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            f"search corpus {p} does not exist",
            hint="set agent.tools.search.corpus to a folder or a parquet file",
        )
    docs: list[Document] = []
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix.lower() in (".txt", ".md"):
                docs.append(Document(str(f.relative_to(p)), f.stem, f.read_text(errors="replace").strip()))
    elif p.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(p)
        if "text" not in table.column_names:
            raise DataError(f"{p} has no 'text' column", hint=f"its columns: {', '.join(table.column_names)}")
        rows = table.to_pylist()
        docs = [
            Document(str(r.get("id", i)), str(r.get("title") or ""), str(r["text"]))
            for i, r in enumerate(rows)
        ]
    elif p.suffix in (".jsonl", ".json"):
        for i, line in enumerate(p.read_text().splitlines()):
            if line.strip():
                r = json.loads(line)
                docs.append(Document(str(r.get("id", i)), str(r.get("title") or ""), str(r["text"])))
    else:
        raise DataError(
            f"cannot read a search corpus from {p}",
            hint="use a folder of .txt/.md files, a .parquet or a .jsonl",
        )
    docs = [d for d in docs if d.text]
    if not docs:
        raise DataError(f"search corpus {p} holds no documents")
    return docs


def corpus_fingerprint(path: str | os.PathLike) -> str:
    """Changes when the corpus changes (names, sizes, mtimes), so a cache never outlives it."""
    p = Path(path).expanduser()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def corpus_digest(docs: list[Document]) -> str:
    """The corpus's identity for cache keys: a hash of what was indexed (ids, titles, texts), so
    the same documents share results wherever they live and an edited one never does."""
    h = hashlib.sha256()
    for d in docs:
        for part in (d.id, d.title, d.text):
            b = part.encode()
            h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:32]


def normalise_query(query: str) -> str:
    """ARPO strips quotes; also fold case and whitespace so trivial variants share an entry."""
    return " ".join(query.replace('"', " ").replace("'", " ").lower().split())


class SearchCache:
    """A JSON query -> result cache file shared by threads and processes (see the module doc)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._entries: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._mutex = threading.Lock()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read_disk(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as e:  # never written by us: renames leave no partial file
            raise self._bad(f"is not valid JSON ({e})") from e
        except OSError as e:
            raise DataError(f"cannot read search cache {self.path}: {e}") from e
        if not isinstance(data, dict):
            raise self._bad(f'holds a JSON {type(data).__name__}, not {{"version", "entries"}}')
        version = data.get("version")
        if version != CACHE_VERSION:
            raise self._bad(f"has version {version!r}; this archer reads and writes version {CACHE_VERSION}")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise self._bad(f'has "entries" of type {type(entries).__name__}, not an object')
        for k, v in entries.items():
            if not isinstance(v, str):
                raise self._bad(f"has a malformed entry {k[:80]!r}: {type(v).__name__}, not text")
        return dict(entries)

    def _bad(self, what: str) -> DataError:
        return DataError(
            f"search cache {self.path} {what}",
            hint="it is only a cache: delete it, or set agent.tools.search.cache_path to another file",
        )

    def refresh(self) -> None:
        """Reload when another writer changed the file."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            entries = self._read_disk()
            with self._mutex:
                self._entries = entries
                self._stamp = stamp

    def get(self, query: str) -> str | None:
        self.refresh()
        with self._mutex:
            return self._entries.get(query)

    def __len__(self) -> int:
        self.refresh()
        return len(self._entries)

    def put_many(self, items: dict[str, str]) -> None:
        """Merge `items` into the file under the lock (read, merge, write temp, rename)."""
        if not items:
            return
        with self._mutex, open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                merged = self._read_disk()
                merged.update(items)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w") as f:
                        json.dump({"version": CACHE_VERSION, "entries": merged}, f, ensure_ascii=False)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                self._entries = merged
                self._stamp = self._file_stamp()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def put(self, query: str, result: str) -> None:
        self.put_many({query: result})


_TOKEN = re.compile(r"[a-z0-9]+")


class SearchTool:
    """`search(query)`: the top `top_k` documents as short text (cached on disk when `cache_path` is set)."""

    def __init__(
        self,
        corpus: str | os.PathLike,
        *,
        top_k: int = 1,
        max_chars: int = 200,
        cache_path: str | os.PathLike | None = None,
    ):
        self.corpus_path = Path(corpus).expanduser()
        self.docs = load_corpus(self.corpus_path)
        self.top_k = max(1, int(top_k))
        self.max_chars = int(max_chars)
        self.cache = SearchCache(cache_path) if cache_path else None
        #: every input of a result but the query: cache entries are keyed by it
        self.scope = json.dumps(
            {
                "corpus": corpus_digest(self.docs),
                "top_k": self.top_k,
                "max_chars": self.max_chars,
                "ranker": RANKER,
            },
            sort_keys=True,
        )
        self._index_lock = threading.Lock()
        self._retriever: Any = None

    def _index(self) -> Any:
        with self._index_lock:
            if self._retriever is None:
                import bm25s

                tokens = bm25s.tokenize(
                    [f"{d.title} {d.text}" for d in self.docs], stopwords="en", show_progress=False
                )
                retriever = bm25s.BM25()
                retriever.index(tokens, show_progress=False)
                self._retriever = retriever
            return self._retriever

    def search(self, query: str) -> tuple[str, bool]:
        """(formatted result, came from the cache)."""
        key = normalise_query(query)
        if not key:
            return "no results (empty query)", False
        entry = f"{self.scope}\n{key}"
        if self.cache is not None:
            hit = self.cache.get(entry)
            if hit is not None:
                return hit, True
        text = self._search(key)
        if self.cache is not None:
            self.cache.put(entry, text)
        return text, False

    def _search(self, key: str) -> str:
        import bm25s

        retriever = self._index()
        if not _TOKEN.findall(key):
            return "no results"
        q = bm25s.tokenize([key], stopwords="en", show_progress=False)
        k = min(self.top_k, len(self.docs))
        with self._index_lock:
            docs, scores = retriever.retrieve(q, k=k, show_progress=False, n_threads=1)
        hits = [(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if float(s) > 0]
        if not hits:
            return "no results"
        if self.top_k == 1:
            return self.docs[hits[0][0]].text[: self.max_chars]
        lines = [f"Page {i + 1}: {self.docs[d].text}"[: self.max_chars] for i, (d, _) in enumerate(hits)]
        return "\n".join(lines)


def default_cache_path(cache_dir: str | os.PathLike, corpus: str | os.PathLike) -> Path:
    """One file per corpus (and cache version, so an older archer's file is left alone)."""
    return Path(cache_dir) / "search" / f"cache-v{CACHE_VERSION}-{corpus_fingerprint(corpus)}.json"
