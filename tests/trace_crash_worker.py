"""Helper for tests/test_trace_crash.py: writes trace steps as fast as it can until it is killed.

Run as `python trace_crash_worker.py TRACE_DIR FSYNC(0|1) RESUME_AFTER(-1 = fresh)`. It reports
its progress on stdout, one line each: "ready" once imports are done and before the writer opens
(and repairs) the directory, "open" once it did, and "submitted STEP" after handing each step to
the writer's background thread. The test kills it at points chosen by this progress and by the
manifest's length, never by a delay, so where the kills land does not depend on the machine's
speed. Step contents are a pure function of the step number (`expected_table`), so the test can
check every byte it reads back.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa

from archer.core.trace import TraceWriter, build_step_table


def expected_table(step: int) -> pa.Table:
    """The table written for `step`: sizes vary with the step so kills hit different phases."""
    n = 1 + (step * 7919) % 48
    lengths = [(step * 31 + i * 13) % 300 for i in range(n)]
    return build_step_table(
        step,
        uid=[f"{step}-{i // 4}" for i in range(n)],
        group_index=[i // 4 for i in range(n)],
        sample_index=[i % 4 for i in range(n)],
        prompt_ids=[np.arange(5 + i % 7, dtype=np.int32) for i in range(n)],
        response_ids=[np.arange(L, dtype=np.int32) + step for L in lengths],
        # multiples of 1/8 below 12 are exact in float16, so the read-back must be exact
        entropy=[((np.arange(L) + i) % 97) / 8.0 for i, L in enumerate(lengths)],
        influence=[None if i % 2 else np.full(L, step * 1e-3, np.float32) for i, L in enumerate(lengths)],
        reward=np.array([step + i / 1000 for i in range(n)]),
        advantage=np.zeros(n),
        truncated=[L == 299 for L in lengths],
        correct=[i % 3 == 0 for i in range(n)],
    )


def same_table(a: pa.Table, b: pa.Table) -> bool:
    """Table equality where NaN equals NaN (empty responses have NaN entropy summaries)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            if not np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True):
                return False
        elif not x.equals(y):
            return False
    return True


def main(argv: list[str]) -> None:
    trace_dir, fsync, resume_after = argv[0], argv[1] == "1", int(argv[2])
    expected_table(1)  # warm-up: pyarrow's first pa.array() imports pandas (~0.2 s)
    print("ready", flush=True)
    w = TraceWriter(
        trace_dir,
        {"model": "crash-test"},
        fsync=fsync,
        max_queue=2,
        row_group_size=16,
        resume_after_step=None if resume_after < 0 else resume_after,
    )
    print("open", flush=True)
    step = max(resume_after, 0) + 1
    while True:  # until SIGKILL
        w.submit(step, expected_table(step))
        print(f"submitted {step}", flush=True)
        step += 1


if __name__ == "__main__":
    main(sys.argv[1:])
