"""Simulated current sensors: ChirpStack v4 `up` events with a decoded `current` measurement.

python -m simulators.current --devices 5 --rate 2 --count 100
"""

from __future__ import annotations

from collections.abc import Sequence

from simulators.common import uplink_main


def main(argv: Sequence[str] | None = None) -> int:
    return uplink_main("current", ["current"], __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
