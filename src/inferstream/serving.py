"""Serving a registry alias: a step's model follows ``name@alias`` while the worker runs.

A ``classify`` step that names ``model: NAME@champion`` loads the version the
alias points at when its worker starts (so a new replica serves what the registry says,
not what it was started with), then asks the registry again every ``refresh_s`` seconds,
at the start of a batch. When the alias has moved it loads the new version in a
background thread while the old one keeps serving, checks it answers the same head, and
switches at the start of the next batch once it is ready: a batch is scored by one
version, every prediction names the version that made it, and the switch is recorded
(``model_switches``) with the offset, per partition, of the first message the new
version scored.

The first use of ``name@alias`` where the registry has no version of ``name`` at all
registers the model an installed application ships under that name and points the
alias at it (audited, by ``inferstream``), so a bundled pipeline runs on a fresh
machine with no registry step.

A *shadow* step may follow an alias that is not set yet (``until_set: pass``): the
challenger a trainer will register (:mod:`inferstream.retraining`). Until the alias
is set it passes messages on untouched; from the batch after the version has loaded
it scores them like any shadow.

What cannot be done leaves the old version serving and says so in the log: a registry
that cannot be reached (asked again at the next refresh); an artifact whose bytes do
not match their digest, or a version whose labels the head lacks (not tried again until
the alias moves on). Nothing is dropped while a model changes: the batch in hand is
never interrupted, and no batch waits for a model to load.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from inferstream.classify import DEFAULT_ROLE, ROLES, ClassifyStep, Model, ModelInfo, check_step
from inferstream.classify import classify_step as classify_files_step
from inferstream.envelope import Envelope, ModelRole, now_us
from inferstream.errors import ConfigError, InferstreamError, TransientError
from inferstream.registry import ModelRegistry, ModelVersion, RegistryError, Switch, parse_ref
from inferstream.steps import Outcome, Step, StepContext
from inferstream.store import ResultsStore

log = logging.getLogger(__name__)

#: How often a serving step asks the registry where its alias points.
DEFAULT_REFRESH_S = 2.0


class ModelFollower:
    """The model ``name@alias`` points at, kept current between batches."""

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        alias: str,
        context: StepContext,
        *,
        refresh_s: float = DEFAULT_REFRESH_S,
        accept: Callable[[ModelInfo], str | None] = lambda info: None,
        until_set: bool = False,
    ) -> None:
        self.registry = registry
        self.name, self.alias = name, alias
        self.context = context
        self.refresh_s = refresh_s
        #: Why a loaded model may not serve here (labels the head lacks), or None.
        self.accept = accept
        #: The version serving and its model; None only while an alias followed
        #: ``until_set`` is not set yet.
        self.version: ModelVersion | None = None
        self.model: Model | None = None
        try:
            self.version = registry.resolve(name, alias)
        except RegistryError:
            if not until_set:  # (an alias set later is never given the shipped model)
                self.version = registry.adopt_shipped(name, alias)
                if self.version is None:
                    raise
        if self.version is not None:
            self.model = self._load(self.version)
        self._next_check = time.monotonic() + refresh_s
        self._refused: str | None = None  # a version that cannot serve: not tried again
        # One loader thread: a new version loads while the old one serves.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix=f"load-{name}")
        self._loading: Future[tuple[ModelVersion, Model]] | None = None

    def _load(self, version: ModelVersion) -> Model:
        try:
            model = self.registry.load(version)
            problem = self.accept(model.info)
            if problem:
                raise InferstreamError(problem)
        except InferstreamError as exc:
            exc.version = version.version  # type: ignore[attr-defined]
            raise
        return model

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Between two batches: switch to a new version once it has loaded (in the
        background, while the old one serves), and ask the registry when it is time."""
        if self._loading is not None and self._loading.done():
            self._switch(self._loading, positions)
            self._loading = None
        now = time.monotonic()
        if self._loading is not None or now < self._next_check:
            return
        self._next_check = now + self.refresh_s
        try:
            wanted = self.registry.resolve(self.name, self.alias)
        except RegistryError as exc:
            if self.version is None and exc.status == 404:  # not set yet: ask again later
                return
            self._cannot_ask(exc)
            return
        except InferstreamError as exc:
            self._cannot_ask(exc)
            return
        current = (self.version.version, self.version.sha256) if self.version else None
        if (wanted.version, wanted.sha256) == current or wanted.version == self._refused:
            return
        self._loading = self._loader.submit(lambda: (wanted, self._load(wanted)))

    def _cannot_ask(self, exc: InferstreamError) -> None:
        log.warning(
            "stage %s: cannot ask the registry for %s@%s (%s); serving %s",
            self.context.stage, self.name, self.alias, exc, self._serving(),
        )  # fmt: skip

    def _serving(self) -> str:
        return self.version.version if self.version else "nothing (alias not set yet)"

    def _switch(
        self, loading: Future[tuple[ModelVersion, Model]], positions: Mapping[tuple[str, int], int]
    ) -> None:
        try:
            wanted, model = loading.result()
        except InferstreamError as exc:
            version = getattr(exc, "version", "a new version")
            log.error(
                "stage %s: %s@%s moved to %s, which cannot serve: %s; still serving %s",
                self.context.stage, self.name, self.alias, version, exc, self._serving(),
            )  # fmt: skip
            self._refused = str(version)
            return
        before, self.version, self.model = self.version, wanted, model
        log.info(
            "stage %s: %s@%s now serves %s (was %s)",
            self.context.stage, self.name, self.alias, wanted.version,
            before.version if before else "none",
        )  # fmt: skip
        self._record(before, positions)

    def close(self) -> None:
        self._loader.shutdown(wait=True, cancel_futures=True)

    def _record(
        self, before: ModelVersion | None, positions: Mapping[tuple[str, int], int]
    ) -> None:
        assert self.version is not None, "a switch is to a version"
        by_topic: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in sorted(positions.items()):
            by_topic.setdefault(topic, {})[str(partition)] = offset
        switch = Switch(
            at_us=now_us(), pipeline=self.context.pipeline, stage=self.context.stage,
            worker=self.context.worker, name=self.name, alias=self.alias,
            from_version=before.version if before else "", to_version=self.version.version,
            positions=by_topic,
        )  # fmt: skip
        try:
            self.registry.record_switch(switch)
        except InferstreamError as exc:  # the predictions name their version regardless
            log.warning("stage %s: could not record the switch to %s: %s",
                        self.context.stage, self.version.version, exc)  # fmt: skip


