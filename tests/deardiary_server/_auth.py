"""Tokens and passwords of the test server: HS256 JWTs and salted PBKDF2 hashes.

The token clock reproduces DearDiary's skew: ``exp`` is computed from the local wall clock read
as if it were UTC, and expiry is checked with the same clock (section 2.6 of the contract).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
from datetime import datetime, timezone
from typing import Any

_PBKDF2_ROUNDS = 20_000


def hash_password(password: str) -> str:
    """Hash a password with a fresh salt (``pbkdf2_sha256$rounds$salt$hash``)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, _PBKDF2_ROUNDS)
    return f"pbkdf2_sha256${_PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Compare a password with a stored hash in constant time."""
    try:
        _, rounds, salt, expected = stored.split("$")
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8"), bytes.fromhex(salt), int(rounds)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)


def skewed_unix_now() -> float:
    """The local wall clock read as if it were UTC, in Unix seconds (DearDiary's token clock)."""
    return datetime.now().replace(tzinfo=timezone.utc).timestamp()


def _b64encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Base64url with or without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(signing_input: str, secret: str) -> str:
    """The HS256 signature of ``header.payload``."""
    mac = hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256)
    return _b64encode(mac.digest())


def sign_claims(claims: dict[str, Any], secret: str) -> str:
    """Sign any claims as an HS256 token (tests use it to forge odd payloads)."""
    header = _b64encode(
        json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode("utf-8")
    )
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode("utf-8"))
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_sign(signing_input, secret)}"


def issue_token(username: str, user_id: int | str, secret: str, lifetime: float) -> str:
    """Sign a token with the claims ``sub``, ``id`` and ``exp`` (``exp`` rounded up)."""
    claims = {"sub": username, "id": user_id, "exp": math.ceil(skewed_unix_now() + lifetime)}
    return sign_claims(claims, secret)


def token_expiry(token: str) -> int:
    """The ``exp`` claim of a token this module issued."""
    return int(json.loads(_b64decode(token.split(".")[1]))["exp"])


def decode_token(token: str, secret: str) -> dict[str, Any] | None:
    """Verify a token's structure and signature and return its claims, or ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None

    header_text, payload_text, signature = parts
    try:
        expected = _sign(f"{header_text}.{payload_text}", secret).encode("ascii")
        if not hmac.compare_digest(expected, signature.encode("utf-8")):
            return None
        header = json.loads(_b64decode(header_text))
        claims = json.loads(_b64decode(payload_text))
    except (ValueError, UnicodeError):
        return None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return None
    return claims if isinstance(claims, dict) else None
