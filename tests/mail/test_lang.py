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
    stale = fresh / "py3langid-0.3.0-model.npz"  # an older version's cache
    stale.write_bytes(b"old")
    first = _answers()  # unpacks and writes the cache
    path = lang.model_cache_path()
    assert path is not None and path.parent == fresh and path.is_file()
    assert not stale.exists(), "an old cache is removed when the new one is written"
    assert first == ["lv", "de", "ru", "en", "fr", "ar"]

    lang._base = None  # a new worker: reads the cache
    lang._identifier.cache_clear()
    cached = lang._base_identifier()
    assert cached is not packed
    # mapped from the file, not copied: the engine and its workers share the pages
    assert isinstance(cached.tk_nextmove, memoryview) and cached.tk_nextmove.readonly
    assert list(cached.tk_nextmove) == list(packed.tk_nextmove)
    assert list(cached.tk_output) == list(packed.tk_output)
    assert cached.nb_classes == packed.nb_classes
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


SOLE_SCRIPT_TEXTS = [
    "Здравствуйте! Не могу войти в личный кабинет после обновления.",
    "Добрый день, счёт за октябрь (№ 2024-117) не пришёл на почту ivan@example.com.",
    "Привет, принтер пишет ошибку при печати, что делать?",
    "Доброго дня! Не можу увійти до особистого кабінету.",  # Ukrainian: ru is the nearest
    "مرحبا، لا أستطيع الدخول إلى حسابي منذ التحديث",
    "السلام عليكم، الفاتورة رقم 42 غير صحيحة، أرجو التصحيح",
]


def test_a_text_in_a_script_only_one_language_uses_skips_the_model_with_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Of the default languages only Russian is written in Cyrillic and only Arabic in Arabic
    script: such texts are answered without the model, and the answer is the model's."""
    monkeypatch.setattr(lang, "SOLE_SCRIPT_SHARE", 2.0)  # never: every text goes to the model
    by_model = [lang.detect_language(t) for t in SOLE_SCRIPT_TEXTS]
    monkeypatch.undo()
    calls: list[str] = []
    real = lang._identifier

    def counting(key: tuple[str, ...]) -> object:
        calls.append("model")
        return real(key)

    monkeypatch.setattr(lang, "_identifier", counting)
    assert [lang.detect_language(t) for t in SOLE_SCRIPT_TEXTS] == by_model
    assert by_model == ["ru", "ru", "ru", "ru", "ar", "ar"]
    assert calls == []
    # a Latin text with a Cyrillic name in it still goes to the model
    assert lang.detect_language("Hello, my colleague Иван cannot log in since Monday.") == "en"
    assert calls == ["model"]
    # with two Cyrillic languages configured the model decides between them
    calls.clear()
    lang.detect_language(SOLE_SCRIPT_TEXTS[0], ("ru", "uk", "en"))
    assert calls == ["model"]
