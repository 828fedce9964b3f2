"""How fast the operator console's requests answer over a district of 100,000 meters.

Builds a data directory with N meters (archive and config, 1,000 channels) and an account per
meter, serves the API with uvicorn on a free port, and times the console's requests over HTTP:
search by the last digits of an address and by a customer's name, the first, a middle and the
last page of the meter list (cursor walk), a meter's page, an account's page and ledger, the
accounts list.  Prints the median and worst of ``--repeat`` runs per request; no pass/fail.

    python benchmarks/bench_console.py --meters 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import uvicorn

from meterd.api import TokenStore, create_app
from meterd.config.loader import parse_config
from meterd.control.state import AccountSpec, ControlStore
from meterd.storage.sqlite import MeterRecord, SqliteStore


def build(data: Path, meters: int) -> tuple[object, str]:
    addresses = [f"{n:012d}" for n in range(1, meters + 1)]
    channels = max(1, meters // 100)
    t0 = time.perf_counter()
    with SqliteStore(data) as archive:
        archive.upsert_meters([MeterRecord(a, f"bus{i % channels}", "dlt645-2007", Decimal(1), Decimal(1))
                               for i, a in enumerate(addresses)])
    now = datetime.now(UTC)
    with ControlStore(data) as control:
        control.upsert_accounts([AccountSpec(f"ACC-{n:06d}", "res", {a: Decimal(1)}, customer=f"customer {n}",
                                             area=f"TA-{n % 50}", opening_balance=Decimal(100))
                                 for n, a in enumerate(addresses, 1)], actor="bench", now=now)
    with TokenStore(data) as tokens:
        token = tokens.create("bench", "viewer", now)[1]
    text = [f'[store]\ndata_dir = "{data}"']
    text += [f'[channels.bus{c}]\ntcp = {{ host = "127.0.0.1", port = {1000 + c} }}' for c in range(channels)]
    text += [f'[[meters]]\naddress = "{a}"\nchannel = "bus{i % channels}"' for i, a in enumerate(addresses)]
    text.append('[[polls]]\nname = "p"\ninterval = 900\nquantities = ["energy.active.import.total"]')
    config = parse_config(tomllib.loads("\n".join(text)), source="bench.toml")
    print(f"built {meters:,} meters, {meters:,} accounts, {channels} channels in {time.perf_counter() - t0:.1f} s")
    return config, token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        config, token = build(data, args.meters)
        app = create_app(data, clock=lambda: datetime.now(UTC), config=config)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}/api/v1/"

        def get(path: str) -> dict:
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())

        middle = f"{args.meters // 2:012d}"
        last = f"{args.meters - 30:012d}"
        requests = {
            "search last digits 4242": "search?q=4242",
            "search customer name": "search?q=customer%2077777",
            "meters first page (50)": "console/meters",
            "meters middle page": f"console/meters?cursor={middle}",
            "meters last page": f"console/meters?cursor={last}",
            "meters of one channel": "console/meters?channel=bus7",
            "meter page": f"console/meters/{middle}",
            "accounts middle page": "console/accounts?cursor=ACC-050000",
            "account page": "console/accounts/ACC-050000",
            "account ledger": "console/accounts/ACC-050000/ledger",
        }
        print(f"{'request':32} {'median ms':>10} {'worst ms':>10}  answer")
        for name, path in requests.items():
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                doc = get(path)
                times.append((time.perf_counter() - t0) * 1000)
            size = next((f"{len(v)} {k}" for k, v in doc.items() if isinstance(v, list)), "")
            print(f"{name:32} {statistics.median(times):10.1f} {max(times):10.1f}  {size}")
        server.should_exit = True
        thread.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
