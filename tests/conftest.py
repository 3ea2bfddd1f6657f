"""Shared fixtures: provider folders, the app, a fake Qwen upstream and a live service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from app import create_app
from placeholders import env_names_in
from tests.fake_qwen import FakeQwen, ServerThread, serving

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
