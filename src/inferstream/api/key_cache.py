"""API keys read from the store, kept in memory for a second.

A device signs every request in with its key, and reading the key's row was a store
query and a worker thread per request: about a sixth of the API's CPU per one-scan
upload (bench/ingest_http_bench.py). A key found in the last second is taken from
memory instead. A revocation by this process forgets its key at once, so the next
request is refused; a revocation by another process (another API worker, ``inferstream
admin revoke-key``) is seen within :attr:`KeyCache.fresh_for_us`. Keys not found are
not kept: a new key works at once, and the store answers wrong guesses (which the
guess throttle counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from inferstream.api.accounts import Accounts, StoredKey
from inferstream.envelope import now_us

#: More keys than any deployment holds: past it the memory starts over.
MAX_KEPT = 100_000


@dataclass
class KeyCache:
    """The keys of ``accounts`` read in the last ``fresh_for_us``, by tenant and key id."""

    accounts: Accounts
    fresh_for_us: int = 1_000_000
    clock_us: Callable[[], int] = field(default=now_us)
    _kept: dict[tuple[str, str], tuple[int, StoredKey]] = field(default_factory=dict, repr=False)

    def recent(self, tenant: str, key_id: str) -> StoredKey | None:
        """The key when it was read from the store within ``fresh_for_us``; never blocks."""
        kept = self._kept.get((tenant, key_id))
        if kept is None or self.clock_us() - kept[0] >= self.fresh_for_us:
            return None
        return kept[1]

    def find_key(self, tenant: str, key_id: str) -> StoredKey | None:
        """:meth:`Accounts.find_key`, from memory while fresh (blocking otherwise)."""
        found = self.recent(tenant, key_id)
        if found is not None:
            return found
        read_at = self.clock_us()
        found = self.accounts.find_key(tenant, key_id)
        if found is not None:
            if len(self._kept) >= MAX_KEPT:
                self._kept.clear()
            self._kept[(tenant, key_id)] = (read_at, found)
        return found

    def forget(self, tenant: str, key_id: str) -> None:
        """Drop a key (this process revoked it): its next request reads the store."""
        self._kept.pop((tenant, key_id), None)
