"""Render API credentials: signed user tokens and the service key (app.access)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.access import (
    MAX_USER_ID_LENGTH,
    TokenError,
    check_access,
    service_key_matches,
    sign_token,
    verify_token,
)
from streams.config import Settings

SECRET = b"test secret"
NOW = 1_800_000_000

user_ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_USER_ID_LENGTH)


@given(user=user_ids, ttl=st.integers(1, 10**9))
def test_a_token_names_its_user_until_it_expires(user: str, ttl: int) -> None:
    token = sign_token(user, NOW + ttl, SECRET)
    assert verify_token(token, SECRET, NOW) == user
    assert verify_token(token, SECRET, NOW + ttl - 1) == user


def test_expiry_is_exclusive() -> None:
    token = sign_token("alice", NOW, SECRET)
    assert verify_token(token, SECRET, NOW - 1) == "alice"
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, SECRET, NOW)
    with pytest.raises(TokenError, match="expired"):
        verify_token(token, SECRET, NOW + 3600)


@given(user=user_ids, data=st.data())
def test_any_changed_character_invalidates_the_token(user: str, data: st.DataObject) -> None:
    token = sign_token(user, NOW + 60, SECRET)
    index = data.draw(st.integers(0, len(token) - 1))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
    replacement = data.draw(st.sampled_from(alphabet).filter(lambda c: c != token[index]))
    tampered = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(TokenError):
        verify_token(tampered, SECRET, NOW)


def test_a_longer_expiry_cannot_be_spliced_onto_a_signature() -> None:
    version, user, _expiry, signature = sign_token("alice", NOW + 60, SECRET).split(".")
    forged = ".".join((version, user, str(NOW + 10**6), signature))
    with pytest.raises(TokenError, match="signature"):
        verify_token(forged, SECRET, NOW)


def test_another_users_name_cannot_be_spliced_onto_a_signature() -> None:
    _, _, expiry, signature = sign_token("alice", NOW + 60, SECRET).split(".")
    _, bob, _, _ = sign_token("bob", NOW + 60, SECRET).split(".")
    with pytest.raises(TokenError, match="signature"):
        verify_token(f"v1.{bob}.{expiry}.{signature}", SECRET, NOW)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    token = sign_token("alice", NOW + 60, b"another secret")
    with pytest.raises(TokenError, match="signature"):
        verify_token(token, SECRET, NOW)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1.a.b", "v2.YWxpY2U.1800000060.AAAA", "v1.YWxpY2U.-5.AAAA", "v1.!!.1.AAAA",
     "v1.YWxpY2U.1e9.AAAA", "v1.YWxpY2U.1800000060.", "v1.YWxpY2U.1800000060.A" * 200],
)  # fmt: skip
def test_malformed_tokens_are_refused_with_a_message(token: str) -> None:
    with pytest.raises(TokenError, match="malformed"):
        verify_token(token, SECRET, NOW)


def test_signing_refuses_what_it_could_not_verify() -> None:
    with pytest.raises(ValueError, match="user id"):
        sign_token("", NOW, SECRET)
    with pytest.raises(ValueError, match="user id"):
        sign_token("u" * (MAX_USER_ID_LENGTH + 1), NOW, SECRET)
    with pytest.raises(ValueError, match="secret"):
        sign_token("alice", NOW, b"")


def test_service_key_comparison() -> None:
    assert service_key_matches("k-123", "k-123")
    assert not service_key_matches("k-124", "k-123")
    assert not service_key_matches("", "")  # no key configured: nobody is a service


def _access(path_user: str, **headers: str | None) -> tuple[int, str] | None:
    denied = check_access(
        path_user,
        authorization=headers.get("authorization"),
        service_key=headers.get("service_key"),
        secret=SECRET,
        configured_service_key="svc",
        now=NOW,
    )
    return None if denied is None else (denied.status, denied.message)


def test_check_access_decides_401_403_or_allowed() -> None:
    alice = sign_token("alice", NOW + 60, SECRET)
    expired = sign_token("alice", NOW, SECRET)
    assert _access("alice", authorization=f"Bearer {alice}") is None
    assert _access("alice", authorization=f"bearer  {alice} ") is None
    assert _access("bob", authorization=f"Bearer {alice}") == (
        403,
        "this token is for another user",
    )
    assert _access("alice", authorization=f"Bearer {expired}") == (401, "token expired")
    assert _access("alice")[0] == 401  # type: ignore[index]
    assert _access("alice", authorization=alice)[0] == 401  # type: ignore[index]
    assert _access("alice", authorization="Basic abc")[0] == 401  # type: ignore[index]
    assert _access("anyone", service_key="svc") is None
    # A wrong service key is refused even with a good token beside it.
    assert _access("alice", service_key="nope", authorization=f"Bearer {alice}") == (
        401,
        "invalid service key",
    )


def test_secrets_come_from_the_environment_or_a_file_and_stay_out_of_repr(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    settings = Settings.from_env(
        {"TASKSTREAM_API_SECRET_FILE": str(secret_file), "TASKSTREAM_SERVICE_KEY": "svc-key"}
    )
    assert (settings.api_secret, settings.service_key) == ("from-a-file", "svc-key")
    assert "from-a-file" not in repr(settings)
    assert "svc-key" not in repr(settings)
    assert Settings.from_env({}).api_secret == ""  # unset: the API answers 503
    with pytest.raises(ValueError, match="TASKSTREAM_API_SECRET_FILE: cannot read"):
        Settings.from_env({"TASKSTREAM_API_SECRET_FILE": str(tmp_path / "missing")})
