"""The ``qwen`` dialect's importer hints: how a capture of chat.qwen.ai becomes a provider folder.

Only the capture importer calls these; ``dialects/qwen.py`` hands them over as ``IMPORT_HINTS``.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from converters import copy_json
from dialects.contract import ImportHints

CREATE_CHAT_PATH = "/api/v2/chats/new"
CREATE_CHAT_BODY = {
    "chatId": "",
    "models": [""],
    "project_id": "",
    "timestamp": 0,
    "chat_type": "t2t",
    "chat_mode": "normal",
}
# The web app renews its token at auth.qwen.ai with this cookie; for another site of the same shape,
# auth.<site> would only be a guess, so only *.qwen.ai captures get the step.
REFRESH_COOKIE = "refresh_token"
REFRESH_SITE = "qwen.ai"
REFRESH_HOST = "auth.qwen.ai"
REFRESH_PATH = "/api/v2/auths/refresh"
# header.txt's headers the refresh request leaves out (null): the chat's credential and anti-bot values.
REFRESH_LEFT_OUT = ("Authorization", "bx-ua", "bx-umidtoken", "bx-v", "Content-Type", "X-Accel-Buffering")


def recognizes(path: str, body: Any) -> bool:
    return path.startswith("/api/v2/chat/completions") and isinstance(body, dict) and "chat_id" in path + str(body)


def strip_prompt(body: dict) -> dict:
    """The captured message is kept as the template, its text emptied."""
    messages = [{**m, "content": ""} if isinstance(m, dict) else m for m in body["messages"]]
    return {**body, "messages": messages}


def folder_metadata(base_url: str, path: str, create: tuple[str, Any] | None) -> dict:
    """The v2 flow: open a chat first (as captured, when the HAR holds that request), list models."""
    create_chat = {
        "method": "POST",
        "path": CREATE_CHAT_PATH,
        "headers": {"Referer": f"{base_url}/c/new-chat"},
        "body": copy_json(CREATE_CHAT_BODY),
        "id_field": "data.id",
    }
    if create is not None:
        create_chat["path"] = create[0]
        create_chat["body"] = create[1] if isinstance(create[1], dict) else create_chat["body"]
    return {
        "message_mode": "single",
        "models_endpoint": {
            "method": "GET",
            "path": "/api/models",
            "list_field": "data",
            "id_field": "id",
            "thinking_field": "info.meta.capabilities.thinking",
        },
        "create_chat": create_chat,
    }


def refresh_step(base_url: str, token_variable: str, refresh_variable: str) -> dict | None:
    """The web app's token refresh, as the shipped porviders/qwen declares it; None off *.qwen.ai."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host != REFRESH_SITE and not host.endswith("." + REFRESH_SITE):
        return None
    headers: dict[str, str | None] = dict.fromkeys(REFRESH_LEFT_OUT)
    headers.update(
        {
            "Cookie": f"{REFRESH_COOKIE}=${{{refresh_variable}}}",
            "Origin": base_url,
            "Referer": f"{base_url}/",
            "Sec-Fetch-Site": "same-site",
            "x-request-origin": base_url,
            "source": "web",
            "X-Request-Id": "${uuid}",
            "Timezone": "${date}",
        }
    )
    return {
        "host": REFRESH_HOST,
        "scheme": "https",
        "method": "GET",
        "path": REFRESH_PATH,
        "headers": headers,
        "fields": {"data.access_token": token_variable, "data.refresh_token": refresh_variable},
        "set_cookies": {REFRESH_COOKIE: refresh_variable},
        "token_variable": token_variable,
    }


IMPORT_HINTS = ImportHints(
    recognizes=recognizes,
    strip_prompt=strip_prompt,
    metadata=folder_metadata,
    fresh_chat_ids=True,
    create_chat_marker=CREATE_CHAT_PATH,
    refresh_cookie=REFRESH_COOKIE,
    refresh_step=refresh_step,
)
