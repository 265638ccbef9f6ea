"""Focused tests of mail_sync.parse.parse_mail, with every message built in the test."""

from __future__ import annotations

import base64
import contextlib
import random
import string
import time
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import compat32
from types import SimpleNamespace

import pytest

import mail_sync.parse as parse_module
from mail_sync.parse import (
    DEFAULT_LANGUAGES,
    Attachment,
    ParsedMail,
    ParseError,
    ParseLimits,
    parse_mail,
    split_quoted,
)
from mail_sync.sanitize_names import MAX_FILENAME_CHARS, sanitize_filename


def mail(headers: str, body: bytes | str = b"", *, nl: bytes = b"\r\n") -> bytes:
    """Raw message bytes: header lines (one per line, LF-separated in the literal) and a body."""
    head = nl.join(line.encode("utf-8") for line in headers.strip("\n").split("\n"))
    data = body.encode("utf-8") if isinstance(body, str) else body
    if nl != b"\n":
        data = data.replace(b"\r\n", b"\n").replace(b"\n", nl)
    return head + nl + nl + data


BASIC_HEADERS = """\
From: =?UTF-8?Q?J=C4=81nis_B=C4=93rzi=C5=86=C5=A1?= <Janis.Berzins@Example.LV>
To: Support Team <support@example.com>, "Doe, Jane" <jane@example.com>
Cc: boss@example.com
Reply-To: replies@example.lv
Subject: =?UTF-8?B?UGFyb2xlcyBtYWnFhmE=?= (password change)
Date: Mon, 04 Mar 2024 10:30:00 +0200
Message-ID:   <abc.123@mail.example.lv>
In-Reply-To: <t-1@helpdesk.example.com>
References: <t-0@helpdesk.example.com>
 <t-1@helpdesk.example.com>
Return-Path: <bounce@example.lv>
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: 8bit"""


def assert_clean(parsed: ParsedMail) -> None:
    """No NULs or lone surrogates in any text field."""
    texts = [
        parsed.subject,
        parsed.from_addr,
        parsed.from_name,
        parsed.text,
        parsed.new_text,
        parsed.quoted_text,
        parsed.html or "",
        *parsed.warnings,
        *parsed.truncated_parts,
        *(name + addr for name, addr in parsed.to + parsed.cc + parsed.reply_to),
        *(k + v for k, v in parsed.headers),
        *(a.filename + a.content_type for a in parsed.attachments),
    ]
    for text in texts:
        assert "\x00" not in text
        text.encode("utf-8")  # raises on lone surrogates


# --------------------------------------------------------------------------------------------
# Plain mail, headers


def test_plain_utf8_mail_fields() -> None:
    raw = mail(BASIC_HEADERS, "Labdien!\n\nLūdzu, nomainiet manu paroli.\n")
    parsed = parse_mail(raw)

    assert parsed.subject == "Paroles maiņa (password change)"
    assert parsed.from_addr == "janis.berzins@example.lv"
    assert parsed.from_name == "Jānis Bērziņš"
    assert parsed.to == [("Support Team", "support@example.com"), ("Doe, Jane", "jane@example.com")]
    assert parsed.cc == [("", "boss@example.com")]
    assert parsed.reply_to == [("", "replies@example.lv")]
    assert parsed.return_path == "bounce@example.lv"
    assert parsed.message_id == "abc.123@mail.example.lv"
    assert parsed.in_reply_to == ["t-1@helpdesk.example.com"]
    assert parsed.references == ["t-0@helpdesk.example.com", "t-1@helpdesk.example.com"]
    assert parsed.date == datetime(2024, 3, 4, 8, 30, tzinfo=UTC)
    assert parsed.date is not None and parsed.date.utcoffset() is not None
    assert parsed.text == "Labdien!\n\nLūdzu, nomainiet manu paroli."
    assert parsed.new_text == parsed.text
    assert parsed.quoted_text == ""
    assert parsed.html is None
    assert parsed.attachments == []
    assert parsed.size == len(raw)
    assert parsed.warnings == []
    assert parsed.truncated_parts == []
    assert parsed.auto_submitted is False
    assert parsed.is_bulk_or_list is False
    assert parsed.is_bounce is False
    assert ("Subject", "Paroles maiņa (password change)") in parsed.headers
    assert ("References", "<t-0@helpdesk.example.com> <t-1@helpdesk.example.com>") in parsed.headers


def test_content_hash_ignores_line_endings_only() -> None:
    body = "Hello there,\nsecond line\n"
    crlf = parse_mail(mail(BASIC_HEADERS, body, nl=b"\r\n"))
    lf = parse_mail(mail(BASIC_HEADERS, body, nl=b"\n"))
    other = parse_mail(mail(BASIC_HEADERS, body + "x", nl=b"\n"))
    assert len(crlf.content_hash) == 64
    assert crlf.content_hash == lf.content_hash
    assert crlf.content_hash != other.content_hash
    assert crlf.text == lf.text == "Hello there,\nsecond line"


def test_message_id_without_brackets_and_junk_in_reply_to() -> None:
    raw = mail(
        """\
From: a@example.com
Message-ID: plain-id@example.com
In-Reply-To: <first@example.com> (Mr. X's message of "Mon, 1 Jan")
References: garbage <ok1@example.com> <ok1@example.com>
 <o k2@example.com>
Subject: ids""",
        "x",
    )
    parsed = parse_mail(raw)
    assert parsed.message_id == "plain-id@example.com"
    assert parsed.in_reply_to == ["first@example.com"]
    assert parsed.references == ["ok1@example.com", "ok2@example.com"]


def test_missing_headers_give_empty_values() -> None:
    parsed = parse_mail(b"\r\njust a body line\r\n")
    assert parsed.subject == ""
    assert parsed.from_addr == ""
    assert parsed.from_name == ""
    assert parsed.message_id is None
    assert parsed.date is None
    assert parsed.return_path is None
    assert "just a body line" in parsed.text


