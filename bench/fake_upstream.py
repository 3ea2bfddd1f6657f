"""A fast fake Qwen upstream for the benchmark: asyncio, HTTP/1.1 keep-alive, chunked SSE.

The prompt text sets the reply: ``events=N gap_ms=G`` (defaults 5 and 0). Each answer frame's
content is ``<send time>;`` (time.monotonic(), system-wide on Linux), so a client can measure
per-event latency. ``GET /stats`` returns how many TCP connections were accepted.

Run: python bench/fake_upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid

CONNECTIONS = 0
PROMPT = re.compile(r"events=(\d+)(?:\s+gap_ms=([\d.]+))?")


def frame(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def answer_frame(text: str, status: str, output_tokens: int) -> bytes:
    delta = {"role": "assistant", "content": text, "phase": "answer", "status": status}
    body = {"choices": [{"delta": delta}], "response_id": "r1"}
    if status == "typing":
        body["usage"] = {"input_tokens": 10, "output_tokens": output_tokens, "total_tokens": 10 + output_tokens}
    return frame(body)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return method, target, body


async def send_json(writer: asyncio.StreamWriter, obj: dict) -> None:
    body = json.dumps(obj).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    await writer.drain()


async def send_stream(writer: asyncio.StreamWriter, body: bytes) -> None:
    prompt = json.loads(body)["messages"][0]["content"] if body else ""
    match = PROMPT.search(prompt)
    events = int(match.group(1)) if match else 5
    gap = float(match.group(2) or 0) / 1000 if match else 0.0
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(chunk(frame({"response.created": {"chat_id": "c", "response_id": "r1"}})))
    for n in range(events):
        if gap:
            await asyncio.sleep(gap)
        writer.write(chunk(answer_frame(f"{time.monotonic():.6f};", "typing", n + 1)))
        await writer.drain()
    writer.write(chunk(answer_frame("", "finished", events)) + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global CONNECTIONS
    CONNECTIONS += 1
    try:
        while True:
            method, target, body = await read_request(reader)
            if target.startswith("/api/v2/chats/new"):
                await send_json(writer, {"success": True, "data": {"id": str(uuid.uuid4())}})
            elif target.startswith("/api/v2/chat/completions"):
                await send_stream(writer, body)
            elif target.startswith("/stats"):
                await send_json(writer, {"connections": CONNECTIONS})
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
