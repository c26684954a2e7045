"""Key-encryption keys (KEKs): what wraps the per-tenant data keys of encrypted blobs.

A :class:`KeyProvider` wraps and unwraps a data key the way a KMS does: the data key
goes in, an opaque wrapped form and the id of the KEK that wrapped it come out, and
only the provider holds the KEK. The one shipped here, :class:`LocalKeyProvider`, takes
its KEKs from configuration: ``INFERSTREAM_KEK`` is one or more base64 32-byte keys,
comma-separated, newest first. The newest wraps; every one listed unwraps, so a KEK is
rotated without downtime (add the new one in front everywhere, rewrap, drop the old one).

A KMS of your own plugs in by ``INFERSTREAM_KEY_PROVIDER=module:factory``: the factory
takes no argument and returns a :class:`KeyProvider`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from inferstream.errors import ConfigError

#: Base64 32-byte KEKs, comma-separated, newest first.
KEK_ENV = "INFERSTREAM_KEK"
#: ``module:factory`` of a provider of one's own (a KMS); wins over ``INFERSTREAM_KEK``.
PROVIDER_ENV = "INFERSTREAM_KEY_PROVIDER"
KEY_BYTES = 32
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key as a provider wrapped it, and which of its KEKs did."""

    kek_id: str
    wrapped: bytes


class KeyProvider(Protocol):
    """Wraps and unwraps data keys with KEKs only it holds (a KMS's interface)."""

    @property
    def current_kek_id(self) -> str:
        """The KEK that wraps from now on."""

    def wrap(self, key: bytes, context: bytes) -> WrappedKey:
        """``key`` wrapped by the current KEK, bound to ``context`` (associated data)."""

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        """The data key back; a :class:`ConfigError` saying why when it cannot be."""


def kek_id_of(kek: bytes) -> str:
    """A KEK's public name: a hash of it, so the same key is the same id everywhere."""
    return "local:" + hashlib.sha256(b"inferstream kek id\0" + kek).hexdigest()[:16]


class LocalKeyProvider:
    """KEKs from configuration, newest first: the newest wraps, any of them unwraps."""

    def __init__(self, keks: Sequence[bytes]) -> None:
        if not keks:
            raise ConfigError(f"no key-encryption key given; set {KEK_ENV}")
        for kek in keks:
            if len(kek) != KEY_BYTES:
                raise ConfigError(
                    f"a key-encryption key in {KEK_ENV} is {len(kek)} bytes, not {KEY_BYTES}; "
                    'make one with: python -c "import os,base64;'
                    'print(base64.b64encode(os.urandom(32)).decode())"'
                )
        self._keks = {kek_id_of(kek): AESGCM(kek) for kek in keks}
        self._current = kek_id_of(keks[0])

    @classmethod
    def from_setting(cls, value: str) -> LocalKeyProvider:
        """From ``INFERSTREAM_KEK``'s form: base64 keys, comma-separated, newest first."""
        keks = []
        for part in (p.strip() for p in value.split(",")):
            try:
                keks.append(base64.b64decode(part, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise ConfigError(
                    f"{KEK_ENV} holds {part[:6]!r}..., which is not base64; give base64 "
                    "32-byte keys, comma-separated, newest first"
                ) from exc
        return cls(keks)

    @property
    def current_kek_id(self) -> str:
        return self._current

    @property
    def kek_ids(self) -> list[str]:
        return list(self._keks)

    def wrap(self, key: bytes, context: bytes) -> WrappedKey:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keks[self._current].encrypt(nonce, key, context)
        return WrappedKey(self._current, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        kek = self._keks.get(wrapped.kek_id)
        if kek is None:
            raise ConfigError(
                f"a data key was wrapped by key-encryption key {wrapped.kek_id}, which "
                f"{KEK_ENV} does not hold (it holds {', '.join(self._keks)}); add that KEK "
                "after the new one until 'inferstream keys rotate-kek' has rewrapped every key"
            )
        nonce, sealed = wrapped.wrapped[:_NONCE_BYTES], wrapped.wrapped[_NONCE_BYTES:]
        try:
            return kek.decrypt(nonce, sealed, context)
        except InvalidTag as exc:
            raise ConfigError(
                f"a data key wrapped by {wrapped.kek_id} does not unwrap: its row was changed "
                "or moved to another tenant in the database; restore the key table from backup"
            ) from exc


def key_provider_from_env(environ: Mapping[str, str] = os.environ) -> KeyProvider | None:
    """The provider configured in ``environ``: ``INFERSTREAM_KEY_PROVIDER``'s factory,
    else ``INFERSTREAM_KEK``'s keys; None (blobs stored in the clear) with neither."""
    factory = environ.get(PROVIDER_ENV, "").strip()
    if factory:
        module_name, _, attr = factory.partition(":")
        try:
            made: KeyProvider = getattr(importlib.import_module(module_name), attr)()
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(
                f"{PROVIDER_ENV}={factory!r} names no importable factory: {exc}; give "
                "module:factory, a function taking no argument that returns a KeyProvider"
            ) from exc
        return made
    setting = environ.get(KEK_ENV, "").strip()
    return LocalKeyProvider.from_setting(setting) if setting else None


__all__ = [
    "KEK_ENV",
    "PROVIDER_ENV",
    "KeyProvider",
    "LocalKeyProvider",
    "WrappedKey",
    "kek_id_of",
    "key_provider_from_env",
]