def test_empty_input() -> None:
    parsed = parse_mail(b"")
    assert parsed.text == ""
    assert parsed.subject == ""
    assert parsed.size == 0
    assert "empty message" in parsed.warnings


def test_bytes_required() -> None:
    with pytest.raises(TypeError):
        parse_mail("From: a@b\n\nx")  # type: ignore[arg-type]


def test_unparseable_date_is_none_with_warning_and_naive_date_is_utc() -> None:
    bad = parse_mail(mail("From: a@example.com\nDate: Someday soon", "x"))
    assert bad.date is None
    assert "Date header could not be parsed" in bad.warnings
    naive = parse_mail(mail("From: a@example.com\nDate: 1 Jan 2020 12:00:00 -0000", "x"))
    assert naive.date == datetime(2020, 1, 1, 12, 0, tzinfo=UTC)
    two_digit = parse_mail(mail("From: a@example.com\nDate: Fri, 21 Nov 97 09:55:06 GMT", "x"))
    assert two_digit.date == datetime(1997, 11, 21, 9, 55, 6, tzinfo=UTC)


def test_group_syntax_and_empty_addresses() -> None:
    raw = mail(
        """\
From: "Only Name"
To: undisclosed-recipients:;
Cc: , real@Example.com,
Subject: groups""",
        "x",
    )
    parsed = parse_mail(raw)
    assert parsed.cc == [("", "real@example.com")]
    assert parsed.to == []
    assert parsed.from_addr == ""


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # the shapes that take the fast path (no address tokenizer)
        ("Jane@Example.COM", [("", "jane@example.com")]),
        (
            "  Jane Doe <Jane.Doe+x@Mail.Example.com>  ",
            [("Jane Doe", "jane.doe+x@mail.example.com")],
        ),
        # near misses that must still go through the full parser and keep its answer
        ("Jane  Doe <jane@example.com>", [("Jane Doe", "jane@example.com")]),
        ('"Doe, Jane" <jane@example.com>', [("Doe, Jane", "jane@example.com")]),
        ("J. Doe <jane@example.com>", [("J. Doe", "jane@example.com")]),
        ("jane@example.com (Jane Doe)", [("Jane Doe", "jane@example.com")]),
        ("a@example.com, Bob <b@example.com>", [("", "a@example.com"), ("Bob", "b@example.com")]),
        ("=?UTF-8?Q?J=C4=81nis?= <janis@example.lv>", [("Jānis", "janis@example.lv")]),
    ],
)
def test_address_headers_simple_and_complex(header: str, expected: list[tuple[str, str]]) -> None:
    parsed = parse_mail(mail(f"From: x@example.com\nTo: {header}\nSubject: s", "body"))
    assert parsed.to == expected


def test_same_content_type_value_in_many_mails_keeps_each_charset() -> None:
    """Content-Type parameters are memoised per header value; each mail still gets its own."""
    for _ in range(2):
        latin = parse_mail(
            mail(
                "Subject: a\nContent-Type: text/plain; charset=iso-8859-1",
                "Gr\xfc\xdfe".encode("latin-1"),
            )
        )
        utf8 = parse_mail(mail("Subject: b\nContent-Type: text/plain; charset=utf-8", "Grüße"))
        named = parse_mail(
            mail(
                'Subject: c\nContent-Type: application/pdf; name="inv 7.pdf"\n'
                "Content-Transfer-Encoding: base64",
                base64.b64encode(b"%PDF-1.4 x").decode(),
            )
        )
        assert latin.text.strip() == "Grüße"
        assert utf8.text.strip() == "Grüße"
        assert [a.filename for a in named.attachments] == ["inv 7.pdf"]


# --------------------------------------------------------------------------------------------
# Charsets and broken headers