class FollowingClassifyStep(ClassifyStep):
    """A ``classify`` step whose model follows a registry alias between batches."""

    def __init__(self, follower: ModelFollower, role: ModelRole, head: str) -> None:
        assert follower.model is not None, "a following step starts with a model"
        where = (follower.context.pipeline, follower.context.stage)
        super().__init__(follower.model, role, head, where)
        self.follower = follower

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:
        self.follower.begin_batch(positions)
        assert self.follower.model is not None, "a follower with a model keeps one"
        self.model = self.follower.model

    def close(self) -> None:
        self.follower.close()
        self.follower.registry.store.close()


class ShadowUntilSetStep(Step):
    """A shadow ``classify`` step whose alias is not set yet: messages pass untouched
    until it is; from then on it is a :class:`FollowingClassifyStep`."""

    name = "classify"

    def __init__(self, follower: ModelFollower, role: ModelRole, head: str) -> None:
        self.follower, self.role, self.head = follower, role, head
        self.scoring: FollowingClassifyStep | None = None

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:
        if self.scoring is not None:
            self.scoring.begin_batch(positions)
            return
        self.follower.begin_batch(positions)
        if self.follower.model is not None:
            self.scoring = FollowingClassifyStep(self.follower, self.role, self.head)

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        return self.scoring.process(batch) if self.scoring else list(batch)

    def close(self) -> None:
        if self.scoring is not None:
            self.scoring.close()
            return
        self.follower.close()
        self.follower.registry.store.close()


