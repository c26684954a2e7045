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
``withheld`` with why (:data:`SHREDDED`, :data:`NO_KEY`, :data:`UNAUTHENTIC`); a read
never fails for it. Without a KEK, sensitive attributes are stored in clear as before.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
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
    them: sealed under ``keys``, or in clear when there are none (no KEK configured)."""

    def __init__(self, keys: DataKeys | None) -> None:
        self.keys = keys
        self._declared: dict[str, frozenset[str]] = {}

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
            return [row.as_params() for row in rows]
        return [self._sealed_params(self.keys, row) for row in rows]

    def rows(self, found: Iterable[Mapping[Any, Any]]) -> list[ResultRow]:
        """Records read from ``records`` (outside the read's transaction: a key not
        cached is read in one of its own), sealed values opened, or null and named in
        ``withheld``."""
        opener = _Opener(self.keys)
        return [ResultRow.from_mapping(row, opener.open(row)) for row in found]

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

    def __init__(self, keys: DataKeys | None) -> None:
        self.keys = keys
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
        try:
            version, form = int(value["key"]), int(value["format"])
            data = base64.b64decode(value["sealed"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            return self._unauthentic(row, name, "is not a sealed value this store writes")
        if form != FORMAT:
            newer = f"is sealed in format {form}; this release knows {FORMAT}: use a newer one"
            return self._unauthentic(row, name, newer)
        cipher = self._key(row["tenant"], version)
        if isinstance(cipher, str):
            return _Withheld(cipher)
        nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, bound(version, row, name))
        except InvalidTag:
            moved = "fails its authentication: changed, or copied from another record"
            return self._unauthentic(row, name, moved)
        return json.loads(plain)

    def _key(self, tenant: str, version: int) -> AESGCM | str:
        if (tenant, version) not in self._found:
            self._found[(tenant, version)] = self._look_up(tenant, version)
        return self._found[(tenant, version)]

    def _look_up(self, tenant: str, version: int) -> AESGCM | str:
        if self.keys is None:
            why = "this process has no key-encryption key: set INFERSTREAM_KEK as the workers do"
            log.warning("sealed attributes of tenant %r read as null: %s", tenant, why)
            return NO_KEY
        try:
            return self.keys.opening_key(tenant, version)
        except TenantShredded:
            return SHREDDED
        except (BlobError, ConfigError) as exc:  # a key row deleted, a KEK not held
            log.warning("sensitive attributes of tenant %r cannot be opened: %s", tenant, exc)
            return NO_KEY

    @staticmethod
    def _unauthentic(row: Mapping[Any, Any], name: str, why: str) -> _Withheld:
        log.warning("attribute %r of record %s (tenant %r) %s", name, row["id"], row["tenant"], why)
        return _Withheld(UNAUTHENTIC)


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
