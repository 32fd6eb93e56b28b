"""Schemathesis hooks for the API run in tests/api_schema.rs.

The caller signs in through the login route itself (schemathesis' dynamic
auth), as a client would, with the account named by AGORA_ST_EMAIL and
AGORA_ST_PASSWORD, and signs in again when the token nears its expiry.
"""

import os
from datetime import datetime, timedelta, timezone

import requests
import schemathesis


@schemathesis.auth(refresh_interval=600)
class SignIn:
    def get(self, case, ctx):
        base = os.environ["AGORA_ST_BASE_URL"]
        resp = requests.post(
            f"{base}/api/v1/auth/login",
            json={
                "email": os.environ["AGORA_ST_EMAIL"],
                "password": os.environ["AGORA_ST_PASSWORD"],
            },
            timeout=10,
        )
        resp.raise_for_status()
        return resp.json()["tokens"]["accessToken"]

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """An API key's expiry must lie ahead of the moment the key is made,
    which a generated time cannot know: one that already passed moves a
    year ahead. Anything else (a malformed time) is sent as generated."""
    if case.method != "POST" or case.path != "/api/v1/api-keys":
        return
    body = case.body if isinstance(case.body, dict) else None
    raw = body.get("expireTime") if body else None
    if not isinstance(raw, str):
        return
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return
    if when.tzinfo is not None and when <= datetime.now(timezone.utc):
        later = datetime.now(timezone.utc) + timedelta(days=365)
        body["expireTime"] = later.strftime("%Y-%m-%dT%H:%M:%SZ")
