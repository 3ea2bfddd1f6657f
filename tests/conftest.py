"""Shared fixtures: provider folders, the app, a fake Qwen upstream, a live service and a Redis."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import openai
import pytest
import redis

from app import create_app
from placeholders import env_names_in
from tests.fake_qwen import FakeQwen, ServerThread, serving
from tests.fake_qwen_auth import FakeQwenAuth

# Each app (and each `python app.py` a test starts) keeps its state in memory unless a test names
# a store: nothing is written beside app.py, and no test sees another's cooldowns.
os.environ.setdefault("STATE_URL", "memory://")

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_QWEN = ROOT / "porviders" / "qwen"
TOKEN = "test-token-s3cret-value"


@pytest.fixture(scope="session")
def fake_qwen_server():
    with serving(FakeQwen()) as fake:
        yield fake


@pytest.fixture
def fake_qwen(fake_qwen_server):
    """The loopback fake Qwen, reset to a plain two-piece answer."""
    fake_qwen_server.reset()
    return fake_qwen_server


def copy_provider(source: Path, target: Path, **metadata_changes) -> Path:
    """Copy a provider folder and change keys of its metadata.json. A copy under another name
    keeps using the original's variables, so it lists them under extra_variables, as a user would."""
    shutil.copytree(source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    if target.name != source.name:
        metadata["extra_variables"] = folder_variables(target)
    metadata.update(metadata_changes)
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def folder_variables(folder: Path) -> list[str]:
    """Every environment variable a provider folder's files name."""
    texts = [(folder / name).read_text() for name in ("metadata.json", "header.txt", "payload.json")]
    return sorted(set(env_names_in(texts)))


@pytest.fixture
def providers_dir(tmp_path, fake_qwen):
    """The shipped Qwen folder, pointed at the loopback fake."""
    root = tmp_path / "porviders"
    root.mkdir()
    copy_provider(SHIPPED_QWEN, root / "qwen", host=fake_qwen.host, scheme="http")
    return root


@pytest.fixture
def qwen_token(monkeypatch):
    monkeypatch.setenv("QWEN_TOKEN", TOKEN)
    for name in ("QWEN_BX_UA", "QWEN_BX_UMIDTOKEN", "QWEN_COOKIE"):
        monkeypatch.delenv(name, raising=False)
    return TOKEN


@pytest.fixture
def app_config(providers_dir):
    # ENV_FILE None: a developer's own .env must not leak into the tests.
    return {"TESTING": True, "PROVIDERS_DIR": str(providers_dir), "UPSTREAM_TIMEOUT": 5.0, "ENV_FILE": None}


@pytest.fixture
def app(app_config, qwen_token):
    return create_app(app_config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def service(app):
    """The app served on a real loopback port, as clients reach it."""
    with ServerThread(app) as server:
        yield server.url


@pytest.fixture
def sdk(service):
    """The real openai package pointed at the service; no retries so each call is one request."""
    with openai.OpenAI(base_url=service + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def _start_redis(binary: str, workdir: Path, log_file) -> tuple[subprocess.Popen, str]:
    """A throwaway redis-server on a free loopback port, keeping nothing on disk; waits for PING."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*command, "--dir", str(workdir)], stdout=log_file, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    with redis.Redis.from_url(url, socket_connect_timeout=0.2) as client:
        for _ in range(100):
            try:
                client.ping()
                return server, url
            except redis.ConnectionError:
                if server.poll() is not None:  # the port was taken after all: the caller tries again
                    break
                time.sleep(0.05)
    server.kill()
    server.wait()
    raise RuntimeError(f"redis-server did not start; see {log_file.name}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """The URL of a redis-server of our own. Without one on PATH the Redis tests skip, except on CI
    (the CI variable set), where they fail: CI must run them."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH (Debian: apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the Redis tests, not skip them")
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("redis")
    with open(workdir / "redis.log", "w") as log_file:
        for attempt in range(3):
            try:
                server, url = _start_redis(binary, workdir, log_file)
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)


# --- accounts: a fake auth.qwen.ai beside the fake chat, and apps on a state file ---------------


@pytest.fixture(scope="session")
def auth_server():
    with serving(FakeQwenAuth()) as auth:
        yield auth


@pytest.fixture
def auth(auth_server, fake_qwen):
    auth_server.reset()
    fake_qwen.auth = auth_server
    return auth_server


@pytest.fixture
def accounts_dir(tmp_path, fake_qwen, auth):
    """The shipped Qwen folder, chat and refresh pointed at the two fakes."""
    root = tmp_path / "porviders"
    root.mkdir()
    metadata = json.loads((SHIPPED_QWEN / "metadata.json").read_text())
    refresh = {**metadata["refresh_credential"], "host": auth.host, "scheme": "http"}
    copy_provider(SHIPPED_QWEN, root / "qwen", host=fake_qwen.host, scheme="http", refresh_credential=refresh)
    return root


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    for name in ("QWEN_TOKEN", "QWEN_REFRESH_TOKEN", "QWEN_TOKEN_2", "QWEN_REFRESH_TOKEN_2", "QWEN_COOKIE"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".env"
    path.write_text("")
    return path


@pytest.fixture
def make_app(accounts_dir, env_file, tmp_path):
    def make(**config):
        settings = {
            "TESTING": True,
            "PROVIDERS_DIR": str(accounts_dir),
            "UPSTREAM_TIMEOUT": 5.0,
            "ENV_FILE": str(env_file),
            "STATE_URL": f"sqlite:///{tmp_path / 'state.sqlite3'}",
            **config,
        }
        return create_app(settings)

    return make
