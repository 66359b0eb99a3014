"""Plain HTTP looks at a service's health endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.support.timing import seconds


def healthz(port: int) -> int | None:
    """The status of ``/healthz`` on 127.0.0.1:``port``; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=seconds(3)) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None
