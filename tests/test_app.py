"""The service surface: health, models, error shapes, request ids and provider detection."""

from __future__ import annotations

import json

import openai
import pytest

import drift
from app import create_app
from tests.conftest import SHIPPED_QWEN, TOKEN, copy_provider
from tests.fake_qwen import UPSTREAM_ONLY_MODEL

QWEN_MODELS = json.loads((SHIPPED_QWEN / "metadata.json").read_text())["models"]


def chat_body(**changes) -> dict:
    body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def assert_error(response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


# --- health --------------------------------------------------------------------------------


def test_health_reports_providers_without_secret_values(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    no_drift = {"counts": dict.fromkeys(drift.KINDS, 0), "last": None}
    assert body["providers"]["qwen"] == {
        "loaded": True,
        "credentials_set": True,
        "missing_variables": [],
        "accounts": [
            {
                "id": "1",
                "state": "ok",
                "access_expires_in": None,  # the test token is no JWT: its expiry is unknown
                "refreshable": False,  # no QWEN_REFRESH_TOKEN
                "last_refresh": None,
                "cooldown_until": None,
                "reason": None,
                "in_flight": 0,
                "token_check": "not_a_jwt",  # Qwen's refresh reads its expiry: it should be one
            }
        ],
        "drift": no_drift,
        "last_error": None,
    }
    assert TOKEN not in response.get_data(as_text=True)


def test_health_names_missing_credentials(app_config, monkeypatch):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    body = create_app(app_config).test_client().get("/health").get_json()
    assert body["status"] == "degraded"
    assert body["providers"]["qwen"]["credentials_set"] is False
    assert body["providers"]["qwen"]["missing_variables"] == ["QWEN_TOKEN"]


def test_broken_folder_is_reported_and_others_keep_working(app_config, providers_dir, qwen_token):
    broken = providers_dir / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{not json")
    app = create_app(app_config)
    client = app.test_client()
    providers = client.get("/health").get_json()["providers"]
    assert providers["broken"]["loaded"] is False
    assert "metadata.json" in providers["broken"]["error"]
    assert "invalid JSON" in providers["broken"]["error"]
    assert client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_broken_header_line_is_named_in_health(app_config, providers_dir, qwen_token):
    header = providers_dir / "qwen" / "header.txt"
    lines = header.read_text().splitlines()
    header.write_text("\n".join([*lines, "this line has no colon"]) + "\n")
    error = create_app(app_config).test_client().get("/health").get_json()["providers"]["qwen"]["error"]
    assert "header.txt" in error
    assert f"line {len(lines) + 1}:" in error


# --- models --------------------------------------------------------------------------------


def test_models_list_with_the_sdk(sdk):
    page = sdk.models.list()
    assert [model.id for model in page.data] == [*QWEN_MODELS, UPSTREAM_ONLY_MODEL]
    for model in page.data:
        assert model.object == "model"
        assert isinstance(model.created, int)
        assert model.owned_by == "qwen"


def test_models_list_raw_shape(client):
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"}


def test_models_retrieve_with_the_sdk(sdk):
    model = sdk.models.retrieve("qwen3.7-plus")
    assert (model.id, model.object, model.owned_by) == ("qwen3.7-plus", "model", "qwen")


def test_models_retrieve_unknown_raises_not_found(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"
    assert caught.value.request_id.startswith("req_")


def test_model_ids_may_contain_slashes(tmp_path, fake_qwen, qwen_token):
    root = tmp_path / "providers"
    root.mkdir()
    copy_provider(SHIPPED_QWEN, root / "acme", host=fake_qwen.host, models=["org/model-a"], patterns=[])
    client = create_app({"PROVIDERS_DIR": str(root), "ENV_FILE": None}).test_client()
    assert client.get("/v1/models/org/model-a").get_json()["id"] == "org/model-a"
    assert client.get("/v1/models/org%2Fmodel-a").get_json()["id"] == "org/model-a"


def test_a_new_folder_adds_models_without_code(app_config, providers_dir, fake_qwen, qwen_token):
    copy_provider(SHIPPED_QWEN, providers_dir / "acme", host=fake_qwen.host, models=["acme-1"], patterns=["acme-*"])
    client = create_app(app_config).test_client()
    ids = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert "acme-1" in ids
    assert client.get("/v1/models/acme-large").get_json()["owned_by"] == "qwen"


# --- error shapes --------------------------------------------------------------------------


def test_unknown_route_is_json_404(client):
    error = assert_error(client.get("/v2/nothing"), 404, code="not_found")
    assert "/v1/chat/completions" in error["message"]


def test_wrong_method_is_json_405(client):
    response = client.get("/v1/chat/completions")
    assert_error(response, 405, code="method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_unexpected_exception_is_json_500_without_traceback(app):
    def explode():
        raise RuntimeError("internal detail")

    app.add_url_rule("/explode", view_func=explode)
    error = assert_error(app.test_client().get("/explode"), 500, code="internal_error")
    assert "internal detail" not in error["message"]


@pytest.mark.parametrize("path", ["/health", "/v1/models", "/nowhere", "/v1/models/unknown-model"])
def test_every_response_has_a_request_id(client, path):
    assert client.get(path).headers["x-request-id"].startswith("req_")


def test_request_ids_are_unique(client):
    ids = {client.get("/health").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


# --- request validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ("text", None),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        (chat_body(model=5), "model"),
        (chat_body(messages=None), "messages"),
        (chat_body(messages=[]), "messages"),
        (chat_body(messages={"role": "user"}), "messages"),
        (chat_body(messages=["hi"]), "messages[0]"),
        (chat_body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (chat_body(messages=[{"role": "user", "content": 7}]), "messages[0].content"),
        (chat_body(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0]"),
        (chat_body(stream="yes"), "stream"),
    ],
)
def test_invalid_bodies_are_400_with_param(client, fake_qwen, body, param):
    response = client.post("/v1/chat/completions", json=body)
    error = assert_error(response, 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert fake_qwen.requests == []


def test_body_that_is_not_json_is_400(client):
    response = client.post("/v1/chat/completions", data=b"{nope", content_type="application/json")
    assert_error(response, 400, code="invalid_json")


def test_null_optional_fields_and_unknown_fields_are_accepted(client):
    body = chat_body(stream=None, stream_options=None, temperature=None, tools=None, top_k=3, extra_thing={"a": 1})
    assert client.post("/v1/chat/completions", json=body).status_code == 200


# --- provider detection --------------------------------------------------------------------


def test_unknown_model_without_provider_is_404_provider_not_found(client):
    error = assert_error(client.post("/v1/chat/completions", json=chat_body(model="mystery")), 404)
    assert error["code"] == "provider_not_found"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == (
        'No provider found for model "mystery". Please specify a provider or use a supported model.'
    )


def test_explicit_provider_wins_over_model_name(client, fake_qwen):
    response = client.post("/v1/chat/completions", json=chat_body(model="mystery", provider="qwen"))
    assert response.status_code == 200
    assert fake_qwen.requests[-1]["json"]["model"] == "mystery"


@pytest.mark.parametrize("name", ["../x", "/etc", "a/b", "x\x00y", "..", "a\\b", ""])
def test_provider_that_is_not_a_plain_name_is_400(client, fake_qwen, name):
    assert_error(client.post("/v1/chat/completions", json=chat_body(provider=name)), 400, param="provider")
    assert fake_qwen.requests == []


def test_unknown_explicit_provider_is_404(client):
    assert_error(client.post("/v1/chat/completions", json=chat_body(provider="nope")), 404, code="provider_not_found")


def test_explicit_list_beats_pattern_across_providers(app_config, providers_dir, fake_qwen, qwen_token):
    # "aaa" sorts first and claims qwen* by pattern; qwen lists the model explicitly and must win.
    copy_provider(SHIPPED_QWEN, providers_dir / "aaa", host="127.0.0.1:1", scheme="http", models=[])
    client = create_app(app_config).test_client()
    assert client.post("/v1/chat/completions", json=chat_body(model="qwen3.7-plus")).status_code == 200
    unlisted = client.post("/v1/chat/completions", json=chat_body(model="qwen-unlisted"))
    assert_error(unlisted, 502, code="upstream_unreachable")  # aaa's pattern wins alphabetically


def test_double_slash_path_is_a_json_404_not_a_redirect(client):
    response = client.post("/v1//chat/completions", json={"model": "qwen3.7-plus", "messages": []})
    assert_error(response, 404, code="not_found")
