"""Secrets -- meter passwords, operator codes, broker and billing credentials -- are never in the
committed config.  The config names the environment variable that holds each one (``*_env``
keys); the value comes from the environment or, for a daemon not started by systemd's
``EnvironmentFile``, from a secrets file the config points to (``secrets_file``), in the same
``KEY=VALUE`` format (deploy/secrets.env.example).  The environment wins over the file.

The file must be private to its owner (mode 0600 or stricter): a group- or world-readable
secrets file is refused, as ssh refuses such a key.  Errors name the file and line, never a value.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

from meterd.errors import ConfigError

MAX_SECRETS_BYTES: Final = 1 * 2**20  # a few dozen KEY=VALUE lines; read no further
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_from_file: dict[str, str] = {}
_loaded_from: Path | None = None


def parse_secrets(text: str, source: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export`` allowed, ``#`` comments, values optionally quoted)."""
    out: dict[str, str] = {}
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not _NAME.fullmatch(key):
            problems.append(f"{source}:{number}: expected NAME=VALUE")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key in out:
            problems.append(f"{source}:{number}: {key} is set twice")
        out[key] = value
    if problems:
        raise ConfigError(problems)
    return out


def load_secrets_file(path: Path) -> dict[str, str]:
    """Read and check a secrets file; the values are also what :func:`lookup` falls back to."""
    global _loaded_from
    try:
        info = path.stat()
        with path.open("rb") as f:
            raw = f.read(MAX_SECRETS_BYTES + 1)
        if len(raw) > MAX_SECRETS_BYTES:  # a 1 GB file was read whole and split into lines (3.6 GB)
            raise ConfigError(f"secrets_file: {path}: larger than {MAX_SECRETS_BYTES // 2**10} KiB: "
                              "not a secrets file")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"secrets_file: {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"secrets_file: {path}: cannot read: {exc}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"secrets_file: {path} is readable by group or others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 it")
    values = parse_secrets(text, str(path))
    _from_file.clear()
    _from_file.update(values)
    _loaded_from = path
    return values


def forget_secrets_file() -> None:
    """Forget the loaded secrets file (its values and its name): for a process that loads
    another site's config, and for tests."""
    global _loaded_from
    _from_file.clear()
    _loaded_from = None


def lookup(name: str) -> str | None:
    """The secret in environment variable ``name``, else in the loaded secrets file."""
    return os.environ.get(name) or _from_file.get(name) or None


def where(name: str) -> str:
    """Where a missing secret was looked for, for error messages."""
    return f"environment variable {name}" + (f" (nor in {_loaded_from})" if _loaded_from else "")


# Keys that would hold a secret itself: refused anywhere in the config (use NAME_env instead).
INLINE_SECRET_KEYS: Final = frozenset({"password", "passwd", "token", "secret", "api_key", "apikey",
                                       "operator_code", "meter_password", "credentials"})
