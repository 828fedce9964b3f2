"""The layering of docs/architecture.md, checked on every module's imports (parsed, not imported).

Every ``import meterd...`` / ``from meterd... import`` counts: at module level, inside functions,
and under ``if TYPE_CHECKING:``.  Two checks:

- each package imports only what its rule allows (``ALLOWED``); the shared core modules
  (``CORE``) import only each other, and the protocol codecs only ``errors`` and ``checking``;
- the packages' import graph has no cycle.  Annotation-only imports (under ``if TYPE_CHECKING:``)
  are left out of this check: they never run, and they are how a part names the type of the
  settings it is handed (``control.runtime`` names ``config.prepaid.PrepaidConfig``, which is
  built from control's own value types).

Known exceptions are edges that another part of issue #15 removes; each names its part.  When
an exception is gone from the code the test says so, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: Modules at the top of the package that every layer may use.  They import only each other.
CORE = {"errors", "checking", "clock", "readings", "plausibility", "secrets", "logthrottle", "supervise", "heap", "ports"}
#: What the protocol codecs may use of the core (sans-I/O: no clocks, no logging).
PROTOCOLS_CORE = {"errors", "checking"}
EVERYTHING = {"protocols", "storage", "config", "collector", "control", "analytics", "billing_link", "api", "cluster",
              "simulators", "cli", "app", "reports"}

#: package -> the packages it may import (besides itself and the core).
ALLOWED: dict[str, set[str]] = {
    "protocols": set(),
    "storage": set(),
    # collector nodes: the lease table in the state database; the collector and the jobs get the
    # node's callbacks from meterd.app, they never import it
    "cluster": {"storage", "config"},
    # config builds every part's settings from the part's own value types (tariffs, thresholds,
    # topology, sync job specs, the store's Database location); the parts never import config at run time.
    "config": {"protocols", "control", "analytics", "billing_link", "storage"},
    "collector": {"protocols", "storage", "config"},
    # control, analytics and billing_link get the collector's interface from meterd.app; they may
    # name their config section's type (annotation only: see the cycle check).
    "control": {"storage", "protocols", "config"},
    "analytics": {"storage", "config"},
    # the reading-day export reads the daily frozen registers analytics keeps; payments and
    # accounts go through control's store
    "billing_link": {"storage", "control", "analytics", "config"},
    # the .xlsx reports read what the API's summaries read (line loss, energy, quality, balances)
    "reports": {"storage", "control", "analytics", "config"},
    "api": {"storage", "control", "analytics", "billing_link", "config", "protocols", "reports"},
    "app": EVERYTHING - {"cli", "simulators"},
    "cli": EVERYTHING,
    "simulators": {"protocols", "collector.transports"},
}

#: (importing module, imported module prefix) -> the part of issue #15 that removes the edge.
KNOWN: dict[tuple[str, str], str] = {
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports() -> list[tuple[str, str, int, bool]]:
    """(module, imported meterd module, line, annotation only) for every meterd import in src."""
    found = []
    for path in sorted((SRC / "meterd").rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        typing_only = _type_checking_lines(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # ``from meterd import secrets`` / ``from meterd.collector import ondemand``: the submodules
                targets = [f"{target}.{a.name}" if _is_module(f"{target}.{a.name}") else target for a in node.names]
            for target in dict.fromkeys(targets):
                if target == "meterd" or target.startswith("meterd."):
                    found.append((module, target, node.lineno, node.lineno in typing_only))
    return found


def layer(module: str) -> str:
    """meterd.collector.daemon -> collector; meterd.errors -> errors; meterd.app -> app."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "meterd"


def allowed(source: str, target: str) -> bool:
    src, dst = layer(source), layer(target)
    if src == dst or dst == "meterd":
        return True
    if src in CORE:
        return dst in CORE
    if src == "protocols":
        return dst in PROTOCOLS_CORE
    if dst in CORE:
        return True
    rules = ALLOWED.get(src, set())
    return dst in rules or any(target == r or target.startswith(f"meterd.{r}.") or target == f"meterd.{r}"
                               for r in rules if "." in r)


def known(source: str, target: str) -> str | None:
    for (module, prefix), part in KNOWN.items():
        if source == module and (target == prefix or target.startswith(prefix + ".")):
            return part
    return None


def test_every_import_keeps_its_layer_rule() -> None:
    broken = [f"{m}:{line} imports {t}" for m, t, line, _ in imports() if not allowed(m, t) and not known(m, t)]
    assert not broken, "imports against the layering (docs/architecture.md):\n" + "\n".join(broken)


def test_known_exceptions_still_exist() -> None:
    """An exception whose import is gone is taken off the list, so the rules only tighten."""
    edges = [(m, t) for m, t, _, _ in imports()]
    stale = [f"{m} -> {p} ({part})" for (m, p), part in KNOWN.items()
             if not any(s == m and (t == p or t.startswith(p + ".")) for s, t in edges)]
    assert not stale, "no longer needed, remove from KNOWN:\n" + "\n".join(stale)


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for m, t, _, typing_only in imports():
        if typing_only or known(m, t):
            continue
        a, b = layer(m), layer(t)
        if a != b and b != "meterd":
            graph[a].add(b)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_package_graph_has_no_cycle() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_the_collector_does_not_know_the_parts_built_on_it() -> None:
    """The daemon builds nothing of prepaid, analytics, the billing link or the API (meterd.app does)."""
    above = {"control", "analytics", "billing_link", "api", "cli", "app"}
    found = [f"{m}:{line} imports {t}" for m, t, line, _ in imports() if layer(m) == "collector" and layer(t) in above]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("graph", "cycle"), [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_find_cycle(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle
