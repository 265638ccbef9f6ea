"""A large backlog runs with fewer garbage collections, and the process gets its setting back."""

from __future__ import annotations

import gc

from mail_sync.engine import BULK_GC_THRESHOLD, fewer_collections


def test_fewer_collections_during_a_backlog_and_the_setting_restored_after() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] == max(before[0], BULK_GC_THRESHOLD)
        with fewer_collections():  # a second account's engine in the same daemon
            pass
        assert gc.get_threshold()[0] == max(before[0], BULK_GC_THRESHOLD), "still ingesting"
    assert gc.get_threshold() == before
    with fewer_collections(enabled=False):  # a few new mails: nothing changes
        assert gc.get_threshold() == before
    try:
        with fewer_collections():
            raise RuntimeError("the sync failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before
