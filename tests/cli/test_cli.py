"""The `helpdesk` admin command, as a user drives it (SQLite).

Fixtures (tests/cli/conftest.py): `cli` runs the typer app in-process, `hd` runs the real
command in a subprocess, `store` is an initialised SQLite store with agent `anna` (exported as
HELPDESK_DB / HELPDESK_AGENT), `new_ticket` and `show` are shortcuts.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from store.engine import StoreError, check_not_network_fs
from store.models import Status
from store.service import Actor, Service
from tests.cli.conftest import with_service

REPO = Path(__file__).resolve().parents[2]

Cli = Callable[..., Any]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


# --------------------------------------------------------------------------- init & db
def test_init_creates_schema_writes_config_and_db_check_passes(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    url = f"sqlite:///{path}"
    res = cli("init", "--db", url).ok()
    assert "Store ready" in res.out_text
    assert path.exists()
    config = (tmp_path / "config.toml").read_text()
    assert str(path) in config, "init should remember the store in the user config"

    check = cli("db", "check", "--db", url, "--json").ok().json()
    assert check["ok"] is True
    assert check["backend"] == "sqlite"
    assert check["revision"] == check["head"]
    assert "schema" in cli("db", "check", "--db", url).ok().out_text

    # without --db, the next command uses the store named in the config
    cli("agent", "add", "zoe", "--name", "Zoe").ok()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT login FROM agents").fetchall() == [("zoe",)]

    # init is repeatable (upgrade of a current schema is a no-op)
    cli("init", "--db", url).ok()
    assert [a["login"] for a in cli("agent", "list", "--db", url, "--json").ok().json()] == ["zoe"]


def test_db_check_on_an_empty_database_names_helpdesk_init(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()  # a valid SQLite file without any tables
    url = f"sqlite:///{path}"
    res = cli("db", "check", "--db", url).failed(6)
    assert "helpdesk init" in res.err_text, res.err_text


def test_commands_on_an_empty_database_say_run_helpdesk_init(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    res = cli("agent", "list", "--db", f"sqlite:///{path}").failed(6)
    assert "no schema" in res.err_text
    assert "helpdesk init" in res.err_text


@pytest.mark.parametrize(
    "command", [("agent", "list"), ("db", "check"), ("ticket", "show", "1")], ids="-".join
)
def test_missing_sqlite_file_is_one_clear_error_and_is_not_created(
    hd: Cli, tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = tmp_path / "typo" / "missing.db"
    res = hd(*command, "--db", f"sqlite:///{path}").failed(6)
    assert str(path) in res.err_text or "no schema" in res.err_text
    assert "helpdesk init" in res.err_text
    assert not path.exists(), f"`helpdesk {' '.join(command)}` created a stray store at {path}"


def test_unreachable_postgresql_is_one_clear_error_without_password(hd: Cli) -> None:
    url = "postgresql://helpdesk:s3cretpw@127.0.0.1:1/helpdesk"
    res = hd("agent", "list", "--db", url).failed(6)
    assert "cannot use the database" in res.err_text
    assert "127.0.0.1:1" in res.err_text
    assert "s3cretpw" not in res.err + res.out, "the password must not be printed"


def test_unsupported_database_url_is_refused(hd: Cli) -> None:
    res = hd("agent", "list", "--db", "mysql://root@localhost/helpdesk").failed(6)
    assert "unsupported database" in res.err_text
    assert "postgresql://" in res.err_text


BAD_INPUT: list[tuple[str, ...]] = [
    ("ticket", "show", "abc"),
    ("ticket", "update", "abc", "--status", "open"),
    ("ticket", "merge", "N", "--into", "abc"),
    ("ticket", "reply", "N", "--body", "x", "--status", "bogus"),
    ("status", "label", "bogus", "Bogus"),
    ("ticket", "note", "N", "--body-file", "/nonexistent/note.txt"),
    ("ticket", "create", "--subject", "s", "--from", "a@b.c", "--body-file", "/nonexistent/x"),
    ("canned", "add", "x", "--body-file", "/nonexistent/x"),
    ("db", "backup", "/nonexistent/dir/backup.db"),
]


@pytest.mark.parametrize("args", BAD_INPUT, ids=lambda a: "-".join(a[:3]))
def test_bad_input_is_a_clear_message_never_a_traceback(
    store: Any, hd: Cli, new_ticket: Callable[..., int], args: tuple[str, ...]
) -> None:
    n = str(new_ticket())
    res = hd(*[n if a == "N" else a for a in args])
    assert res.code not in (0,), res.out
    assert "Traceback" not in res.err + res.out, f"helpdesk {' '.join(args)} showed a traceback"
    assert res.err.startswith("helpdesk:"), res.err


def test_error_messages_are_single_lines_on_a_pipe(
    store: Any, hd: Cli, new_ticket: Callable[..., int], tmp_path: Path
) -> None:
    """stderr is a pipe (cron mail, logs): an error must stay one line, not be wrapped at 80."""
    n = new_ticket()
    hd("ticket", "update", str(n), "--status", "solved").ok()
    cases = [
        (
            "agent",
            "list",
            "--db",
            f"sqlite:///{tmp_path / 'a-rather-long-directory-name' / 'x.db'}",
        ),
        ("agent", "list", "--db", "postgresql://helpdesk@127.0.0.1:1/helpdesk"),
        ("ticket", "update", str(n), "--status", "pending"),
    ]
    wrapped = []
    for args in cases:
        res = hd(*args)
        assert res.code != 0
        lines = [ln for ln in res.err.splitlines() if ln.strip()]
        if len(lines) != 1:
            wrapped.append(f"helpdesk {' '.join(args)} printed {len(lines)} lines:\n{res.err}")
    assert not wrapped, "\n".join(wrapped)


# --------------------------------------------------------------------------- network filesystems
@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "smb3", "fuse.sshfs", "fuseblk"])
def test_check_not_network_fs_refuses_network_mounts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fstype: str
) -> None:
    import store.engine

    monkeypatch.setattr(store.engine, "filesystem_type", lambda _path: fstype)
    with pytest.raises(StoreError, match="PostgreSQL"):
        check_not_network_fs(tmp_path / "helpdesk.db")


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "tmpfs", "overlay", "btrfs", None])
def test_check_not_network_fs_accepts_local_disks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fstype: str | None
) -> None:
    import store.engine

    monkeypatch.setattr(store.engine, "filesystem_type", lambda _path: fstype)
    check_not_network_fs(tmp_path / "helpdesk.db")


def test_cli_refuses_sqlite_on_nfs_and_points_to_postgresql(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import store.engine

    existing = tmp_path / "existing.db"
    cli("init", "--db", f"sqlite:///{existing}").ok()
    monkeypatch.setattr(store.engine, "filesystem_type", lambda _path: "nfs4")

    path = tmp_path / "on-nfs.db"
    res = cli("init", "--db", f"sqlite:///{path}").failed(6)
    assert "network filesystem" in res.err_text and "nfs4" in res.err_text
    assert "PostgreSQL" in res.err_text and "postgresql://" in res.err_text
    assert not path.exists(), "nothing should be created on a refused filesystem"

    res = cli("agent", "list", "--db", f"sqlite:///{existing}").failed(6)
    assert "PostgreSQL" in res.err_text


# --------------------------------------------------------------------------- shared store
def _shared_group() -> str:
    """A Unix group other than our primary one (root may create one)."""
    if os.geteuid() == 0:
        for name in ("staff", "users"):
            try:
                grp.getgrnam(name)
                return name
            except KeyError:
                continue
        subprocess.run(["groupadd", "helpdesk-test"], check=True)
        return "helpdesk-test"
    others = [g for g in os.getgroups() if g != os.getegid()]
    if not others:
        pytest.skip("needs root or membership of a second Unix group")
    return grp.getgrgid(others[0]).gr_name


def test_init_shared_makes_a_group_writable_store(cli: Cli, tmp_path: Path) -> None:
    group = _shared_group()
    gid = grp.getgrnam(group).gr_gid
    directory = tmp_path / "srv" / "helpdesk"
    res = cli("init", "--shared", str(directory), "--group", group).ok()
    assert f"group {group}" in res.out_text

    st = directory.stat()
    assert st.st_mode & stat.S_ISGID, "the directory must be setgid so new files get the group"
    assert st.st_gid == gid
    assert st.st_mode & 0o070 == 0o070, oct(st.st_mode)

    db = directory / "helpdesk.db"
    assert db.exists()
    assert db.stat().st_gid == gid
    assert db.stat().st_mode & 0o060 == 0o060, oct(db.stat().st_mode)

    # another process using the store: its -wal/-shm files must be group-usable too
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE counters SET value = value WHERE name = 'ticket'")
        conn.execute("COMMIT")
        for suffix in ("-wal", "-shm"):
            side = Path(f"{db}{suffix}")
            assert side.exists(), f"{side.name} missing while the store is open"
            assert side.stat().st_gid == gid, f"{side.name} not owned by group {group}"
            assert side.stat().st_mode & 0o060 == 0o060, f"{side.name}: {oct(side.stat().st_mode)}"
    finally:
        conn.close()

    # the written config points at the shared store and works
    assert str(db) in (tmp_path / "config.toml").read_text()
    assert cli("db", "check", "--json").ok().json()["ok"] is True


def test_init_shared_with_unknown_group_fails_clearly(cli: Cli, tmp_path: Path) -> None:
    res = cli("init", "--shared", str(tmp_path / "s"), "--group", "no-such-group-xyz").failed(1)
    assert "no-such-group-xyz" in res.err_text


# --------------------------------------------------------------------------- agents & queues
AGENT_FIELDS = {"login", "name", "email", "role", "active", "queues", "languages", "skills"}


def test_agent_add_and_list(store: Any, cli: Cli) -> None:
    res = cli(
        "agent",
        "add",
        "bob",
        "--name",
        "Bob Builder",
        "--email",
        "bob@example.com",
        "--queue",
        "Support",
        "--language",
        "lv",
    ).ok()
    assert "bob" in res.out_text
    agents = {a["login"]: a for a in cli("agent", "list", "--json").ok().json()}
    assert set(agents) == {"anna", "bob"}
    for a in agents.values():
        assert set(a) == AGENT_FIELDS, "--json field names are a stable interface"
    assert agents["bob"] == {
        "login": "bob",
        "name": "Bob Builder",
        "email": "bob@example.com",
        "role": "agent",
        "active": True,
        "queues": ["Support"],
        "languages": ["lv"],
        "skills": [],
    }
    assert agents["anna"]["role"] == "admin"
    table = cli("agent", "list").ok().out
    assert "Bob Builder" in table and "anna" in table

    res = cli("agent", "add", "bob", "--name", "Again").failed(5)
    assert "already exists" in res.err_text
    res = cli("agent", "add", "carl", "--queue", "Nowhere").failed(3)
    assert "Nowhere" in res.err_text


def test_disabled_agent_cannot_act(store: Any, cli: Cli, new_ticket: Callable[..., int]) -> None:
    n = new_ticket()
    cli("agent", "add", "bob", "--name", "Bob").ok()
    cli("ticket", "note", str(n), "--body", "ok", "--as", "bob").ok()

    assert "disabled" in cli("agent", "disable", "bob").ok().out_text
    agents = {a["login"]: a for a in cli("agent", "list", "--json").ok().json()}
    assert agents["bob"]["active"] is False

    res = cli("ticket", "note", str(n), "--body", "still here?", "--as", "bob").failed(5)
    assert "'bob' is disabled" in res.err_text
    res = cli("ticket", "update", str(n), "--status", "open", "--as", "bob").failed(5)
    assert "disabled" in res.err_text
    res = cli("ticket", "update", str(n), "--assign", "bob").failed(5)
    assert "disabled" in res.err_text

    cli("agent", "enable", "bob").ok()
    cli("ticket", "update", str(n), "--status", "open", "--as", "bob").ok()


def test_global_as_option_acts_as_that_agent(
    store: Any, cli: Cli, new_ticket: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`helpdesk --as bob ticket note ...` (the option `helpdesk --help` offers) acts as bob."""
    n = new_ticket()
    cli("agent", "add", "bob", "--name", "Bob").ok()
    monkeypatch.delenv("HELPDESK_AGENT")  # the Unix user running the tests is not an agent
    cli("--as", "bob", "ticket", "note", str(n), "--body", "from bob").ok()
    actors = store.sqlite(
        "SELECT a.actor FROM audit_events a JOIN tickets t ON t.id = a.ticket_id "
        "WHERE t.number = ? AND a.action = 'noted'",
        (n,),
    )
    assert actors == [("agent:bob",)]


