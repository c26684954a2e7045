"""New data keys by age: the housekeeping chore that retires each tenant's newest data
key before it has sealed too much (``docs/encryption.md``, "Rotation").

A tenant's newest data key seals every new blob and sensitive attribute with AES-256-GCM
under a random 96-bit nonce. NIST SP 800-38D (8.3) bounds such a key to 2^32 seals,
where the chance that two nonces repeat (which gives the key's authentication away)
reaches 2^-32. A tenant sealing 2,000 values a second (1,000 scans with a blob and a
sensitive attribute each) gets there in 2^32 / 2,000 s, about 25 days. So housekeeping
gives every tenant whose newest key is older than :data:`MAX_DAYS_ENV` days (7 by default)
a new one, with an entry in the tenant's audit log; old keys keep opening what they
sealed. A shredded tenant has no key left and is never given one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from inferstream.envelope import now_us
from inferstream.errors import BlobError, ConfigError
from inferstream.key_provider import key_provider_from_env
from inferstream.store.audit import AuditEntry, AuditLog, audit_key_from_env, target_of
from inferstream.store.data_keys import DataKeys, data_keys
from inferstream.store.store import ResultsStore

#: The newest data key's greatest age in days (a float) before housekeeping replaces it.
MAX_DAYS_ENV = "INFERSTREAM_DATA_KEY_MAX_DAYS"
#: Its default: under a third of the 25 days a tenant sealing 2,000 values a second
#: needs to reach 2^32 seals; the bound is reached at 7,100 a second (2^32 / 604,800 s).
MAX_DAYS = 7.0
#: The audit entry's action (actor and kind ``housekeeping``, as retention's expiries).
ACTION = "new data key"
DAY_US = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class NewKey:
    """A tenant given data key ``version`` because its newest was ``old_days`` old."""

    tenant: str
    version: int
    old_days: float


def max_age_days(environ: Mapping[str, str] = os.environ) -> float:
    """The newest data key's greatest age in days, from :data:`MAX_DAYS_ENV`."""
    setting = environ.get(MAX_DAYS_ENV, "").strip()
    try:
        days = float(setting) if setting else MAX_DAYS
    except ValueError:
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise ConfigError(
            f"{MAX_DAYS_ENV}={setting!r} is not a number of days above 0: set it to the "
            f"newest data key's greatest age in days, e.g. 7 (the default) or 0.5, or unset "
            "it (docs/encryption.md)"
        )
    return days


def renew_old_keys(audit: AuditLog, keys: DataKeys, max_days: float, at_us: int) -> list[NewKey]:
    """Give each tenant whose newest data key was made over ``max_days`` before ``at_us``
    a new one, each with an audit entry; the keys made."""
    made = []
    for tenant in keys.table.tenants():  # a shredded tenant has no key, so is not here
        newest = keys.table.newest(tenant)
        if newest is None or at_us - newest.created_us <= max_days * DAY_US:
            continue
        try:
            version = keys.new_data_key(tenant)
        except BlobError:  # shredded since, or another process's housekeeping made it
            continue
        audit.append([_entry(tenant, version, max_days)])
        made.append(NewKey(tenant, version, (at_us - newest.created_us) / DAY_US))
    return made


def renew_data_keys(store_url: str, at_us: int | None = None) -> list[str]:
    """The chore: new data keys in ``store_url`` for tenants whose newest is too old,
    a line for each; none when no key provider is configured (encryption is off)."""
    max_days = max_age_days()
    provider = key_provider_from_env()
    if provider is None:
        return []
    at_us = now_us() if at_us is None else at_us
    with ResultsStore(store_url, key_provider=provider) as store:
        audit = AuditLog(store, audit_key_from_env())
        made = renew_old_keys(audit, data_keys(store, provider), max_days, at_us)
    return [
        f"data keys: {new.tenant} got data key {new.version} (its newest was "
        f"{new.old_days:.1f} days old, over {MAX_DAYS_ENV}={max_days:g})"
        for new in made
    ]


def _entry(tenant: str, version: int, max_days: float) -> AuditEntry:
    return AuditEntry(
        tenant=tenant, at_us=now_us(), actor="housekeeping", actor_kind="housekeeping",
        role="operator", action=ACTION,
        target=target_of({"version": version, "max_days": max_days}), source="localhost",
        status=200,
    )  # fmt: skip


__all__ = [
    "MAX_DAYS",
    "MAX_DAYS_ENV",
    "NewKey",
    "max_age_days",
    "renew_data_keys",
    "renew_old_keys",
]
