"""Every message of the shared third-party corpus (../shared/corpus) goes through parse_mail.

The corpus is read as bytes; see shared/corpus/README.md for what each folder holds.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mail_sync.parse import ParsedMail, ParseError, parse_mail

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
FILES = sorted(CORPUS.rglob("*.eml")) if CORPUS.is_dir() else []
SECONDS_PER_MESSAGE = 5.0


def test_corpus_is_present() -> None:
    assert CORPUS.is_dir(), f"corpus folder missing: {CORPUS}"
    assert len(FILES) >= 160


def _no_nul_no_surrogate(text: str) -> None:
    assert "\x00" not in text
    text.encode("utf-8")  # lone surrogates would raise


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_corpus_message_parses(path: Path) -> None:
    raw = path.read_bytes()
    started = time.monotonic()
    try:
        parsed = parse_mail(raw)
    except ParseError:
        return  # the one allowed failure mode
    elapsed = time.monotonic() - started
    assert elapsed < SECONDS_PER_MESSAGE, f"{path.name} took {elapsed:.2f}s"

    assert isinstance(parsed, ParsedMail)
    assert parsed.size == len(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", parsed.content_hash)
    for text in (
        parsed.subject,
        parsed.from_addr,
        parsed.from_name,
        parsed.text,
        parsed.new_text,
        parsed.quoted_text,
        parsed.html or "",
        parsed.message_id or "",
        parsed.return_path or "",
        parsed.bounce_original_message_id or "",
        *parsed.in_reply_to,
        *parsed.references,
        *parsed.warnings,
        *parsed.truncated_parts,
    ):
        assert isinstance(text, str)
        _no_nul_no_surrogate(text)
    for name, addr in parsed.to + parsed.cc + parsed.reply_to:
        _no_nul_no_surrogate(name)
        _no_nul_no_surrogate(addr)
        assert addr == addr.lower()
    for key, value in parsed.headers:
        _no_nul_no_surrogate(key)
        _no_nul_no_surrogate(value)
    assert parsed.from_addr == parsed.from_addr.lower()
    if parsed.date is not None:
        assert parsed.date.utcoffset() is not None
    if parsed.quoted_text:
        assert parsed.new_text.strip()
    for attachment in parsed.attachments:
        name = attachment.filename
        _no_nul_no_surrogate(name)
        assert name and len(name) <= 200
        assert "/" not in name and "\\" not in name and not name.startswith(".")
        assert all(ch.isprintable() for ch in name)
        assert attachment.size == len(attachment.data)
        assert "/" in attachment.content_type
    if parsed.language is not None:
        assert parsed.language in ("en", "lv", "ru", "ar", "ms", "lt", "de", "fr", "es")


def parse(relative: str) -> ParsedMail:
    return parse_mail((CORPUS / relative).read_bytes())


# --------------------------------------------------------------------------------------------
# Facts checked by reading the files


def test_multi_charset_subjects_and_bodies() -> None:
    japanese = parse("mail-gem/multi_charset/japanese.eml")
    assert japanese.subject == "まみむめも"
    assert japanese.to == [("みける", "raasdnil@gmail.com")]
    assert japanese.text.startswith("かきくえこ")

    iso_2022 = parse("mail-gem/multi_charset/japanese_iso_2022.eml")
    assert iso_2022.subject == "まみむめも"
    assert iso_2022.text == "すみません。"

    shift_jis = parse("mail-gem/multi_charset/japanese_shift_jis.eml")
    assert shift_jis.text.startswith("あいうえお\n\nこのメールはテスト用のメールです。")
    assert shift_jis.language is None  # Japanese is not among the configured languages

    korean = parse("mail-gem/multi_charset/ks_c_5601-1987.eml")
    assert korean.text == b"\xbd\xba\xc6\xbc\xc7\xd8".decode("cp949")

    long_name = parse("mail-gem/multi_charset/japanese_attachment_long_name.eml")
    assert long_name.subject == "まみむめも" * 10
    assert [a.filename for a in long_name.attachments] == ["かきくけこ" * 5 + ".txt"]

    attachment = parse("mail-gem/multi_charset/japanese_attachment.eml")
    assert [a.filename for a in attachment.attachments] == ["てすと.txt"]
    assert attachment.attachments[0].data.decode("utf-8").startswith("this is a test")


def test_hostile_headers_from_error_fixtures() -> None:
    bad_subject = parse("mail-gem/error_emails/bad_encoded_subject.eml")
    assert bad_subject.subject == "TEST"
    assert bad_subject.from_addr == ""

    latin1 = parse("mail-gem/error_emails/invalid_subject_characters.eml")
    assert latin1.subject == (
        "Formação FrenetikPolis: Mega Campanha Final Verão | Cursos de Setembro"
    )
    assert latin1.from_name == "Formação Frenetikpolis"
    assert latin1.from_addr == "info@formacaofrenetik.info"

    madness = parse("mail-gem/error_emails/encoding_madness.eml")
    assert madness.reply_to == [("KLAUS- HÄNSCHEL", "")]

    weird_to = parse("mail-gem/error_emails/weird_to_header.eml")
    assert weird_to.subject == ""
    assert [addr for _, addr in weird_to.to] == ["user-example@aol.com", "e-s-a-s-2200@app.ar.com"]

    folded_to = parse("mail-gem/error_emails/new_line_in_to_header.eml")
    assert len(folded_to.to) == 6
    assert folded_to.to[0] == ("", "leads@sg.dc.com")

    utf8_headers = parse("mail-gem/rfc6532/utf8_headers.eml")
    assert utf8_headers.subject == "Säying Hello"
    assert utf8_headers.from_addr == "jdöe@mächine.example"
    assert utf8_headers.from_name == "Jöhn Doe"

    raw_8bit = parse("flanker/mailformed-headers.eml")
    assert raw_8bit.from_name.startswith("Юникод запрещен")
    assert raw_8bit.from_addr == "headers@gmail.com"

    from_encoding = parse("flanker/from-encoding.eml")
    assert from_encoding.from_name == "Ingo Lütkebohle"


def test_long_folded_subject_is_decoded_and_capped() -> None:
    parsed = parse("flanker/long-header.eml")
    assert parsed.subject.startswith("Die heiße Zypernsonne quälte Max und Victoria ja böse")
    assert len(parsed.subject) <= 2001
    assert any("subject" in note for note in parsed.truncated_parts)


def test_dates_are_utc() -> None:
    parsed = parse("talon/standard_replies/gmail.eml")
    assert parsed.date == datetime(2012, 4, 2, 16, 21, 52, tzinfo=UTC)
    assert parse("mail-gem/plain_emails/raw_email_with_bad_date.eml").date is None


@pytest.mark.parametrize(
    ("relative", "original_id"),
    [
        ("flanker/bounce/zed.eml", "20090708054735.GC7578@example.com"),
        ("flanker/bounce/mailbox-full.eml", "4E326A95.3010907@example.com"),
        ("flanker/bounce/no-mx.eml", "19E44CA63F984902B7D654F8FF40F89D@bo"),
        ("flanker/bounce/office365.eml", "20171013111011.20866.254C2F3A4D7AA526@ninomail.com"),
        (
            "flanker/bounce/gmail-invalid-address.eml",
            "CAKsfaBUUGqVZiaMrmH3TRPfq1odQPtM7Ey5YW1SgyJJRHtAjgw@mail.gmail.com",
        ),
        ("flanker/bounce/delayed-broken.eml", None),
        ("flanker/bounce/broken-mime.eml", None),
        (
            "mail-gem/multipart_report_emails/report_530.eml",
            "200712232303.lBNN3jDq002941@mail12.rrrr.com.au",
        ),
    ],
)
def test_bounces(relative: str, original_id: str | None) -> None:
    parsed = parse(relative)
    assert parsed.is_bounce is True
    assert parsed.auto_submitted is True
    assert parsed.bounce_original_message_id == original_id


@pytest.mark.parametrize(
    "relative",
    [
        "flanker/complaints/aol.eml",
        "flanker/disposition-notification.eml",
        "talon/standard_replies/gmail.eml",
        "mail-gem/attachment_emails/attachment_message_rfc822.eml",
    ],
)
def test_not_bounces(relative: str) -> None:
    parsed = parse(relative)
    assert parsed.is_bounce is False
    assert parsed.bounce_original_message_id is None


def test_reports_are_auto_submitted() -> None:
    assert parse("flanker/complaints/aol.eml").auto_submitted is True
    assert parse("flanker/disposition-notification.eml").auto_submitted is True
    list_mail = parse("flanker/from-encoding.eml")  # Precedence: bulk
    assert list_mail.is_bulk_or_list is True and list_mail.auto_submitted is True


@pytest.mark.parametrize(
    ("name", "quoted_fragment"),
    [
        ("android.eml", "> Hi"),
        ("aol.eml", "-----Original Message-----"),
        ("apple_mail.eml", "On Apr 3, 2012, at 4:19 PM, bob wrote:"),
        ("apple_mail_2.eml", "> On 22 Aug 2015, at 19:21, Adam Renberg"),
        ("comcast.eml", "----- Original Message -----"),
        ("gmail.eml", "Megan One <xxx@gmail.com> wrote:"),
        ("hotmail.eml", "> Subject: Test"),
        ("outlook.eml", "From: xxx@xxx.mailgun.org [mailto:xxx@xxx.mailgun.org]"),
        ("thunderbird.eml", "On 04/02/2012 06:26 PM, Megan One wrote:"),
        ("yahoo.eml", "----- Original Message -----"),
    ],
)
def test_talon_replies_split_new_from_quoted(name: str, quoted_fragment: str) -> None:
    parsed = parse(f"talon/standard_replies/{name}")
    assert parsed.new_text.strip() == "Hello"
    assert quoted_fragment in parsed.quoted_text
    assert "Hi" in parsed.quoted_text
    assert quoted_fragment in parsed.text


def test_talon_replies_with_signatures_and_shared_block() -> None:
    iphone = parse("talon/standard_replies/iphone.eml")
    assert iphone.new_text == "Hello\n\nSent from my iPhone"
    assert iphone.quoted_text.startswith("On Apr 3, 2012, at 4:19 PM, bob <bob@example.com> wrote:")

    sparrow = parse("talon/standard_replies/sparrow.eml")
    assert sparrow.new_text.startswith("Hello")
    assert "Sent with Sparrow" in sparrow.new_text
    assert "On Tuesday, April 3, 2012 at 4:55 PM, xxx wrote:" in sparrow.quoted_text

    shared = parse("talon/reply-quotations-share-block.eml")
    assert shared.new_text.startswith("Hi Katharine.")
    assert shared.new_text.rstrip().endswith("Joe XXX")
    assert shared.quoted_text.startswith("--- On Wed, 4/4/12, xxx@example.com")
    assert "New Booking Inquiry" in shared.quoted_text


def test_attachments_from_corpus() -> None:
    yahoo = parse("flanker/russian-attachment-yahoo.eml")
    assert len(yahoo.attachments) == 1
    assert yahoo.attachments[0].filename.startswith("Картинка с очень, очень длинным")
    assert yahoo.attachments[0].data.startswith(b"\x89PNG")

    nonascii = parse("mail-gem/attachment_emails/attachment_nonascii_filename.eml")
    assert [a.filename for a in nonascii.attachments] == ["ciële.txt"]

    broken_ctype = parse("flanker/spam/broken-ctype.eml")
    assert [(a.filename, a.content_type) for a in broken_ctype.attachments] == [
        ("facejj.jpg", "application/octet-stream")
    ]
    assert broken_ctype.attachments[0].data.startswith(b"\xff\xd8")  # JPEG, not text
    assert broken_ctype.text.startswith("Hello Dear, How are you?")

    pdf = parse("flanker/attached-pdf.eml")
    assert [a.filename for a in pdf.attachments] == ["test.pdf"]
    assert pdf.attachments[0].data.startswith(b"%PDF")

    inline = parse("mail-gem/attachment_emails/attachment_message_rfc822_inline_image.eml")
    image = inline.attachments[0]
    assert (image.filename, image.inline, image.content_id) == (
        "img.png",
        True,
        "emedfeb92f-a786-4718-a446-98db8afb53fb@kronos",
    )


def test_nested_and_torture_messages() -> None:
    enclosed = parse("flanker/enclosed.eml")
    assert enclosed.text == "Hello"
    assert [a.content_type for a in enclosed.attachments] == ["message/rfc822"]
    inner = parse_mail(enclosed.attachments[0].data)
    assert inner.subject != "" and inner.subject != enclosed.subject

    endless = parse("flanker/enclosed-endless.eml")
    assert endless.attachments[0].size > 2_000_000

    torture = parse("flanker/torture.eml")
    assert torture.subject == "Multi-media mail demonstration"
    assert torture.text.startswith("This is a demonstration of multi-part mail")
    assert len(torture.attachments) >= 5
    assert torture.truncated_parts == []


def test_broken_mime_structures() -> None:
    recovered = parse("flanker/mailformed-headers.eml")
    assert any("boundary" in w for w in recovered.warnings)

    illegal = parse("mail-gem/mime_emails/raw_email_with_illegal_boundary.eml")
    assert illegal.text.startswith("Hello\nThis is an outlook test")
    assert illegal.html is not None and "MSHTML" in illegal.html

    missing = parse("flanker/missing-boundaries.eml")
    assert missing.text.startswith("Hi This is a broken message")

    final = parse("flanker/missing-final-boundary.eml")
    assert final.text == "Some body"
    assert any("CloseBoundaryNotFound" in w for w in final.warnings)

    outlook_express = parse("flanker/outlook-express.eml")
    assert outlook_express.text == ""
    assert len(outlook_express.attachments) == 1
    assert outlook_express.attachments[0].filename.endswith(".txt")


def test_languages_in_corpus() -> None:
    assert parse("flanker/8bitmime.eml").language == "ru"
    assert parse("talon/standard_replies/apple_mail_2.eml").new_text == "Hello"
    assert parse("mail-gem/plain_emails/basic_email.eml").language == "en"
