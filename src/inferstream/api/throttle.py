"""Back-off against guessing passwords and API key secrets, shared by every API process.

The rate limiter (:mod:`inferstream.api.ratelimit`) bounds how fast one credential
calls; it cannot stop guessing, because every guess may name another account or
come from another process. So each failed sign-in is counted in the store, per
*scope*: the source address (``source:<address>``) and the account
(``user:<tenant>/<name>`` or ``key:<tenant>/<key id>``). Past a few free failures
in a row a scope is in back-off, 1 s doubling up to 15 minutes, and while it lasts
its sign-ins answer 429 with ``Retry-After`` before any password is checked.

No lockout is permanent: a back-off always ends, and a failure more than an hour
after the last one starts the count again. A success clears the account's count
but never the source's, or one good account would let a guesser reset between
guesses. A correct API key is accepted even while its key id is in back-off: its
secret is 256 random bits, so guesses at it cannot succeed, and nobody who merely
knows a key id can lock a machine out (the guesses themselves still get 429).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from inferstream.api.accounts import Accounts
from inferstream.api.errors import RateLimited
from inferstream.envelope import now_us

_US = 1_000_000


@dataclass(frozen=True)
class Backoff:
    """After ``free_failures`` in a row: ``first_s``, doubling, at most ``max_s``."""

    free_failures: int
    first_s: float = 1.0
    max_s: float = 900.0
    forget_after_s: float = 3600.0

    def delay_us(self, failures: int) -> int:
        """The back-off earned by ``failures`` failures in a row."""
        if failures <= self.free_failures:
            return 0
        doublings = min(failures - self.free_failures - 1, 40)
        return int(min(self.max_s, self.first_s * 2**doublings) * _US)


#: Several people behind one address may mistype; one account rarely needs ten tries.
SOURCE_BACKOFF = Backoff(free_failures=20)
ACCOUNT_BACKOFF = Backoff(free_failures=5)


def source_scope(address: str) -> str:
    return f"source:{address[:64]}"


def user_scope(tenant: str, username: str) -> str:
    return f"user:{tenant[:64]}/{username[:128]}"


def key_scope(tenant: str, key_id: str) -> str:
    return f"key:{tenant[:64]}/{key_id[:64]}"


@dataclass
class GuessThrottle:
    """Failed sign-ins counted in the store (``accounts``), and the 429s they earn."""

    accounts: Accounts
    source: Backoff = SOURCE_BACKOFF
    account: Backoff = ACCOUNT_BACKOFF
    clock_us: Callable[[], int] = field(default=now_us)
    #: How long a scope found with no failures is taken as clean without asking the
    #: store again: API keys sign every request in, and that read was a store query per
    #: request. A failure in this process clears it at once; another process's failures
    #: are seen within this long.
    clean_for_us: int = 1_000_000
    _clean: dict[str, int] = field(default_factory=dict, repr=False)

    def standing(self, *scopes: str) -> dict[str, int]:
        """Until when each scope with failures on record is in back-off (µs)."""
        return self.accounts.blocked_until(scopes)

    def clean(self, *scopes: str) -> bool:
        """Whether every scope was found with no failures within ``clean_for_us``
        (memory only: never blocks)."""
        now = self.clock_us()
        return all(now - self._clean.get(scope, -self.clean_for_us) < self.clean_for_us
                   for scope in scopes)  # fmt: skip

    def standing_cached(self, *scopes: str) -> dict[str, int]:
        """:meth:`standing`, answered from memory while every scope was recently clean."""
        if self.clean(*scopes):
            return {}
        now = self.clock_us()
        standing = self.standing(*scopes)
        for scope in scopes:
            if scope in standing:
                self._clean.pop(scope, None)
            else:
                self._clean[scope] = now
        if len(self._clean) > 100_000:  # many keys and addresses: start over, not grow
            self._clean.clear()
        return standing

    def refuse_if_blocked(self, standing: dict[str, int], *scopes: str) -> None:
        """:class:`RateLimited` when one of ``scopes`` is in back-off now."""
        until = max((standing.get(scope, 0) for scope in scopes), default=0)
        now = self.clock_us()
        if until > now:
            wait = max(1, math.ceil((until - now) / _US))
            raise RateLimited(
                f"too many failed sign-ins from this address or for this account; "
                f"retry after {wait} s",
                wait,
            )

    def failed(self, source: str, account: str) -> dict[str, int]:
        """Count a failed sign-in against both scopes; their new back-off ends."""
        now = self.clock_us()
        ends = {}
        for scope in (source, account):
            self._clean.pop(scope, None)
        for scope, policy in ((source, self.source), (account, self.account)):
            forget_before = now - int(policy.forget_after_s * _US)
            ends[scope] = self.accounts.add_failure(scope, now, forget_before, policy.delay_us)
        return ends

    def succeeded(self, account: str, standing: dict[str, int]) -> None:
        """Clear ``account``'s failures, when it had any (no write otherwise)."""
        if account in standing:
            self.accounts.clear_failures(account)

    def purge(self) -> int:
        """Forget scopes quiet for longer than either policy remembers; how many."""
        horizon = max(self.source.forget_after_s, self.account.forget_after_s)
        return self.accounts.purge_failures(self.clock_us() - int(horizon * _US))
