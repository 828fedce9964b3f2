"""The built-in operator dashboard (its routes arrive with the page)."""

from __future__ import annotations

from starlette.routing import BaseRoute


def dashboard_routes() -> list[BaseRoute]:
    return []
