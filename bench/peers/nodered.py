"""Node-RED 4 as a peer: a flow of ``mqtt in`` → ``websocket out``, nothing else.

Node-RED is installed on demand from the npm registry into bench/.node (gitignored):
Node-RED 4 runs on the Node.js 20 these machines have (Node-RED 5 needs Node.js 22).
The nodes keep the editor's defaults a user gets when dragging them in: ``mqtt in`` with
output "auto-detect" (it parses the JSON payload) and ``websocket out`` on a listener
path, which JSON-stringifies the object again for every message it sends.

    python -m bench.peers.nodered --install          # install only
    python -m bench.peers.nodered --mqtt-port 1883 --ws-port 1880 --workdir /tmp/nr
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import BENCH

PREFIX = BENCH / ".node"
VERSION_SPEC = os.environ.get("BENCH_NODE_RED_VERSION", "node-red@4")
RED_JS = PREFIX / "node_modules" / "node-red" / "red.js"
WS_PATH = "/ws"
READY_PATTERNS = (r"Started flows", r"Connected to broker")


def installed_version() -> str | None:
    pkg = PREFIX / "node_modules" / "node-red" / "package.json"
    if not pkg.exists():
        return None
    return str(json.loads(pkg.read_text())["version"])


def ensure_installed() -> str:
    """Install Node-RED 4 into bench/.node unless it is there; its version."""
    version = installed_version()
    if version:
        return version
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("Node-RED needs Node.js 20 and npm (apt-get install nodejs npm)")
    PREFIX.mkdir(parents=True, exist_ok=True)
    print(f"Installing {VERSION_SPEC} into {PREFIX} (once) ...", file=sys.stderr, flush=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(PREFIX),
            VERSION_SPEC,
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ],
        check=True,
        timeout=900,
    )
    version = installed_version()
    if not version:
        raise RuntimeError("npm install finished but node-red is missing")
    return version


def flow(mqtt_host: str, mqtt_port: int, topic: str, datatype: str) -> list[dict[str, object]]:
    return [
        {"id": "bench-tab", "type": "tab", "label": "bench", "disabled": False},
        {
            "id": "bench-broker",
            "type": "mqtt-broker",
            "name": "bench broker",
            "broker": mqtt_host,
            "port": str(mqtt_port),
            "clientid": "",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "bench-mqtt-in",
            "type": "mqtt in",
            "z": "bench-tab",
            "name": "uplinks",
            "topic": topic,
            "qos": "0",
            "datatype": datatype,
            "broker": "bench-broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "x": 100,
            "y": 100,
            "wires": [["bench-ws-out"]],
        },
        {
            "id": "bench-ws-listener",
            "type": "websocket-listener",
            "path": WS_PATH,
            "wholemsg": "false",
        },
        {
            "id": "bench-ws-out",
            "type": "websocket out",
            "z": "bench-tab",
            "name": "browsers",
            "server": "bench-ws-listener",
            "client": "",
            "x": 300,
            "y": 100,
            "wires": [],
        },
    ]


SETTINGS_JS = """module.exports = {
    uiHost: "127.0.0.1",
    uiPort: %(port)d,
    flowFile: "flows.json",
    // No editor or admin API: a deployed flow, as in production.
    httpAdminRoot: false,
    logging: { console: { level: "info", metrics: false, audit: false } },
    diagnostics: { enabled: false },
    telemetry: { enabled: false },
    credentialSecret: false,
};
"""


def prepare(
    workdir: Path,
    mqtt_host: str,
    mqtt_port: int,
    ws_port: int,
    topic: str,
    datatype: str = "auto-detect",
) -> list[str]:
    """Write the flow and settings into workdir; the command that starts Node-RED."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "flows.json").write_text(
        json.dumps(flow(mqtt_host, mqtt_port, topic, datatype), indent=1)
    )
    (workdir / "settings.js").write_text(SETTINGS_JS % {"port": ws_port})
    return [
        "node",
        str(RED_JS),
        "--userDir",
        str(workdir),
        "--settings",
        str(workdir / "settings.js"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--install", action="store_true", help="install Node-RED 4 and exit")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--ws-port", type=int, default=1880)
    parser.add_argument("--topic", default="application/+/device/+/event/+")
    parser.add_argument(
        "--datatype", default="auto-detect", help="mqtt in output: auto-detect, utf8, buffer, json"
    )
    parser.add_argument("--workdir", type=Path, default=BENCH / "out" / "nodered")
    args = parser.parse_args()
    print(f"node-red {ensure_installed()}", flush=True)
    if args.install:
        return 0
    cmd = prepare(
        args.workdir, args.mqtt_host, args.mqtt_port, args.ws_port, args.topic, args.datatype
    )
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    raise SystemExit(main())
