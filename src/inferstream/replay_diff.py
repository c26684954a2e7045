"""Replay with a diff: a stage's retained input through another model version, compared
with what the pipeline stored.

:func:`replay_diff` reads the stage's input topics as a group of its own (the running
stage is not touched), optionally only events in ``[since_us, until_us)``, runs the
stage's own steps with the classify step of model ``name`` held at ``version``, and
compares each output with the record the pipeline stored under the same id: which
version made that record, its label, and the ground truth where feedback has arrived.
The outputs can also go to an isolated topic (never the stage's own output). The
report (:class:`DiffReport`) says how many agree, the confusion between the old labels
and the new, every record that changed, and the accuracy of both where labels exist; it
is written as JSON and as an HTML page with a plot.
"""

from __future__ import annotations

import html
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from inferstream.bus import Bus, Record
from inferstream.classify import ClassifyStep
from inferstream.envelope import Envelope, derive_id, parse
from inferstream.errors import ConfigError, InvalidInput
from inferstream.fused import Item, run_fused
from inferstream.pipeline import PipelineSpec
from inferstream.registry import ModelRegistry
from inferstream.steps import ConditionalStep
from inferstream.store import ResultsStore
from inferstream.store.schema import feedback

POLL = 500


@dataclass(frozen=True)
class Change:
    record_id: str
    subject: str
    before: str
    after: str
    truth: str | None


@dataclass
class DiffReport:
    stage: str
    model: str
    version: str
    compared: int = 0
    agreed: int = 0
    #: Inputs with no stored record to compare with (never stored, or elsewhere).
    unmatched: int = 0
    #: Inputs the steps refused (dead letters, as in the live run).
    refused: int = 0
    before_versions: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    changed: list[Change] = field(default_factory=list)
    labelled: int = 0
    correct_before: int = 0
    correct_after: int = 0

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model,
            "version": self.version,
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement": self.agreement,
            "unmatched": self.unmatched,
            "refused": self.refused,
            "before_versions": dict(self.before_versions),
            "confusion": [
                {"before": b, "after": a, "records": n}
                for (b, a), n in sorted(self.confusion.items())
            ],
            "labelled": self.labelled,
            "accuracy_before": self.correct_before / self.labelled if self.labelled else None,
            "accuracy_after": self.correct_after / self.labelled if self.labelled else None,
            "changed": [change.__dict__ for change in self.changed],
        }

    def to_html(self) -> str:
        """A page a person reads: the figures, a bar plot of the labels before and after,
        the confusion table and the records that changed."""
        data = self.to_dict()
        before = Counter({b: n for (b, _), n in self.confusion.items()})
        after: Counter[str] = Counter()
        for (_, a), n in self.confusion.items():
            after[a] += n
        labels = sorted(set(before) | set(after))
        rows = "".join(
            f"<tr><th>{html.escape(b)}</th>"
            + "".join(f"<td>{self.confusion.get((b, a), 0)}</td>" for a in labels)
            + "</tr>"
            for b in labels
        )
        changed = "".join(
            f"<tr><td>{html.escape(c.record_id)}</td><td>{html.escape(c.subject)}</td>"
            f"<td>{html.escape(c.before)}</td><td>{html.escape(c.after)}</td>"
            f"<td>{html.escape(c.truth or '-')}</td></tr>"
            for c in self.changed
        )

        def accuracy(key: str) -> str:
            value = data[key]
            return "-" if value is None else f"{value:.3f}"

        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Replay diff: {html.escape(self.model)}
{html.escape(self.version)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1f24}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #d0d5dc;
padding:.3rem .6rem;text-align:right}}</style></head><body>
<h1>Replay of stage {html.escape(self.stage)} through {html.escape(self.model)}
{html.escape(self.version)}</h1>
<p>{self.compared} records compared, {self.agreed} agree ({self.agreement:.1%});
{self.unmatched} inputs had no stored record, {self.refused} were refused.
Stored by: {html.escape(", ".join(f"{v} ({n})" for v, n in self.before_versions.items()))}.
Where labels exist ({self.labelled}): accuracy before {accuracy("accuracy_before")},
after {accuracy("accuracy_after")}.</p>
{_bars(labels, before, after)}
<h2>Confusion: stored label (rows) against the replayed label (columns)</h2>
<table><tr><th></th>{"".join(f"<th>{html.escape(a)}</th>" for a in labels)}</tr>{rows}</table>
<h2>Records that changed ({len(self.changed)})</h2>
<table><tr><th>record</th><th>subject</th><th>before</th><th>after</th><th>truth</th></tr>
{changed}</table></body></html>
"""


def _bars(labels: list[str], before: Counter[str], after: Counter[str]) -> str:
    """An SVG bar plot: per label, how many records had it before and after."""
    top = max([*before.values(), *after.values(), 1])
    width, bar = 120 * max(len(labels), 1) + 40, 40
    parts = [f'<svg role="img" aria-label="labels before and after" width="{width}" '
             f'height="240" viewBox="0 0 {width} 240">']  # fmt: skip
    for i, label in enumerate(labels):
        x = 40 + i * 120
        for j, (counts, colour) in enumerate(((before, "#999999"), (after, "#0072b2"))):
            height = 180 * counts.get(label, 0) / top
            parts.append(
                f'<rect x="{x + j * (bar + 4)}" y="{200 - height:.1f}" width="{bar}" '
                f'height="{height:.1f}" fill="{colour}"><title>{html.escape(label)}: '
                f"{counts.get(label, 0)} {'before' if j == 0 else 'after'}</title></rect>"
            )
        parts.append(f'<text x="{x}" y="220" font-size="12">{html.escape(label)}</text>')
    parts.append('<text x="40" y="236" font-size="11">grey: stored, blue: replayed</text>')
    return "".join(parts) + "</svg>"


def replay_diff(
    spec: PipelineSpec,
    stage_name: str,
    version: str,
    *,
    bus: Bus,
    store: ResultsStore,
    registry: ModelRegistry,
    steps: list[Any],
    since_us: int | None = None,
    until_us: int | None = None,
    output_topic: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> DiffReport:
    """Run the stage's retained input through ``steps`` (the stage's own, built by the
    caller) with its classify step held at ``version``, and compare (module docstring)."""
    stage = spec.stage(stage_name)
    name, head = _pin(stage_name, steps, registry, version)
    if output_topic is not None and output_topic in stage.outputs:
        raise ConfigError(f"{output_topic!r} is the stage's own output; name another topic")
    if output_topic is not None:
        bus.create_topic(output_topic, spec.partitions(stage.inputs[0]))
    report = DiffReport(stage.name, name, version)
    group = f"replay-diff.{stage.name}.{uuid.uuid4().hex[:8]}"
    consumer = bus.consumer(group, stage.inputs, start="earliest")
    read = 0
    try:
        while True:
            messages = consumer.poll_batch(POLL, 0.5)
            if not messages:
                # Done once the group has read to the end of every input partition
                # (before its first commit, a partition holding messages shows lag).
                if not any(p.lag for t in stage.inputs for p in bus.partitions(t, group)):
                    break
                continue
            read += len(messages)
            outputs = _run(
                steps, stage.name, messages, report, since_us=since_us, until_us=until_us
            )
            _compare(store, report, outputs, name, head)
            if output_topic is not None and outputs:
                bus.produce(output_topic, [
                    Record(key=e.partition_key.encode(), value=e.SerializeToString())
                    for e in outputs
                ])  # fmt: skip
            consumer.commit(messages)
            progress(f"{read} read, {report.compared} compared, {len(report.changed)} changed")
    finally:
        consumer.close()
    return report


def _pin(stage: str, steps: list[Any], registry: ModelRegistry, version: str) -> tuple[str, str]:
    """Hold the stage's one classify step at ``version``; its model name and head."""
    unwrapped = (s.inner if isinstance(s, ConditionalStep) else s for s in steps)
    classify = [s for s in unwrapped if isinstance(s, ClassifyStep)]
    if len(classify) != 1:
        raise ConfigError(
            f"stage {stage!r} has {len(classify)} classify steps; replay with a diff "
            "needs exactly one (the model to hold at another version)"
        )
    step = classify[0]
    name = step.model.info.name
    versions = {v.version: v for v in registry.versions(name)}
    if version not in versions:
        raise ConfigError(
            f"model {name} has no version {version!r} in the registry "
            f"(registered: {', '.join(versions) or 'none'})"
        )
    step.model = registry.load(versions[version])
    return name, step.head


