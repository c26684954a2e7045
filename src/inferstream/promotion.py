"""Promotion on late labels: the challenger against the champion on the same records.

A pipeline scores each input with the champion (acting) and the challenger (a shadow
``classify`` step, ``role: shadow``); ground truth arrives later as feedback (an
application's ground truth, often days after the input). :func:`compare` pairs the two versions'
predictions **record by record** where a label exists: accuracy of each with a 95 %
Wilson interval, accuracy per true class, and McNemar's exact test on the records
where exactly one of them was right (a paired test: both saw the same inputs, so the
difference is not noise between two samples). :meth:`Policy.decide` turns that into
``promote`` (enough labels, the challenger better by more than the margin, and the
difference significant), ``wait`` (too few labels yet) or ``keep``.
:func:`apply_decision` moves the alias on ``promote`` and writes every decision, with
its figures, to the registry's audit log.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import and_, select

from inferstream.pipeline import PromotionSpec
from inferstream.registry import ModelRegistry, RegistryError
from inferstream.store import ResultsStore
from inferstream.store.schema import feedback, predictions, records

Decision = Literal["promote", "keep", "wait"]


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    k = min(only_first, only_second)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2 * tail))


def calibration_error(scored: Sequence[tuple[float, bool]], bins: int = 10) -> float | None:
    """Expected calibration error: over ``bins`` equal bins of confidence, the mean
    gap between confidence and accuracy, weighted by the records in each bin."""
    if not scored:
        return None
    sums: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(bins)]  # n, confidence, right
    for confidence, right in scored:
        b = sums[min(int(confidence * bins), bins - 1)]
        b[0], b[1], b[2] = b[0] + 1, b[1] + confidence, b[2] + right
    return sum(abs(c - r) for n, c, r in sums if n) / len(scored)


@dataclass(frozen=True)
class Comparison:
    """Two versions of one model on the records both scored and feedback labelled."""

    name: str
    head: str
    champion: str
    challenger: str
    labelled: int
    champion_correct: int
    challenger_correct: int
    only_champion: int  # records the champion got right and the challenger wrong
    only_challenger: int
    #: true label -> (records, champion right, challenger right)
    per_class: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    #: Expected calibration error of each on these records (how far its confidence is
    #: from how often it is right; 0 is perfectly calibrated), None without records.
    champion_calibration: float | None = None
    challenger_calibration: float | None = None

    @property
    def champion_accuracy(self) -> float:
        return self.champion_correct / self.labelled if self.labelled else 0.0

    @property
    def challenger_accuracy(self) -> float:
        return self.challenger_correct / self.labelled if self.labelled else 0.0

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_champion, self.only_challenger)

    def figures(self) -> str:
        """One line for the audit log and the terminal."""
        lo_a, hi_a = wilson(self.champion_correct, self.labelled)
        lo_b, hi_b = wilson(self.challenger_correct, self.labelled)
        return (
            f"{self.labelled} labelled records: champion {self.champion} "
            f"{self.champion_accuracy:.3f} [{lo_a:.3f}, {hi_a:.3f}], challenger "
            f"{self.challenger} {self.challenger_accuracy:.3f} [{lo_b:.3f}, {hi_b:.3f}]; "
            f"only the champion right {self.only_champion}, only the challenger "
            f"{self.only_challenger}, McNemar p={self.p_value:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            champion_accuracy=self.champion_accuracy,
            champion_interval=wilson(self.champion_correct, self.labelled),
            challenger_accuracy=self.challenger_accuracy,
            challenger_interval=wilson(self.challenger_correct, self.labelled),
            p_value=self.p_value,
        )
        return data


@dataclass(frozen=True)
class Policy:
    """When a challenger replaces the champion."""

    min_labels: int = 200
    alpha: float = 0.05  # significance of McNemar's test
    margin: float = 0.0  # how much better, in accuracy, at least

    def decide(self, comparison: Comparison) -> tuple[Decision, str]:
        c = comparison
        if c.labelled < self.min_labels:
            return "wait", f"{c.labelled} of the {self.min_labels} labelled records needed"
        gain = c.challenger_accuracy - c.champion_accuracy
        if gain <= self.margin:
            return "keep", f"the challenger is not better by more than {self.margin:.3f}"
        if c.p_value >= self.alpha:
            return "keep", f"the difference is not significant (p >= {self.alpha})"
        return "promote", f"better by {gain:.3f}, significant (p < {self.alpha})"


def compare(
    store: ResultsStore,
    tenants: Sequence[str],
    *,
    app: str,
    head: str,
    name: str,
    champion: str,
    challenger: str,
) -> Comparison:
    """Pair ``champion`` and ``challenger`` (versions of ``name``) record by record over
    the labelled records of ``tenants``."""
    p, r, f = predictions.c, records.c, feedback.c
    seen: dict[tuple[str, str], dict[str, tuple[str, float]]] = defaultdict(dict)
    truth: dict[tuple[str, str], str] = {}
    for tenant in tenants:
        stmt = (
            select(p.record_id, p.model_version, p.label, p.confidence, f.label.label("truth"))
            .join(records, and_(r.tenant == p.tenant, r.id == p.record_id))
            .join(feedback, and_(f.tenant == r.tenant, f.app == r.app, f.subject == r.subject))
            .where(p.tenant == tenant, r.app == app, p.head == head, f.head == head)
            .where(p.model_name == name)
            .where(p.model_version.in_((champion, challenger)))
        )
        with store.tenant_transaction(tenant, "compare model versions in") as conn:
            for record_id, version, label, confidence, true_label in conn.execute(stmt):
                seen[(tenant, record_id)][version] = (label, float(confidence))
                truth[(tenant, record_id)] = true_label
    labelled = champ = chall = only_champ = only_chall = 0
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    scored: tuple[list[tuple[float, bool]], list[tuple[float, bool]]] = ([], [])
    for key, labels in seen.items():
        if champion not in labels or challenger not in labels:
            continue  # only one of them scored it: not a pair
        (label_a, conf_a), (label_b, conf_b) = labels[champion], labels[challenger]
        right_a, right_b = label_a == truth[key], label_b == truth[key]
        scored[0].append((conf_a, right_a))
        scored[1].append((conf_b, right_b))
        labelled += 1
        champ += right_a
        chall += right_b
        only_champ += right_a and not right_b
        only_chall += right_b and not right_a
        counts = per_class[truth[key]]
        counts[0], counts[1], counts[2] = counts[0] + 1, counts[1] + right_a, counts[2] + right_b
    return Comparison(
        name, head, champion, challenger, labelled, champ, chall, only_champ, only_chall,
        {label: (n, a, b) for label, (n, a, b) in sorted(per_class.items())},
        calibration_error(scored[0]), calibration_error(scored[1]),
    )  # fmt: skip


def apply_decision(
    registry: ModelRegistry,
    comparison: Comparison,
    policy: Policy,
    *,
    actor: str,
    alias: str = "champion",
) -> tuple[Decision, str]:
    """Decide; on ``promote`` point ``alias`` at the challenger. Every decision goes to
    the audit log with its figures and the policy."""
    decision, why = policy.decide(comparison)
    rule = f"policy: min {policy.min_labels} labels, alpha {policy.alpha}, margin {policy.margin}"
    reason = f"{decision}: {why}; {comparison.figures()}; {rule}"
    if decision == "promote":
        registry.set_alias(
            comparison.name, alias, comparison.challenger, actor=actor, reason=reason,
            action="promote",
        )  # fmt: skip
    else:
        registry.record_decision(
            comparison.name, alias, comparison.champion, action=decision, actor=actor,
            reason=reason,
        )  # fmt: skip
    return decision, reason


#: Who the audit log names for decisions the pipeline's chores take.
POLICY_ACTOR = "inferstream (promotion policy)"


def run_policy(
    registry: ModelRegistry, policy_spec: PromotionSpec, *, app: str, head: str,
    tenants: Sequence[str],
) -> str:  # fmt: skip
    """One round of a pipeline's promotion policy (``promotion:`` in its file): demote a
    champion below its floor, else promote, keep or wait. Acting decisions are always
    audited; ``keep`` and ``wait`` only when their figures changed since the last one,
    so a policy run every minute does not repeat itself in the log. One line back."""
    name = policy_spec.model
    try:
        champion = registry.resolve(name, policy_spec.champion).version
    except RegistryError as exc:
        if exc.status != 404:
            raise
        return f"{name}: no @{policy_spec.champion} yet (its first use sets it)"
    policy = Policy(policy_spec.min_labels, policy_spec.alpha, policy_spec.margin)
    if policy_spec.demote_below is not None:
        alone = compare(registry.store, tenants, app=app, head=head, name=name,
                        champion=champion, challenger=champion)  # fmt: skip
        low, high = wilson(alone.champion_correct, alone.labelled)
        if alone.labelled >= policy.min_labels and high < policy_spec.demote_below:
            reason = (
                f"demote: accuracy {alone.champion_accuracy:.3f} [{low:.3f}, {high:.3f}] on "
                f"{alone.labelled} labelled records is below the floor "
                f"{policy_spec.demote_below}"
            )
            moved = registry.rollback(name, policy_spec.champion, actor=POLICY_ACTOR,
                                      reason=reason)  # fmt: skip
            return f"{name}@{policy_spec.champion}: demoted {champion} -> {moved.version}"
    try:
        challenger = registry.resolve(name, policy_spec.challenger).version
    except RegistryError:
        return f"{name}: no @{policy_spec.challenger} to compare"
    if challenger == champion:
        return f"{name}: @{policy_spec.challenger} is the champion ({champion})"
    comparison = compare(registry.store, tenants, app=app, head=head, name=name,
                         champion=champion, challenger=challenger)  # fmt: skip
    decision, why = policy.decide(comparison)
    said = f"{decision}: {why}; {comparison.figures()}"
    if decision == "promote" or _changed(registry, name, policy_spec.champion, said):
        apply_decision(registry, comparison, policy, actor=POLICY_ACTOR,
                       alias=policy_spec.champion)  # fmt: skip
    return f"{name}: {decision} ({why})"


def _changed(registry: ModelRegistry, name: str, alias: str, said: str) -> bool:
    """Whether a keep or wait would say something (``said``: decision, why and figures)
    the last such entry did not."""
    for entry in registry.history(name, limit=20):
        if entry.alias == alias and entry.action in ("keep", "wait"):
            return not entry.reason.startswith(said)
    return True


__all__ = [
    "POLICY_ACTOR",
    "Comparison",
    "Decision",
    "Policy",
    "apply_decision",
    "calibration_error",
    "compare",
    "mcnemar_exact",
    "run_policy",
    "wilson",
]
