"""An HTTP/1.1 GET over a unix socket, written by hand on an aioipc raw stream channel.

    python -m examples.web.client /tmp/aioipc-web-RUN/http.sock /count

``framing=none`` makes the channel carry raw bytes, as HTTP expects, instead of aioipc's
length-prefixed frames: ``send`` writes the bytes, ``receive`` returns whatever the
kernel has, and ``EndOfStream`` is the server closing the connection.
"""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote

import anyio

import aioipc

MAX_RESPONSE = 1 << 20


async def http_get(socket_path: str, target: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``target`` from the server on ``socket_path``; (status, headers, body).

    Raises:
        aioipc.IPCNotFoundError, aioipc.IPCConnectionRefusedError: nobody listens there.
        ValueError: the response is not HTTP/1.x as this small client understands it.
    """
    # "Connection: close" lets the end of the stream delimit the response: no keep-alive
    # bookkeeping in a client that sends one request.
    request = (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode("ascii")
    url = f"unix://{quote(socket_path)}?framing=none"
    async with await aioipc.connect(url) as chan:
        await chan.send(request)
        response = bytearray()
        while True:
            try:
                response += await chan.receive()
            except anyio.EndOfStream:
                break
            if len(response) > MAX_RESPONSE:
                raise ValueError(f"response larger than {MAX_RESPONSE} bytes")
    return _parse(bytes(response))


def _parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no end of headers in {response[:200]!r}")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line!r}")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raise ValueError("chunked responses are beyond this small client")
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(body) < length:
            raise ValueError(f"body cut short: {len(body)} of {length} bytes")
        body = body[:length]
    return status, headers, body


async def get_json(socket_path: str, target: str) -> tuple[int, Any]:
    """GET ``target``; (status, the JSON body decoded)."""
    status, _, body = await http_get(socket_path, target)
    return status, json.loads(body)


async def _main(socket_path: str, targets: list[str]) -> None:
    for target in targets:
        status, headers, body = await http_get(socket_path, target)
        print(f"GET {target} -> {status} {headers.get('content-type', '')}: {body.decode()}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python -m examples.web.client SOCKET PATH [PATH...]")
    anyio.run(_main, sys.argv[1], sys.argv[2:])
