"""Language identification of mail text, restricted to the languages a deployment expects."""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

__all__ = ["DEFAULT_LANGUAGES", "MIN_CONFIDENCE", "detect_language", "supported", "warm_up"]

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "lv", "ru", "ar", "ms", "lt", "de", "fr", "es")

#: Below this normalised probability the answer is "unknown" (None).
MIN_CONFIDENCE = 0.5
#: Only this many characters of the text are looked at.
SAMPLE_CHARS = 2000
#: Texts with fewer letters than this are not classified.
MIN_LETTERS = 4

_NOISE = re.compile(
    r"(?:https?://|www\.)\S+"  # links
    r"|(?<!\S)[^\s@]*@\S+"  # mail addresses (anchored at a word start: linear time)
    r"|\d+",  # numbers, dates, times
    re.IGNORECASE,
)

_LETTER = re.compile(r"[^\W\d_]")
_SCRIPT_RANGES = {
    "latin": "A-Za-z\u00c0-\u024f\u1e00-\u1eff",
    "cyrillic": "\u0400-\u052f",
    "arabic": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "hebrew": "\u0590-\u05ff",
}
_LATIN_LANGUAGES = (
    "en lv lt ms id de fr es it pt nl pl cs sk sl hr ro hu fi et sv da no nb nn is tr az"
    " sq ca eu gl ga cy mt af sw tl vi lb eo la bs"
)
_LANGUAGE_SCRIPT: dict[str, str] = {"el": "greek", "he": "hebrew"}
for _code in _LATIN_LANGUAGES.split():
    _LANGUAGE_SCRIPT[_code] = "latin"
for _code in ("ru", "uk", "be", "bg", "sr", "mk", "kk", "ky", "mn", "tg"):
    _LANGUAGE_SCRIPT[_code] = "cyrillic"
for _code in ("ar", "fa", "ur", "ps", "ku"):
    _LANGUAGE_SCRIPT[_code] = "arabic"


@lru_cache(maxsize=16)
def _script_filter(languages: tuple[str, ...]) -> re.Pattern[str] | None:
    """Letters written in a script of the configured languages; None when a script is unknown."""
    ranges: set[str] = set()
    for code in languages:
        script = _LANGUAGE_SCRIPT.get(code)
        if script is None:
            return None
        ranges.add(_SCRIPT_RANGES[script])
    return re.compile("[" + "".join(sorted(ranges)) + "]")


_base_lock = threading.Lock()
_base: Any = None


def _base_identifier() -> Any:
    """The full py3langid model, loaded once (about half a second)."""
    global _base
    if _base is None:
        with _base_lock:
            if _base is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _base = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _base


@lru_cache(maxsize=16)
def _identifier(languages: tuple[str, ...]) -> Any:
    base = _base_identifier()
    known = set(base.labels)
    usable = [code for code in languages if code in known]
    if not usable:
        return None
    ident = copy.copy(base)
    ident.set_languages(usable)
    return ident


def _key(languages: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({code.strip().lower() for code in languages if code and code.strip()}))


def supported(languages: Sequence[str]) -> tuple[str, ...]:
    """The subset of ``languages`` the model knows."""
    known = set(_base_identifier().labels)
    return tuple(code for code in _key(languages) if code in known)


def warm_up(languages: Sequence[str] = DEFAULT_LANGUAGES) -> None:
    """Load the model now instead of on the first detection (call at worker start-up)."""
    _identifier(_key(languages))


def detect_language(text: str, languages: Sequence[str] = DEFAULT_LANGUAGES) -> str | None:
    """ISO 639-1 code of the most likely language among ``languages``, or None if unsure.

    Only the first SAMPLE_CHARS characters are used; links, addresses and digits are ignored.
    """
    if not text:
        return None
    key = _key(languages)
    if not key:
        return None
    sample = _NOISE.sub(" ", text[: SAMPLE_CHARS + 500])[:SAMPLE_CHARS]
    letters = len(_LETTER.findall(sample))
    if letters < MIN_LETTERS:
        return None
    script = _script_filter(key)
    if script is not None and len(script.findall(sample)) * 2 < letters:
        return None  # mostly written in a script none of the languages uses (e.g. Japanese)
    if len(key) == 1:
        return key[0] if key[0] in set(_base_identifier().labels) else None
    ident = _identifier(key)
    if ident is None:
        return None
    code, confidence = ident.classify(sample)
    if confidence < MIN_CONFIDENCE or code not in key:
        return None
    return str(code)
