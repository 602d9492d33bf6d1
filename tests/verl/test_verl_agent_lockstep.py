"""archer's verl agent-loop worker and AEPO's lock-step batch, without Ray: every prompt of a chunk
either joins the chunk's `Lockstep` (its group runs) or leaves it (validation, or a failure before
its group ran), so the chunk's other prompts never wait for one that will not come."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("verl", reason="the verl extra is not installed: pip install -e '.[verl]'")

pytestmark = pytest.mark.verl


@pytest.fixture
def worker(monkeypatch):
    import archer.core.engines.verl.agent_loop as al

    async def kv_put(**kw):
        tags.append(kw["tag"]["status"])

    tags: list[str] = []
    monkeypatch.setattr(al.tq, "async_kv_put", kv_put)
    w = object.__new__(al._ArcherAgentLoopWorker)  # no Ray actor, no model: only the dispatch logic
    w._locks = {}
    w.tags = tags
    return w


def test_a_prompt_that_fails_before_its_group_runs_leaves_the_lockstep_batch(worker):
    from archer.core.agent.group import Lockstep
    from archer.core.engines.verl.agent_loop import LOCKSTEP_KEY

    lock = Lockstep(2)
    worker._locks["chunk"] = [lock, 2]

    async def broken(*args, **kwargs):
        raise RuntimeError("the prompt did not tokenise")

    worker._archer_prepare = broken
    asyncio.run(worker._run_prompt({"uid": "u0", LOCKSTEP_KEY: "chunk"}, {}, {"validate": False}))
    assert worker.tags == ["running", "failure"]
    assert lock.expected == 1  # the other prompt's group is the whole batch now
    assert worker._locks["chunk"][1] == 1  # one prompt still to pick the lock up
    asyncio.run(worker._run_prompt({"uid": "u1", LOCKSTEP_KEY: "chunk"}, {}, {"validate": False}))
    assert lock.expected == 0 and "chunk" not in worker._locks  # the last one drops the entry


def test_a_prompt_without_a_lockstep_batch_runs_as_before(worker):
    seen = []

    async def prepare(prompt, sampling_params, validate, lock):
        seen.append((prompt["uid"], validate, lock))
        raise RuntimeError("stop here")

    worker._archer_prepare = prepare
    asyncio.run(worker._run_prompt({"uid": "u0"}, {}, {"validate": True}))
    assert seen == [("u0", True, None)] and worker.tags == ["running", "failure"]