def test_latin1_declared_but_body_is_utf8() -> None:
    raw = mail(
        "From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=iso-8859-1",
        "Grüße aus München – schöne Größe",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Grüße aus München – schöne Größe"
    assert any("declared iso-8859-1 but is UTF-8" in w for w in parsed.warnings)


def test_utf8_declared_but_body_is_latin1() -> None:
    body = "Café crème brûlée à la française, s'il vous plaît.\n".encode("latin-1")
    raw = mail("From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=utf-8", body)
    parsed = parse_mail(raw)
    assert parsed.text == "Café crème brûlée à la française, s'il vous plaît."
    assert any("not valid utf-8" in w for w in parsed.warnings)


def test_latin1_declared_correctly_uses_windows_1252_superset() -> None:
    body = "Price: 10 € – “quoted”".encode("cp1252")
    raw = mail("From: a@example.com\nContent-Type: text/plain; charset=ISO-8859-1", body)
    assert parse_mail(raw).text == "Price: 10 € – “quoted”"


def test_unknown_charset_falls_back_to_detection() -> None:
    raw = mail(
        "From: a@example.com\nContent-Type: text/plain; charset=x-no-such-charset",
        "Привет, как дела? Всё хорошо, спасибо.",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Привет, как дела? Всё хорошо, спасибо."
    assert any("unknown charset 'x-no-such-charset'" in w for w in parsed.warnings)


def test_legacy_charsets_and_aliases() -> None:
    cyr = mail(
        "From: a@b.c\nContent-Type: text/plain; charset=windows-1251",
        "Добрый день".encode("cp1251"),
    )
    assert parse_mail(cyr).text == "Добрый день"
    kr = mail(
        "From: a@b.c\nContent-Type: text/plain; charset=ks_c_5601-1987",
        "안녕하세요".encode("cp949"),
    )
    assert parse_mail(kr).text == "안녕하세요"
    baltic = mail(
        "From: a@b.c\nContent-Type: text/plain; charset=windows-1257",
        "Ar cieņu, Jānis".encode("cp1257"),
    )
    assert parse_mail(baltic).text == "Ar cieņu, Jānis"


def test_raw_8bit_headers() -> None:
    utf8 = b"From: J\xc3\xb6rg <joerg@example.de>\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\nx"
    parsed = parse_mail(utf8)
    assert parsed.subject == "Grüße"
    assert parsed.from_name == "Jörg"
    latin1 = b"From: a@example.com\r\nSubject: Forma\xe7\xe3o Ver\xe3o\r\n\r\nx"
    assert parse_mail(latin1).subject == "Formação Verão"
    # Raw header bytes in the body's charset are decoded with it.
    cp1251 = (
        b"From: a@example.com\r\nSubject: " + "Заявка на ремонт".encode("cp1251") + b"\r\n"
        b"Content-Type: text/plain; charset=windows-1251\r\n\r\nx"
    )
    assert parse_mail(cp1251).subject == "Заявка на ремонт"


def test_broken_encoded_words() -> None:
    # charset NONE and base64 missing padding (from the mail gem's error fixtures)
    assert parse_mail(b"Subject: =?NONE?B?VEVTVA=?=\r\n\r\nTEST\r\n").subject == "TEST"
    # unknown charset, valid UTF-8 bytes inside
    assert parse_mail(b"Subject: =?x-bogus?Q?caf=C3=A9?=\r\n\r\nx").subject == "café"
    # undecodable base64 stays as written instead of crashing
    assert "=?utf-8?B?" in parse_mail(b"Subject: =?utf-8?B?!!!!?=\r\n\r\nx").subject
    # a multi-byte character split across two encoded-words, whitespace between words dropped
    first, second = base64.b64encode("Ž".encode()[:1]), base64.b64encode("Ž".encode()[1:] + b"ol")
    raw = b"Subject: =?utf-8?B?" + first + b"?=\r\n =?utf-8?B?" + second + b"?= and more\r\n\r\nx"
    assert parse_mail(raw).subject == "Žol and more"
    # Q-encoding with underscores, mixed charsets
    raw = b"Subject: =?iso-8859-1?Q?Caf=E9_ouvert?= / =?koi8-r?B?8NLJ18XU?=\r\n\r\nx"
    assert parse_mail(raw).subject == "Café ouvert / Привет"


def test_broken_structured_headers_never_raise() -> None:
    raw = (
        b'From: "unterminated <a@b\r\n'
        b'To: <<<>>>, @@@, "x" <>\r\n'
        b"Cc: =?utf-8?q?broken\r\n"
        b"Date: 99 Foo 99999 99:99:99 +9999\r\n"
        b"Message-ID: <<<\r\n"
        b'Content-Type: text/plain; charset="; name==\r\n'
        b"Content-Disposition: ;;;;\r\n"
        b"Content-Transfer-Encoding: base64;;;\r\n"
        b"\r\n"
        b"SGVsbG8gd29ybGQ=\r\n"
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Hello world"  # CTE with trailing junk still recognised
    assert parsed.date is None
    assert_clean(parsed)


# --------------------------------------------------------------------------------------------
# HTML


def test_html_only_becomes_readable_text_and_html_is_kept() -> None:
    html = (
        "<html><head><style>p { color: red; }</style><script>var secret = 1;</script></head>"
        "<body><p>Hello <b>World</b>,</p><p>your ticket &amp; order #42 are ready.</p>"
        "<ul><li>first</li><li>second</li></ul></body></html>"
    )
    raw = mail("From: a@example.com\nSubject: html\nContent-Type: text/html; charset=utf-8", html)
    parsed = parse_mail(raw)
    assert parsed.html == html
    assert "Hello World," in parsed.text
    assert "your ticket & order #42 are ready." in parsed.text
    assert "first" in parsed.text and "second" in parsed.text
    assert "<" not in parsed.text
    assert "color: red" not in parsed.text
    assert "secret" not in parsed.text


def test_html_reply_folds_the_blockquoted_message_and_keeps_link_addresses() -> None:
    """A Gmail/Outlook-style HTML reply: the earlier message sits in <blockquote>; the agent
    sees only the new text unfolded, and a link's address is not lost."""
    html = (
        '<div dir="ltr">Thanks, the <a href="https://help.test/kb/42">router article</a> '
        'helped. <a href="https://status.example">https://status.example</a></div><br>'
        '<div class="gmail_quote"><div class="gmail_attr">On Mon, 4 Mar 2024 at 10:00, '
        "Support &lt;support@help.test&gt; wrote:<br></div>"
        '<BLOCKQUOTE class="gmail_quote" style="margin:0 0 0 .8ex">'
        "<div>Please restart the router.</div>"
        "<blockquote><p>My router is broken</p><p>since Friday</p></blockquote>"
        "</BLOCKQUOTE></div>"
    )
    raw = mail("From: a@example.com\nSubject: Re: router\nContent-Type: text/html", html)
    parsed = parse_mail(raw)
    assert " ".join(parsed.new_text.split()) == (
        "Thanks, the [router article](https://help.test/kb/42) helped. https://status.example"
    )
    quoted = parsed.quoted_text.splitlines()
    assert quoted[0].strip().startswith("On Mon, 4 Mar 2024") and quoted[0].endswith("wrote:")
    assert quoted[1:] == [
        "> Please restart the router.",
        ">>",
        ">> My router is broken",
        ">>",
        ">> since Friday",
    ]
    # the marks carried through the conversion cannot be faked by the mail itself
    sneaky = mail(
        "From: a@example.com\nContent-Type: text/html",
        "<p>a\ue000b</p><blockquote>q</blockquote><p>c\ue001d</p>",
    )
    lines = [line.strip() for line in parse_mail(sneaky).text.splitlines()]
    assert [line for line in lines if line] == ["ab", "> q", "cd"]


def test_alternative_prefers_plain_text_but_keeps_html() -> None:
    raw = mail(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=ALT",
        "--ALT\nContent-Type: text/plain; charset=utf-8\n\nPlain version\n"
        "--ALT\nContent-Type: text/html; charset=utf-8\n\n<p>HTML <i>version</i></p>\n"
        "--ALT--\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Plain version"
    assert parsed.html is not None and "<i>version</i>" in parsed.html


def test_alternative_with_blank_plain_part_uses_html() -> None:
    raw = mail(
        "From: a@example.com\nContent-Type: multipart/alternative; boundary=ALT",
        "--ALT\nContent-Type: text/plain\n\n \n"
        "--ALT\nContent-Type: multipart/related; boundary=REL\n\n"
        '--REL\nContent-Type: text/html\n\n<p>Logo below</p><img src="cid:logo@x">\n'
        "--REL\nContent-Type: image/png\nContent-ID: <logo@x>\nContent-Transfer-Encoding: base64\n\n"
        + base64.b64encode(b"\x89PNG fake").decode()
        + "\n--REL--\n--ALT--\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Logo below"
    assert len(parsed.attachments) == 1
    logo = parsed.attachments[0]
    assert logo.inline is True
    assert logo.content_id == "logo@x"
    assert logo.data == b"\x89PNG fake"
    assert logo.filename == "attachment-1.png"


def test_oversized_html_is_truncated_before_conversion() -> None:
    html = "<p>start</p>" + "<p>filler text</p>" * 2000 + "<p>THE-END</p>"
    raw = mail("From: a@example.com\nContent-Type: text/html", html)
    parsed = parse_mail(raw, limits=ParseLimits(max_html_bytes=4096))
    assert parsed.text.startswith("start")
    assert "THE-END" not in parsed.text
    assert parsed.html == html  # the original is kept
    assert any("HTML" in t for t in parsed.truncated_parts)
    assert any("truncated" in w for w in parsed.warnings)


# --------------------------------------------------------------------------------------------
# Attachments


def attachment_mail(*parts: tuple[str, bytes]) -> bytes:
    body = "--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
    for headers, data in parts:
        body += (
            "--B\r\n"
            + headers.replace("\n", "\r\n")
            + "\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        )
        body += base64.b64encode(data).decode() + "\r\n"
    body += "--B--\r\n"
    return mail(
        "From: a@example.com\nSubject: files\nContent-Type: multipart/mixed; boundary=B", body
    )


def test_hostile_attachment_filenames_are_sanitised() -> None:
    raw = attachment_mail(
        (
            'Content-Type: text/plain\nContent-Disposition: attachment; filename="../../etc/passwd"',
            b"root",
        ),
        (
            'Content-Type: text/plain\nContent-Disposition: attachment; filename="\x1b[31m.txt"',
            b"ansi",
        ),
        ('Content-Type: application/pdf\nContent-Disposition: attachment; filename=".."', b"%PDF"),
        ('Content-Type: application/x-msdownload; name="C:\\\\Windows\\\\evil.exe"', b"MZ"),
        ('Content-Type: image/png\nContent-Disposition: attachment; filename=".htaccess"', b"x"),
        (
            "Content-Type: application/octet-stream\nContent-Disposition: attachment;"
            " filename*=UTF-8''%E2%80%AEgpj.exe",
            b"bidi",
        ),
        (
            "Content-Type: application/octet-stream\nContent-Disposition: attachment;"
            f' filename="{"a" * 300}.pdf"',
            b"long",
        ),
        (
            "Content-Type: application/octet-stream\nContent-Disposition: attachment;"
            ' filename="=?UTF-8?B?0JTQvtCz0L7QstC+0YAucGRm?="',
            b"enc",
        ),
    )
    parsed = parse_mail(raw)
    assert parsed.text == "See attached."
    names = [a.filename for a in parsed.attachments]
    assert names[0] == "passwd"
    assert names[1] == "[31m.txt"
    assert names[2] == "attachment-3.pdf"
    assert names[3] == "evil.exe"
    assert names[4] == "htaccess"
    assert names[5] == "gpj.exe"
    assert len(names[6]) == MAX_FILENAME_CHARS and names[6].endswith(".pdf")
    assert names[7] == "Договор.pdf"
    for attachment in parsed.attachments:
        name = attachment.filename
        assert name and "/" not in name and "\\" not in name and not name.startswith(".")
        assert all(ch.isprintable() for ch in name)
        assert attachment.size == len(attachment.data)
    assert parsed.attachments[0].data == b"root"
    assert parsed.attachments[0].content_type == "text/plain"
    assert parsed.attachments[0].inline is False


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("\x1b[31m.txt", "[31m.txt"),
        ("a\x00b.txt", "ab.txt"),
        ("...hidden", "hidden"),
        ("CON.txt", "_CON.txt"),
        ('what?<>:"|*.doc', "what_______.doc"),
        ("   ", "attachment-7.bin"),
        (None, "attachment-7.bin"),
        ("/", "attachment-7.bin"),
    ],
)
def test_sanitize_filename(given: str | None, expected: str) -> None:
    assert sanitize_filename(given, index=7) == expected


def test_sanitize_filename_default_extension_from_type() -> None:
    assert sanitize_filename("", index=2, content_type="image/jpeg") == "attachment-2.jpg"
    assert sanitize_filename(None, index=1, content_type="message/rfc822") == "attachment-1.eml"


def test_oversized_attachment_is_left_out_and_named() -> None:
    raw = attachment_mail(
        (
            'Content-Type: application/zip\nContent-Disposition: attachment; filename="big.zip"',
            b"z" * 5000,
        ),
        ('Content-Type: text/plain\nContent-Disposition: attachment; filename="small.txt"', b"ok"),
    )
    parsed = parse_mail(raw, limits=ParseLimits(max_attachment_bytes=1000))
    assert [a.filename for a in parsed.attachments] == ["small.txt"]
    assert len(parsed.truncated_parts) == 1
    assert "big.zip" in parsed.truncated_parts[0]
    assert "5000" in parsed.truncated_parts[0]
    assert parsed.text == "See attached."


def test_uuencoded_body_is_extracted_as_attachment() -> None:
    import binascii

    payload = b"hello uuencoded world\n" * 3
    lines = [
        binascii.b2a_uu(payload[i : i + 45]).decode().rstrip("\n")
        for i in range(0, len(payload), 45)
    ]
    body = (
        "Please find the file.\n\nbegin 644 notes.txt\n" + "\n".join(lines) + "\n`\nend\n\nThanks\n"
    )
    parsed = parse_mail(mail("From: a@example.com\nSubject: uu", body))
    assert [a.filename for a in parsed.attachments] == ["notes.txt"]
    assert parsed.attachments[0].data == payload
    assert "begin 644" not in parsed.text
    assert "Please find the file." in parsed.text and "Thanks" in parsed.text


def test_uuencode_transfer_encoding() -> None:
    import binascii

    data = binascii.b2a_uu(b"binary!").decode()
    raw = mail(
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=B",
        "--B\nContent-Type: text/plain\n\nbody\n--B\nContent-Type: application/octet-stream;"
        ' name="x.bin"\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 x.bin\n'
        + data
        + "`\nend\n--B--\n",
    )
    parsed = parse_mail(raw)
    assert [(a.filename, a.data) for a in parsed.attachments] == [("x.bin", b"binary!")]


def test_tnef_is_kept_as_winmail_dat_with_warning() -> None:
    raw = attachment_mail(
        ('Content-Type: application/ms-tnef; name="something.dat"', b"\x78\x9f\x3e\x22 tnef"),
    )
    parsed = parse_mail(raw)
    assert [a.filename for a in parsed.attachments] == ["winmail.dat"]
    assert parsed.attachments[0].content_type == "application/ms-tnef"
    assert any("TNEF" in w for w in parsed.warnings)


# --------------------------------------------------------------------------------------------
# Structure


NESTED = mail(
    """\
From: Forwarder <fwd@example.com>
Subject: Fwd: broken printer
Content-Type: multipart/mixed; boundary=OUTER""",
    """\
--OUTER
Content-Type: text/plain; charset=utf-8

See the customer's mail below.
--OUTER
Content-Type: message/rfc822

From: Customer <customer@example.org>
Subject: Printer is broken
Message-ID: <inner-1@example.org>
Content-Type: multipart/mixed; boundary=INNER

--INNER
Content-Type: text/plain

The printer on floor 3 does not work.
--INNER
Content-Type: application/pdf; name="photo.pdf"
Content-Transfer-Encoding: base64

JVBERi0=
--INNER--
--OUTER--
""",
)


def test_nested_message_is_an_eml_attachment() -> None:
    parsed = parse_mail(NESTED)
    assert parsed.text == "See the customer's mail below."
    assert "floor 3" not in parsed.text
    assert [a.filename for a in parsed.attachments] == ["Printer is broken.eml"]
    eml = parsed.attachments[0]
    assert eml.content_type == "message/rfc822"
    inner = BytesParser(policy=compat32).parsebytes(eml.data)
    assert inner["Subject"] == "Printer is broken"
    assert inner["Message-ID"] == "<inner-1@example.org>"
    reparsed = parse_mail(eml.data)
    assert reparsed.text == "The printer on floor 3 does not work."
    assert [a.filename for a in reparsed.attachments] == ["photo.pdf"]
    assert parsed.is_bounce is False


def test_mail_that_only_carries_a_forwarded_message_shows_its_text() -> None:
    raw = mail(
        "From: a@example.com\nSubject: FW\nContent-Type: message/rfc822",
        "From: Customer <c@example.org>\nSubject: Help\n\nPlease call me back.\n",
    )
    parsed = parse_mail(raw)
    assert "Please call me back." in parsed.text
    assert "Subject: Help" in parsed.text
    assert parsed.attachments[0].filename == "Help.eml"


def test_missing_boundary_is_recovered() -> None:
    raw = mail(
        'From: a@example.com\nContent-Type: multipart/alternative; boundary="declared"',
        "--actual\nContent-Type: text/plain\n\nRecovered text\n"
        "--actual\nContent-Type: text/html\n\n<p>Recovered html</p>\n--actual--\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Recovered text"
    assert parsed.html is not None and "Recovered html" in parsed.html
    assert any("boundary" in w for w in parsed.warnings)


def test_false_multipart_becomes_text() -> None:
    raw = mail(
        "From: a@example.com\nContent-Type: multipart/mixed; boundary=nothere",
        "Just text, no parts at all.\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "Just text, no parts at all."
    assert any("treated as text" in w for w in parsed.warnings)


def test_format_flowed_is_unwrapped() -> None:
    raw = mail(
        "From: a@example.com\nContent-Type: text/plain; charset=utf-8; format=flowed",
        "This is a long line that \nwas wrapped by the client.\n\n> quoted soft \n> continued\n-- \nSig\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text.startswith("This is a long line that was wrapped by the client.\n")
    assert "> quoted soft continued" in parsed.text
    assert "-- \nSig" in parsed.text


def test_nul_bytes_never_reach_text_fields() -> None:
    raw = mail(
        "From: Evil\x00Name <e@example.com>\nSubject: sub\x00ject",
        b"bo\x00dy\r\n",
    )
    parsed = parse_mail(raw)
    assert parsed.text == "bo\ufffddy"
    assert parsed.subject == "sub\ufffdject"
    assert parsed.from_name == "Evil\ufffdName"
    assert_clean(parsed)


# --------------------------------------------------------------------------------------------
# Auto-submitted, bulk, bounces


@pytest.mark.parametrize(
    ("extra", "auto", "bulk"),
    [
        ("", False, False),
        ("Auto-Submitted: auto-replied", True, False),
        ("Auto-Submitted: auto-generated; owner-email=x@y", True, False),
        ("Auto-Submitted: no", False, False),
        ("Auto-Submitted: No ", False, False),
        ("Precedence: bulk", True, True),
        ("Precedence: junk", True, True),
        ("Precedence: list", True, True),
        ("List-Id: Support list <support.example.com>", True, True),
        ("List-Unsubscribe: <mailto:leave@example.com>", True, True),
        ("X-Auto-Response-Suppress: All", True, False),
        ("X-Autoreply: yes", True, False),
        ("X-Autorespond: vacation", True, False),
        ("Return-Path: <>", True, False),
    ],
)
def test_auto_submitted_and_bulk_detection(extra: str, auto: bool, bulk: bool) -> None:
    headers = "From: someone@example.com\nSubject: hello"
    if extra:
        headers += "\n" + extra
    parsed = parse_mail(mail(headers, "hi"))
    assert parsed.auto_submitted is auto
    assert parsed.is_bulk_or_list is bulk
    assert parsed.is_bounce is False


def test_out_of_office_subject_is_auto_submitted() -> None:
    parsed = parse_mail(mail("From: a@example.com\nSubject: Automatic reply: Your ticket", "away"))
    assert parsed.auto_submitted is True


DSN = mail(
    """\
From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
To: support@example.com
Subject: Undelivered Mail Returned to Sender
Message-ID: <dsn-1@mx.example.com>
Content-Type: multipart/report; report-type=delivery-status; boundary=R""",
    """\
--R
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.
--R
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; nobody@example.org
Action: failed
Status: 5.1.1
--R
Content-Type: message/rfc822

From: support@example.com
To: nobody@example.org
Subject: Re: your ticket
Message-ID: <original-42@helpdesk.example.com>

Hello
--R--
""",
)


def test_dsn_bounce_yields_original_message_id() -> None:
    parsed = parse_mail(DSN)
    assert parsed.is_bounce is True
    assert parsed.auto_submitted is True
    assert parsed.bounce_original_message_id == "original-42@helpdesk.example.com"
    assert parsed.message_id == "dsn-1@mx.example.com"
    assert parsed.text.startswith("I'm sorry")
    types = [a.content_type for a in parsed.attachments]
    assert types == ["message/delivery-status", "message/rfc822"]
    assert b"Status: 5.1.1" in parsed.attachments[0].data


def test_dsn_with_rfc822_headers_part() -> None:
    raw = DSN.replace(b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers")
    parsed = parse_mail(raw)
    assert parsed.is_bounce is True
    assert parsed.bounce_original_message_id == "original-42@helpdesk.example.com"


def test_plain_text_bounce_from_mailer_daemon() -> None:
    raw = mail(
        """\
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
Return-Path: <>
Subject: Delivery Status Notification (Failure)
Message-ID: <own@google.com>""",
        "Delivery to the following recipient failed permanently:\n\n    x@example.org\n\n"
        "----- Original message -----\n\nMessage-ID: <orig-7@helpdesk.example.com>\nSubject: Hi\n\nHi\n",
    )
    parsed = parse_mail(raw)
    assert parsed.is_bounce is True
    assert parsed.bounce_original_message_id == "orig-7@helpdesk.example.com"


def test_bounce_with_original_message_id_field() -> None:
    raw = mail(
        """\
From: postmaster@example.net
Subject: Undeliverable: Re: ticket
Original-Message-ID: <orig-9@helpdesk.example.com>""",
        "Your message could not be delivered.",
    )
    parsed = parse_mail(raw)
    assert parsed.is_bounce is True
    assert parsed.bounce_original_message_id == "orig-9@helpdesk.example.com"


def test_ordinary_mail_from_postmaster_without_dsn_is_not_a_bounce() -> None:
    parsed = parse_mail(
        mail("From: postmaster@example.com\nSubject: Question about DNS", "Hi, a question.")
    )
    assert parsed.is_bounce is False
    assert parsed.bounce_original_message_id is None


# --------------------------------------------------------------------------------------------
# Quoted replies


@pytest.mark.parametrize(
    ("body", "new", "quoted_start"),
    [
        (
            "Thanks, that worked.\n\nOn Mon, Mar 4, 2024 at 10:00 AM Support <s@example.com> wrote:\n"
            "> Please restart the router.\n> \n> Regards\n",
            "Thanks, that worked.",
            "On Mon, Mar 4, 2024",
        ),
        (
            "Still broken.\n\nOn Mon, Mar 4, 2024 at 10:00 AM Support <\ns@example.com> wrote:\n\n> Try again\n",
            "Still broken.",
            "On Mon, Mar 4, 2024",
        ),
        (
            "Yes please.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nSubject: Re: x\n\nOld text\n",
            "Yes please.",
            "-----Original Message-----",
        ),
        (
            "OK\n\n________________________________\nFrom: Support <s@example.com>\nSent: 04 March 2024 10:00\n"
            "To: Me\nSubject: RE: x\n\nOld text\n",
            "OK",
            "________________________________",
        ),
        (
            "Paldies!\n\n2024. gada 4. marts 10:00 Atbalsts <s@example.com> rakstīja:\n> Lūdzu pārstartējiet\n",
            "Paldies!",
            "2024. gada 4. marts",
        ),
        (
            "Спасибо!\n\n04.03.2024 10:00, Поддержка пишет:\n> Перезагрузите роутер\n",
            "Спасибо!",
            "04.03.2024 10:00",
        ),
        (
            "> earlier question\nMy answer below the quote.\n",
            "My answer below the quote.",
            "> earlier",
        ),
    ],
)
def test_quote_split(body: str, new: str, quoted_start: str) -> None:
    parsed = parse_mail(mail("From: a@example.com\nSubject: Re: x", body))
    assert parsed.new_text == new
    assert parsed.quoted_text.startswith(quoted_start)
    assert parsed.text.startswith(body.strip("\n")[:10])


def test_quote_split_keeps_unquoted_mail_whole() -> None:
    body = "From: my experience the app fails.\nTo reproduce: open it.\n\nThanks"
    new, quoted = split_quoted(body)
    assert (new, quoted) == (body, "")


def test_forward_is_not_treated_as_quote() -> None:
    body = (
        "FYI, see below.\n\n---------- Forwarded message ---------\nFrom: Customer <c@example.org>\n"
        "Date: Mon, 4 Mar 2024\nSubject: Broken\nTo: me@example.com\n\nIt is broken.\n"
    )
    parsed = parse_mail(mail("From: a@example.com\nSubject: Fwd: Broken", body))
    assert "It is broken." in parsed.new_text
    assert parsed.quoted_text == ""


def test_fully_quoted_body_keeps_text_as_new_text() -> None:
    new, quoted = split_quoted("> only\n> quoted\n")
    assert new == "> only\n> quoted\n"
    assert quoted == ""


# --------------------------------------------------------------------------------------------
# Language


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Hello, I cannot log in to my account since yesterday. Could you please help me?", "en"),
        ("Labdien! Es nevaru pieslēgties savam kontam kopš vakardienas. Lūdzu, palīdziet.", "lv"),
        (
            "Здравствуйте! Я не могу войти в свой аккаунт со вчерашнего дня. Помогите, пожалуйста.",
            "ru",
        ),
        ("مرحبا، لا أستطيع تسجيل الدخول إلى حسابي منذ أمس. هل يمكنكم المساعدة من فضلكم؟", "ar"),
        ("Laba diena, negaliu prisijungti prie savo paskyros nuo vakar. Prašau padėti.", "lt"),
        (
            "Hallo, ich kann mich seit gestern nicht mehr in mein Konto einloggen. Bitte helfen Sie mir.",
            "de",
        ),
    ],
)
def test_language_detection(body: str, expected: str) -> None:
    parsed = parse_mail(
        mail("From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=utf-8", body)
    )
    assert parsed.language == expected


def test_language_uses_new_text_not_quote() -> None:
    body = (
        "Paldies, tagad viss strādā lieliski un bez kļūdām.\n\nOn Mon, Mar 4, 2024 Support wrote:\n"
        + "> The quick brown fox jumps over the lazy dog, again and again and again.\n" * 20
    )
    assert parse_mail(mail("From: a@example.com", body)).language == "lv"


def test_language_is_restricted_to_configured_set() -> None:
    body = "Здравствуйте! Я не могу войти в свой аккаунт со вчерашнего дня. Помогите, пожалуйста."
    raw = mail("From: a@example.com", body)
    assert parse_mail(raw, languages=("en", "de")).language is None
    assert parse_mail(raw, languages=("ru", "en")).language == "ru"
    assert "ru" in DEFAULT_LANGUAGES


def test_language_none_for_unsupported_script_and_tiny_text() -> None:
    assert (
        parse_mail(
            mail("From: a@example.com", "ありがとうございます。よろしくお願いします。")
        ).language
        is None
    )
    assert parse_mail(mail("From: a@example.com", "42")).language is None


# --------------------------------------------------------------------------------------------
# Limits


def many_parts_mail(count: int) -> bytes:
    body = "".join(f"--B\nContent-Type: text/plain\n\npart {i}\n" for i in range(count)) + "--B--\n"
    return mail("From: a@example.com\nContent-Type: multipart/mixed; boundary=B", body)


def test_too_many_parts_truncates_with_note() -> None:
    parsed = parse_mail(many_parts_mail(50), limits=ParseLimits(max_parts=10))
    assert "part 0" in parsed.text
    assert "part 8" in parsed.text  # the root counts as one part
    assert "part 9" not in parsed.text
    assert "part 49" not in parsed.text
    assert parsed.truncated_parts == ["MIME parts after the first 10 were skipped"]


def test_default_limits_keep_moderate_part_counts() -> None:
    parsed = parse_mail(many_parts_mail(50))
    assert "part 49" in parsed.text
    assert parsed.truncated_parts == []


def test_too_deep_nesting_truncates_with_note() -> None:
    depth = 30
    body = ""
    for level in range(depth):
        body += f"--L{level}\nContent-Type: multipart/mixed; boundary=L{level + 1}\n\n"
    body += f"--L{depth}\nContent-Type: text/plain\n\ndeep text\n--L{depth}--\n"
    for level in reversed(range(depth)):
        body += f"--L{level}--\n"
    raw = mail("From: a@example.com\nContent-Type: multipart/mixed; boundary=L0", body)
    parsed = parse_mail(raw, limits=ParseLimits(max_depth=5))
    assert "deep text" not in parsed.text
    assert parsed.truncated_parts == ["MIME parts nested deeper than 5 levels were skipped"]
    assert "deep text" in parse_mail(raw, limits=ParseLimits(max_depth=40)).text


def test_nesting_beyond_the_parsers_reach_keeps_headers() -> None:
    depth = 3000
    body = "".join(
        f"--L{i}\nContent-Type: multipart/mixed; boundary=L{i + 1}\n\n" for i in range(depth)
    )
    raw = mail(
        "From: a@example.com\nSubject: deep\nContent-Type: multipart/mixed; boundary=L0", body
    )
    parsed = parse_mail(raw)
    assert parsed.subject == "deep"
    assert parsed.from_addr == "a@example.com"
    assert parsed.truncated_parts == ["body left out: MIME structure nested too deeply to parse"]


def test_many_uuencode_begin_lines_stay_fast() -> None:
    raw = mail("From: a@example.com", "begin 644 f\n" * 50000)
    started = time.monotonic()
    parsed = parse_mail(raw)
    assert time.monotonic() - started < 5
    assert parsed.attachments == []
    assert parsed.text.count("begin 644 f") == 50000


def test_time_limit_raises_parse_error() -> None:
    with pytest.raises(ParseError, match="time limit"):
        parse_mail(many_parts_mail(20), limits=ParseLimits(time_limit_s=1e-9))


def test_time_limit_is_checked_inside_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(i) for i in range(1000))  # every reading one second later
    monkeypatch.setattr(parse_module, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    with pytest.raises(ParseError, match="MIME walk"):
        parse_mail(many_parts_mail(20), limits=ParseLimits(time_limit_s=5))


def test_no_time_limit() -> None:
    parsed = parse_mail(many_parts_mail(3), limits=ParseLimits(time_limit_s=None))
    assert "part 2" in parsed.text


def test_message_size_limit_raises_parse_error() -> None:
    raw = mail("From: a@example.com", "x" * 5000)
    with pytest.raises(ParseError, match="exceeds"):
        parse_mail(raw, limits=ParseLimits(max_message_bytes=1000))
    assert parse_mail(raw, limits=ParseLimits(max_message_bytes=None)).size == len(raw)


# --------------------------------------------------------------------------------------------
# Robustness


def test_random_garbage_and_mutations_never_crash() -> None:
    rng = random.Random(1234)
    seeds = [NESTED, DSN, mail(BASIC_HEADERS, "Hello\n\nOn Mon, X wrote:\n> hi\n")]
    alphabet = string.printable.encode() + bytes(range(0x80, 0x100)) + b'\x00=?:;<>"-\r\n'
    for _ in range(300):
        base = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 20)):
            op = rng.random()
            pos = rng.randrange(len(base) + 1)
            if op < 0.4:
                base[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
            elif op < 0.8 and len(base) > 10:
                del base[pos : pos + rng.randint(1, 30)]
            else:
                base[pos:pos] = b"\r\n--R\r\nContent-Type: multipart/mixed; boundary=R\r\n\r\n"
        try:
            parsed = parse_mail(bytes(base))
        except ParseError:
            continue
        assert_clean(parsed)
    for _ in range(100):
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
        with contextlib.suppress(ParseError):
            assert_clean(parse_mail(junk))


def test_warm_up_then_parse() -> None:
    parse_module.warm_up(("en", "lv"))
    raw = mail("From: a@example.com", "Labdien! Lūdzu, palīdziet nomainīt paroli.")
    assert parse_mail(raw, languages=("en", "lv")).language == "lv"


def test_result_types() -> None:
    parsed = parse_mail(NESTED)
    assert isinstance(parsed, ParsedMail)
    assert all(isinstance(a, Attachment) for a in parsed.attachments)
    with pytest.raises(AttributeError):
        parsed.subject = "changed"  # type: ignore[misc]


def _shapes() -> list[bytes]:
    """The corpus, and the same mails with other line ends / cut short / with odd headers."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
    raws = [p.read_bytes() for p in sorted(corpus.rglob("*.eml"))] if corpus.is_dir() else []
    raws += [
        b"Subject: x\nContent-Type: multipart/mixed; boundary=b\n\npre\n--b\n\nA\n--b\n"
        b"Content-Type: text/html\n\n<p>B</p>\n--b--  \nepilogue\n",
        b'Content-Type: multipart/alternative; boundary="q"\r\n\r\n--q\r\nX: 1\r\n--q--',
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\nA\n--b--\n",  # doubled
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nA\n",  # never closed
        # boundary look-alikes: mid-line, a longer boundary, text after the closing dashes
        b"Content-Type: multipart/mixed; boundary=b\n\n--b \t\nA x--b\n--bb\n--b--x\n"
        b"--b\n\nB\n--b--",
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nA\n--b-- \n--b\nlater\n",
        b"Content-Type: multipart/mixed; boundary=b\n\n--b--\n",  # closed before it opens
        b"Content-Type: multipart/mixed; boundary=b\r\rx\r--b\rA\r--b--\r",  # CR only
        b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n"
        b"--b\nA\n--b--\n",
        b"From someone Mon Jan  1 00:00:00 2024\nSubject: unix from\n\nbody\n",
        b" continued first\nSubject: x\n\nbody",
        b"Bad Header: x\n\nbody",
        b"Subject: no body",
        b"",
    ]
    out = []
    for raw in raws:
        out += [
            raw,
            raw.replace(b"\r\n", b"\n"),
            raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
            raw.rstrip(b"\r\n"),
            raw[:300],
        ]
    return out


def test_fast_message_split_reads_every_shape_as_the_feed_parser_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`parse_mail` cuts common messages itself instead of running the stdlib feed parser
    line by line: the result must be exactly the feed parser's, for every shape."""
    shapes = _shapes()
    assert len(shapes) > 100
    fast = [repr(parse_mail(raw)) for raw in shapes]
    used = sum(parse_module._parse_simple(raw) is not None for raw in shapes)
    monkeypatch.setattr(parse_module, "_parse_simple", lambda raw: None)
    slow = [repr(parse_mail(raw)) for raw in shapes]
    for raw, got, want in zip(shapes, fast, slow, strict=True):
        assert got == want, raw[:200]
    # The common shapes do take the fast path (single parts, multipart of single parts) ...
    assert used > len(shapes) // 2
    # ... and the ones the feed parser treats specially go to it.
    odd = [
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\nA\n--b--\n",
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nA\n",
        b"Content-Type: multipart/mixed; boundary=b\r\rx\r--b\rA\r--b--\r",
        b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n",
        b"From someone Mon Jan  1 00:00:00 2024\nSubject: unix from\n\nbody\n",
        b" continued first\nSubject: x\n\nbody",
        b"Bad Header: x\n\nbody",
    ]
    assert [parse_module._parse_simple(raw) for raw in odd] == [None] * len(odd)
