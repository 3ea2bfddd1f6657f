"""A fake auth.qwen.ai: short-lived JWT access tokens and refresh tokens that rotate.

``GET /api/v2/auths/refresh`` with the cookie ``refresh_token`` answers a new access token and a
new refresh token, as the site does; the old refresh token is dead from then on, and using it
again is counted (the real site may revoke the whole session for that). The fake chat upstream
asks ``valid_access`` whether a Bearer token is one this issuer gave and still alive.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

from flask import Flask, Response, request

UNAUTHORIZED = {"success": False, "request_id": "x", "data": {"code": "unauthorized", "details": "Token has expired"}}


def make_jwt(claims: dict) -> str:
    """A JWT-shaped token (the signature is not checked by anyone here)."""

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{uuid.uuid4().hex}"


class FakeQwenAuth:
    """Issues tokens per account label and answers refreshes; records every refresh it was sent."""

    def __init__(self, lifetime: float = 900) -> None:
        self.app = Flask("fake_qwen_auth")
        self.app.add_url_rule("/api/v2/auths/refresh", view_func=self._refresh, methods=["GET"])
        self.default_lifetime = lifetime
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.lifetime = self.default_lifetime
        self.refreshes: list[dict] = []  # every refresh request: headers and the label it rotated
        self.stale_uses = 0  # refresh tokens sent after they were rotated
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (label, expires at)
        self.refresh_tokens: dict[str, str] = {}  # live refresh token -> label
        self.rotated: set[str] = set()
        self.refuse = False  # answer every refresh with a JSON unauthorized
        self.html = False  # answer every refresh with a web page (a browser check)
        self.outage = False  # answer every refresh with HTTP 503
        self.echo = False  # answer 400 quoting the refresh token it was sent, as a careless server might
        self.trickle = 0.0  # send a good answer a few bytes at a time, this many seconds apart
        self.delay = 0.0

    def issue(self, label: str, lifetime: float | None = None) -> tuple[str, str]:
        """A fresh (access token, refresh token) pair for an account, as a capture would hold."""
        with self.lock:
            return self._issue(label, self.lifetime if lifetime is None else lifetime)

    def expire(self, access_token: str) -> None:
        with self.lock:
            label, _ = self.access[access_token]
            self.access[access_token] = (label, time.time() - 1)

    def valid_access(self, bearer: str) -> str | None:
        """The account label a live access token belongs to, or None."""
        token = bearer.removeprefix("Bearer ").strip()
        with self.lock:
            label, expires = self.access.get(token, ("", 0.0))
        return label if expires > time.time() else None

    def _trickled(self, body: bytes):
        for start in range(0, len(body), 64):
            time.sleep(self.trickle)
            yield body[start : start + 64]

    def _issue(self, label: str, lifetime: float) -> tuple[str, str]:
        now = time.time()
        access = make_jwt({"id": label, "type": "access_token", "iat": int(now), "exp": int(now + lifetime)})
        refresh = make_jwt({"id": label, "type": "refresh_token", "iat": int(now), "exp": int(now + 300 * 86400)})
        self.access[access] = (label, now + lifetime)
        self.refresh_tokens[refresh] = label
        return access, refresh

    def _refresh(self) -> Response:
        time.sleep(self.delay)
        sent = request.cookies.get("refresh_token", "")
        with self.lock:
            self.refreshes.append({"headers": dict(request.headers), "token": sent})
            if self.html:
                return Response("<!doctype html><html>check</html>", content_type="text/html")
            if self.outage:
                return Response("upstream connect error", status=503, content_type="text/plain")
            if self.echo:
                body = {"success": False, "data": {"code": "BadRequest", "details": f"token {sent} malformed"}}
                return Response(json.dumps(body), status=400, content_type="application/json")
            if sent in self.rotated:
                self.stale_uses += 1
            label = self.refresh_tokens.pop(sent, None)
            if self.refuse or label is None:
                return Response(json.dumps(UNAUTHORIZED), status=401, content_type="application/json")
            self.rotated.add(sent)
            access, refresh = self._issue(label, self.lifetime)
        body = {"success": True, "data": {"access_token": access, "refresh_token": refresh, "expires_at": 0}}
        if self.trickle:
            return Response(self._trickled(json.dumps(body).encode()), content_type="application/json")
        response = Response(json.dumps(body), content_type="application/json")
        response.set_cookie("refresh_token", refresh, httponly=True, domain="qwen.ai")
        return response
