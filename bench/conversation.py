"""Bytes sent upstream per turn over a long conversation, with and without continuation.

A client keeps its whole history, as OpenAI clients do; the service either continues the
upstream chat (only the new turn goes up, CONTINUATION=on) or folds the whole history into a
fresh chat every turn (CONTINUATION=off). A fake Qwen upstream on a loopback port counts the
completion bodies it receives.

Run: python bench/conversation.py [TURNS]   (default 50)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402 - the project, from its folder

CHAT_ID = "c0ffee00-1111-4111-8111-111111111111"
ANSWER = "Here is an answer of about the length a chat model gives to a short question, give or take."


def fake_upstream(sent: list[int]) -> Flask:
    app = Flask("fake_qwen")

    @app.post("/api/v2/chats/new")
    def new_chat() -> dict:
        return {"success": True, "data": {"id": CHAT_ID}}

    @app.post("/api/v2/chat/completions")
    def completion() -> Response:
        sent.append(len(request.get_data()))
        frames = [
            {"response.created": {"chat_id": CHAT_ID, "response_id": f"r{len(sent)}"}},
            {"choices": [{"delta": {"content": ANSWER, "phase": "answer", "status": "typing"}}], "usage": {}},
            {"choices": [{"delta": {"content": "", "phase": "answer", "status": "finished"}}]},
        ]
        body = b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)
        return Response(body, content_type="text/event-stream")

    return app


def bytes_per_turn(turns: int, continuation: str, providers: Path) -> list[int]:
    sent: list[int] = []
    server = make_server("127.0.0.1", 0, fake_upstream(sent), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        folder = providers / continuation / "qwen"
        shutil.copytree(ROOT / "porviders" / "qwen", folder)
        metadata = json.loads((folder / "metadata.json").read_text())
        metadata.update(host=f"127.0.0.1:{server.server_port}", scheme="http")
        (folder / "metadata.json").write_text(json.dumps(metadata))
        config = {"PROVIDERS_DIR": str(folder.parent), "ENV_FILE": None, "STATE_URL": "memory://"}
        client = create_app({**config, "CONTINUATION": continuation}).test_client()
        history: list[dict] = [{"role": "system", "content": "You are a helpful assistant."}]
        for turn in range(turns):
            history.append({"role": "user", "content": f"Question number {turn}: what comes next?"})
            reply = client.post("/v1/chat/completions", json={"model": "qwen3-max", "messages": history})
            history.append(reply.get_json()["choices"][0]["message"])
    finally:
        server.shutdown()
    return sent


def main(argv: list[str]) -> int:
    turns = int(argv[0]) if argv else 50
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request would bury the figures
    os.environ.setdefault("QWEN_TOKEN", "bench")
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: bytes_per_turn(turns, mode, Path(tmp)) for mode in ("on", "off")}
    print(f"bytes sent upstream per turn over a {turns}-turn conversation")
    for mode, sent in results.items():
        print(
            f"  CONTINUATION={mode:<3}  mean {sum(sent) / len(sent):>8.0f}  "
            f"last turn {sent[-1]:>7}  total {sum(sent):>9}"
        )
    on, off = (sum(results[mode]) for mode in ("on", "off"))
    print(f"  saving: {1 - on / off:.0%} of the bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
