"""Full-text search over per-ticket documents: kept in step with every write, same results
whichever plan `plan_search` picks, and filled in by migration 0006 (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text

import store.query
from store import listing
from store.engine import Database
from store.migrate import upgrade
from store.models import Article, ArticleKind, Ticket
from store.query import QueryContext, compile_where, parse, plan_search
from store.search_index import reindex_tickets
from store.service import Actor, ArticleInput, Service

MAIL = Actor("mail", "sync")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


async def _found(service: Service, query: str) -> set[int]:
    """Ticket numbers a console/CLI search shows (every page of the list)."""
    ctx = QueryContext(me_agent_id=None, now=service.clock(), dialect=service.db.dialect)
    where = compile_where(parse(query), ctx)
    out: list[int] = []
    cursor = None
    async with service.db.read() as s:
        while True:
            page = await listing.list_page(s, where, after=cursor, limit=2)
            out += [r.number for r in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert await listing.count(s, where) == len(out) == len(set(out))
    return set(out)


async def _ticket(service: Service, subject: str, body: str) -> int:
    t = await service.create_ticket(
        MAIL,
        subject=subject,
        customer_email="carol@acme.com",
        article=ArticleInput(kind=ArticleKind.EMAIL_IN, body=body),
    )
    return t.number


async def test_subject_and_every_article_are_searchable(service: Service) -> None:
    a = await _ticket(service, "Printer on fire", "The smoke detector went off.")
    b = await _ticket(service, "VPN down", "Nothing connects since the update.")
    assert await _found(service, "fire") == {a}
    assert await _found(service, "smoke") == {a}
    assert await _found(service, "printer smoke") == {a}  # subject word AND body word
    assert await _found(service, "-smoke") == {b}

    await service.add_note(MAIL, b, "Replaced the thermostat; router rebooted.")
    await service.add_reply(MAIL, a, "We sent a technician with an extinguisher.")
    assert await _found(service, "thermostat") == {b}
    assert await _found(service, "extinguisher") == {a}
    assert await _found(service, "connects thermostat") == {b}  # first and latest article
    assert await _found(service, '"smoke detector"') == {a}
    assert await _found(service, "thermo*") == {b}

    await service.update_ticket(MAIL, a, subject="Laser printer overheating")
    assert await _found(service, "fire") == set()  # the old subject is gone
    assert await _found(service, "overheating") == {a}
    assert await _found(service, "smoke extinguisher") == {a}  # articles still indexed


async def test_merge_moves_text_to_the_target(service: Service) -> None:
    src = await _ticket(service, "Invoice copy", "Please resend invoice zanzibar-42.")
    dst = await _ticket(service, "Billing question", "Where is my invoice?")
    await service.add_note(MAIL, src, "Customer mentioned the kilimanjaro account.")
    await service.merge(MAIL, src, dst)
    assert await _found(service, "zanzibar") == {dst}
    assert await _found(service, "kilimanjaro") == {dst}
    assert await _found(service, "billing kilimanjaro") == {dst}
    # The source keeps its subject; the target's merge note names it too.
    assert await _found(service, '"invoice copy"') == {src, dst}


# --- the two plans ------------------------------------------------------------------------

N = 240


async def _seed_many(db: Database) -> dict[str, set[int]]:
    """`N` tickets with tied update times; `common` in ~half, `rare` in 3; two words that
    are each common but never together. Returns ticket ids per word."""
    rng = random.Random(5)
    words: dict[str, set[int]] = {"common": set(), "rare": set(), "left": set(), "right": set()}
    async with db.write() as s:
        rows = [
            {
                "number": 7000 + i,
                "subject": f"ticket {i}" + (" common" if i % 2 else ""),
                "status": rng.choice(["open", "pending", "solved"]),
                "created_at": NOW - timedelta(hours=i),
                "updated_at": NOW - timedelta(minutes=10 * rng.randint(0, 30)),
            }
            for i in range(N)
        ]
        await s.execute(insert(Ticket), rows)
        ids = dict((await s.execute(select(Ticket.number, Ticket.id))).all())
        articles = []
        for i in range(N):
            tid = ids[7000 + i]
            parts = ["hello"]
            if i % 2:
                words["common"].add(tid)
            if i % 3 == 0:  # the body, in a later article
                parts.append("common")
                words["common"].add(tid)
            if i in (5, 77, 200):
                parts.append("rare")
                words["rare"].add(tid)
            side = "left" if i % 4 < 2 else "right"
            words[side].add(tid)
            articles.append({"ticket_id": tid, "kind": "email_in", "body_text": side})
            articles.append({"ticket_id": tid, "kind": "note", "body_text": " ".join(parts)})
        await s.execute(insert(Article), articles)
        await reindex_tickets(s, db.dialect, ids.values())
    return words


async def _walk(db: Database, query: str, order: str) -> tuple[list[int], list[list[int]]]:
    """Every page forward; then the pages backward from the last one (the first page is
    always full, so it may overlap the second)."""
    ctx = QueryContext(me_agent_id=None, now=NOW, dialect=db.dialect)
    where = compile_where(parse(query), ctx)
    forward: list[int] = []
    backward: list[list[int]] = []
    async with db.read() as s:
        cursor = None
        while True:
            page = await listing.list_page(s, where, order=order, after=cursor, limit=7)
            forward += [r.id for r in page.rows]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        page = await listing.last_page(s, where, order=order, limit=7)
        backward.append([r.id for r in page.rows])
        while page.prev_cursor is not None:
            page = await listing.list_page(s, where, order=order, before=page.prev_cursor, limit=7)
            backward.insert(0, [r.id for r in page.rows])
    return forward, backward


async def _expected(db: Database, ids: set[int], order: str) -> list[int]:
    async with db.read() as s:
        rows = (
            await s.execute(
                select(Ticket.id, Ticket.updated_at, Ticket.number).where(Ticket.id.in_(ids))
            )
        ).all()
    if order == "number":
        return [r.id for r in sorted(rows, key=lambda r: r.number)]
    return [r.id for r in sorted(rows, key=lambda r: (r.updated_at, r.id), reverse=True)]


@pytest.mark.parametrize("threshold", [1, 10**9], ids=["probe", "collect"])
async def test_both_plans_page_the_same(
    db_url: str, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(db_url)
    try:
        await upgrade(db)
        words = await _seed_many(db)
        every = set().union(*words.values())
        monkeypatch.setattr(store.query, "FREQUENT_MATCHES", threshold)
        cases = {
            "common": words["common"],
            "rare": words["rare"],
            "common rare": words["common"] & words["rare"],
            "left": words["left"],
            "left right": set(),  # each common, never together
            "common -left": words["common"] - words["left"],
            "-common": every - words["common"],
        }
        for query, ids in cases.items():
            for order in ("updated", "number"):
                forward, backward = await _walk(db, query, order)
                expected = await _expected(db, ids, order)
                assert forward == expected, (query, order)  # no duplicates, no gaps
                assert set().union(*backward) == set(expected), (query, order)
                for chunk in backward:  # each page is a run of the expected order
                    at = expected.index(chunk[0]) if chunk else 0
                    assert chunk == expected[at : at + len(chunk)], (query, order)
        # The knob really switches the SQL: probing is a correlated EXISTS per ticket.
        where = compile_where(parse("common"), QueryContext(None, NOW, db.dialect))
        async with db.read() as s:
            planned = str((await plan_search(s, where)).compile(db.engine))
        assert ("EXISTS" in planned) == (threshold == 1)
    finally:
        await db.dispose()


async def test_relevance_ranks_subject_above_body(service: Service) -> None:
    body = await _ticket(service, "Question", "The printer again, the printer.")
    subject = await _ticket(service, "Printer broken", "It stopped.")
    other = await _ticket(service, "Scanner", "Nothing printed.")
    ctx = QueryContext(me_agent_id=None, now=service.clock(), dialect=service.db.dialect)
    query = parse("printer")
    rank = store.query.rank_subquery(query, ctx)
    async with service.db.read() as s:
        page = await listing.list_page(s, compile_where(query, ctx), order="relevance", rank=rank)
    assert [r.number for r in page.rows] == [subject, body]
    assert other not in [r.number for r in page.rows]


# --- migration 0006 -----------------------------------------------------------------------


async def test_migration_indexes_existing_tickets_and_downgrades(db_url: str) -> None:
    db = Database(db_url)
    try:
        await upgrade(db, "0005")
        async with db.write() as s:  # written as the old code did: rows only
            await s.execute(
                insert(Ticket),
                [
                    {"number": 1001, "subject": "Kerberos expired", "created_at": NOW},
                    {"number": 1002, "subject": "Lunch", "created_at": NOW},
                ],
            )
            ids = dict((await s.execute(select(Ticket.number, Ticket.id))).all())
            await s.execute(
                insert(Article),
                [
                    {"ticket_id": ids[1001], "kind": "email_in", "body_text": "renew with kinit"},
                    {"ticket_id": ids[1002], "kind": "email_in", "body_text": "pizza or sushi"},
                    {"ticket_id": ids[1002], "kind": "note", "body_text": "sushi it is"},
                ],
            )
        await upgrade(db, "0006")
        service = Service(db, clock=lambda: NOW)
        assert await _found(service, "kerberos kinit") == {1001}
        assert await _found(service, "pizza sushi") == {1002}
        assert await _found(service, '"it is"') == {1002}

        await upgrade_to(db, "0005", down=True)
        async with db.read() as s:
            if db.is_sqlite:
                old = "SELECT count(*) FROM article_fts WHERE article_fts MATCH 'sushi'"
            else:
                old = "SELECT count(*) FROM articles WHERE search_tsv @@ 'sushi'::tsquery"
            assert (await s.execute(text(old))).scalar_one() == 2
        await upgrade(db)
        assert await _found(service, "sushi") == {1002}
    finally:
        await db.dispose()


async def upgrade_to(db: Database, revision: str, *, down: bool = False) -> None:
    """Alembic downgrade (the store's migrate module only goes up)."""
    from alembic import command
    from sqlalchemy.engine import Connection

    from store.migrate import alembic_config

    def _run(conn: Connection) -> None:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_run)
