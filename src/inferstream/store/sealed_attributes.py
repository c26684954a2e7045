"""Sensitive attributes of records, sealed at rest under the tenant's data keys.

An application declares an attribute ``sensitive``
(:class:`~inferstream.application.Attribute`). With a key-encryption key configured,
the store keeps such an attribute's value in the record's ``attributes`` JSON as a
sealed object instead of the value::

    {"sealed": "<base64: nonce (12) | ciphertext + tag (16)>", "key": 3, "format": 1}

AES-256-GCM under the tenant's data key number ``key``, the same keys as its blobs
(:mod:`inferstream.store.data_keys`), so a KEK rotation, a new data key and a shred
reach both. The plaintext is the typed value as JSON. The associated data binds the
format, the key number, the tenant, the application, the record id and the attribute
name: a sealed value copied to another record, attribute or tenant does not open.

A declared attribute's value is otherwise never an object (attributes are str, int or
float), so a sealed value is told apart without the declaration and every read opens
what it finds. One that cannot be opened reads as null and is named in the row's
``withheld`` with why (:data:`SHREDDED`, :data:`NO_KEY`, :data:`UNAUTHENTIC`: also
anything malformed); a read never fails for it, and the warning it logs is said once a
minute per tenant and reason (a live view reads every second).

Without a KEK, sensitive attributes are stored in clear as before, in a deployment that
never encrypted. Once the store holds data keys, a writer without a KEK refuses them
(:class:`~inferstream.errors.ConfigError`): one process left unconfigured must not store
in clear what the others seal.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inferstream.application import AppSpec, app_named
from inferstream.errors import BlobError, ConfigError, TenantShredded
from inferstream.store.data_keys import DataKeys
from inferstream.store.queries import InvalidQuery
from inferstream.store.rows import ResultFilter, ResultRow

log = logging.getLogger(__name__)

FORMAT = 1
NONCE_BYTES = 12
TAG_BYTES = 16
#: The largest data key number (the column is a 32-bit integer).
MAX_KEY = 2**31 - 1
#: A warning about one tenant's unreadable values is logged at most this often (seconds).
WARN_EVERY_S = 60.0
#: How long a writer without a KEK trusts "the store holds no data keys" (seconds).
RECHECK_S = 60.0
#: Why a sealed value reads as null: the tenant's data keys were crypto-shredded ...
SHREDDED = "shredded"
#: ... this process has no key-encryption key (or not the one that wrapped the key) ...
NO_KEY = "no_key"
#: ... or it fails its authentication (changed, or moved from another record).
UNAUTHENTIC = "unauthentic"


def is_sealed(value: Any) -> bool:
    """Whether a stored attribute value is a sealed one (a plain value is never a dict)."""
    return isinstance(value, dict) and "sealed" in value


class SensitiveAttributes:
    """Which attributes of each application are sensitive, and how the store keeps
    them: sealed under ``keys``, or in clear when there are none (no KEK configured)
    and ``holds_keys()`` says the store holds no data keys either (it never encrypted)."""

    def __init__(
        self,
        keys: DataKeys | None,
        holds_keys: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self._declared: dict[str, frozenset[str]] = {}
        self._holds_keys, self._clock = holds_keys, clock
        self._encrypts = False
        self._checked_until = float("-inf")
        self._warnings = _Warnings(clock)

    def register(self, app: AppSpec) -> None:
        self._declared[app.name] = app.sensitive_attributes

    def of(self, app: str) -> frozenset[str]:
        """The sensitive attributes of application ``app``: as registered, else as the
        installed application declares them (a writer that did not register it still
        seals), else none."""
        if app not in self._declared:
            try:
                self._declared[app] = app_named(app).sensitive_attributes if app else frozenset()
            except ConfigError:  # not installed here: it declared nothing to this store
                self._declared[app] = frozenset()
        return self._declared[app]

    def check_filter(self, filters: ResultFilter | None) -> None:
        """:class:`InvalidQuery` naming a filter on a sensitive attribute: its values are
        sealed, so no condition on them could match (and none should be tried)."""
        if filters is None or not filters.attributes:
            return
        apps = [filters.app] if filters.app is not None else list(self._declared)
        named = sorted({n for app in apps for n in self.of(app)}.intersection(filters.attributes))
        if named:
            raise InvalidQuery(
                f"{', '.join(named)} is a sensitive attribute (stored encrypted), so records "
                "cannot be filtered or sorted by it; filter by a filterable attribute and "
                "read it from the records found"
            )

    def params(self, rows: Sequence[ResultRow]) -> list[dict[str, Any]]:
        """Insert parameters of ``rows``, each sensitive value sealed (with keys)."""
        if self.keys is None:
            for row in rows:
                self._check_clear(row)
            return [row.as_params() for row in rows]
        return [self._sealed_params(self.keys, row) for row in rows]

    def rows(self, found: Iterable[Mapping[Any, Any]]) -> list[ResultRow]:
        """Records read from ``records`` (outside the read's transaction: a key not
        cached is read in one of its own), sealed values opened, or null and named in
        ``withheld``."""
        opener = _Opener(self.keys, self._warnings)
        return [ResultRow.from_mapping(row, opener.open(row)) for row in found]

    def _check_clear(self, row: ResultRow) -> None:
        """:class:`ConfigError` when ``row`` carries a sensitive value this process would
        store in clear (it has no KEK) while the store holds data keys: the deployment
        encrypts, and this one process is not configured to."""
        found = row.attributes
        names = sorted(n for n in self.of(row.app) if not _clear_already(found.get(n)))
        if not names or not self._store_encrypts():
            return
        raise ConfigError(
            f"record {row.id} carries the sensitive attribute {', '.join(names)}, which this "
            "deployment stores encrypted (the store holds data keys), but this process has no "
            "key-encryption key, so it would store the value in clear; set INFERSTREAM_KEK "
            "(or INFERSTREAM_KEY_PROVIDER) as in the other processes and restart it"
        )

    def _store_encrypts(self) -> bool:
        # Once keys exist they stay (a shred keeps the others'); "none yet" is asked
        # again now and then, so a deployment that starts encrypting is noticed.
        if not self._encrypts and self._clock() >= self._checked_until:
            self._encrypts = self._holds_keys()
            self._checked_until = self._clock() + RECHECK_S
        return self._encrypts

    def _sealed_params(self, keys: DataKeys, row: ResultRow) -> dict[str, Any]:
        params = row.as_params()
        attributes: dict[str, Any] = params["attributes"]
        # A value sealed already (a stored row written back as read raw) stays as it is.
        names = [n for n in self.of(row.app) if n in attributes and not is_sealed(attributes[n])]
        if names:
            version, cipher = keys.sealing_key(row.tenant)
            for name in names:
                attributes[name] = seal_value(cipher, version, params, name, attributes[name])
        return params


def seal_value(
    cipher: AESGCM, version: int, row: Mapping[Any, Any], name: str, value: Any
) -> dict[str, Any]:
    """``value`` of attribute ``name`` of record ``row`` (its columns) sealed under data
    key ``version``."""
    nonce = os.urandom(NONCE_BYTES)
    plain = json.dumps(value).encode()
    sealed = nonce + cipher.encrypt(nonce, plain, bound(version, row, name))
    return {"sealed": base64.b64encode(sealed).decode(), "key": version, "format": FORMAT}


def bound(version: int, row: Mapping[Any, Any], name: str) -> bytes:
    """The associated data: what a sealed value belongs to (``row``: the record's columns)."""
    parts = ("inferstream record attribute", str(FORMAT), str(version), row["tenant"],
             row["app"], row["id"], name)  # fmt: skip
    return "\0".join(parts).encode()


class _Opener:
    """Opens the sealed values of one read's rows, looking each key up once."""

    def __init__(self, keys: DataKeys | None, warnings: _Warnings) -> None:
        self.keys = keys
        self._warnings = warnings
        self._found: dict[tuple[str, int], AESGCM | str] = {}

    def open(self, row: Mapping[Any, Any]) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The record's attributes opened and those withheld; None when none is sealed."""
        stored: dict[str, Any] = row["attributes"]
        sealed = {name: value for name, value in stored.items() if is_sealed(value)}
        if not sealed:
            return None
        attributes, withheld = dict(stored), {}
        for name, value in sealed.items():
            opened = self._open(row, name, value)
            if isinstance(opened, _Withheld):
                attributes[name], withheld[name] = None, opened.reason
            else:
                attributes[name] = opened
        return attributes, withheld

    def _open(self, row: Mapping[Any, Any], name: str, value: Mapping[str, Any]) -> Any:
        parsed = _parsed(value)
        if isinstance(parsed, str):
            return self._unauthentic(row, name, parsed)
        version, data = parsed
        cipher = self._key(row["tenant"], version)
        if isinstance(cipher, str):
            return _Withheld(cipher)
        nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
        try:
            return json.loads(cipher.decrypt(nonce, sealed, bound(version, row, name)))
        except (InvalidTag, ValueError):  # ValueError: a nonce or plaintext malformed
            moved = "fails its authentication: changed, or copied from another record"
            return self._unauthentic(row, name, moved)

    def _key(self, tenant: str, version: int) -> AESGCM | str:
        if (tenant, version) not in self._found:
            self._found[(tenant, version)] = self._look_up(tenant, version)
        return self._found[(tenant, version)]

    def _look_up(self, tenant: str, version: int) -> AESGCM | str:
        if self.keys is None:
            why = "this process has no key-encryption key: set INFERSTREAM_KEK as the workers do"
            self._warnings.warn(tenant, NO_KEY, "sealed attributes of tenant %r read as null: %s",
                                tenant, why)  # fmt: skip
            return NO_KEY
        try:
            return self.keys.opening_key(tenant, version)
        except TenantShredded:
            return SHREDDED
        except (BlobError, ConfigError) as exc:  # a key row deleted, a KEK not held
            self._warnings.warn(tenant, NO_KEY, "sensitive attributes of tenant %r cannot be "
                                "opened: %s", tenant, exc)  # fmt: skip
            return NO_KEY

    def _unauthentic(self, row: Mapping[Any, Any], name: str, why: str) -> _Withheld:
        tenant = row["tenant"]
        self._warnings.warn(tenant, UNAUTHENTIC, "attribute %r of record %s (tenant %r) %s; "
                            "read as null (said once a minute per tenant)",
                            name, row["id"], tenant, why)  # fmt: skip
        return _Withheld(UNAUTHENTIC)


def _parsed(value: Mapping[str, Any]) -> tuple[int, bytes] | str:
    """The key number and bytes (nonce, ciphertext and tag) of a sealed value, or why
    it is not one this store could have written."""
    version, form = _whole(value.get("key")), _whole(value.get("format"))
    sealed = value.get("sealed")
    if version is None or not 1 <= version <= MAX_KEY or form is None:
        return "is not a sealed value this store writes (no key number or format)"
    if form != FORMAT:
        return f"is sealed in format {form}; this release knows {FORMAT}: use a newer one"
    try:
        data = base64.b64decode(sealed, validate=True) if isinstance(sealed, str) else b""
    except (binascii.Error, ValueError):
        data = b""
    if len(data) < NONCE_BYTES + TAG_BYTES:
        return "is not a sealed value this store writes (not base64 of a nonce and a tag)"
    return version, data


def _clear_already(value: Any) -> bool:
    """Whether storing ``value`` without a key reveals nothing: absent, or sealed already."""
    return value is None or is_sealed(value)


def _whole(value: Any) -> int | None:
    """``value`` if it is an integer (JSON's true is not one), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Warnings:
    """Logs a warning at most once per :data:`WARN_EVERY_S` per tenant and reason: every
    read of an unreadable value would log it, and a live view reads every second."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._next: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def warn(self, tenant: str, reason: str, message: str, *args: Any) -> None:
        now = self._clock()
        with self._lock:
            if self._next.get((tenant, reason), now) > now:
                return
            self._next[(tenant, reason)] = now + WARN_EVERY_S
        log.warning(message, *args)


class _Withheld:
    def __init__(self, reason: str) -> None:
        self.reason = reason


__all__ = [
    "FORMAT",
    "NO_KEY",
    "SHREDDED",
    "UNAUTHENTIC",
    "SensitiveAttributes",
    "bound",
    "is_sealed",
    "seal_value",
]
