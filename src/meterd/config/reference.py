"""``docs/config.md``, rendered from :mod:`meterd.config.keys`: ``python -m meterd.config.reference >
docs/config.md`` (or ``meterd config reference``).

The page is the table of keys the loader checks against, so it lists every key the loader accepts
and nothing else; a test renders it again and compares it with the committed file.
"""

from __future__ import annotations

import re
import sys
from typing import Final

from meterd.config.durations import DURATION_FORMS
from meterd.config.keys import ROOT, SECTIONS, Key, Section
from meterd.secrets import INLINE_SECRET_KEYS

GENERATOR: Final = "python -m meterd.config.reference > docs/config.md"

_INTRO: Final = f"""\
# Site configuration reference

<!-- Generated from src/meterd/config/keys.py by `{GENERATOR}`; do not edit by hand:
tests/unit/test_config_reference.py fails when this file and the table differ. -->

A site is one TOML file: `meterd run -c site.toml`, or `METERD_CONFIG=site.toml` once for every
command. `meterd config check -c site.toml` validates it without starting anything (no port opened,
nothing written) and prints the compiled plan: every channel, its polls, their meters and what each
meter is asked for. [`examples/site.toml`](../examples/site.toml) is a commented example.

The loader reports every problem at once, each as `file: key path: what is wrong`
(`site.toml: polls[0].meters[2]: no meter 000000000099 in [[meters]]`); array entries count from 0.
A key that is not listed here is an error ("unknown key", with a close name suggested), so a typo
never leaves a default silently in force.

## Values

- **Durations**: {DURATION_FORMS.replace('"', '`')} (several parts add up; no sign).
- **Meter addresses**: 1 to 12 decimal digits; short forms are padded, so `"1"` is `000000000001`.
- **Amounts and prices** (yuan) and the analytics numbers are written as strings (`"0.5283"`): TOML
  floats are binary and would not keep the digits written.
- **Paths** are relative to the config file's folder unless absolute; `~` is expanded.
- **Times of day** are `"HH:MM"`; dates are TOML dates (`2026-10-01`).
- **Secrets** are never written in the file: the `*_env` keys name the environment variable (or
  the `secrets_file` entry) that holds one, and a key named
  {", ".join(f"`{k}`" for k in sorted(INLINE_SECRET_KEYS))}
  is refused anywhere.

## Sections

"""


def _anchor(section: Section) -> str:
    return "top-level" if section.id == ROOT else re.sub(r"[^a-z0-9]+", "-", section.id.lower()).strip("-")


def header(section: Section) -> str:
    """How the section is written in TOML: ``[store]``, ``[channels.NAME]``, ``[[meters]]``."""
    if section.id == ROOT:
        return "(top level)"
    path = section.id.replace("[]", "").replace("plausibility.models.*", "plausibility.models.MODEL")
    path = path.replace("*", "NAME")
    return f"[[{path}]]" if section.shape in ("tables", "list") else f"[{path}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return ""
    return f"`{_cell(key.default)}`"


def _meaning(key: Key) -> str:
    text = key.doc
    if key.section is not None:
        target = SECTIONS[key.section]
        text += f" ([`{header(target)}`](#{_anchor(target)}))"
    return _cell(text)


def render() -> str:
    """The whole page, Markdown."""
    out = [_INTRO]
    for section in SECTIONS.values():
        out.append(f"- [`{header(section)}`](#{_anchor(section)})\n")
    for section in SECTIONS.values():
        out.append(f'\n<a id="{_anchor(section)}"></a>\n\n## `{header(section)}`\n\n{section.doc}\n')
        if section.free:
            out.append("\nAny key: the names are the operator's own.\n")
            continue
        out.append("\n| key | type | default | meaning |\n|---|---|---|---|\n")
        for key in section.keys:
            out.append(f"| `{key.name}` | {_cell(key.type)} | {_default(key)} | {_meaning(key)} |\n")
    return "".join(out)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
