"""The sample store of one evaluation: `eval.json` (what was sampled, how) and parquet shards.

Layout of an evaluation folder:

    eval.json                 settings: model, data, engine, n, temperature, top_p, max_new_tokens,
                              seed, reward function, k values
    samples/shard-0000000.parquet   one shard per batch of problems, all K samples of each
    samples/shard-0000016.parquet   (named by the batch's first problem)
    results.json              the metrics, recomputed from the shards after every run

One row per sample: problem (position in the evaluated data), index (the dataset's own index),
data_source, prompt (the text the model saw), answer, sample, response, response_ids,
response_length, truncated, reward, correct, extracted, grade_error, reward_fn.

A shard appears under its final name only once complete (temp file + rename), so a killed run
leaves whole shards, and a restart samples only the problems no shard holds.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.core.run import atomic_write_text
from archer.errors import DataError, UsageError

SPEC_FILE = "eval.json"
RESULTS_FILE = "results.json"
SAMPLES_DIR = "samples"
FORMAT = "archer-eval"
VERSION = 1
#: settings that decide what the samples are: resuming with any of them changed would mix two evaluations
SAMPLING_KEYS = (
    "model",
    "engine",
    "dtype",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "apply_chat_template",
)


def schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("problem", pa.int64()),
            ("index", pa.int64()),
            ("data_source", pa.string()),
            ("prompt", pa.string()),
            ("answer", pa.string()),
            ("sample", pa.int32()),
            ("response", pa.string()),
            ("response_ids", pa.list_(pa.int32())),
            ("response_length", pa.int32()),
            ("truncated", pa.bool_()),
            ("reward", pa.float64()),
            ("correct", pa.bool_()),
            ("extracted", pa.string()),
            ("grade_error", pa.string()),
            ("reward_fn", pa.string()),
        ]
    )


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def shard_name(first_problem: int) -> str:
    return f"shard-{first_problem:07d}.parquet"


@dataclass
class Store:
    """An evaluation folder on disk."""

    root: Path
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_dir(self) -> Path:
        return self.root / SAMPLES_DIR

    def shards(self) -> list[Path]:
        if not self.samples_dir.is_dir():
            return []
        return sorted(p for p in self.samples_dir.glob("shard-*.parquet") if not p.name.startswith("."))

    def clean_temps(self) -> None:
        """Remove the temp files a killed run left (never a finished shard)."""
        if self.samples_dir.is_dir():
            for p in self.samples_dir.iterdir():
                if p.name.startswith(".") and ".tmp" in p.name:
                    p.unlink(missing_ok=True)

    def write_spec(self) -> None:
        atomic_write_text(self.root / SPEC_FILE, json.dumps(self.spec, indent=2) + "\n")

    def write_shard(self, first_problem: int, rows: list[dict[str, Any]]) -> Path:
        import pyarrow as pa

        from archer.core.data import write_tables_atomic

        self.samples_dir.mkdir(parents=True, exist_ok=True)
        path = self.samples_dir / shard_name(first_problem)
        if path.exists():
            raise DataError(
                f"{path} already exists", hint="the sample store is inconsistent; use a new --out"
            )
        write_tables_atomic({path: pa.Table.from_pylist(rows, schema=schema())})
        return path

    def read(self) -> Any:
        """All samples as one pyarrow table (empty table with the schema when there are none)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for p in self.shards():
            try:
                tables.append(pq.read_table(p).select(schema().names).cast(schema()))
            except (pa.ArrowException, OSError, KeyError) as e:
                raise DataError(
                    f"cannot read sample shard {p}: {e}",
                    hint="delete that shard; the next run samples its problems again",
                ) from e
        if not tables:
            return schema().empty_table()
        return pa.concat_tables(tables)

    def rewrite(self, tables: dict[Path, Any]) -> None:
        """Replace shards (after regrading): every new file is written before any is renamed."""
        from archer.core.data import write_tables_atomic

        write_tables_atomic(tables)


def open_store(root: Path) -> Store:
    """An existing evaluation folder (for --regrade)."""
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise UsageError(
            f"no evaluation in {root} (no {SPEC_FILE})",
            hint="pass the --out folder of an earlier 'archer eval' run",
        )
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(
            f"cannot read {spec_path}: {e}", hint="the file is damaged; run the evaluation again"
        ) from e
    if spec.get("format") != FORMAT:
        raise DataError(
            f"{spec_path} is not an archer evaluation", hint="pass the --out folder of 'archer eval'"
        )
    return Store(root, spec)


def check_same_sampling(
    old: dict[str, Any], new: dict[str, Any], root: Path, *, defaulted: bool = False
) -> None:
    """Refuse to add samples drawn with other settings to an existing store. Where `root` was the
    default folder (settings the name does not carry differ: the data's folder, the chat template),
    the hint names an --out that is free."""
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in SAMPLING_KEYS if old.get(k) != new.get(k)]
    if diffs:
        if defaulted:
            import hashlib

            key = json.dumps({k: new.get(k) for k in (*SAMPLING_KEYS, "data")}, sort_keys=True)
            free = root.with_name(f"{root.name}-{hashlib.sha1(key.encode()).hexdigest()[:8]}")
            hint = f"add --out {free} (or --overwrite to discard the old samples)"
        else:
            hint = "use another --out, or --overwrite to discard the old samples"
        raise UsageError(f"{root} holds samples drawn with other settings ({'; '.join(diffs)})", hint=hint)


@dataclass
class Done:
    """What the shards already hold: complete problems and their sample counts."""

    problems: set[int]
    rows: int


def finished_problems(table: Any, n: int, problems: Sequence[Any], root: Path) -> Done:
    """Problems with all n samples; checks that each still has the prompt and answer it was sampled for."""
    if table.num_rows == 0:
        return Done(set(), 0)
    pids = table.column("problem").to_pylist()
    samples = table.column("sample").to_pylist()
    prompts = table.column("prompt").to_pylist()
    answers = table.column("answer").to_pylist()
    counts: dict[int, set[int]] = {}
    for pid, s, prompt, answer in zip(pids, samples, prompts, answers):
        seen = counts.setdefault(pid, set())
        if s in seen:
            raise DataError(
                f"{root}: problem {pid} sample {s} appears twice",
                hint="the sample store is inconsistent; use --overwrite or another --out",
            )
        seen.add(s)
        if pid >= len(problems):
            raise DataError(
                f"{root} holds samples for problem {pid}, but the data has only {len(problems)} problems",
                hint="evaluate the same data (and --limit) as before, or use --overwrite / another --out",
            )
        p = problems[pid]
        if p.prompt_text != prompt or p.answer != answer:
            raise DataError(
                f"{root}: problem {pid} was sampled for a different prompt or answer than the data now holds",
                hint="evaluate the same data as before, or use --overwrite / another --out",
            )
    bad = [pid for pid, s in counts.items() if len(s) != n]
    if bad:
        raise DataError(
            f"{root}: problems {bad[:5]} have a number of samples other than n={n}",
            hint="the sample store is inconsistent; use --overwrite or another --out",
        )
    return Done(set(counts), table.num_rows)
