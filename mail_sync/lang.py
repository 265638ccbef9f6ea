"""Language identification of mail text, restricted to the languages a deployment expects."""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import os
import re
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import platformdirs

__all__ = ["DEFAULT_LANGUAGES", "MIN_CONFIDENCE", "detect_language", "supported", "warm_up"]

log = logging.getLogger("helpdesk.mail.lang")

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "lv", "ru", "ar", "ms", "lt", "de", "fr", "es")

#: Below this normalised probability the answer is "unknown" (None).
MIN_CONFIDENCE = 0.5
#: Only this many characters of the text are looked at.
SAMPLE_CHARS = 2000
#: A text whose letters are at least this share of one script that only one of the
#: languages uses is taken to be in that language without asking the model.
SOLE_SCRIPT_SHARE = 0.9
#: Texts with fewer letters than this are not classified.
MIN_LETTERS = 4

_NOISE = re.compile(
    r"(?:https?://|www\.)\S+"  # links
    r"|(?<!\S)[^\s@]*@\S+"  # mail addresses (anchored at a word start: linear time)
    r"|\d+",  # numbers, dates, times
    re.IGNORECASE,
)
#: `_NOISE` for a text without "@" (the address branch is tried at every position: slow).
_NOISE_NO_AT = re.compile(r"(?:https?://|www\.)\S+|\d+", re.IGNORECASE)

