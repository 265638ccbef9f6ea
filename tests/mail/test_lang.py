"""The language model cache: parse workers start from the unpacked model, with the same answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from py3langid.langid import MODEL_FILE, LanguageIdentifier

from mail_sync import lang

TEXTS = [
    "Labdien! Lūdzu, palīdziet nomainīt paroli, jo vecā vairs nedarbojas.",
    "Guten Tag, mein Drucker druckt seit gestern nichts mehr. Können Sie helfen?",
    "Здравствуйте! Не могу войти в личный кабинет после обновления.",
    "Hello, the invoice for October is missing from my account page.",
    "Bonjour, je n'arrive plus à me connecter depuis la mise à jour.",
    "مرحبا، لا أستطيع الدخول إلى حسابي منذ التحديث",
]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No model loaded in this process; the cache in an empty directory."""
    monkeypatch.setenv("HELPDESK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(lang, "_base", None)
    lang._identifier.cache_clear()
    yield tmp_path
    lang._identifier.cache_clear()


def _answers() -> list[str | None]:
    return [lang.detect_language(t, ("en", "lv", "ru", "de", "fr", "ar")) for t in TEXTS]


def test_the_unpacked_model_answers_as_the_packed_one(fresh: Path) -> None:
    packed = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    first = _answers()  # unpacks and writes the cache
    path = lang.model_cache_path()
    assert path is not None and path.parent == fresh and path.is_file()
    assert first == ["lv", "de", "ru", "en", "fr", "ar"]

    lang._base = None  # a new worker: reads the cache
    lang._identifier.cache_clear()
    cached = lang._base_identifier()
    assert cached is not packed
    assert list(cached.tk_nextmove) == list(packed.tk_nextmove)
    assert cached.tk_output == packed.tk_output and cached.nb_classes == packed.nb_classes
    assert _answers() == first
    for text in TEXTS:
        assert cached.classify(text) == packed.classify(text)


def test_a_damaged_cache_is_replaced_not_fatal(fresh: Path) -> None:
    path = lang.model_cache_path()
    assert path is not None
    path.write_bytes(b"PK\x03\x04 not a model")
    assert _answers() == ["lv", "de", "ru", "en", "fr", "ar"]
    assert path.stat().st_size > 10_000_000, "rewritten from the packed model"


def test_an_unwritable_cache_directory_only_costs_time(
    monkeypatch: pytest.MonkeyPatch, fresh: Path
) -> None:
    blocker = fresh / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("HELPDESK_CACHE_DIR", str(blocker / "cache"))
    assert _answers() == ["lv", "de", "ru", "en", "fr", "ar"]