def test_unknown_agent_is_not_found(store: Any, cli: Cli, new_ticket: Callable[..., int]) -> None:
    n = new_ticket()
    res = cli("ticket", "note", str(n), "--body", "x", "--as", "ghost").failed(3)
    assert "no agent 'ghost'" in res.err_text
    assert "helpdesk agent add ghost" in res.err_text


def test_queue_add_and_list(store: Any, cli: Cli) -> None:
    cli(
        "queue", "add", "IT Support", "--address", "IT@Example.com", "--address", "it2@example.com"
    ).ok()
    queues = {q["name"]: q for q in cli("queue", "list", "--json").ok().json()}
    assert set(queues) == {"Billing", "IT Support", "Support"}
    assert queues["IT Support"] == {
        "name": "IT Support",
        "addresses": ["it@example.com", "it2@example.com"],
    }
    assert queues["Support"]["addresses"] == ["help@example.com"]
    assert "IT Support" in cli("queue", "list").ok().out
    res = cli("queue", "add", "Billing").failed(5)
    assert "already exists" in res.err_text


# --------------------------------------------------------------------------- ticket create & show
def test_ticket_create_from_body_option(store: Any, cli: Cli, show: Callable[[int], Any]) -> None:
    res = cli(
        "ticket",
        "create",
        "--subject",
        "VPN drops",
        "--from",
        "Erin@Acme.com",
        "--name",
        "Erin",
        "--body",
        "Every 10 minutes.",
        "--queue",
        "support",
        "--tag",
        "network",
    ).ok()
    assert res.out.startswith("Created #")
    n = int(res.out.strip().removeprefix("Created #"))
    t = show(n)
    assert t["subject"] == "VPN drops"
    assert t["status"] == "new"
    assert t["customer"] == "erin@acme.com"
    assert t["customer_name"] == "Erin"
    assert t["queue"] == "Support"
    assert t["tags"] == ["network"]
    assert t["version"] == 1
    assert [a["body"] for a in t["articles"]] == ["Every 10 minutes."]
    assert t["articles"][0]["internal"] is False


