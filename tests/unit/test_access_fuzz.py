"""Fuzz of the render API's auth (app/access.py): hostile headers never raise, never grant.

Whatever the Authorization and X-Service-Key headers hold (junk, any unicode
including lone surrogates, which a server decoding raw header bytes with
`surrogateescape` hands over, huge values, forged, tampered, expired or other
users' tokens), `check_access` answers with a `Denied` or None and grants
only to a valid unexpired token for the path's user or the right service key.
Fixed seed, bounded examples: deterministic in `make test`
(TASKSTREAM_FUZZ_EXAMPLES raises the count, as `make chaos` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.access import Denied, TokenError, check_access, sign_token, verify_token

NOW = 1_800_000_000
SECRET = b"fuzz-secret-\x00\xff"
SERVICE_KEY = "svc-key-\u00e9"
PATH_USER = "u42"
FUZZ = settings(
    max_examples=int(os.environ.get("TASKSTREAM_FUZZ_EXAMPLES", "400")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Any code point, lone surrogates included (st.text never draws them): header
# values reach us decoded from bytes, undecodable ones as surrogates.
any_text = st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=300).map(
    "".join
)
user_ids = st.one_of(
    st.just(PATH_USER),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
)


@dataclass(frozen=True)
class Header:
    value: str
    grants: bool  # does it carry a valid, unexpired token for PATH_USER?


def _mutate(token: str, position: int, char: str) -> str:
    position %= len(token)
    if token[position] == char:
        return token[:position] + token[position + 1 :]  # a deletion instead
    return token[:position] + char + token[position + 1 :]


@st.composite
def tokens(draw: st.DrawFn) -> Header:
    user = draw(user_ids)
    expires = draw(st.one_of(st.integers(NOW + 1, NOW + 10**6), st.integers(0, NOW)))
    secret = draw(st.sampled_from([SECRET, b"another secret", SECRET + b"x"]))
    token = sign_token(user, expires, secret)
    valid = user == PATH_USER and expires > NOW and secret == SECRET
    how = draw(st.sampled_from(["as is", "mutated", "truncated", "extended", "swapped"]))
    if how == "mutated":
        char = draw(st.sampled_from("AZaz09-_.=+/ \x00é\ud800"))
        token = _mutate(token, draw(st.integers(0, 10**6)), char)
        valid = False
    elif how == "truncated":
        token = token[: draw(st.integers(0, len(token) - 1))]
        valid = False
    elif how == "extended":
        token += draw(st.text(min_size=1, max_size=20))
        valid = False
    elif how == "swapped":  # another user's signature on this user's fields
        other = sign_token(PATH_USER if user != PATH_USER else "u43", expires, secret)
        parts, other_parts = token.split("."), other.split(".")
        token = ".".join([*parts[:3], other_parts[3]])
        valid = False
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", ""]))
    spaces = draw(st.sampled_from([" ", "  ", " \t"]))
    value = f"{draw(st.sampled_from(['', ' ']))}{scheme}{spaces}{token}"
    # "Bearer\t<token>" does not split on the first space: refused, which is fine.
    grants = valid and scheme.lower() == "bearer" and spaces != " \t"
    return Header(value, grants)


headers = st.one_of(
    st.none().map(lambda _: None),
    any_text.map(lambda v: Header(v, False)),
    any_text.map(lambda v: Header("Bearer " + v, False)),
    tokens(),
    st.integers(0, 5).map(lambda n: Header("Bearer " + "v1." * 400 * n, False)),
)
service_keys = st.one_of(
    st.none(),
    any_text,
    st.just(SERVICE_KEY),
    st.just(SERVICE_KEY + " "),
    st.just(SERVICE_KEY.encode().decode("latin-1")),  # the same bytes, read as latin-1
)


@FUZZ
@given(header=headers, service_key=service_keys, path_user=st.sampled_from([PATH_USER, "u43"]))
def test_check_access_never_raises_and_grants_only_what_it_must(
    header: Header | None, service_key: str | None, path_user: str
) -> None:
    verdict = check_access(
        path_user,
        authorization=None if header is None else header.value,
        service_key=service_key,
        secret=SECRET,
        configured_service_key=SERVICE_KEY,
        now=NOW,
    )
    if service_key is not None:
        # A service key is judged alone: the right one grants, any other is 401.
        expected_grant = service_key == SERVICE_KEY
    else:
        expected_grant = header is not None and header.grants and path_user == PATH_USER
    if expected_grant:
        assert verdict is None
    else:
        assert isinstance(verdict, Denied)
        assert verdict.status in (401, 403)
        assert verdict.message


@FUZZ
@given(service_key=service_keys)
def test_an_empty_configured_service_key_never_grants(service_key: str | None) -> None:
    verdict = check_access(
        PATH_USER,
        authorization=None,
        service_key=service_key,
        secret=SECRET,
        configured_service_key="",
        now=NOW,
    )
    assert isinstance(verdict, Denied)


@FUZZ
@given(token=st.one_of(any_text, tokens().map(lambda h: h.value.strip().partition(" ")[2])))
def test_verify_token_raises_only_token_error(token: str) -> None:
    try:
        user = verify_token(token, SECRET, NOW)
    except TokenError as exc:
        reason = str(exc)
        assert reason in ("malformed token", "bad token signature", "token expired"), reason
        return
    # Whatever it accepts is exactly what sign_token wrote for that user and expiry.
    expiry = int(token.split(".")[2])
    assert expiry > NOW
    assert sign_token(user, expiry, SECRET) == token
