"""What in a valid pipeline is likely a mistake: it runs as it is, ``validate`` warns."""

from __future__ import annotations

from inferstream.pipeline.spec import PipelineSpec, file_prefix, line_prefix


def wiring_warnings(spec: PipelineSpec) -> list[str]:
    """What in a valid pipeline is likely a mistake (it runs as it is), one line each."""
    warnings = unread_dead_letters(spec) + unread_late_events(spec)
    return [file_prefix(spec) + warning for warning in warnings]


def unread_dead_letters(spec: PipelineSpec) -> list[str]:
    """A warning for each stage whose dead-letter topic no stage of the pipeline reads.

    Such dead letters pile up on the bus where nobody looks. What a stage reads from a
    dead-letter or late-event topic is left out: a reader of its ``.dlq.dlq`` or
    ``.late.dlq`` would need one of its own, without end.
    """
    read = {topic for stage in spec.stages for topic in stage.inputs}
    warnings = []
    for stage in spec.stages:
        for topic in stage.inputs:
            dlq = f"{topic}.dlq"
            if topic.endswith((".dlq", ".late")) or dlq in read:
                continue
            warnings.append(
                f"{line_prefix(stage)}stage {stage.name!r} dead-letters failing messages to "
                f"{dlq!r}, which no stage reads; add a stage reading it (input: {dlq}), e.g. "
                "with steps: [store_results] to keep them and their errors in the results store"
            )
    return warnings


def unread_late_events(spec: PipelineSpec) -> list[str]:
    """A warning for each join or window stage whose late events no stage reads."""
    read = {topic for stage in spec.stages for topic in stage.inputs}
    return [
        f"{line_prefix(stage)}stage {stage.name!r} sends events that come too late to "
        f"{topic}.late, which no stage reads; read it (e.g. steps: [store_results]) to "
        "keep them, or raise lateness_ms if they should count"
        for stage in spec.stages
        if stage.stateful
        for topic in stage.inputs
        if f"{topic}.late" not in read
    ]
