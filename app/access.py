"""Who may read and claim for a user: signed user tokens and the service key.

A token says "the bearer is user U until instant E", signed with the
deployment's secret:

    v1.<user id, urlsafe base64>.<expiry, epoch seconds>.<HMAC-SHA256, urlsafe base64>

The signature covers the version, the user id and the expiry, so none of
them can be changed without the secret. A token is valid while
`now < expiry`. A service key (X-Service-Key) acts for every user: it is
what back-end callers present. `now` is always passed in: this module reads
no clock and does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

TOKEN_VERSION = "v1"
_SEP = b"\x1f"  # unit separator: a user id cannot smuggle a field boundary in
MAX_USER_ID_LENGTH = 256
MAX_TOKEN_LENGTH = 1024
_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class TokenError(ValueError):
    """A token that does not prove anything: malformed, badly signed or expired."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(c not in _B64_ALPHABET for c in text):
        raise TokenError("malformed token")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("malformed token") from None
    # One spelling per value: the decoder ignores a last character's unused
    # bits, which would let several strings pass for one token.
    if _b64(raw) != text:
        raise TokenError("malformed token")
    return raw


def _signature(user_id: str, expires_at: int, secret: bytes) -> bytes:
    message = _SEP.join((TOKEN_VERSION.encode(), user_id.encode(), str(expires_at).encode()))
    return hmac.new(secret, message, hashlib.sha256).digest()


def sign_token(user_id: str, expires_at: int, secret: bytes) -> str:
    """A token for `user_id`, valid until `expires_at` (epoch seconds, exclusive)."""
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise ValueError(f"a user id is 1 to {MAX_USER_ID_LENGTH} characters")
    if expires_at < 0:
        raise ValueError("the expiry is an epoch second >= 0")
    if not secret:
        raise ValueError("the secret is empty")
    signature = _signature(user_id, expires_at, secret)
    return f"{TOKEN_VERSION}.{_b64(user_id.encode())}.{expires_at}.{_b64(signature)}"


def verify_token(token: str, secret: bytes, now: int) -> str:
    """The user id the token speaks for; TokenError when it is malformed,
    not signed with `secret`, or expired at `now` (epoch seconds)."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        raise TokenError("malformed token")
    _, user_part, expiry_part, signature_part = parts
    if not expiry_part.isascii() or not expiry_part.isdigit():
        raise TokenError("malformed token")
    try:
        user_id = _unb64(user_part).decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError("malformed token") from None
    expires_at = int(expiry_part)
    expected = _signature(user_id, expires_at, secret)
    # Constant time: how much of a forged signature matched must not show.
    if not hmac.compare_digest(expected, _unb64(signature_part)):
        raise TokenError("bad token signature")
    if not now < expires_at:
        raise TokenError("token expired")
    return user_id


def service_key_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of a presented service key with the configured one."""
    # surrogatepass: a header's undecodable bytes arrive as lone surrogates
    # (aiohttp decodes with surrogateescape), which plain encode() raises on.
    return bool(expected) and hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request may not act for the user of its path: HTTP status and message."""

    status: int  # 401: no valid credentials; 403: valid, but for another user
    message: str


def check_access(
    path_user: str,
    *,
    authorization: str | None,
    service_key: str | None,
    secret: bytes,
    configured_service_key: str,
    now: int,
) -> Denied | None:
    """None when the request may act for `path_user`, else why not.

    `authorization` is the Authorization header ("Bearer <token>"),
    `service_key` the X-Service-Key header. A service key, when given, must
    be right (a wrong one is refused, not ignored for the token). A token
    for another user is 403: the caller is known, the data is not theirs.
    """
    if service_key is not None:
        if service_key_matches(service_key, configured_service_key):
            return None
        return Denied(401, "invalid service key")
    if authorization is None:
        return Denied(401, "missing credentials: send Authorization: Bearer <token>")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Denied(401, "the Authorization header must be 'Bearer <token>'")
    try:
        user_id = verify_token(token.strip(), secret, now)
    except TokenError as exc:
        return Denied(401, str(exc))
    if user_id != path_user:
        return Denied(403, "this token is for another user")
    return None
