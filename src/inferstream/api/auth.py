"""Who is calling: API keys for machines, password login and short-lived JWTs for people.

API keys look like ``isk.<tenant>.<key id>.<secret>``; only the SHA-256 of the
secret is stored (the secret is 256 random bits, so a fast hash is enough) and it
is compared in constant time. People log in at ``POST /auth/token`` with
``username=<tenant>/<name>``; passwords are Argon2 hashes, and a login for an
unknown user still runs one Argon2 verification so the answer time does not tell
whether the user exists. Tokens are HS256 JWTs (the algorithm is pinned when
decoding) carrying ``sub``, ``tenant``, ``role``, ``iss`` and ``exp``.

:func:`require` is the FastAPI dependency routes use; :func:`principal_for` (key or
token) and :func:`principal_from_token` (JWT only) serve callers outside the
request cycle, e.g. the live WebSocket.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from inferstream.api.accounts import Accounts, StoredKey, check_tenant_name
from inferstream.api.errors import BadRequest, Forbidden, Unauthorized
from inferstream.api.permissions import ROLES, Role
from inferstream.api.services import Services, services_of
from inferstream.api.settings import MAX_ACTIVE_KEYS, ApiSettings
from inferstream.api.throttle import GuessThrottle, key_scope, source_scope, user_scope
from inferstream.store.erasure import Requester
from inferstream.tracing import current_trace_hex

KEY_PREFIX = "isk"
_hasher = PasswordHasher()
# Verified against when the user does not exist, so both paths cost one Argon2 run.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a user name or key id, its tenant and its role."""

    subject: str
    tenant: str
    role: Role


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new API key; ``secret`` is shown once and never stored."""

    key_id: str
    tenant: str
    name: str
    role: Role
    secret: str


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise BadRequest(f"role {role!r} does not exist; use one of {', '.join(ROLES)}")
    return role  # narrowed to Role by the membership test


def hash_password(password: str) -> str:
    if len(password) < 12:
        raise BadRequest("password is too short; use at least 12 characters")
    return _hasher.hash(password)


def issue_key(
    accounts: Accounts, tenant: str, name: str, role: str, max_active: int = MAX_ACTIVE_KEYS
) -> IssuedKey:
    """Create and store a key; the caller shows :attr:`IssuedKey.secret` once.

    A tenant may hold ``max_active`` working keys; past that, :class:`Conflict`.
    """
    checked = check_role(role)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    stored = StoredKey(tenant, key_id, name[:128], digest, checked, False)
    accounts.create_key(stored, max_active)
    return IssuedKey(key_id, tenant, name, checked, f"{KEY_PREFIX}.{tenant}.{key_id}.{secret}")


def _key_parts(presented: str) -> tuple[str, str, str]:
    parts = presented.split(".")
    if len(parts) != 4 or parts[0] != KEY_PREFIX:
        raise Unauthorized("API key is malformed; it looks like isk.<tenant>.<id>.<secret>")
    _, tenant, key_id, secret = parts
    return tenant, key_id, secret


class KeyFinder(Protocol):
    """Where keys are looked up: :class:`Accounts`, or a :class:`KeyCache` in front of it."""

    def find_key(self, tenant: str, key_id: str) -> StoredKey | None: ...


def principal_from_key(keys: KeyFinder, presented: str) -> Principal:
    """The principal of an API key; :class:`Unauthorized` when it is wrong or revoked."""
    tenant, key_id, secret = _key_parts(presented)
    stored = keys.find_key(tenant, key_id) if check_tenant_ok(tenant) else None
    if not _matches(secret, stored) or stored is None or stored.revoked:
        raise Unauthorized("API key is unknown or revoked")
    return Principal(f"key:{key_id}", tenant, check_role(stored.role))


def _matches(secret: str, stored: StoredKey | None) -> bool:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return hmac.compare_digest(digest, stored.secret_sha256 if stored else "0" * 64)


def check_tenant_ok(tenant: str) -> bool:
    try:
        check_tenant_name(tenant)
    except BadRequest:
        return False
    return True


def sign_in_with_key(
    throttle: GuessThrottle, keys: KeyFinder, presented: str, source: str
) -> Principal:
    """:func:`principal_from_key`, with failures counted and back-off answered 429."""
    tenant, key_id, _ = _key_parts(presented)
    scopes = (source_scope(source), key_scope(tenant, key_id))
    standing = throttle.standing_cached(*scopes)
    throttle.refuse_if_blocked(standing, scopes[0])
    try:
        principal = principal_from_key(keys, presented)
    except Unauthorized:
        throttle.failed(*scopes)
        throttle.refuse_if_blocked(standing, scopes[1])  # guesses at a key id in back-off
        raise
    throttle.succeeded(scopes[1], standing)
    return principal


def sign_in_with_password(
    throttle: GuessThrottle, username: str, password: str, source: str
) -> Principal:
    """:func:`login`, refused with 429 before any hashing while the account or source is
    in back-off; failures are counted, a success clears the account's."""
    tenant, _, name = username.partition("/")
    scopes = (source_scope(source), user_scope(tenant, name))
    standing = throttle.standing(*scopes)
    throttle.refuse_if_blocked(standing, *scopes)
    try:
        principal = login(throttle.accounts, username, password)
    except Unauthorized:
        throttle.failed(*scopes)
        raise
    throttle.succeeded(scopes[1], standing)
    return principal


