"""Convert traces of the original .npz layout (Archer2.0's entropy_trace/ and influence_trace/)
into archer's parquet trace, through `build_step_table` and `TraceWriter`.

The old layout: `OLD_DIR/entropy_trace/` and/or `OLD_DIR/influence_trace/`, each with
summary.json (its own `format_version`: entropy 1 or 2, influence 1), manifest.jsonl and
`steps/step_XXXXXX.npz`. Arrays are padded to [responses, max_len]; the pad id equals the EOS id,
so only `response_mask` tells tokens from padding. The influence trace holds a subset of the
entropy trace's rows (`selected_row_id` = the entropy trace's `response_index`), with NaN for
tokens whose influence was not captured. Rows only in the entropy trace get null influence.

`sample_index` (the dataset index of the prompt) and `prompt_ids` are pickled object arrays.
They are read with `RestrictedUnpickler`, which builds numpy arrays, lists and numbers and refuses
every other global, so a tampered file cannot run code. No typer/rich here: the CLI reports
progress through the `progress` callback.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from archer.errors import TraceError

from .schema import build_step_table, parse_manifest
from .writer import TraceWriter

ENTROPY_DIR = "entropy_trace"
INFLUENCE_DIR = "influence_trace"
#: format_version values this converter understands, per trace kind (entropy v1 and v2 share
#: the step-file layout; v2 added write_every, atomic writes and latest_step.txt).
KNOWN_VERSIONS = {ENTROPY_DIR: (1, 2), INFLUENCE_DIR: (1,)}
_STEP_NAME = re.compile(r"^step_(\d+)\.npz$")

# --------------------------------------------------------------------------------------------
# restricted unpickling
# --------------------------------------------------------------------------------------------


def _reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct as f  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as f
    return f


def _scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar as f  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar as f
    return f


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    # a numpy scalar (np.int64(3) inside an object array) is rebuilt from its dtype and raw bytes
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RefusedPickle(Exception):
    """A pickle asked for something other than numpy's array reconstruction."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy object arrays of lists, numbers, strings and numpy scalars; refuses every
    other global."""

    def find_class(self, module: str, name: str) -> Any:
        make = _ALLOWED.get((module, name))
        if make is None:
            raise RefusedPickle(f"{module}.{name}")
        return make()

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle(f"persistent id {pid!r}")


def _read_member(fp: IO[bytes], path: Path, field: str) -> np.ndarray:
    """One .npy member of an .npz, object arrays through RestrictedUnpickler."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fp)
    else:
        raise TraceError(
            f"{path}: field {field!r} uses .npy format {version}, which this converter does not read"
        )
    if not dtype.hasobject:
        count = int(np.prod(shape)) if shape else 1
        data = fp.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise TraceError(f"{path}: field {field!r} is truncated", hint="the .npz file is incomplete")
        arr = np.frombuffer(data, dtype=dtype, count=count)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    try:
        arr = RestrictedUnpickler(fp).load()
    except RefusedPickle as e:
        raise TraceError(
            f"{path}: field {field!r} holds a pickle that needs {e.what}, which is refused "
            "(only numpy arrays of lists, numbers, strings and numpy scalars are allowed)",
            hint="this file was not written by the original trace writer, or was tampered with; "
            "convert only traces you trust",
        ) from None
    except Exception as e:  # noqa: BLE001 - a truncated or garbled pickle
        raise TraceError(f"{path}: field {field!r} cannot be unpickled: {type(e).__name__}: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise TraceError(f"{path}: field {field!r} holds a {type(arr).__name__}, not an array")
    return arr


def load_npz(path: str | Path, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (only `fields`, if given), without running arbitrary pickles."""
    path = Path(path)
    want = None if fields is None else set(fields)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if want is not None and name not in want:
                    continue
                with zf.open(info) as fp:
                    out[name] = _read_member(fp, path, name)
    except TraceError:
        raise
    except FileNotFoundError as e:
        raise TraceError(f"{path} is missing") from e
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise TraceError(
            f"cannot read {path}: {type(e).__name__}: {e}", hint="the .npz file is truncated or corrupt"
        ) from e
    return out


# --------------------------------------------------------------------------------------------
# old trace directories
# --------------------------------------------------------------------------------------------


@dataclass
class OldTrace:
    """One old trace directory: its summary, version and step files."""

    kind: str  # ENTROPY_DIR or INFLUENCE_DIR
    dir: Path
    summary: dict[str, Any]
    version: int | None
    files: dict[int, Path]


def _open_old(d: Path, kind: str, warnings: list[str]) -> OldTrace:
    summary: dict[str, Any] = {}
    sp = d / "summary.json"
    if sp.exists():
        try:
            summary = json.loads(sp.read_text())
        except (OSError, ValueError) as e:
            raise TraceError(f"cannot read {sp}: {e}", hint="the file is corrupt") from e
    else:
        warnings.append(f"{sp} is missing; assuming format_version {KNOWN_VERSIONS[kind][0]}")
    version = summary.get("format_version")
    known = KNOWN_VERSIONS[kind]
    if version is None:
        if sp.exists():
            warnings.append(f"{sp} has no format_version; assuming {known[0]}")
    elif version not in known:
        raise TraceError(
            f"{sp}: {kind} format_version {version} is not one this converter knows "
            f"({', '.join(map(str, known))})",
            hint="the step-file layout may differ; convert it with the archer version that supports it",
        )
    files: dict[int, Path] = {}
    mp = d / "manifest.jsonl"
    if mp.exists():
        entries = parse_manifest(
            mp.read_text(errors="replace"),
            lambda step: f"steps/step_{step:06d}.npz",
            warnings.append,
            source=str(mp),
        )
        for step, e in entries.items():
            if (d / e["file"]).is_file():
                files[step] = d / e["file"]
            else:
                warnings.append(f"{kind} step {step}: {d / e['file']} is missing (skipped)")
    else:
        warnings.append(f"{mp} is missing; taking the step files from {d / 'steps'}")
        for p in sorted((d / "steps").glob("step_*.npz")):
            m = _STEP_NAME.match(p.name)
            if m:
                files[int(m.group(1))] = p
    return OldTrace(kind, d, summary, version, files)


def open_old_traces(old_dir: str | Path, warnings: list[str] | None = None) -> dict[str, OldTrace]:
    """The entropy and/or influence trace under `old_dir` (or `old_dir` itself if it is one)."""
    root = Path(old_dir).expanduser()
    warnings = [] if warnings is None else warnings
    if not root.is_dir():
        raise TraceError(f"{root} does not exist or is not a directory")
    found: dict[str, OldTrace] = {}
    for kind in (ENTROPY_DIR, INFLUENCE_DIR):
        if (root / kind).is_dir():
            found[kind] = _open_old(root / kind, kind, warnings)
    if not found and root.name in KNOWN_VERSIONS and (root / "steps").is_dir():
        found[root.name] = _open_old(root, root.name, warnings)
    if not found:
        raise TraceError(
            f"{root} holds no old trace (neither {ENTROPY_DIR}/ nor {INFLUENCE_DIR}/)",
            hint="pass the directory that contains entropy_trace/ and/or influence_trace/",
        )
    return found


# --------------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------------

_ENTROPY_FIELDS = (
    "entropies",
    "response_mask",
    "responses",
    "response_index",
    "prompt_length",
    "uid",
    "sample_index",
)
_INFLUENCE_FIELDS = (
    "entropies",
    "influence",
    "response_mask",
    "responses",
    "selected_row_id",
    "reward",
    "accepted",
    "group_id",
    "uid_hash",
    "prompt_ids",
    "uid",
)


def _require(arrs: dict[str, np.ndarray], path: Path, names: Iterable[str]) -> None:
    missing = [n for n in names if n not in arrs]
    if missing:
        raise TraceError(
            f"{path} lacks field(s) {missing}", hint="not a step file of the original trace writer"
        )


def _check_2d(arrs: dict[str, np.ndarray], path: Path, names: tuple[str, ...]) -> tuple[int, int]:
    """The common [responses, length] shape of the padded fields `names`."""
    shape = arrs[names[0]].shape
    for n in names:
        a = arrs[n]
        if a.ndim != 2:
            raise TraceError(f"{path}: field {n!r} has shape {a.shape}, expected [responses, length]")
        if a.shape != shape:
            raise TraceError(f"{path}: field {n!r} has shape {a.shape}, but {names[0]!r} has {shape}")
    return int(shape[0]), int(shape[1])


def _check_1d(arrs: dict[str, np.ndarray], path: Path, name: str, n: int) -> None:
    if name in arrs and arrs[name].shape[:1] != (n,):
        raise TraceError(f"{path}: field {name!r} has shape {arrs[name].shape}, expected ({n},)")


def _prompt_list(item: Any) -> list[int]:
    """One prompt's ids from an element of the pickled `prompt_ids` array."""
    if item is None:
        return []
    if isinstance(item, str):  # early writers stored the text "[]" when ids were unavailable
        try:
            item = json.loads(item) if item.strip() else []
        except ValueError:
            return []
    if isinstance(item, np.ndarray):
        item = item.tolist()
    if isinstance(item, (list, tuple)):
        return [int(x) for x in item]
    return []


def _prompt_rows(arr: np.ndarray, n: int) -> list[list[int]]:
    """Per-row prompt ids from a 1-D object array of lists or a 2-D array (equal lengths)."""
    if arr.ndim == 2:
        return [[int(x) for x in arr[i]] for i in range(arr.shape[0])]
    return [_prompt_list(arr[i]) for i in range(n)]


def _ragged(arr2d: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """`arr2d[r][mask[r]]` for each r in rows (padding dropped)."""
    return [arr2d[r][mask[r]] for r in rows]


@dataclass
class StepConversion:
    step: int
    table: pa.Table
    influence_rows: int
    warnings: list[str] = field(default_factory=list)
    eos_id: int | None = None  # the EOS (= pad) id this step's padding showed, if any


def pad_id(responses: np.ndarray, mask: np.ndarray) -> int | None:
    """The id in every padded cell (the old writer padded with EOS), None if no padding or mixed."""
    pads = np.unique(responses[~mask])
    return int(pads[0]) if len(pads) == 1 else None


def convert_step(
    step: int, ent_path: Path | None, inf_path: Path | None, eos_id: int | None = None
) -> StepConversion:
    """One archer step table from the old step file(s) of `step` (either may be None).

    A response that fills every column is truncated unless its last token is EOS; the EOS id is
    the step's padding id, else `eos_id` (known from an earlier step or the summary)."""
    warnings: list[str] = []
    ent = inf = None
    if ent_path is not None:
        ent = load_npz(ent_path, _ENTROPY_FIELDS)
        _require(ent, ent_path, ("entropies", "response_mask", "responses"))
        n_e, _ = _check_2d(ent, ent_path, ("entropies", "response_mask", "responses"))
        if "response_index" not in ent:
            ent["response_index"] = np.arange(n_e, dtype=np.int32)
        for name in ("response_index", "prompt_length", "uid", "sample_index"):
            _check_1d(ent, ent_path, name, n_e)
    if inf_path is not None:
        inf = load_npz(inf_path, _INFLUENCE_FIELDS)
        _require(inf, inf_path, ("entropies", "influence", "response_mask", "responses", "selected_row_id"))
        n_i, _ = _check_2d(inf, inf_path, ("entropies", "influence", "response_mask", "responses"))
        for name in ("selected_row_id", "reward", "accepted", "group_id", "uid_hash", "prompt_ids", "uid"):
            _check_1d(inf, inf_path, name, n_i)

    # The rows of the new step: the entropy trace's (all responses), else the influence trace's.
    src_ids: list[int] = []
    resp: list[np.ndarray] = []
    entr: list[np.ndarray] = []
    infl: list[np.ndarray | None] = []
    uids: list[str | None] = []
    reward: list[float] = []
    accepted: list[bool | None] = []
    truncated: list[bool] = []
    prompts: list[list[int] | None] = []
    dataset_index: list[int | None] = []
    group_id: list[int | None] = []

    prompt_length: list[int | None] = []
    uid_hash: list[int | None] = []
    seen_eos = None
    if ent is not None:
        seen_eos = pad_id(ent["responses"], ent["response_mask"].astype(bool))
    if seen_eos is None and inf is not None:
        seen_eos = pad_id(inf["responses"], inf["response_mask"].astype(bool))
    eos = seen_eos if seen_eos is not None else eos_id
    full_width_rows = 0

    def is_truncated(ids: np.ndarray, width: int) -> bool:
        """Filled every column without ending in EOS (an EOS in the last column finished)."""
        nonlocal full_width_rows
        if len(ids) < width:
            return False
        full_width_rows += 1
        return eos is None or int(ids[-1]) != eos

    inf_row_of: dict[int, int] = {}
    if inf is not None:
        for j, rid in enumerate(inf["selected_row_id"].tolist()):
            inf_row_of[int(rid)] = j
        inf_prompts = _prompt_rows(inf["prompt_ids"], len(inf_row_of)) if "prompt_ids" in inf else None
        inf_mask = inf["response_mask"].astype(bool)

    def add_influence(j: int, expected_len: int | None, label: str) -> None:
        assert inf is not None
        m = inf_mask[j]
        vals = inf["influence"][j][m].astype(np.float32)
        if expected_len is not None and len(vals) != expected_len:
            warnings.append(
                f"step {step}: {label} has {len(vals)} influence tokens but {expected_len} "
                "entropy tokens; influence dropped for it"
            )
            infl.append(None)
            return
        infl.append(vals)

    if ent is not None:
        mask = ent["response_mask"].astype(bool)
        n, width = mask.shape
        rows = np.arange(n)
        lengths = mask.sum(axis=1)
        resp = _ragged(ent["responses"], mask, rows)
        entr = _ragged(ent["entropies"], mask, rows)
        src_ids = [int(x) for x in ent["response_index"].tolist()]
        e_uid = ent.get("uid")
        e_sidx = ent.get("sample_index")
        e_plen = ent.get("prompt_length")
        for i in range(n):
            rid = src_ids[i]
            j = inf_row_of.get(rid)
            truncated.append(is_truncated(resp[i], width))
            prompt_length.append(_as_int(e_plen[i]) if e_plen is not None else None)
            uids.append(str(e_uid[i]) if e_uid is not None else None)
            dataset_index.append(_as_int(e_sidx[i]) if e_sidx is not None else None)
            if j is None:
                infl.append(None)
                reward.append(math.nan)
                accepted.append(None)
                prompts.append(None)
                group_id.append(None)
                uid_hash.append(None)
            else:
                add_influence(j, int(lengths[i]), f"response {rid}")
                reward.append(float(inf["reward"][j]) if "reward" in inf else math.nan)
                accepted.append(bool(inf["accepted"][j]) if "accepted" in inf else None)
                prompts.append(inf_prompts[j] if inf_prompts is not None else None)
                group_id.append(int(inf["group_id"][j]) if "group_id" in inf else None)
                uid_hash.append(_as_int(inf["uid_hash"][j]) if "uid_hash" in inf else None)
                if uids[-1] is None and "uid" in inf:
                    uids[-1] = str(inf["uid"][j])
        have = set(src_ids)
        extra_rows = [rid for rid in inf_row_of if rid not in have]
        if extra_rows:
            warnings.append(
                f"step {step}: {len(extra_rows)} influence row(s) not in the entropy trace; "
                "added from the influence file"
            )
    else:
        extra_rows = list(inf_row_of)

    for rid in extra_rows:  # influence-only rows (no entropy trace, or rows it lacks)
        assert inf is not None
        j = inf_row_of[rid]
        m = inf_mask[j]
        src_ids.append(rid)
        resp.append(inf["responses"][j][m])
        entr.append(inf["entropies"][j][m])
        add_influence(j, None, f"response {rid}")
        truncated.append(is_truncated(resp[-1], m.shape[0]))
        prompt_length.append(None)
        uid_hash.append(_as_int(inf["uid_hash"][j]) if "uid_hash" in inf else None)
        uids.append(str(inf["uid"][j]) if "uid" in inf else None)
        dataset_index.append(None)
        reward.append(float(inf["reward"][j]) if "reward" in inf else math.nan)
        accepted.append(bool(inf["accepted"][j]) if "accepted" in inf else None)
        prompts.append(inf_prompts[j] if inf_prompts is not None else None)
        group_id.append(int(inf["group_id"][j]) if "group_id" in inf else None)

    n = len(src_ids)
    # uid: recorded, else the influence group id, else one group per response
    for i in range(n):
        if uids[i] is None:
            uids[i] = f"group-{group_id[i]}" if group_id[i] is not None else f"response-{src_ids[i]}"
    group_index, sample_index = _groups(uids)
    # a prompt is shared by its group: rows without their own ids take the group's
    by_uid: dict[str, list[int]] = {}
    for i in range(n):
        if prompts[i] is not None and uids[i] not in by_uid:
            by_uid[uids[i]] = prompts[i]
    prompt_ids = [prompts[i] if prompts[i] is not None else by_uid.get(uids[i], []) for i in range(n)]
    if any(p is None for p in prompts) and not by_uid:
        warnings.append(f"step {step}: no prompt ids recorded (entropy trace only); prompts left empty")

    extra = {"source_row": pa.array(np.asarray(src_ids, dtype=np.int32), type=pa.int32())}
    if any(d is not None for d in dataset_index):
        extra["dataset_index"] = pa.array(dataset_index, type=pa.int64())
    for name, values, typ in (  # legacy per-row fields, kept under their names (null where absent)
        ("prompt_length", prompt_length, pa.int32()),
        ("group_id", group_id, pa.int64()),
        ("uid_hash", uid_hash, pa.int64()),
    ):
        if any(v is not None for v in values):
            extra[name] = pa.array(values, type=typ)
    if eos is None and full_width_rows:
        warnings.append(
            f"step {step}: the EOS id is unknown (no padding to learn it from); {full_width_rows} "
            "response(s) that fill every column are marked truncated"
        )
    table = build_step_table(
        step,
        uid=uids,
        group_index=group_index,
        sample_index=sample_index,
        prompt_ids=prompt_ids,
        response_ids=resp,
        entropy=entr,
        reward=np.asarray(reward, dtype=np.float32),
        advantage=np.full(n, np.nan, dtype=np.float32),
        truncated=np.asarray(truncated, dtype=bool),
        correct=None,
        accepted=accepted if any(a is not None for a in accepted) else None,
        influence=infl if any(x is not None for x in infl) else None,
        extra=extra,
    )
    return StepConversion(step, table, sum(x is not None for x in infl), warnings, eos)


def _as_int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _groups(uids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """group_index by first appearance of the uid, sample_index = rank within the group."""
    gi = np.zeros(len(uids), dtype=np.int32)
    si = np.zeros(len(uids), dtype=np.int32)
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for i, u in enumerate(uids):
        if u not in first:
            first[u] = len(first)
        gi[i] = first[u]
        si[i] = count.get(u, 0)
        count[u] = int(si[i]) + 1
    return gi, si


# --------------------------------------------------------------------------------------------
# the whole trace
# --------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What a conversion did (the CLI prints it)."""

    out_dir: Path
    steps: int = 0
    responses: int = 0
    influence_rows: int = 0
    tokens: int = 0
    bytes: int = 0
    versions: dict[str, int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def import_npz(
    old_dir: str | Path,
    new_dir: str | Path,
    *,
    tokenizer_path: str | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> ImportReport:
    """Convert the old trace(s) under `old_dir` into a new trace directory `new_dir`.

    `progress(done, total, step)` is called after each step. Raises TraceError on anything it
    cannot convert faithfully (unknown format_version, corrupt file, refused pickle); problems it
    can work around are listed in `report.warnings`. The trace is built in a hidden sibling
    directory and renamed to `new_dir` only when every step converted, so a refused import leaves
    nothing behind (`new_dir` may exist if it is empty).
    """
    warnings: list[str] = []
    old = open_old_traces(old_dir, warnings)
    target = Path(new_dir).expanduser()
    _check_target(target)
    ent, inf = old.get(ENTROPY_DIR), old.get(INFLUENCE_DIR)
    steps = sorted(set(ent.files if ent else {}) | set(inf.files if inf else {}))
    report = ImportReport(target, versions={k: t.version for k, t in old.items()}, warnings=warnings)
    first = (ent or inf).summary  # type: ignore[union-attr]
    summary: dict[str, Any] = {
        "engine": "archer2.0 (imported)",
        "imported_from": str(Path(old_dir).expanduser().resolve()),
        "imported_formats": {k: t.version for k, t in old.items()},
        "project_name": first.get("project_name"),
        "experiment_name": first.get("experiment_name"),
        "influence": inf is not None,
    }
    if tokenizer_path:
        summary["tokenizer_path"] = str(Path(tokenizer_path).expanduser().resolve())
    eos = next(
        (
            _as_int(t.summary.get(k))
            for t in old.values()
            for k in ("eos_token_id", "pad_token_id")
            if _as_int(t.summary.get(k)) is not None
        ),
        None,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.importing-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with TraceWriter(staging, summary) as writer:
            for k, step in enumerate(steps, 1):
                conv = convert_step(
                    step,
                    ent.files.get(step) if ent else None,
                    inf.files.get(step) if inf else None,
                    eos_id=eos,
                )
                eos = conv.eos_id if conv.eos_id is not None else eos
                warnings.extend(conv.warnings)
                writer.submit(step, conv.table)
                report.steps += 1
                report.responses += conv.table.num_rows
                report.influence_rows += conv.influence_rows
                report.tokens += int(sum(conv.table.column("response_length").to_pylist()))
                if progress is not None:
                    progress(k, len(steps), step)
            writer.flush()
            report.bytes = writer.stats().bytes_written
        _check_target(target)  # still free (or empty) now that the work is done
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _check_target(target: Path) -> None:
    """`target` must not exist, or be an empty directory."""
    if not target.exists():
        return
    if not target.is_dir():
        raise TraceError(f"{target} exists and is not a directory", hint="pass a new directory for the trace")
    entries = sorted(p.name for p in target.iterdir())
    if entries:
        what = "already holds steps" if {"manifest.jsonl", "steps"} & set(entries) else "is not empty"
        raise TraceError(
            f"{target} {what} ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''})",
            hint="import into a new or empty directory",
        )


def looks_like_npz_trace(path: str | Path) -> Path | None:
    """The directory holding an old .npz trace at `path` (itself, or the parent of its
    entropy_trace/ or influence_trace/), or None; cheap, for readers that must say "convert it"."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if any(
        (p / kind / "steps").is_dir() or (p / kind / "manifest.jsonl").is_file() for kind in KNOWN_VERSIONS
    ):
        return p
    if (p / "steps").is_dir() and any((p / "steps").glob("step_*.npz")):
        return p
    summary = p / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and "format" not in data and "format_version" in data:
            return p
    return None
