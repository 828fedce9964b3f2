"""``meterd token create NAME --role ROLE`` / ``list`` / ``revoke ID``: HTTP API tokens.

A token is shown once, when it is created; only its hash is stored.  Roles: viewer (read),
technician (read + diagnostics), operator (+ commands and money), admin (+ tokens and config).
Creating and revoking tokens is audited.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from meterd.cli.common import EXIT_BAD_INPUT, EXIT_OK, error, name_arg, print_json, shown
from meterd.clock import local_text
from meterd.errors import ConfigError


def _token_name(text: str) -> str:
    """``create``'s name is the operator's name in the audit log (at most
    :data:`~meterd.storage.alarms.MAX_NAME` characters, as the API takes); ``revoke``'s is an id."""
    from meterd.storage.alarms import MAX_NAME

    if len(text) > MAX_NAME:
        raise argparse.ArgumentTypeError(f"{shown(text)} is longer than {MAX_NAME} characters")
    return text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="HTTP API tokens: create (shown once), list, revoke")
    p.add_argument("action", choices=("create", "list", "revoke"))
    p.add_argument("name", nargs="?", type=_token_name, help="create: who the token is for; revoke: the token id")
    p.add_argument("--role", choices=("viewer", "technician", "operator", "admin"), default="viewer")
    p.add_argument("--operator", type=name_arg, default="admin", help="who creates or revokes it (audited)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=token_cmd)


def token_cmd(args: argparse.Namespace) -> int:
    from meterd.api.tokens import TokenStore
    from meterd.cli.common import load_site_config
    from meterd.control.state import ControlStore

    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        error(str(exc))
        return EXIT_BAD_INPUT
    now = datetime.now(UTC)
    where = config.store.state
    with TokenStore(where) as tokens, ControlStore(where) as audit:
        if args.action == "list":
            rows = [{"id": t.id, "name": t.name, "role": t.role.value, "created": t.created.isoformat(),
                     "revoked": t.revoked.isoformat() if t.revoked else None} for t in tokens.list()]
            if args.json:
                print_json(rows)
            else:
                zone = config.site.zone
                for t in tokens.list():
                    print(f"{t.id}  {t.role.value:<10} {t.name:<20} created {local_text(t.created, zone)}"
                          + (f"  REVOKED {local_text(t.revoked, zone)}" if t.revoked else ""))
            return EXIT_OK
        if not args.name or not args.name.strip():
            error(f"token {args.action} needs a {'name' if args.action == 'create' else 'token id'}")
            return EXIT_BAD_INPUT
        if args.action == "create":
            token_id, secret = tokens.create(args.name.strip(), args.role, now)
            audit.audit(args.operator, "api-token-created", f"token:{token_id}",
                        {"name": args.name.strip(), "role": args.role}, now=now)
            if args.json:
                print_json({"id": token_id, "name": args.name.strip(), "role": args.role, "token": secret})
            else:
                print(f"token {token_id} for {args.name.strip()} ({args.role}); shown once, keep it safe:")
                print(secret)
            return EXIT_OK
        if not tokens.revoke(args.name.strip(), now):
            error(f"no live token with id {args.name.strip()}")
            return EXIT_BAD_INPUT
        audit.audit(args.operator, "api-token-revoked", f"token:{args.name.strip()}", {}, now=now)
        print(f"token {args.name.strip()} revoked")
        return EXIT_OK
