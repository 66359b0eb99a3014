"""The naive bridge: one process, paho ``loop_start`` + ``websockets`` broadcast.

This is the gateway most tutorials show, kept as they write it (defaults everywhere), so
the benchmark compares against what a user would otherwise write in an afternoon:
paho's network thread calls ``on_message``, which hands the payload to the asyncio loop,
which broadcasts the text to every connected WebSocket client.

    python -m bench.peers.naive_bridge --mqtt-port 1883 --ws-port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import paho.mqtt.client as mqtt
import websockets
from paho.mqtt.enums import CallbackAPIVersion
from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(websocket: ServerConnection) -> None:
    CLIENTS.add(websocket)
    try:
        await websocket.wait_closed()
    finally:
        CLIENTS.discard(websocket)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--ws-host", default="127.0.0.1")
    parser.add_argument("--ws-port", type=int, default=8765)
    parser.add_argument("--topic", default="application/+/device/+/event/+")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        client.subscribe(args.topic)

    def on_subscribe(
        client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object
    ) -> None:
        print("subscribed", flush=True)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        loop.call_soon_threadsafe(broadcast, CLIENTS, msg.payload.decode())

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.mqtt_host, args.mqtt_port)
    client.loop_start()
    async with serve(handler, args.ws_host, args.ws_port):
        print(
            f"listening on ws://{args.ws_host}:{args.ws_port}/"
            f" (websockets {websockets.__version__})",
            flush=True,
        )
        await stop
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
