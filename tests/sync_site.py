"""A prepaid site with billing sync jobs for ``meterd`` commands run against a drop folder
(tests/e2e/test_cli_sync.py, tests/e2e/test_site_zone_cli.py): meters 000000000001 and
000000000002 on a bus nobody answers on (127.0.0.1:9), one poll of the import register, the flat
tariff ``res`` (0.5 from 2026-01-01), the tests' accounts on it, and their sync jobs -- the
payments import reads ``billing/payments/inbox`` under the site's folder.  Text and paths only:
nothing here keeps state between tests."""

from __future__ import annotations

import json
from pathlib import Path

PAYMENTS_JOB = {"name": "payments", "kind": "import_payments", "folder": "billing/payments"}
READINGS_JOB = {"name": "readings", "kind": "export_readings", "folder": "billing/readings", "format": "json"}


def sync_site(accounts: dict[str, str], jobs: tuple[dict[str, str], ...] = (PAYMENTS_JOB,), *, interval: int = 60,
              head: str = "", store: str = "", topology: str = "") -> str:
    """The site config (data in ``data`` next to it): ``accounts`` account -> its meter, ``jobs``
    the sync jobs, ``interval`` the poll's in seconds; ``head`` TOML before ``[store]`` (a
    ``[site]`` table), ``store`` keys of ``[store]`` of the test's own, ``topology`` its tables."""
    def tables(name: str, rows: list[dict[str, str | list[str]]]) -> str:
        return "".join(f"\n[[{name}]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in row.items())
                       for row in rows)

    return f"""
{head}[store]
data_dir = "data"
{store}
[channels.bus1]
tcp = {{ host = "127.0.0.1", port = 9 }}
""" + tables("meters", [{"address": f"{i:012d}", "channel": "bus1"} for i in (1, 2)]) + f"""
[[polls]]
name = "p"
interval = {interval}
quantities = ["energy.active.import.total"]
{topology}
[prepaid]
[[prepaid.tariffs]]
name = "res"
[[prepaid.tariffs.versions]]
effective = 2026-01-01
kind = "flat"
price = "0.5"
""" + tables("prepaid.accounts", [{"account": account, "tariff": "res", "meters": [meter]}
                                  for account, meter in accounts.items()]) + tables("sync.jobs", list(jobs))


def payments_inbox(folder: Path) -> Path:
    """The payments job's inbox under the site's ``folder``, made."""
    inbox = folder / "billing" / "payments" / "inbox"
    inbox.mkdir(parents=True)
    return inbox
