"""One step's response table: its summary columns as numpy arrays, sorted, filtered, grouped."""

from __future__ import annotations

from typing import Any

import numpy as np

#: (key, label) of the response table's columns, in display order; every one is sortable.
RESPONSE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("row", "row"),
    ("uid", "group"),
    ("sample_index", "sample"),
    ("reward", "reward"),
    ("correct", "correct"),
    ("accepted", "accepted"),
    ("response_length", "length"),
    ("entropy_mean", "H mean"),
    ("entropy_max", "H max"),
    ("influence_sum", "I sum"),
    ("influence_mean", "I mean"),
)

ACCEPT_FILTERS = ("all", "accepted", "rejected", "unknown")

_FLOAT_COLUMNS = ("reward", "advantage", "entropy_mean", "entropy_max", "influence_sum", "influence_mean")
_INT_COLUMNS = ("row", "group_index", "sample_index", "response_length")
_BOOL_COLUMNS = ("correct", "accepted", "truncated")  # as float: 1, 0, NaN = unknown


class ResponseTable:
    """The summary columns of one step as numpy arrays, with sorting, filtering and groups.

    Nullable booleans become floats (1.0, 0.0, NaN) so one argsort handles every column.
    """

    def __init__(self, step: int, table: Any):
        import pyarrow.compute as pc

        self.step = int(step)
        self.n = int(table.num_rows)
        names = set(table.column_names)
        cols: dict[str, np.ndarray] = {}
        for name in _FLOAT_COLUMNS:
            if name in names:
                cols[name] = table.column(name).to_numpy().astype(np.float64)
            else:
                cols[name] = np.full(self.n, np.nan)
        for name in _INT_COLUMNS:
            if name in names:
                cols[name] = table.column(name).to_numpy().astype(np.int64)
            else:
                cols[name] = (
                    np.arange(self.n, dtype=np.int64) if name == "row" else np.zeros(self.n, np.int64)
                )
        for name in _BOOL_COLUMNS:
            if name in names:
                col = table.column(name)
                vals = pc.fill_null(col, False).to_numpy().astype(np.float64)
                vals[col.is_null().to_numpy(zero_copy_only=False)] = np.nan
                cols[name] = vals
            else:
                cols[name] = np.full(self.n, np.nan)
        self.cols = cols
        self.uid = np.array(
            table.column("uid").to_pylist() if "uid" in names else [""] * self.n, dtype=object
        )
        self.data_source = (
            table.column("data_source").to_pylist() if "data_source" in names else [None] * self.n
        )
        self._groups: dict[str, np.ndarray] | None = None

    # ---- lookups ----------------------------------------------------------------------------

    def record(self, row: int) -> dict[str, Any]:
        """One response's summary values as Python scalars (NaN stays NaN, unknown bools None)."""
        out: dict[str, Any] = {
            "step": self.step,
            "uid": str(self.uid[row]),
            "data_source": self.data_source[row],
        }
        for name, vals in self.cols.items():
            v = vals[row]
            if name in _BOOL_COLUMNS:
                out[name] = None if np.isnan(v) else bool(v)
            elif name in _INT_COLUMNS:
                out[name] = int(v)
            else:
                out[name] = float(v)
        return out

    @property
    def groups(self) -> dict[str, np.ndarray]:
        """uid -> its rows, ordered by sample index; in order of first appearance."""
        if self._groups is None:
            groups: dict[str, list[int]] = {}
            for i, u in enumerate(self.uid):
                groups.setdefault(u, []).append(i)
            si = self.cols["sample_index"]
            self._groups = {
                u: np.array(sorted(rows, key=lambda r: (si[r], r)), dtype=np.int64)
                for u, rows in groups.items()
            }
        return self._groups

    def group_rows(self, uid: str) -> np.ndarray:
        return self.groups.get(uid, np.zeros(0, dtype=np.int64))

    def find_uid(self, text: str) -> str | None:
        """The uid equal to `text`, else the first one that starts with it or contains it."""
        if text in self.groups:
            return text
        for pred in (lambda u: u.startswith(text), lambda u: text in u):
            for u in self.groups:
                if pred(u):
                    return u
        return None

    # ---- ordering and filtering ---------------------------------------------------------------

    def order(
        self,
        sort: str = "row",
        descending: bool = False,
        accepted: str = "all",
        reward_min: float | None = None,
        reward_max: float | None = None,
    ) -> np.ndarray:
        """Row indices to show: filtered, then sorted (stable; unknown values always last)."""
        keep = np.ones(self.n, dtype=bool)
        acc = self.cols["accepted"]
        if accepted == "accepted":
            keep &= acc == 1.0
        elif accepted == "rejected":
            keep &= acc == 0.0
        elif accepted == "unknown":
            keep &= np.isnan(acc)
        elif accepted != "all":
            raise ValueError(f"accepted filter must be one of {ACCEPT_FILTERS}, got {accepted!r}")
        reward = self.cols["reward"]
        with np.errstate(invalid="ignore"):
            if reward_min is not None:
                keep &= reward >= reward_min
            if reward_max is not None:
                keep &= reward <= reward_max
        rows = np.flatnonzero(keep)
        return rows[sort_order(self._sort_values(sort)[rows], descending)]

    def _sort_values(self, key: str) -> np.ndarray:
        if key == "uid":
            return self.uid
        if key not in self.cols:
            raise ValueError(f"cannot sort responses by {key!r}")
        return self.cols[key]


def sort_order(values: np.ndarray, descending: bool) -> np.ndarray:
    """A stable argsort that keeps NaN (and None) last in both directions."""
    if values.dtype == object:
        idx = sorted(range(len(values)), key=lambda i: str(values[i]), reverse=descending)
        return np.array(idx, dtype=np.int64)
    v = values.astype(np.float64)
    nan = np.isnan(v)
    key = np.where(nan, np.inf, -v if descending else v)
    order = np.argsort(key, kind="stable")
    return np.concatenate([order[~nan[order]], order[nan[order]]])