class CanaryClassifyStep(FollowingClassifyStep):
    """The champion acts on most inputs, a canary (another alias) on a fixed share of
    them, chosen by a stable hash of the subject: the same subject always goes to the
    same side while the share stays the same."""

    def __init__(
        self,
        follower: ModelFollower,
        canary: ModelFollower,
        *,
        share: float,
        role: ModelRole,
        head: str,
        subject: str | None,
    ) -> None:
        super().__init__(follower, role, head)
        assert canary.model is not None, "a canary starts with a model"
        self.canary = ClassifyStep(canary.model, role, head, self.where)
        self.canary_follower, self.share, self.subject = canary, share, subject

    def in_canary(self, env: Envelope) -> bool:
        key = env.attributes.get(self.subject, "") if self.subject else ""
        digest = hashlib.sha256((key or env.partition_key).encode()).digest()
        return int.from_bytes(digest[:8], "big") < self.share * 2**64

    def begin_batch(self, positions: Mapping[tuple[str, int], int]) -> None:
        super().begin_batch(positions)
        self.canary_follower.begin_batch(positions)
        assert self.canary_follower.model is not None, "a follower with a model keeps one"
        self.canary.model = self.canary_follower.model

    def process(self, batch: Sequence[Envelope]) -> list[Outcome]:
        sides = [self.in_canary(env) for env in batch]
        main = iter(super().process([e for e, c in zip(batch, sides, strict=True) if not c]))
        canary = iter(self.canary.process([e for e, c in zip(batch, sides, strict=True) if c]))
        return [next(canary) if side else next(main) for side in sides]

    def close(self) -> None:
        self.canary_follower.close()
        super().close()


def classify_step(
    context: StepContext,
    *,
    model: str = "",
    role: str = DEFAULT_ROLE,
    head: str = "",
    refresh_s: float = DEFAULT_REFRESH_S,
    canary: str = "",
    canary_share: float = 0.0,
    until_set: str = "",
) -> Step:
    """Step factory (``classify`` in a pipeline file): ``model`` is a name an installed
    application ships in its ``models/`` folder, a path to ``<name>.onnx``, or
    ``name@alias`` in the model registry, which the step follows while it runs (asked
    every ``refresh_s`` seconds); ``head`` the application's prediction head it answers
    (default: the application's first). ``canary: name@alias`` with ``canary_share``
    (0 to 1) lets that alias act instead on a fixed share of subjects (stable by a hash
    of the application's subject attribute, else the message key). A shadow step may
    say ``until_set: pass``: its alias need not be set yet (a trainer's challenger), and
    messages pass untouched until it is.

    With an application, a model whose labels its head lacks is refused at start, not
    discovered record by record in the store, and a registry version such as that is
    never switched to.
    """
    if "@" not in model:
        if canary:
            raise ConfigError(
                f"classify step in stage {context.stage!r}: a canary needs the model named "
                f"by registry alias (model: NAME@champion), not {model!r}"
            )
        return classify_files_step(context, model, role, head)
    checked = check_step(context, model, role, head)
    if not context.store_url or context.blobs is None:
        raise ConfigError(
            f"classify step in stage {context.stage!r} names {model!r} in the model "
            "registry, which lives in the pipeline's store and blob store; set store: "
            "and blobs:"
        )
    if until_set not in ("", "pass") or (until_set and (checked.role != ROLES["shadow"] or canary)):
        raise ConfigError(
            f"classify step in stage {context.stage!r}: until_set: pass is for a shadow step "
            "(role: shadow) with no canary, whose alias may not be set yet; an acting step "
            "needs its model from the start"
        )
    if canary and not 0.0 < float(canary_share) < 1.0:
        raise ConfigError(
            f"classify step in stage {context.stage!r}: canary_share must be between 0 and "
            f"1 (the share of subjects {canary!r} acts on), got {canary_share!r}"
        )
    try:
        registry = ModelRegistry(ResultsStore(context.store_url), context.blobs)
        followers = [
            ModelFollower(
                registry,
                *parse_ref(ref),
                context,
                refresh_s=float(refresh_s),
                accept=checked.refusal,
                until_set=bool(until_set),
            )
            for ref in ([model, canary] if canary else [model])
        ]
    except TransientError:
        raise  # the store is down: the worker starts again once it is back
    except InferstreamError as exc:
        raise ConfigError(f"classify step in stage {context.stage!r}: {exc}") from exc
    if canary:
        subject = context.app.subject if context.app else None
        return CanaryClassifyStep(
            followers[0], followers[1], share=float(canary_share), role=checked.role,
            head=checked.head, subject=subject,
        )  # fmt: skip
    if followers[0].model is None:
        return ShadowUntilSetStep(followers[0], checked.role, checked.head)
    return FollowingClassifyStep(followers[0], checked.role, checked.head)


__all__ = [
    "DEFAULT_REFRESH_S",
    "CanaryClassifyStep",
    "FollowingClassifyStep",
    "ModelFollower",
    "ShadowUntilSetStep",
    "classify_step",
]
