"""A write whose caller is cancelled mid-transaction (the console's exclusive workers replace a
running presence or draft write with a newer one) must neither be lost half-way nor leave the
connection, and on SQLite the write lock, behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest
from sqlalchemy import func, select

from store.engine import finish_write
from store.models import Presence
from store.service import Service

ROUNDS = 120


async def test_cancelled_writes_finish_and_leave_the_store_usable(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sqlalchemy.pool")
    agent = await service.add_agent("anna", "Anna")
    rng = random.Random(7)
    for i in range(ROUNDS):
        caller = asyncio.ensure_future(
            finish_write(service.touch_presence(agent.id, f"console-{i}", None, "viewing"))
        )
        await asyncio.sleep(rng.random() * 0.004)  # cancel at any point of the transaction
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
    # Another writer gets in at once: no connection was left holding a transaction.
    async with asyncio.timeout(5):
        await service.add_queue("Afterwards")
    # Every write whose caller gave up still commits (some may still be finishing).
    stored = 0
    for _ in range(100):
        async with service.db.read() as session:
            stored = (await session.execute(select(func.count()).select_from(Presence))).scalar()
        if stored == ROUNDS:
            break
        await asyncio.sleep(0.05)
    assert stored == ROUNDS
    resets = [r.getMessage() for r in caplog.records if "reset" in r.getMessage()]
    assert resets == [], "a connection could not be reset after a cancelled write"
