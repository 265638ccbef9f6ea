"""The sync's FETCH reader (`engine.fetch_items`) against a scripted IMAP server: whatever the
server sends around the bodies, the result is imapclient's own `fetch`, and errors are the
same errors."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from mail_sync import engine
from mail_sync.engine import fetch_items

BODY_A = b"From: a@example.com\r\nSubject: one\r\n\r\nHello {3}\r\n* 9 FETCH (UID 1)\r\n"
BODY_B = b"From: b@example.com\r\nSubject: two\r\n\r\nA second {mail}\r\n"


def _lit(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


@contextmanager
def scripted_imap(fetch_reply: Callable[[bytes], bytes]) -> Iterator[int]:
    """A one-connection-at-a-time IMAP server on 127.0.0.1; `fetch_reply(tag)` is sent as
    the whole answer to a UID FETCH (it may close the connection by ending with CLOSE)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # the accept loop notices `stop`
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        conn.settimeout(10)
        f = conn.makefile("rb")
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] scripted\r\n")
        while line := f.readline():
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            command = rest.split(b" ", 2)
            verb = command[0].upper()
            if verb == b"UID" and command[1].upper() == b"FETCH":
                reply = fetch_reply(tag)
                closing = reply.endswith(b"CLOSE")
                conn.sendall(reply.removesuffix(b"CLOSE"))
                if closing:
                    break
            elif verb == b"SELECT" or verb == b"EXAMINE":
                conn.sendall(
                    b"* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] ok\r\n"
                    b"* FLAGS (\\Seen)\r\n" + tag + b" OK [READ-ONLY] done\r\n"
                )
            elif verb == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                break
            else:  # LOGIN, NOOP, CAPABILITY...
                conn.sendall(tag + b" OK done\r\n")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # OSError: the client went away
                serve(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def _client(port: int) -> IMAPClient:
    client = IMAPClient("127.0.0.1", port=port, ssl=False, timeout=10)
    client.login("u", "p")
    client.select_folder("INBOX", readonly=True)
    return client


def _both(reply: Callable[[bytes], bytes], uids: list[int], item: str) -> tuple[object, object]:
    """(fetch_items, imapclient's fetch) on the same script; the connection works after."""
    with scripted_imap(reply) as port:
        ours_client = _client(port)
        ours = fetch_items(ours_client, uids, item)
        ours_client.noop()
        ours_client.logout()
        theirs_client = _client(port)
        theirs = dict(theirs_client.fetch(uids, [item]))
        theirs_client.logout()
    return ours, theirs


def test_bodies_with_unsolicited_responses_between_them_come_back_as_imapclients() -> None:
    def reply(tag: bytes) -> bytes:
        return (
            b"* 1 FETCH (UID 11 BODY[] " + _lit(BODY_A) + b")\r\n"
            b"* 4 EXISTS\r\n"
            b"* 1 RECENT\r\n"
            b"* 3 FETCH (FLAGS (\\Seen) UID 30)\r\n"
            b"* 2 FETCH (UID 12 BODY[] " + _lit(BODY_B) + b")\r\n"
            b"* OK [ALERT] still here\r\n" + tag + b" OK fetch done\r\n"
        )

    ours, theirs = _both(reply, [11, 12], "BODY.PEEK[]")
    assert ours == theirs
    assert isinstance(ours, dict)
    assert ours[11][b"BODY[]"] == BODY_A and ours[12][b"BODY[]"] == BODY_B
    assert 30 not in ours, "an unsolicited FETCH of another message is dropped, as imapclient does"


def test_items_in_another_order_and_two_literals_in_one_response() -> None:
    head = b"From: c@example.com\r\n\r\n"

    def reply(tag: bytes) -> bytes:
        return (
            b"* 1 FETCH (RFC822.SIZE 99 BODY[HEADER] "
            + _lit(head)
            + b" UID 11 BODY[] "
            + _lit(BODY_A)
            + b")\r\n"
            b"* 2 FETCH (UID 12 RFC822.SIZE 42)\r\n" + tag + b" OK done\r\n"
        )

    ours, theirs = _both(reply, [11, 12], "BODY.PEEK[]")
    assert ours == theirs
    assert isinstance(ours, dict)
    assert ours[11][b"BODY[]"] == BODY_A and ours[11][b"BODY[HEADER]"] == head
    assert ours[12][b"RFC822.SIZE"] == 42


def test_sizes_as_imapclient_reads_them() -> None:
    def reply(tag: bytes) -> bytes:
        return (
            b"* 1 FETCH (UID 11 RFC822.SIZE 1234)\r\n* 2 FETCH (UID 12 RFC822.SIZE 5)\r\n"
            + tag
            + b" OK done\r\n"
        )

    ours, theirs = _both(reply, [11, 12], "RFC822.SIZE")
    assert ours == theirs
    assert isinstance(ours, dict)
    assert {uid: v[b"RFC822.SIZE"] for uid, v in ours.items()} == {11: 1234, 12: 5}


def test_a_refused_fetch_is_the_same_error() -> None:
    with scripted_imap(lambda tag: tag + b" NO [SERVERBUG] backend down\r\n") as port:
        client = _client(port)
        with pytest.raises(IMAPClientError, match="backend down") as ours:
            fetch_items(client, [11], "BODY.PEEK[]")
        client.noop()  # the connection is still in step
        client.logout()
    assert not isinstance(ours.value, IMAPClientAbortError)


@pytest.mark.parametrize(
    "reply",
    [
        # the server says goodbye in the middle of the answer and hangs up
        lambda tag: (
            b"* 1 FETCH (UID 11 BODY[] " + _lit(BODY_A) + b")\r\n* BYE shutting down\r\nCLOSE"
        ),
        # the connection drops inside a literal
        lambda tag: b"* 1 FETCH (UID 11 BODY[] {500}\r\nFrom: a@example.com\r\nCLOSE",
        # ... or before the status line
        lambda tag: b"* 1 FETCH (UID 11 BODY[] " + _lit(BODY_A) + b")\r\nCLOSE",
    ],
    ids=["bye", "eof-in-literal", "eof-before-status"],
)
def test_a_connection_lost_mid_fetch_is_an_abort(reply: Callable[[bytes], bytes]) -> None:
    """An abort makes the engine reconnect and fetch the batch again (nothing is half-read)."""
    with scripted_imap(reply) as port:
        client = _client(port)
        with pytest.raises(IMAPClientAbortError):
            fetch_items(client, [11, 12], "BODY.PEEK[]")
        client.shutdown()


def test_an_imaplib_without_the_parts_used_falls_back_to_imapclient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A future imaplib that lacks one of the internals the reader uses: plain `fetch`."""
    monkeypatch.setattr(engine, "_IMAPLIB_PARTS", (*engine._IMAPLIB_PARTS, "_gone_in_3_99"))
    used: list[str] = []
    real = IMAPClient.fetch

    def fetch(self: IMAPClient, *args: Any, **kw: Any) -> Any:
        used.append("imapclient")
        return real(self, *args, **kw)

    monkeypatch.setattr(IMAPClient, "fetch", fetch)

    def reply(tag: bytes) -> bytes:
        return b"* 1 FETCH (UID 11 BODY[] " + _lit(BODY_A) + b")\r\n" + tag + b" OK done\r\n"

    ours, theirs = _both(reply, [11], "BODY.PEEK[]")
    assert ours == theirs and used == ["imapclient", "imapclient"]
