"""The ``check_ingest`` step: the API's ingest checks, for items that come by the bus.

An edge agent may hand its buffer straight to the central bus (``inferstream edge
--bus kafka://...``) instead of the API. Whatever arrives that way is held to exactly
what ``POST /v1/scans`` holds an upload to, in a stage of the central pipeline file::

    - name: ingest
      input: scans.edge
      output: scans.raw
      steps: [check_ingest]

Each message's bytes go through its application's upload check (the codec's or the
application's own, with the installation's settings); only the attributes a client may
send are kept and everything else is derived again from the bytes; the bytes are kept
in the tenant's blobs (claim-checked above ``claim_check_kb``). A refused item is
dead-lettered with the check's reason, as a 4xx would have told a client. So is one
whose event time is further ahead of this host's clock than the pipeline's
``max_clock_skew_s`` (:mod:`inferstream.event_time`): a producer with a clock stepped
ahead would otherwise close every other producer's windows early. The tenant is the one
the producer wrote: the bus is trusted as the API's keys are (give edge agents their
own credentials and topic ACLs on a real broker).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from inferstream.admit import wrap_checked
from inferstream.application import AppSpec
from inferstream.blobs import BlobStore, batch_payloads
from inferstream.codecs import ImageLimits
from inferstream.envelope import Envelope
from inferstream.errors import BlobError, ConfigError, InvalidInput
from inferstream.event_time import DEFAULT_MAX_CLOCK_SKEW_S, check_event_time
from inferstream.steps import Outcome, Step, StepContext


class IngestCheckStep(Step):
    """Checks each item as an upload is checked, and re-wraps it as the API would."""

    name = "check_ingest"

    def __init__(
        self,
        app: AppSpec,
        blobs: BlobStore | None,
        limits: ImageLimits,
        claim_check_bytes: int,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    ) -> None:
        self.app, self.blobs, self.limits = app, blobs, limits
        self.claim_check_bytes = claim_check_bytes
        self.max_clock_skew_s = max_clock_skew_s
        self.allowed = frozenset(app.client_attributes)

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        payload = batch_payloads(batch, self.blobs)  # claim checks fetched together
        return [self._one(env, payload) for env in batch]

    def _one(self, env: Envelope, payload: Callable[[Envelope], bytes]) -> Outcome:
        if not env.tenant:
            return InvalidInput(
                f"item {env.id} names no tenant; a producer writing to the bus must say "
                "whose it is (inferstream edge --tenant)"
            )
        try:
            check_event_time(env.created_at_us, self.max_clock_skew_s)
            checked = self.app.check_upload(payload(env), self.limits)
        except (InvalidInput, BlobError) as exc:  # BlobError: retried by the worker
            return exc
        client = {k: v for k, v in env.attributes.items() if k in self.allowed}
        out = wrap_checked(
            checked, tenant=env.tenant, app=self.app, blobs=self.blobs,
            claim_check_bytes=self.claim_check_bytes, ident=env.id, source=env.source,
            subject=env.partition_key, attributes=client,
        )  # fmt: skip
        out.root_id = env.root_id or env.id
        out.created_at_us = env.created_at_us or out.created_at_us
        out.trace_id = env.trace_id or out.trace_id
        return out


def check_ingest_step(
    context: StepContext,
    *,
    max_side: int = ImageLimits.max_side,
    max_pixels: int = ImageLimits.max_pixels,
    claim_check_kb: int | None = None,
) -> IngestCheckStep:
    """Step factory (``check_ingest`` in a pipeline file); the API's default limits, and
    the pipeline's claim-check size unless ``claim_check_kb`` is given."""
    if context.app is None:
        raise ConfigError(
            f"check_ingest in stage {context.stage!r} checks items as the pipeline's "
            "application takes uploads; name it with app: in the pipeline file"
        )
    limits = ImageLimits(max_side=max_side, max_pixels=max_pixels)
    size = context.claim_check_bytes if claim_check_kb is None else claim_check_kb * 1024
    return IngestCheckStep(context.app, context.blobs, limits, size, context.max_clock_skew_s)


__all__ = ["IngestCheckStep", "check_ingest_step"]
