"""The real server process: ``python app.py`` and ``gunicorn 'app:create_app()'``, as users start them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from tests.conftest import ROOT, TOKEN, copy_provider
from tests.fake_qwen import answer_frames, created_frame, sse_reply
from tests.raw_upstream import RawUpstream, sse_head


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or a first answer slow under load
            time.sleep(0.1)
    raise AssertionError("server did not start")


def start(
    command: list[str], providers_dir: Path, cwd: Path = ROOT, token: str | None = TOKEN
) -> tuple[subprocess.Popen, str]:
    """Start a server process on a free port and wait for /health; ``token`` None leaves QWEN_TOKEN unset."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "QWEN_TOKEN"}
    environment.update(PORT=str(port), PROVIDERS_DIR=str(providers_dir), **({"QWEN_TOKEN": token} if token else {}))
    if command[0] == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", f"--bind=127.0.0.1:{port}", *command[1:]]
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process)
    except BaseException:
        stop(process)  # a server that never became healthy must not outlive the test
        raise
    return process, url


def stop(process: subprocess.Popen) -> str:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output


@pytest.fixture
def served(providers_dir, tmp_path):
    """``python app.py`` from another working directory, as a user would start it."""
    process, url = start([sys.executable, str(ROOT / "app.py")], providers_dir)
    yield url
    output = stop(process)
    assert TOKEN not in output


def test_python_app_py_serves_with_gunicorn_gevent(served, fake_qwen):
    with openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0) as sdk:
        assert (
            sdk.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}])
            .choices[0]
            .message.content
            == "Hello world"
        )
        chunks = list(
            sdk.chat.completions.create(model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello world"


def test_forty_concurrent_two_second_streams_do_not_queue(served, fake_qwen):
    # Twenty frames 0.1 s apart: each stream lasts about two seconds.
    fake_qwen.reply = sse_reply(answer_frames([f"{n} " for n in range(20)]), delay=0.1)

    def one_stream(_: int) -> str:
        with openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0, timeout=60) as sdk:
            stream = sdk.chat.completions.create(
                model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=40) as pool:
        texts = list(pool.map(one_stream, range(40)))
    elapsed = time.monotonic() - started
    assert texts == ["".join(f"{n} " for n in range(20))] * 40
    # Served one after another they would take 80 s; concurrently, about 2 s (bound kept loose
    # for a shared machine: this checks that streams do not queue, not the speed).
    assert elapsed < 15, elapsed


def test_gunicorn_app_factory_works(providers_dir, fake_qwen):
    process, url = start(["gunicorn", "--worker-class=gevent", "app:create_app()"], providers_dir)
    try:
        body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
        answer = requests.post(url + "/v1/chat/completions", json=body, timeout=10).json()
        assert answer["choices"][0]["message"]["content"] == "Hello world"
    finally:
        stop(process)


def test_env_file_next_to_app_py_is_loaded(providers_dir, fake_qwen, tmp_path, monkeypatch):
    # A copy of the service in its own folder, so its .env is the test's and not a developer's.
    service_dir = tmp_path / "service"
    service_dir.mkdir()
    # The whole service tree, so a module added later is never missing from the copy.
    unneeded = shutil.ignore_patterns(".*", "__pycache__", "tests", "bench", "porviders", "*.md")
    shutil.copytree(ROOT, service_dir, ignore=unneeded, dirs_exist_ok=True)
    (service_dir / ".env").write_text(f"QWEN_TOKEN=from-dotenv-{TOKEN}\nLOG_LEVEL=WARNING\n")
    process, url = start([sys.executable, str(service_dir / "app.py")], providers_dir, cwd=tmp_path, token=None)
    try:
        body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
        assert requests.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
        assert fake_qwen.requests[-1]["headers"]["Authorization"] == f"Bearer from-dotenv-{TOKEN}"
    finally:
        stop(process)


def test_client_leaving_mid_stream_closes_the_upstream_under_gunicorn(served, fake_qwen):
    # One hundred frames 50 ms apart: left alone the upstream would stream for five seconds.
    fake_qwen.reply = sse_reply(answer_frames([f"{n} " for n in range(100)]), delay=0.05)
    body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with requests.post(served + "/v1/chat/completions", json=body, stream=True, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith(b"data: ") and b'"content":"0 "' in line:
                break
        left = time.monotonic()
    assert fake_qwen.cut.wait(timeout=3)  # the upstream saw its connection go before its 5 s end
    assert time.monotonic() - left < 2.5


# --- slow clients ------------------------------------------------------------------------------


def test_slow_and_idle_clients_cannot_hold_every_connection_slot(providers_dir, fake_qwen, monkeypatch):
    # 20 connection slots, all taken: idle sockets, half-sent headers, bodies that never come.
    monkeypatch.setenv("CLIENT_TIMEOUT", "2")
    monkeypatch.setenv("WORKER_CONNECTIONS", "20")
    process, url = start([sys.executable, str(ROOT / "app.py")], providers_dir)
    port = int(url.rsplit(":", 1)[1])
    hogs = []
    try:
        for n in range(24):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 3 == 1:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
            elif n % 3 == 2:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
            hogs.append(sock)
        started = time.monotonic()
        body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
        response = requests.post(url + "/v1/chat/completions", json=body, timeout=15)
        waited = time.monotonic() - started
        assert response.status_code == 200
        assert waited < 6, f"served only after {waited:.1f} s"
        # The body that never came got a 408 and its connection closed.
        answers = [_read_all(sock) for n, sock in enumerate(hogs) if n % 3 == 2]
        assert any(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:2]
    finally:
        for sock in hogs:
            sock.close()
        stop(process)


def _read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def raw_providers(tmp_path: Path, host: str) -> Path:
    root = tmp_path / "raw-porviders"
    root.mkdir()
    copy_provider(ROOT / "porviders" / "qwen", root / "qwen", host=host, scheme="http")
    return root


def test_under_gunicorn_a_client_that_gives_up_stops_the_upstream(tmp_path, monkeypatch):
    # The gevent worker wraps sockets: the look at the client must still see it leave.
    with RawUpstream() as raw:
        raw.script([sse_head(), created_frame(), "hang"])
        process, url = start([sys.executable, str(ROOT / "app.py")], raw_providers(tmp_path, raw.host))
        try:
            body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
            with pytest.raises(requests.Timeout):
                requests.post(url + "/v1/chat/completions", json=body, timeout=1.0)
            left = time.monotonic()
            upstream = raw.completion_connections()[0]
            assert upstream.peer_closed.wait(5.0), "the upstream stayed open after the client left"
            assert upstream.peer_closed_at - left < 3.5
        finally:
            output = stop(process)
        assert "Traceback" not in output


def test_under_gunicorn_request_timeout_is_a_504(tmp_path, monkeypatch):
    monkeypatch.setenv("REQUEST_TIMEOUT", "2")
    with RawUpstream() as raw:
        raw.script([sse_head(), created_frame(), "hang"])
        process, url = start([sys.executable, str(ROOT / "app.py")], raw_providers(tmp_path, raw.host))
        try:
            body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
            response = requests.post(url + "/v1/chat/completions", json=body, timeout=15)
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "upstream_timeout"
            assert raw.completion_connections()[0].peer_closed.wait(3.0)
        finally:
            output = stop(process)
        assert "Traceback" not in output
