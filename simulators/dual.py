"""Simulated meters that send a voltage and a current uplink each (ChirpStack v4 `up`).

python -m simulators.dual --devices 5 --rate 2 --count 100
"""

from __future__ import annotations

from collections.abc import Sequence

from simulators.common import uplink_main


def main(argv: Sequence[str] | None = None) -> int:
    return uplink_main("dual", ["voltage", "current"], __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    raise SystemExit(main())
