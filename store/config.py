"""Configuration: a TOML file, overridden by HELPDESK_DB and --db."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

APP_NAME = "helpdesk"
SYSTEM_CONFIG = Path("/etc/helpdesk/config.toml")
DEFAULT_LANGUAGES = ("en", "lv", "ru", "ar", "ms", "lt", "de", "fr", "es")


def user_config_path() -> Path:
    """Where the per-user config file lives."""
    override = os.environ.get("HELPDESK_CONFIG")
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def default_db_url() -> str:
    """The embedded default: a SQLite file in the user data dir."""
    data_dir = Path(platformdirs.user_data_dir(APP_NAME))
    return f"sqlite+aiosqlite:///{data_dir / 'helpdesk.db'}"


@dataclass
class Config:
    """Settings merged from /etc, the user file, and the environment."""

    db_url: str = field(default_factory=default_db_url)
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    keymap: dict[str, str] = field(default_factory=dict)
    theme: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


class ConfigError(Exception):
    """The config file cannot be used."""


def normalise_db_url(url: str) -> str:
    """Accept plain forms (`sqlite:///x.db`, a path, `postgresql://`) and pick async drivers."""
    if "://" not in url:
        return f"sqlite+aiosqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("sqlite", "sqlite3"):
        return f"sqlite+aiosqlite://{rest}"
    if scheme in ("postgres", "postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        return f"postgresql+asyncpg://{rest}"
    return url


def load_config(db: str | None = None) -> Config:
    """Merge the system file, the user file, HELPDESK_DB and an explicit --db."""
    data: dict[str, Any] = {}
    source: Path | None = None
    for path in (SYSTEM_CONFIG, user_config_path()):
        part = _read(path)
        if part:
            data.update(part)
            source = path
    cfg = Config(raw=data, source=source)
    url = db or os.environ.get("HELPDESK_DB") or data.get("database", {}).get("url")
    if url:
        cfg.db_url = normalise_db_url(str(url))
    langs = data.get("languages")
    if isinstance(langs, list) and langs:
        cfg.languages = tuple(str(x) for x in langs)
    keymap = data.get("keymap")
    if isinstance(keymap, dict):
        cfg.keymap = {str(k): str(v) for k, v in keymap.items()}
    theme = data.get("theme")
    if isinstance(theme, str):
        cfg.theme = theme
    return cfg


def write_user_config(db_url: str, path: Path | None = None) -> Path:
    """Write (or update) the database URL in the user config file."""
    path = path or user_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    lines = [ln for ln in existing.splitlines() if not ln.strip().startswith("url")]
    if "[database]" not in lines:
        lines += ["", "[database]"]
    idx = lines.index("[database]")
    escaped = db_url.replace("\\", "\\\\").replace('"', '\\"')
    lines.insert(idx + 1, f'url = "{escaped}"')
    path.write_text("\n".join(lines).strip() + "\n")
    return path