def login(accounts: Accounts, username: str, password: str) -> Principal:
    """Check a ``tenant/name`` login; the same Argon2 work whether or not the user exists."""
    tenant, _, name = username.partition("/")
    user = accounts.find_user(tenant, name) if check_tenant_ok(tenant) and name else None
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None:
        raise Unauthorized("wrong username or password; the username is <tenant>/<name>")
    return Principal(name, tenant, check_role(user.role))


def issue_token(settings: ApiSettings, principal: Principal) -> str:
    now = int(time.time())
    claims = {
        "sub": principal.subject,
        "tenant": principal.tenant,
        "role": principal.role,
        "iss": settings.jwt_issuer,
        "iat": now,
        "exp": now + settings.token_ttl_s,
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def principal_from_token(token: str, settings: ApiSettings) -> Principal:
    """The principal of a bearer token (JWT or API key is told apart by the caller)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=["HS256"],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "sub", "tenant", "role", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token has expired; log in again at POST /auth/token") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"token is not valid: {exc}") from exc
    role = claims["role"]
    if role not in ROLES or not isinstance(claims["tenant"], str):
        raise Unauthorized("token carries an unknown role or tenant")
    return Principal(str(claims["sub"]), claims["tenant"], check_role(role))


_bearer = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False)


async def authenticate(
    request: Request,
    bearer: Annotated[str | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller of this request, from ``X-API-Key`` or ``Authorization: Bearer``.

    A token is checked on the event loop (no store: its signature and expiry), and so
    is a key read in the last second whose caller and key have no failed sign-ins on
    record; otherwise the store is asked in a worker thread (a thread hop per request
    cost more than the check itself).
    """
    presented = api_key or bearer
    if not presented:
        raise Unauthorized("no credentials; send X-API-Key or Authorization: Bearer <token>")
    services, source = services_of(request), client_address(request)
    principal: Principal | None
    if is_api_key(presented):
        principal = _known_key(services, presented, source)
    else:
        principal = principal_from_token(presented, services.settings)
    if principal is None:
        principal = await run_in_threadpool(
            sign_in_with_key, services.throttle, services.keys, presented, source
        )
    services.limiter.take(f"{principal.tenant}/{principal.subject}")
    request.state.principal = principal
    return principal


def _known_key(services: Services, presented: str, source: str) -> Principal | None:
    """The principal of a key known in memory, when nothing needs the store: the key
    is fresh in :class:`KeyCache`, not revoked, its secret matches and neither its
    caller nor the key is on record for failed sign-ins. None: ask the store."""
    try:
        tenant, key_id, secret = _key_parts(presented)
    except Unauthorized:
        return None
    stored = services.keys.recent(tenant, key_id)
    if stored is None or stored.revoked or not _matches(secret, stored):
        return None  # the store's path refuses it and counts the failure
    if not services.throttle.clean(source_scope(source), key_scope(tenant, key_id)):
        return None
    return Principal(f"key:{key_id}", tenant, check_role(stored.role))


def client_address(connection: HTTPConnection) -> str:
    """The peer's address (behind a proxy, run uvicorn with ``--proxy-headers``)."""
    return connection.client.host if connection.client else "unknown"


def requester_of(request: Request, principal: Principal) -> Requester:
    """Who asks for a change the store audits in its own transaction (an erasure, a
    retention policy): the principal, from where, under which trace."""
    kind = "key" if principal.subject.startswith("key:") else "user"
    return Requester(principal.subject, kind, principal.role, client_address(request),
                     current_trace_hex() or "")  # fmt: skip


def principal_for(services: Services, credential: str, source: str) -> Principal:
    """The principal of an API key or JWT, rate limited: for callers outside routes.

    ``source`` is the caller's address, for the back-off against guessing keys. The
    live WebSocket calls ``principal_for(services_of(websocket), token, address)`` and
    then checks ``principal.role`` against its row of the permission matrix.
    """
    if is_api_key(credential):
        principal = sign_in_with_key(services.throttle, services.keys, credential, source)
    else:
        principal = principal_from_token(credential, services.settings)
    services.limiter.take(f"{principal.tenant}/{principal.subject}")
    return principal


def is_api_key(credential: str) -> bool:
    """An API key (``isk.<tenant>.<key id>.<secret>``), not a bearer token."""
    return credential.startswith(f"{KEY_PREFIX}.")


def require(*roles: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller and checks its role is one of ``roles``."""
    allowed = frozenset(roles)

    # async: a role check needs no thread (a sync dependency costs a worker-thread hop)
    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(
                f"role {principal.role!r} may not do this; it needs one of "
                f"{', '.join(sorted(allowed))}"
            )
        return principal

    return dependency