def _run(
    steps: list[Any],
    stage: str,
    messages: list[Any],
    report: DiffReport,
    *,
    since_us: int | None,
    until_us: int | None,
) -> list[Envelope]:
    """The stage's steps on the messages in range; outputs under the live run's ids."""
    items = []
    for message in messages:
        try:
            env = parse(message.value)
        except InvalidInput:
            report.refused += 1  # the live stage dead-lettered it too
            continue
        if _in_range(env, since_us, until_us):
            items.append(Item(message, env, env.id))
    run_fused(steps, stage, items)
    outputs: list[Envelope] = []
    for item in items:
        if item.error is not None:
            report.refused += 1
            continue
        for index, env in enumerate(item.outputs):
            env.id = derive_id(item.input_id, stage, index)
            env.parent_id = item.input_id
            outputs.append(env)
    return outputs


def _in_range(env: Envelope, since_us: int | None, until_us: int | None) -> bool:
    return (since_us is None or env.created_at_us >= since_us) and (
        until_us is None or env.created_at_us < until_us
    )


def _compare(
    store: ResultsStore, report: DiffReport, outputs: list[Envelope], name: str, head: str
) -> None:
    for env in outputs:
        new = next((p for p in env.predictions if p.model_name == name), None)
        stored = store.get_result(env.tenant, env.id)
        if new is None or stored is None:
            report.unmatched += 1
            continue
        old = next(
            (p for p in store.list_predictions(env.tenant, env.id)
             if p.model_name == name and p.role == "champion" and (not head or p.head == head)),
            None,
        )  # fmt: skip
        if old is None:
            report.unmatched += 1
            continue
        report.compared += 1
        report.before_versions[old.model_version] += 1
        report.confusion[(old.label, new.label)] += 1
        truth = _truth(store, stored.tenant, stored.app, stored.subject, old.head)
        if truth is not None:
            report.labelled += 1
            report.correct_before += old.label == truth
            report.correct_after += new.label == truth
        if old.label == new.label:
            report.agreed += 1
        else:
            report.changed.append(Change(env.id, stored.subject or "", old.label, new.label, truth))


def _truth(
    store: ResultsStore, tenant: str, app: str, subject: str | None, head: str
) -> str | None:
    if not subject:
        return None
    f = feedback.c
    stmt = select(f.label).where(
        f.tenant == tenant, f.app == app, f.subject == subject, f.head == head
    )
    with store.tenant_transaction(tenant, "read feedback in") as conn:
        label = conn.execute(stmt).scalar()
    return None if label is None else str(label)


__all__ = ["Change", "DiffReport", "replay_diff"]
