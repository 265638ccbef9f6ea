"""The `helpdesk` command against a real PostgreSQL (started by tests/services on 127.0.0.1).

The fixture's URL is `postgresql+asyncpg://...`; the tests hand the command the plain
`postgresql://...` form a user would type, so the URL normalisation is exercised too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.pg

Cli = Callable[..., Any]


@pytest.fixture
def plain_pg_url(pg_url: str) -> str:
    assert pg_url.startswith("postgresql+asyncpg://")
    return "postgresql://" + pg_url.split("://", 1)[1]


@pytest.fixture
def pg_store(plain_pg_url: str, hd: Cli, monkeypatch: pytest.MonkeyPatch) -> str:
    """`helpdesk init` (a real process) on a fresh database; HELPDESK_DB/AGENT point at it."""
    res = hd("init", "--db", plain_pg_url).ok()
    assert "Store ready: postgresql" in res.out_text
    monkeypatch.setenv("HELPDESK_DB", plain_pg_url)
    monkeypatch.setenv("HELPDESK_AGENT", "anna")
    return plain_pg_url


def test_empty_postgresql_database_says_run_helpdesk_init(plain_pg_url: str, hd: Cli) -> None:
    res = hd("agent", "list", "--db", plain_pg_url).failed(6)
    assert "no schema" in res.err_text and "helpdesk init" in res.err_text
    res = hd("db", "check", "--db", plain_pg_url).failed(6)
    assert "schema" in res.err_text


def test_main_flow_on_postgresql(
    pg_store: str, hd: Cli, cli: Cli, tmp_path: Path, show: Callable[[int], Any]
) -> None:
    info = cli("db", "check", "--json").ok().json()
    assert info["backend"] == "postgresql"
    assert info["ok"] is True
    assert info["url"].startswith("postgresql+asyncpg://")
    assert "postgresql" in (tmp_path / "config.toml").read_text()

    cli("queue", "add", "Support", "--address", "help@example.com").ok()
    cli(
        "agent",
        "add",
        "anna",
        "--name",
        "Anna",
        "--email",
        "anna@example.com",
        "--queue",
        "Support",
    ).ok()
    cli("agent", "add", "bob", "--name", "Bob").ok()
    agents = {a["login"]: a for a in cli("agent", "list", "--json").ok().json()}
    assert agents["anna"]["queues"] == ["Support"]

    created = (
        hd(
            "ticket",
            "create",
            "--subject",
            "Printer jam",
            "--from",
            "carol@acme.com",
            "--queue",
            "Support",
            "--json",
            input="Paper stuck in tray 2.\n",
        )
        .ok()
        .json()
    )
    n = created["number"]
    other = (
        cli(
            "ticket",
            "create",
            "--subject",
            "VPN",
            "--from",
            "dan@acme.com",
            "--body",
            "drops",
            "--json",
        )
        .ok()
        .json()["number"]
    )

    cli(
        "ticket",
        "update",
        str(n),
        "--status",
        "open",
        "--assign",
        "bob",
        "--tag",
        "+hardware",
        "--impact",
        "high",
        "--urgency",
        "high",
    ).ok()
    cli("ticket", "note", str(n), "--body", "Ordered a new roller.").ok()
    t = show(n)
    assert (t["status"], t["assignee"], t["tags"], t["priority"]) == (
        "open",
        "bob",
        ["hardware"],
        "urgent",
    )
    assert t["queue"] == "Support"
    assert [(a["kind"], a["internal"]) for a in t["articles"]] == [("phone", False), ("note", True)]
    assert t["articles"][0]["body"] == "Paper stuck in tray 2.\n"

    res = cli("ticket", "update", str(n), "--status", "merged").failed(5)
    assert "merging" in res.err_text
    res = cli("ticket", "update", str(n), "--status", "pending", "--if-version", "1").failed(4)
    assert "changed by someone else" in res.err_text

    cli("ticket", "update", str(other), "--postpone", "2d").ok()
    assert show(other)["status"] == "postponed"

    rows = cli("ticket", "list", "status:open", "--json").ok().json()
    assert [r["number"] for r in rows] == [n]
    assert rows[0]["assignee"] == "bob"
    ids = hd("ticket", "list", "status:postponed", "--ids").ok().out.split()
    assert ids == [str(other)]
    assert "Printer jam" in cli("ticket", "list").ok().out

    cli("ticket", "reply", str(n), "--body", "Fixed, please check.").ok()
    t = show(n)
    assert t["status"] == "answered"
    assert t["articles"][-1]["delivery_status"] == "queued"

    text = hd("ticket", "show", str(n)).ok().out
    assert f"#{n} Printer jam" in text and "INTERNAL NOTE" in text


def test_pipe_update_on_postgresql(
    pg_store: str, hd: Cli, cli: Cli, show: Callable[[int], Any]
) -> None:
    cli("agent", "add", "anna", "--name", "Anna").ok()
    nums = [
        cli("ticket", "create", "--subject", f"T{i}", "--from", "x@y.com", "--body", "b", "--json")
        .ok()
        .json()["number"]
        for i in range(3)
    ]
    ids = hd("ticket", "list", "status:new", "--ids").ok().out
    assert sorted(int(x) for x in ids.split()) == sorted(nums)
    res = hd("ticket", "update", "-", "--status", "pending", input=ids).ok()
    assert res.out.count("updated") == 3
    assert {show(n)["status"] for n in nums} == {"pending"}


def test_db_backup_with_pg_dump(pg_store: str, cli: Cli, hd: Cli, tmp_path: Path) -> None:
    cli("agent", "add", "anna", "--name", "Anna").ok()
    cli("ticket", "create", "--subject", "Keep me", "--from", "x@y.com", "--body", "b").ok()
    dump = tmp_path / "helpdesk.dump"
    res = hd("db", "backup", str(dump))
    print(f"db backup -> {res.code}: {res.out_text} {res.err_text}")
    assert "Traceback" not in res.err + res.out
    if shutil.which("pg_dump") is None:
        assert res.code != 0
        assert "pg_dump is not installed" in res.err_text
        return
    if res.code != 0:
        # e.g. a pg_dump older than the server: one clear line naming pg_dump
        lines = [ln for ln in res.err.splitlines() if ln.strip()]
        assert res.err_text.startswith("helpdesk: pg_dump failed"), res.err
        assert len(lines) == 1, res.err
        return
    assert dump.exists() and dump.stat().st_size > 0
    assert dump.read_bytes()[:5] == b"PGDMP", "a pg_dump custom-format archive"
    assert str(dump) in res.out_text
    if shutil.which("pg_restore"):
        import subprocess

        listing = subprocess.run(
            ["pg_restore", "--list", str(dump)], capture_output=True, text=True, check=True
        ).stdout
        assert "TABLE DATA public tickets" in listing


def test_wrong_database_name_is_one_clear_error(pg_url: str, hd: Cli) -> None:
    base = "postgresql://" + pg_url.split("://", 1)[1].rsplit("/", 1)[0]
    res = hd("agent", "list", "--db", f"{base}/no_such_db_xyz").failed(6)
    assert "cannot use the database" in res.err_text
    assert "no_such_db_xyz" in res.err_text


def test_server_outage_is_one_clear_error(pg_store: str, pg_server: Any, hd: Cli) -> None:
    hd("agent", "list").ok()
    pg_server.stop()  # the plugin restarts it after the test
    res = hd("agent", "list").failed(6)
    assert "cannot use the database" in res.err_text
