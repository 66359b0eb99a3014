"""Access tokens: stored only as sha256 hashes, each with a scope (tenants, applications) or admin.

The tokens file (``WEBSOCKET_TOKENS_FILE``) is JSON written by ``python -m services.wsfanout
token add``; ``WEBSOCKET_TOKENS`` may hold the same JSON document. Example::

    {"version": 1, "tokens": [
      {"id": "3f9a0c1be27d", "sha256": "<64 hex>", "tenants": ["acme"], "applications": [],
       "admin": false, "created": "2024-05-01T10:00:00Z", "note": "north dashboard"}]}

A token is a random 256-bit base64url string, so a plain sha256 is a sound hash and the token
is safe in a URL and in a ``Sec-WebSocket-Protocol`` entry. The ``id`` is a prefix of the hash:
fine to log and to revoke by; the token itself never appears in a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.wsfanout.filters import UNLIMITED, Scope

TOKEN_PREFIX = "lgw_"
MAX_TOKEN_LENGTH = 512
_HEX64 = re.compile(r"[0-9a-f]{64}")


class TokenError(ValueError):
    """A tokens document that cannot be used; the message says where."""


@dataclass(frozen=True)
class TokenRecord:
    sha256: str
    tenants: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    admin: bool = False
    created: str = ""
    note: str = ""
    id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.sha256[:12])

    @property
    def scope(self) -> Scope:
        if self.admin:
            return UNLIMITED
        return Scope(
            tenants=frozenset(self.tenants),
            applications=frozenset(self.applications) if self.applications else None,
        )

    def describe(self) -> str:
        if self.admin:
            return "admin (everything, gateways and errors included)"
        apps = ", ".join(self.applications) if self.applications else "all"
        return f"tenants {', '.join(self.tenants)} (applications: {apps})"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "tenants": list(self.tenants),
            "applications": list(self.applications),
            "admin": self.admin,
            "created": self.created,
            "note": self.note,
        }


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _strings(where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise TokenError(f"{where}: expected a list of non-empty strings")
    return tuple(raw)


def parse_document(text: str | bytes, where: str) -> list[TokenRecord]:
    """Tokens from a JSON document (``{"tokens": [...]}`` or a bare list)."""
    if isinstance(text, str) and not text.strip():
        return []
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise TokenError(f"{where}: not valid JSON ({exc})") from None
    items = doc.get("tokens") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise TokenError(f'{where}: expected {{"tokens": [...]}}')
    records = []
    for n, item in enumerate(items):
        at = f"{where}: token #{n + 1}"
        if not isinstance(item, dict):
            raise TokenError(f"{at}: expected an object")
        digest = item.get("sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise TokenError(f"{at}: sha256 must be 64 lower-case hex digits")
        tenants = _strings(f"{at}.tenants", item.get("tenants"))
        applications = _strings(f"{at}.applications", item.get("applications"))
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            raise TokenError(f"{at}.admin: expected true or false")
        if admin == bool(tenants):
            raise TokenError(f"{at}: needs either tenants or admin (not both, not neither)")
        if applications and not tenants:
            raise TokenError(f"{at}: applications need tenants")
        records.append(
            TokenRecord(
                sha256=digest,
                tenants=tenants,
                applications=applications,
                admin=admin,
                created=str(item.get("created", "")),
                note=str(item.get("note", "")),
                id=str(item.get("id") or digest[:12]),
            )
        )
    return records


def read_file(path: str) -> list[TokenRecord]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror}") from None
    if not data.strip():
        return []
    return parse_document(data, path)


def write_file(path: str, records: Iterable[TokenRecord]) -> None:
    """Atomically replace ``path`` (mode 0600: hashes are not secrets, but scopes are private)."""
    doc = {"version": 1, "tokens": [r.to_json() for r in records]}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TokenStore:
    """The tokens in force: the file (reloaded on SIGHUP) plus the environment document."""

    def __init__(self, path: str | None, env_document: str = "") -> None:
        self.path = path
        self._env = parse_document(env_document, "WEBSOCKET_TOKENS") if env_document.strip() else []
        self.enabled = bool(path) or bool(self._env)
        self._by_hash: dict[str, TokenRecord] = {}
        self.reload()

    def reload(self) -> int:
        """Re-read the file (raises TokenError and keeps the old tokens if it is broken)."""
        records = list(self._env)
        if self.path:
            records += read_file(self.path)
        self._by_hash = {r.sha256: r for r in records}
        return len(self._by_hash)

    def check(self, token: str | None) -> TokenRecord | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = hash_token(token)
        record = self._by_hash.get(digest)
        if record is not None and hmac.compare_digest(record.sha256, digest):
            return record
        return None

    def current(self, record: TokenRecord) -> TokenRecord | None:
        """The record now in force for a token accepted earlier (None: revoked)."""
        return self._by_hash.get(record.sha256)

    def __len__(self) -> int:
        return len(self._by_hash)
