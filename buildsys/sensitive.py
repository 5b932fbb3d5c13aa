"""What counts as a secret, and how a secret is shown: the one rule every output path uses.

A name is secret when one of its words says so (``DB_PWD``, ``authHeader``, ``aws_access_key``,
``api-token``); the values under such names, the password (or lone token) in a URL's userinfo and
every value known to be secret are shown as ``****``. Pure functions, standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "****"

# Whole words that mark a secret; a word that merely contains "auth" (author) or "key" (keyring,
# monkey) does not, but "key" after one of _KEY_QUALIFIERS does (API_KEY, aws_access_key).
_SECRET_WORDS = frozenset(
    {
        "auth", "authorization", "bearer", "cookie", "credential", "credentials", "passphrase",
        "pass", "passwd", "password", "passwords", "pat", "pwd", "secret", "secrets", "token",
        "tokens", "apikey", "accesskey", "privatekey", "secretkey", "sessionkey", "signingkey",
        "dsn",
    }
)
_SECRET_STEMS = ("passw", "secret", "token", "credential", "apikey", "pwd")
_KEY_QUALIFIERS = frozenset(
    {"api", "access", "private", "secret", "session", "signing", "encryption", "master", "ssh", "client", "account"}
)
# Names that look secret but are not: the shell's working directories, token *counts* and the like.
_NOT_SECRET = frozenset({"pwd", "oldpwd", "max_tokens", "token_count", "tokenizer", "token_url", "auth_url"})
# Fields of a credentials mapping that identify, not authenticate: Prefect's registry credentials
# keep only the password secret. Their values are not scrubbed from a step's outputs (an image names
# its registry), though plans still show the whole mapping masked.
_PUBLIC_UNDER_SECRET = frozenset({"username", "user", "registry_url", "reauth", "host", "port"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_USERINFO = r"\b([a-zA-Z][\w+.-]*://)([^/@\s?#]*)@"  # compiled at its first use (re's cache)


def name_words(name: str) -> list[str]:
    """``DB_PWD`` → [db, pwd]; ``authHeader`` → [auth, header]; ``AWSAccessKey`` → [aws, access, key]."""
    return [w.lower() for w in _WORD.findall(name)]


def is_secret_name(name: str) -> bool:
    """Whether a variable, key or field named ``name`` holds a secret (masked everywhere)."""
    if name.lower() in _NOT_SECRET:
        return False
    words = name_words(name)
    for i, word in enumerate(words):
        if word in _SECRET_WORDS or any(s in word for s in _SECRET_STEMS):
            return True
        if word == "key" and i > 0 and words[i - 1] in _KEY_QUALIFIERS:
            return True
    return False


def mask_named(value: Any, name: str = "") -> Any:
    """``value`` with every value under a secret name replaced by MASK (mappings walked by key)."""
    if name and is_secret_name(name) and value not in (None, "", {}, []):
        return MASK if not isinstance(value, Mapping | list) else _mask_all(value)
    if isinstance(value, Mapping):
        return {k: mask_named(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_named(v, name) for v in value]
    if isinstance(value, str):
        return mask_url_text(value)
    return value


def secret_values(value: Any, name: str = "") -> set[str]:
    """Every text under a secret name in ``value`` (a step's `access_token`, `credentials`, an
    `env` entry named `API_TOKEN`): what a step's output must show as MASK, like the values of
    secret environment variables and blocks that templates brought in."""
    found: set[str] = set()
    if isinstance(value, Mapping):
        inside_secret = bool(name) and is_secret_name(name)
        for key, item in value.items():
            if inside_secret and str(key).lower() in _PUBLIC_UNDER_SECRET:
                continue
            found |= secret_values(item, name if inside_secret else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            found |= secret_values(item, name)
    elif isinstance(value, str) and value and name and is_secret_name(name):
        found.add(value)
    return found


def _mask_all(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_all(v) for v in value]
    return MASK


def mask_url(url: str) -> str:
    """The URL with the password (or a lone token) of its userinfo shown as MASK."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_url_text(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    shown = f"{user}:{MASK}" if sep else MASK
    return urlunsplit((parts.scheme, f"{shown}@{hostport}", parts.path, parts.query, parts.fragment))


def mask_url_text(text: str) -> str:
    """Every ``scheme://userinfo@`` in free text (an error, a log line) with its userinfo masked."""
    if "@" not in text or "://" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        user, sep, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}:{MASK}@" if sep else f"{m.group(1)}{MASK}@"

    return re.sub(_USERINFO, one, text)


def mask_values(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every known secret value (3 characters or more) replaced by MASK."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text
