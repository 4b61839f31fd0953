"""A target for egress tests, run inside a network namespace the test made.

Serves HTTP on ports 80, 8080 and 8081 and HTTPS (the test's certificate) on
443, on every address of its namespace. Each answer is ``hello from HOST:PORT``
(HOST from the request's Host header); each TLS handshake's SNI is appended to
``--sni-log``, so a test can tell which names reached the target at all.

    python egress_target.py --cert CERT --key KEY --sni-log FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import ssl
import sys
from pathlib import Path


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        host = ""
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "host":
                host = value.strip()
        body = f"hello from {host}:{port}\n".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--sni-log", type=Path, required=True)
    args = parser.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        with args.sni_log.open("a") as handle:
            handle.write(f"{name}\n")

    tls.sni_callback = record_sni
    servers = [
        await asyncio.start_server(functools.partial(answer, port=port), "0.0.0.0", port)
        for port in (80, 8080, 8081)
    ]
    servers.append(
        await asyncio.start_server(functools.partial(answer, port=443), "0.0.0.0", 443, ssl=tls)
    )
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