_NOT_LETTERS = re.compile(r"[\W\d_]+")
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
def _sole_scripts(languages: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """(language, runs of its script's letters) for each non-Latin script that exactly one
    of the languages is written in (Cyrillic -> ru, Arabic -> ar for the defaults)."""
    known = set(_base_identifier().labels)
    users: dict[str, list[str]] = {}
    for code in languages:
        script = _LANGUAGE_SCRIPT.get(code)
        if script is not None:
            users.setdefault(script, []).append(code)
    return tuple(
        (codes[0], re.compile(f"[{_SCRIPT_RANGES[script]}]+"))
        for script, codes in sorted(users.items())
        if script != "latin" and len(codes) == 1 and codes[0] in known
    )


@lru_cache(maxsize=16)
def _script_filter(languages: tuple[str, ...]) -> tuple[re.Pattern[str], bool] | None:
    """Runs of characters outside the scripts of the configured languages, and whether Latin
    is one of them; None when a script is unknown."""
    ranges: set[str] = set()
    for code in languages:
        script = _LANGUAGE_SCRIPT.get(code)
        if script is None:
            return None
        ranges.add(_SCRIPT_RANGES[script])
    return re.compile("[^" + "".join(sorted(ranges)) + "]+"), _SCRIPT_RANGES["latin"] in ranges


_base_lock = threading.Lock()
_base: Any = None


def _base_identifier() -> Any:
    """The full py3langid model, loaded once per process."""
    global _base
    if _base is None:
        with _base_lock:
            if _base is None:
                _base = _load_model()
    return _base


def model_cache_path() -> Path | None:
    """Where the unpacked model is kept (`$HELPDESK_CACHE_DIR` or the user cache directory)."""
    try:
        version = importlib.metadata.version("py3langid")
    except importlib.metadata.PackageNotFoundError:
        return None
    folder = os.environ.get("HELPDESK_CACHE_DIR") or platformdirs.user_cache_dir("helpdesk")
    return Path(folder) / f"py3langid-{version}-model.bin"


#: The cache file: this magic, the JSON index's length (8 bytes, little-endian), the index
#: ({name: [dtype, shape, offset]}), then each array's raw bytes at its offset.
_MAGIC = b"HDLANGID1\n"
_ALIGN = 64


def _load_model() -> Any:
    """py3langid's model. It ships LZMA-packed (unpacking takes ~0.7 s, in every parse worker
    of every sync); the unpacked arrays are kept in the cache directory and memory-mapped
    from there: no copy, and the engine and its parse workers share one set of pages (the
    state machine alone is 40 MB). Any problem with the cache falls back to the packed
    model, and the cache is written again."""
    import numpy as np
    from py3langid.langid import MODEL_DIR, MODEL_FILE, LanguageIdentifier
    from py3langid.modelio import load_model

    path = model_cache_path()
    if path is not None and path.is_file():
        try:
            a = _map_arrays(path)
            ident = LanguageIdentifier(
                a["ptc"],
                a["pc"],
                a["classes"].tolist(),
                memoryview(a["nextmove"]),
                memoryview(a["output"]),
                norm_probs=True,
                tk_row=memoryview(a["row"]),
            )
            # py3langid walks `_rowbase[state]` (row << 8) per byte; the same numbers from
            # the shared map instead of a list of 100,000 ints per process.
            if isinstance(getattr(ident, "_rowbase", None), list):
                ident._rowbase = memoryview(a["rowbase"])
            return ident
        except Exception as exc:  # noqa: BLE001 - a bad cache file only costs the slow load
            log.warning("event=language-model-cache-unreadable path=%s error=%r", path, exc)
    ptc, pc, classes, nextmove, row, output = load_model(MODEL_DIR / MODEL_FILE)
    ident = LanguageIdentifier(
        np.asarray(ptc), np.asarray(pc), classes, nextmove, output, norm_probs=True, tk_row=row
    )
    if path is not None:
        rows = np.frombuffer(row, dtype=f"u{row.itemsize}")
        arrays = {
            "ptc": np.asarray(ptc),
            "pc": np.asarray(pc),
            "classes": np.asarray(classes),
            "nextmove": np.frombuffer(nextmove, dtype=f"u{nextmove.itemsize}"),
            "row": rows,
            "rowbase": rows.astype(np.int64) << 8,
            "output": np.asarray(output, dtype=np.int32),
        }
        _write_cache(path, arrays)
    return ident


def _map_arrays(path: Path) -> dict[str, Any]:
    """The cache file's arrays, memory-mapped read-only."""
    import json

    import numpy as np

    with path.open("rb") as f:
        head = f.read(len(_MAGIC) + 8)
        if head[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a language model cache file")
        index = json.loads(f.read(int.from_bytes(head[len(_MAGIC) :], "little")))
    size = path.stat().st_size
    out = {}
    for name, (dtype, shape, offset) in index.items():
        arr = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
        if offset + arr.nbytes > size:
            raise ValueError(f"language model cache file cut short ({name})")
        out[name] = arr
    return out


def _write_cache(path: Path, arrays: dict[str, Any]) -> None:
    """Write the unpacked model (atomically: readers never see half a file); best effort."""
    import json

    import numpy as np

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {}
        # the index's length does not depend on the offsets' digits: fix it with wide ones
        for name, arr in arrays.items():
            index[name] = [arr.dtype.str, list(arr.shape), 10**12]
        start = -(-(len(_MAGIC) + 8 + len(json.dumps(index))) // _ALIGN) * _ALIGN
        offset = start
        for name, arr in arrays.items():
            index[name][2] = offset
            offset += -(-arr.nbytes // _ALIGN) * _ALIGN
        blob = json.dumps(index).encode()
        with tmp.open("wb") as out:
            out.write(_MAGIC + len(blob).to_bytes(8, "little") + blob)
            for name, arr in arrays.items():
                out.seek(index[name][2])
                out.write(np.ascontiguousarray(arr).tobytes())
            out.truncate(offset)
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a read-only home: keep loading the packed model
        log.info("event=language-model-cache-not-written path=%s error=%r", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return
    # Caches of other py3langid versions or of the older .npz format are dead weight (70 MB).
    for old in path.parent.glob("py3langid-*-model.*"):
        if old != path and not old.name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                old.unlink()


@lru_cache(maxsize=16)
def _identifier(languages: tuple[str, ...]) -> Any:
    base = _base_identifier()
    known = set(base.labels)
    usable = [code for code in languages if code in known]
    if not usable:
        return None
    ident = copy.copy(base)
    ident.set_languages(usable)
    # set_languages leaves a column-major float16 slice: each feature's row is then 9 cache
    # misses away. Row-major float32 gives the same scores (float16 widens exactly).
    import numpy as np

    ident.nb_ptc = np.ascontiguousarray(ident.nb_ptc, dtype=np.float32)
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
    head = text[: SAMPLE_CHARS + 500]
    sample = (_NOISE if "@" in head else _NOISE_NO_AT).sub(" ", head)[:SAMPLE_CHARS]
    letters = len(_NOT_LETTERS.sub("", sample))
    if letters < MIN_LETTERS:
        return None
    script = _script_filter(key)
    # ASCII letters are Latin: a plain ASCII text passes when Latin is configured.
    if (
        script is not None
        and not (script[1] and sample.isascii())
        and len(script[0].sub("", sample)) * 2 < letters
    ):
        return None  # mostly written in a script none of the languages uses (e.g. Japanese)
    if len(key) == 1:
        return key[0] if key[0] in set(_base_identifier().labels) else None
    # A text written in a script only one of the languages uses is that language: the
    # model, restricted to these languages, would say so too (its byte n-grams of that script
    # belong to that language alone), at several times the cost.
    for code, letters_of in _sole_scripts(key):
        if sum(map(len, letters_of.findall(sample))) >= letters * SOLE_SCRIPT_SHARE:
            return code
    ident = _identifier(key)
    if ident is None:
        return None
    code, confidence = ident.classify(sample)
    if confidence < MIN_CONFIDENCE or code not in key:
        return None
    return str(code)
