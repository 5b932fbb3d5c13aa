"""What a token lets a call to the Prefect API do: the scopes (read, worker, and apply for what the
native API also keeps to it: deleting a run), where the token is found (an Authorization header,
or a websocket's auth frame), and the flow run a per-run key is bound to."""

from __future__ import annotations

import base64
import binascii

from buildsys.prefectapi.context import ApiError, Services, TokenLike

READ, WRITE, APPLY = "read", "worker", "apply"


def bound_run(token: TokenLike | None) -> str | None:
    """The flow run a per-run key is bound to (None for server tokens and an open API)."""
    run_id = getattr(token, "run_id", None)
    return run_id if isinstance(run_id, str) else None


def bearer(header: str | None) -> str | None:
    """The token in an Authorization header: Bearer TOKEN, or Basic with the token as password
    (or as the whole credential)."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            text = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return frame_token(text)
    return None


def frame_token(text: object) -> str | None:
    """The token in a websocket auth frame: PREFECT_API_AUTH_STRING as sent ("user:token")."""
    if not isinstance(text, str) or not text:
        return None
    return text.rsplit(":", 1)[-1] or None


async def authorize(services: Services, header: str | None, scope: str) -> TokenLike | None:
    """The token in `header`; ApiError 401/403 unless it allows `scope` (no authenticator: open,
    None)."""
    checker = services.authenticator
    if checker is None:
        return None
    token_text = bearer(header)
    token = await services.run(checker.check, f"Bearer {token_text}") if token_text else None
    if token is None:
        raise ApiError(401, "a valid token is required (PREFECT_API_KEY, or PREFECT_API_AUTH_STRING=buildsys:<token>)")
    if not token.allows(scope):
        raise ApiError(403, f"this token has scope {token.scope!r}; this call needs {scope!r}")
    return token
