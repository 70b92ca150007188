"""
The Python `websockets` peer of the benchmark: a broadcast server on asyncio.

WebSocket clients connect on ``WS_PORT`` (any path) and get one "ok" text frame once they are in
the broadcast set; ``POST /publish`` on ``HTTP_PORT`` (a minimal keep-alive HTTP/1.1 reader)
sends its body to every client with ``websockets.broadcast``. No compression.

    python websockets_peer.py WS_PORT HTTP_PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

CLIENTS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CLIENTS.add(ws)
    try:
        await ws.send("ok")
        await ws.wait_closed()
    finally:
        CLIENTS.discard(ws)


async def publishing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            broadcast(CLIENTS, body.decode("utf-8"))
            reply = str(len(CLIENTS)).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"\r\n%s" % (len(reply), reply)
            )
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def main(wsPort: int, httpPort: int) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    http = await asyncio.start_server(publishing, "127.0.0.1", httpPort)
    async with serve(handler, "127.0.0.1", wsPort, compression=None, backlog=1024):
        sys.stdout.write("listening\n")
        sys.stdout.flush()
        await stop
    http.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
