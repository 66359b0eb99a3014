"""``python -m services.wsfanout token add|list|revoke``: manage the tokens file.

``add`` prints the new token alone on the last line of its output (scripts take ``tail -n1``);
only its sha256 is stored. A running wsfanout picks up changes on SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from services.wsfanout.tokens import (
    TokenError,
    TokenRecord,
    hash_token,
    new_token,
    now_iso,
    read_file,
    write_file,
)

PROG = "python -m services.wsfanout token"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the WebSocket access tokens (stored as sha256 hashes).",
        epilog="--file defaults to $WEBSOCKET_TOKENS_FILE. Send SIGHUP to wsfanout to reload.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a token and print it (last line)")
    scope = add.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--tenant", action="append", metavar="T", help="tenant name (repeat for more)"
    )
    scope.add_argument(
        "--admin", action="store_true", help="everything, gateway and error events too"
    )
    add.add_argument(
        "--application", action="append", metavar="A", help="limit to these applications"
    )
    add.add_argument("--note", default="", help="free text shown by `list` (who holds it)")
    add.add_argument("--file", help="tokens file (created if missing)")
    lst = sub.add_parser("list", help="show the tokens in the file (never the tokens themselves)")
    lst.add_argument("--file", help="tokens file")
    rev = sub.add_parser("revoke", help="remove a token by its id (or by the token itself)")
    rev.add_argument("id", help="the id shown by `list`, or the token")
    rev.add_argument("--file", help="tokens file")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = _parser()
    args = parser.parse_args(list(argv))
    path = args.file or os.environ.get("WEBSOCKET_TOKENS_FILE", "")
    if not path:
        parser.error("give --file PATH or set WEBSOCKET_TOKENS_FILE")
    try:
        records = read_file(path)
        if args.command == "add":
            return _add(args, path, records)
        if args.command == "list":
            return _list(path, records)
        return _revoke(args.id, path, records)
    except (TokenError, OSError) as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return 1


def _add(args: argparse.Namespace, path: str, records: list[TokenRecord]) -> int:
    if args.application and not args.tenant:
        print("❌ --application needs --tenant", file=sys.stderr)
        return 2
    token = new_token()
    record = TokenRecord(
        sha256=hash_token(token),
        tenants=tuple(dict.fromkeys(args.tenant or ())),
        applications=tuple(dict.fromkeys(args.application or ())),
        admin=bool(args.admin),
        created=now_iso(),
        note=args.note,
    )
    write_file(path, [*records, record])
    print(f"✅ Added token {record.id} for {record.describe()} to {path}")
    print("   Only its hash is stored: copy the token now.")
    print("   Send SIGHUP to a running wsfanout to load it.")
    print(token)
    return 0


def _list(path: str, records: list[TokenRecord]) -> int:
    if not records:
        print(f"No tokens in {path}")
        return 0
    for r in records:
        note = f"  ({r.note})" if r.note else ""
        print(f"{r.id}  {r.created or '-':20}  {r.describe()}{note}")
    return 0


def _revoke(which: str, path: str, records: list[TokenRecord]) -> int:
    digest = hash_token(which)
    keep = [r for r in records if r.id != which and r.sha256 != digest]
    if len(keep) == len(records):
        print(f"❌ No such token in {path} (see `token list` for ids)", file=sys.stderr)
        return 1
    write_file(path, keep)
    print(f"✅ Revoked {len(records) - len(keep)} token(s) in {path}")
    print("   Send SIGHUP to a running wsfanout to apply it (its connections close with 1008).")
    return 0
