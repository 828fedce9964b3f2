"""The terminal protocols are sans-I/O (issue #15): ``meterd.protocols.terminal`` imports no I/O
(sockets, asyncio, clocks, logging, threads, paho, pyserial) and nothing of meterd but
``meterd.errors`` and ``meterd.protocols``.  Read from the source with ``ast`` (every import, lazy
ones in functions included).  Which package may import which (the simulators only the codecs and
the collector's byte pipes) is ``test_import_rules``'s.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "meterd"

NO_IO = ("asyncio", "socket", "selectors", "time", "logging", "threading", "paho", "serial")
TERMINAL_MAY_IMPORT = ("meterd.errors", "meterd.protocols")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``; ``from x import y`` also gives ``x.y``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("protocols/terminal"), ids=lambda p: p.name)
def test_the_terminal_codecs_do_no_io_and_import_only_their_layer(path: Path) -> None:
    wrong = [f"{path.name}:{line} imports {module}" for line, module in _imports(path)
             if _within(module, NO_IO) or (module.startswith("meterd") and not _within(module, TERMINAL_MAY_IMPORT))]
    assert not wrong
