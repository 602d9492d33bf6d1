"""archer's Ray task runner ends the trainer's data-loader workers itself, so that a run that
succeeded does not end with torch's "DataLoader worker ... is killed by signal" traceback when Ray
ends the actor (seen on the GPU with verl's default of 8 workers; reproduced on the CPU with
`verl.data.dataloader_num_workers=2`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from archer.core.engines.verl.runner import stop_dataloader_workers  # noqa: E402


def test_the_live_train_iterator_s_workers_are_stopped():
    loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4, num_workers=2)
    it = iter(loader)
    assert next(it).tolist() == [0, 1, 2, 3]
    workers = list(it._workers)
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    trainer = SimpleNamespace(train_dataloader_it=it)
    stop_dataloader_workers(trainer)
    assert trainer.train_dataloader_it is None
    for w in workers:
        w.join(timeout=60)  # progress-driven: shutdown already joined them; this only bounds a hang
    assert not any(w.is_alive() for w in workers)


def test_a_trainer_without_a_live_iterator_is_left_alone():
    stop_dataloader_workers(SimpleNamespace(train_dataloader_it=None))
    stop_dataloader_workers(None)  # the trainer failed to build
    plain = SimpleNamespace(train_dataloader_it=iter([1, 2]))  # no worker processes
    stop_dataloader_workers(plain)
    assert plain.train_dataloader_it is None