def test_ticket_create_from_body_file(
    store: Any, cli: Cli, show: Callable[[int], Any], tmp_path: Path
) -> None:
    f = tmp_path / "msg.txt"
    f.write_text("Line one\nRīga — привет\n")
    t = (
        cli(
            "ticket",
            "create",
            "--subject",
            "From file",
            "--from",
            "a@b.com",
            "--body-file",
            str(f),
            "--json",
        )
        .ok()
        .json()
    )
    assert show(t["number"])["articles"][0]["body"] == "Line one\nRīga — привет\n"


def test_ticket_create_from_stdin(store: Any, hd: Cli, show: Callable[[int], Any]) -> None:
    res = hd(
        "ticket",
        "create",
        "--subject",
        "Piped",
        "--from",
        "c@d.com",
        "--json",
        input="The printer says PC LOAD LETTER.\n",
    ).ok()
    n = res.json()["number"]
    assert show(n)["articles"][0]["body"] == "The printer says PC LOAD LETTER.\n"


def test_ticket_create_with_unknown_queue_is_not_found(store: Any, cli: Cli) -> None:
    res = cli(
        "ticket", "create", "--subject", "s", "--from", "a@b.com", "--body", "b", "--queue", "Nope"
    ).failed(3)
    assert "no queue 'Nope'" in res.err_text


def test_ticket_show_text_and_not_found(
    store: Any, cli: Cli, new_ticket: Callable[..., int]
) -> None:
    n = new_ticket("Printer jam on floor 3")
    out = cli("ticket", "show", f"#{n}").ok().out
    assert f"#{n} Printer jam on floor 3" in out
    assert "status: New" in out
    assert "bob@acme.com" in out
    assert "It is broken." in out
    res = cli("ticket", "show", "999999").failed(3)
    assert "no ticket #999999" in res.err_text


# --------------------------------------------------------------------------- ticket update
def test_update_status_priority_impact_urgency(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    res = cli("ticket", "update", str(n), "--status", "open").ok()
    assert f"#{n} updated (status open, version 2)" in res.out_text
    assert show(n)["status"] == "open"

    cli("ticket", "update", str(n), "--impact", "high", "--urgency", "high").ok()
    t = show(n)
    assert (t["impact"], t["urgency"], t["priority"]) == ("high", "high", "urgent")
    assert t["priority_overridden_by"] is None

    cli("ticket", "update", str(n), "--priority", "low").ok()
    t = show(n)
    assert t["priority"] == "low"
    assert t["priority_overridden_by"] == "agent:anna"
    assert "(set by agent:anna)" in cli("ticket", "show", str(n)).ok().out

    cli("ticket", "update", str(n), "--priority", "auto").ok()
    t = show(n)
    assert (t["priority"], t["priority_overridden_by"]) == ("urgent", None)

    res = cli("ticket", "update", str(n), "--priority", "extreme").failed(5)
    assert "unknown priority" in res.err_text
    res = cli("ticket", "update", str(n), "--impact", "huge").failed(5)
    assert "unknown impact" in res.err_text
    res = cli("ticket", "update", str(n), "--status", "stauts").failed(5)
    assert "expected one of" in res.err_text


def test_update_assign_tags_queue(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    cli(
        "ticket",
        "update",
        str(n),
        "--assign",
        "anna",
        "--tag",
        "+billing",
        "--tag",
        "vip",
        "--queue",
        "billing",
    ).ok()
    t = show(n)
    assert t["assignee"] == "anna"
    assert sorted(t["tags"]) == ["billing", "vip"]
    assert t["queue"] == "Billing"

    cli("ticket", "update", str(n), "--assign", "none", "--tag", "-billing", "--queue", "").ok()
    t = show(n)
    assert t["assignee"] is None
    assert t["tags"] == ["vip"]
    assert t["queue"] is None

    res = cli("ticket", "update", str(n), "--tag", "two words").failed(5)
    assert "single words" in res.err_text
    assert show(n)["tags"] == ["vip"]


def test_update_with_unknown_agent_or_queue_is_not_found(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    """Exit 3 means 'not found' (README), as for `ticket create --queue Nope`."""
    n = new_ticket()
    res = cli("ticket", "update", str(n), "--assign", "ghost").failed(3)
    assert "no agent 'ghost'" in res.err_text
    res = cli("ticket", "update", str(n), "--queue", "Nowhere").failed(3)
    assert "no queue 'Nowhere'" in res.err_text
    assert show(n)["version"] == 1


def test_update_postpone_two_days(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    cli("ticket", "update", str(n), "--postpone", "2d").ok()
    t = show(n)
    assert t["status"] == "postponed"
    expected = datetime.now(UTC) + timedelta(days=2)
    assert abs(_parse_time(t["postponed_until"]) - expected) < timedelta(minutes=2)
    assert "postponed until" in cli("ticket", "show", str(n)).ok().out

    res = cli("ticket", "update", str(n), "--postpone", "2026-01-01T09:00").failed(5)
    assert "future" in res.err_text
    res = cli("ticket", "update", str(n), "--postpone", "tomorrowish").failed(5)
    assert "cannot read the time" in res.err_text
    res = cli("ticket", "update", str(n), "--postpone", "3h", "--status", "open").failed(5)
    assert "postponed" in res.err_text

    # back to open clears the wake time
    cli("ticket", "update", str(n), "--status", "open").ok()
    t = show(n)
    assert (t["status"], t["postponed_until"]) == ("open", None)


def test_refused_transitions_exit_5_and_name_allowed_states(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    cli("ticket", "update", str(n), "--status", "solved").ok()
    res = cli("ticket", "update", str(n), "--status", "pending").failed(5)
    assert "cannot change status from solved to pending" in res.err_text
    assert "allowed: closed, open" in res.err_text
    assert show(n)["status"] == "solved"

    res = cli("ticket", "update", str(n), "--status", "merged").failed(5)
    assert "only by merging" in res.err_text

    cli("ticket", "update", str(n), "--status", "closed").ok()
    res = cli("ticket", "update", str(n), "--status", "open").failed(5)
    assert "allowed: none (final state)" in res.err_text
    assert show(n)["status"] == "closed"


def test_stale_if_version_is_a_conflict(
    store: Any, hd: Cli, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    v = show(n)["version"]
    cli("ticket", "update", str(n), "--tag", "+first").ok()  # someone else's change
    res = hd("ticket", "update", str(n), "--status", "solved", "--if-version", str(v)).failed(4)
    assert "changed by someone else" in res.err_text
    t = show(n)
    assert t["status"] == "new", "a stale write must not be applied"
    assert t["version"] == v + 1
    cli("ticket", "update", str(n), "--status", "solved", "--if-version", str(v + 1)).ok()
    assert show(n)["status"] == "solved"


def test_bulk_update_reports_the_failed_ticket_and_updates_the_others(
    store: Any, hd: Cli, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    a, b, c = new_ticket("A"), new_ticket("B"), new_ticket("C")
    cli("ticket", "update", str(b), "--status", "closed").ok()

    res = hd("ticket", "update", str(a), str(b), str(c), "--status", "open")
    assert res.code == 5, (res.code, res.err)
    assert "Traceback" not in res.err
    assert f"#{b} failed" in res.err_text
    assert "cannot change status from closed to open" in res.err_text
    assert f"#{a} updated" in res.out_text and f"#{c} updated" in res.out_text
    assert f"#{a} failed" not in res.err_text and f"#{c} failed" not in res.err_text
    assert [show(x)["status"] for x in (a, b, c)] == ["open", "closed", "open"]

    # a missing ticket among good ones: not-found exit code, the others still change
    res = cli("ticket", "update", str(a), "999999", str(c), "--tag", "+batch")
    assert res.code == 3
    assert "#999999 failed: no ticket #999999" in res.err_text
    assert show(a)["tags"] == ["batch"] and show(c)["tags"] == ["batch"]

    # mixed reasons: a generic non-zero exit, and --json says which and why
    res = cli("ticket", "update", str(a), str(b), "999999", "--status", "pending", "--json")
    assert res.code == 1
    rows = {r["number"]: r for r in res.json()}
    assert rows[a] == {"number": a, "ok": True, "error": None}
    assert rows[b]["ok"] is False and "closed" in rows[b]["error"]
    assert rows[999999]["ok"] is False and "no ticket" in rows[999999]["error"]


def test_update_reads_numbers_from_stdin(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    a, b = new_ticket("A"), new_ticket("B")
    cli("ticket", "update", "-", "--tag", "+batch", input=f"{a}\n#{b}\n").ok()
    assert show(a)["tags"] == ["batch"] and show(b)["tags"] == ["batch"]


# --------------------------------------------------------------------------- ticket list
def test_ticket_list_json_and_ids(store: Any, cli: Cli, new_ticket: Callable[..., int]) -> None:
    a, b, c = new_ticket("Alpha"), new_ticket("Beta"), new_ticket("Gamma")
    cli("ticket", "update", str(a), str(c), "--status", "open").ok()
    rows = cli("ticket", "list", "status:open", "--json").ok().json()
    assert sorted(r["number"] for r in rows) == sorted([a, c])
    assert {r["status"] for r in rows} == {"open"}
    assert set(rows[0]) == {
        "number",
        "subject",
        "status",
        "priority",
        "assignee",
        "customer",
        "queue",
        "updated_at",
    }
    assert rows[0]["customer"] == "bob@acme.com"

    ids = cli("ticket", "list", "status:new", "--ids").ok().out.split()
    assert ids == [str(b)]

    limited = cli("ticket", "list", "--limit", "2", "--json").ok().json()
    assert len(limited) == 2

    table = cli("ticket", "list", "status:open").ok().out
    assert "Alpha" in table and "Gamma" in table and "Beta" not in table


def test_ticket_list_bad_query_points_at_the_column(store: Any, cli: Cli) -> None:
    res = cli("ticket", "list", "status:open stauts:new").failed(5)
    assert "unknown key 'stauts'" in res.err_text
    assert "did you mean 'status'" in res.err_text
    _assert_caret_under(res.err, "status:open stauts:new", "stauts")


def test_ticket_list_pipe_into_update(
    store: Any, hd: Cli, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    """RT style: `helpdesk ticket list QUERY --ids | helpdesk ticket update - --status open`."""
    a, b, c = new_ticket("A"), new_ticket("B"), new_ticket("C")
    cli("ticket", "update", str(a), str(c), "--status", "pending").ok()
    env = dict(os.environ)
    lister = subprocess.Popen(
        [sys.executable, "-m", "cli", "ticket", "list", "status:pending", "--ids"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    updater = subprocess.run(
        [sys.executable, "-m", "cli", "ticket", "update", "-", "--status", "open"],
        cwd=REPO,
        stdin=lister.stdout,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert lister.stdout is not None
    lister.stdout.close()
    assert lister.wait(timeout=120) == 0, lister.stderr.read() if lister.stderr else ""
    assert updater.returncode == 0, updater.stderr
    assert f"#{a} updated" in updater.stdout and f"#{c} updated" in updater.stdout
    assert [show(x)["status"] for x in (a, b, c)] == ["open", "new", "open"]


# --------------------------------------------------------------------------- notes, replies, merge
def test_note_is_internal(
    store: Any, cli: Cli, hd: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    assert (
        "Internal note added" in cli("ticket", "note", str(n), "--body", "Call back at 3").ok().out
    )
    hd("ticket", "note", str(n), input="Second note from stdin\n").ok()
    t = show(n)
    kinds = [(a["kind"], a["internal"], a["body"]) for a in t["articles"]]
    assert kinds == [
        ("phone", False, "It is broken."),
        ("note", True, "Call back at 3"),
        ("note", True, "Second note from stdin\n"),
    ]
    assert "INTERNAL NOTE" in cli("ticket", "show", str(n)).ok().out
    res = cli("ticket", "note", str(n), "--body", "   ").failed(5)
    assert "empty" in res.err_text


def test_reply_sets_answered_and_queues_the_mail(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    res = cli("ticket", "reply", str(n), "--body", "We are on it.").ok()
    assert "queued for delivery to bob@acme.com" in res.out_text
    t = show(n)
    assert t["status"] == "answered"
    assert t["first_response_at"] is not None
    reply = t["articles"][-1]
    assert reply["kind"] == "email_out"
    assert reply["internal"] is False
    assert reply["delivery_status"] == "queued"
    assert reply["to"] == "bob@acme.com"
    assert reply["body"] == "We are on it."
    assert "reply [queued]" in cli("ticket", "show", str(n)).ok().out
    assert "Anna Admin" in cli("ticket", "show", str(n)).ok().out  # who wrote the reply

    cli("ticket", "reply", str(n), "--body", "Please send a photo.", "--status", "pending").ok()
    assert show(n)["status"] == "pending"


def test_first_reply_that_solves_counts_as_first_contact_resolution(
    store: Any, cli: Cli, new_ticket: Callable[..., int]
) -> None:
    # Real clock (a subprocess): the reply article and first_response_at must be one instant,
    # or the reply itself would count as a second contact.
    answered_once, asked_back = new_ticket("Password reset"), new_ticket("VPN")
    cli("ticket", "reply", str(answered_once), "--body", "Done, please try again.").ok()
    cli("ticket", "update", str(answered_once), "--status", "solved").ok()
    cli("ticket", "reply", str(asked_back), "--body", "Which client?").ok()
    cli("ticket", "reply", str(asked_back), "--body", "Fixed.", "--status", "solved").ok()
    summary = cli("report", "--since", "1d", "--json").ok().json()["summary"]
    assert (summary["fcr"]["count"], summary["fcr"]["base"]) == (1, 2)


def test_merge_moves_history_and_leaves_a_pointer(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    src, dst = new_ticket("Duplicate"), new_ticket("Original")
    cli("ticket", "note", str(src), "--body", "note on the duplicate").ok()
    res = cli("ticket", "merge", str(src), "--into", str(dst)).ok()
    assert f"#{src} merged into #{dst}" in res.out_text

    s, d = show(src), show(dst)
    assert s["status"] == "merged"
    assert s["merged_into"] == dst
    bodies = [a["body"] for a in d["articles"]]
    assert "note on the duplicate" in bodies
    assert any(f"#{src}" in b and "merged into this one" in b for b in bodies)
    assert f"merged into: #{dst}" in cli("ticket", "show", str(src)).ok().out

    res = cli("ticket", "merge", str(src), "--into", str(dst)).failed(5)
    assert "already merged" in res.err_text
    res = cli("ticket", "merge", str(dst), "--into", str(dst)).failed(5)
    assert "itself" in res.err_text


# --------------------------------------------------------------------------- canned & views
def test_canned_add_and_list(store: Any, cli: Cli, tmp_path: Path) -> None:
    cli("canned", "add", "thanks", "--body", "Thanks, {{customer.name}}!").ok()
    f = tmp_path / "vpn.txt"
    f.write_text("Restart the VPN client.\n")
    cli("canned", "add", "vpn", "--body-file", str(f)).ok()
    cli("canned", "add", "mine", "--body", "personal", "--owner", "anna").ok()
    cli("canned", "add", "thanks", "--body", "Thank you!").ok()  # replaces
    items = {c["name"]: c for c in cli("canned", "list", "--json").ok().json()}
    assert items == {
        "mine": {"name": "mine", "body": "personal", "shared": False},
        "thanks": {"name": "thanks", "body": "Thank you!", "shared": True},
        "vpn": {"name": "vpn", "body": "Restart the VPN client.\n", "shared": True},
    }
    assert "Restart the VPN" in cli("canned", "list").ok().out


def _assert_caret_under(err: str, query: str, word: str) -> None:
    lines = err.splitlines()
    idx = next((i for i, ln in enumerate(lines) if ln.strip() == query), None)
    assert idx is not None and idx + 1 < len(lines), f"the query is not echoed:\n{err}"
    caret_line = lines[idx + 1]
    assert caret_line.strip() == "^", caret_line
    assert caret_line.index("^") == lines[idx].index(word), f"caret misplaced:\n{err}"


def test_view_add_and_list(store: Any, cli: Cli) -> None:
    cli("view", "add", "My open", "status:open assignee:me").ok()
    cli("view", "add", "Billing", "queue:Billing -tag:spam", "--shared").ok()
    views = {v["name"]: v for v in cli("view", "list", "--json").ok().json()}
    assert views == {
        "My open": {"name": "My open", "query": "status:open assignee:me", "shared": False},
        "Billing": {"name": "Billing", "query": "queue:Billing -tag:spam", "shared": True},
    }
    assert "assignee:me" in cli("view", "list").ok().out


def test_view_add_bad_query_shows_the_column(store: Any, cli: Cli) -> None:
    res = cli("view", "add", "Broken", "status:open stauts:new").failed(5)
    assert "unknown key 'stauts' at column 13" in res.err_text
    _assert_caret_under(res.err, "status:open stauts:new", "stauts")
    assert cli("view", "list", "--json").ok().json() == [], "a bad view must not be saved"


# --------------------------------------------------------------------------- priority & labels
def test_priority_matrix_set_changes_derived_priority(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    before = new_ticket("Before", "--impact", "high", "--urgency", "low")
    assert show(before)["priority"] == "normal"  # ITIL default

    matrix = cli("priority", "matrix", "--set", "high/low=high", "--json").ok().json()
    assert matrix["high/low"] == "high"
    assert matrix["high/high"] == "urgent"
    assert cli("priority", "matrix", "--json").ok().json()["high/low"] == "high"

    after = new_ticket("After", "--impact", "high", "--urgency", "low")
    t = show(after)
    assert t["priority"] == "high"
    assert t["priority_overridden_by"] is None
    assert (
        "priority: high (impact high x urgency low)" in cli("ticket", "show", str(after)).ok().out
    )

    res = cli("priority", "matrix", "--set", "high/low").failed(5)
    assert "IMPACT/URGENCY=PRIORITY" in res.err_text
    res = cli("priority", "matrix", "--set", "huge/low=high").failed(5)
    assert "unknown impact" in res.err_text


def test_status_label_is_shown(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    n = new_ticket()
    res = cli("status", "label", "pending", "Waiting on you").ok()
    assert "pending: Waiting on you" in res.out_text
    cli("ticket", "update", str(n), "--status", "pending").ok()
    assert "status: Waiting on you" in cli("ticket", "show", str(n)).ok().out
    t = show(n)
    assert (t["status"], t["status_label"]) == ("pending", "Waiting on you")
    assert "Waiting on you" in cli("status", "list").ok().out

    cli("status", "label", "pending", "Gaida jūs", "--lang", "lv").ok()
    assert "Gaida jūs" in cli("status", "list", "--lang", "lv").ok().out
    assert show(n)["status_label"] == "Waiting on you"  # agents' label unchanged


def test_status_label_shown_in_ticket_list(
    store: Any, cli: Cli, new_ticket: Callable[..., int]
) -> None:
    n = new_ticket()
    cli("status", "label", "pending", "Waiting on you").ok()
    cli("ticket", "update", str(n), "--status", "pending").ok()
    assert "Waiting on you" in cli("ticket", "list", "status:pending").ok().out


# --------------------------------------------------------------------------- tick
def test_tick_wakes_postponed_tickets_whose_time_passed(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    due, later = new_ticket("Due"), new_ticket("Later")
    cli("ticket", "update", str(later), "--postpone", "2d").ok()
    past = datetime.now(UTC) - timedelta(hours=3)

    async def postpone_in_the_past(service: Service) -> None:
        agent = await service.agent("anna")
        await service.update_ticket(
            Actor("agent", "anna", agent.id), due, postpone_until=past + timedelta(hours=1)
        )

    with_service(store.url, postpone_in_the_past, past)
    assert show(due)["status"] == "postponed"

    res = cli("tick", "--json").ok().json()
    assert res["woken"] == [due]
    t = show(due)
    assert (t["status"], t["postponed_until"]) == ("open", None)
    assert show(later)["status"] == "postponed", "a ticket snoozed into the future stays asleep"

    assert "woken: 0" in cli("tick").ok().out_text


def test_tick_closes_tickets_solved_long_ago(
    store: Any, cli: Cli, new_ticket: Callable[..., int], show: Callable[[int], Any]
) -> None:
    old, recent = new_ticket("Old"), new_ticket("Recent")
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)

    async def solve(service: Service) -> None:
        agent = await service.agent("anna")
        await service.update_ticket(Actor("agent", "anna", agent.id), old, status=Status.SOLVED)

    with_service(store.url, solve, eight_days_ago)
    cli("ticket", "update", str(recent), "--status", "solved").ok()
    assert cli("tick", "--json").ok().json() == {"woken": [], "closed": [old]}
    assert show(old)["status"] == "closed"
    assert show(recent)["status"] == "solved"


# --------------------------------------------------------------------------- backup & demo
def test_db_backup_sqlite_is_a_readable_copy(
    store: Any, cli: Cli, new_ticket: Callable[..., int], tmp_path: Path
) -> None:
    numbers = [new_ticket(f"T{i}") for i in range(3)]
    backup = tmp_path / "backup.db"
    res = cli("db", "backup", str(backup)).ok()
    assert str(backup) in res.out_text
    with sqlite3.connect(backup) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM tickets").fetchone() == (3,)
    assert store.sqlite("SELECT count(*) FROM tickets") == [(3,)]
    # the copy is a working store
    copy_url = f"sqlite:///{backup}"
    assert cli("db", "check", "--db", copy_url, "--json").ok().json()["ok"] is True
    t = cli("ticket", "show", str(numbers[1]), "--db", copy_url, "--json").ok().json()
    assert t["subject"] == "T1"


def test_db_backup_of_a_missing_store_fails_clearly(cli: Cli, tmp_path: Path) -> None:
    res = cli("db", "backup", str(tmp_path / "b.db"), "--db", f"sqlite:///{tmp_path / 'no.db'}")
    res.failed(6)
    assert "no SQLite store" in res.err_text
    assert not (tmp_path / "b.db").exists()


def test_demo_builds_a_store_that_ticket_list_reads(hd: Cli, tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    url = f"sqlite:///{path}"
    res = hd("demo", "--tickets", "300", "--no-open", "--db", url, timeout=300).ok()
    assert "Demo store with 300 tickets" in res.err_text
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM tickets").fetchone() == (300,)
        assert conn.execute("SELECT count(*) FROM queues").fetchone()[0] >= 2
    agents = [a["login"] for a in hd("agent", "list", "--db", url, "--json").ok().json()]
    assert getpass.getuser() in agents, "the demo makes the current Unix user an agent"

    rows = hd("ticket", "list", "status:open", "--json", "--db", url).ok().json()
    assert rows, "a demo store should have open tickets"
    assert {r["status"] for r in rows} == {"open"}

    again = hd("demo", "--tickets", "300", "--no-open", "--db", url).ok()
    assert "existing demo store" in again.err_text
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM tickets").fetchone() == (300,)


def test_json_output_is_plain_json(store: Any, hd: Cli, new_ticket: Callable[..., int]) -> None:
    """--json output parses as JSON even through a pipe (no colours, no wrapping)."""
    n = new_ticket("A subject long enough that a terminal renderer might want to wrap it " * 2)
    res = hd("ticket", "show", str(n), "--json").ok()
    data = json.loads(res.out)
    assert data["number"] == n
    assert "\x1b[" not in res.out
