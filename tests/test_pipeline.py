"""Pipeline files: parsing, validation errors with lines, and the CLI around them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inferstream.apps.eggs import APP
from inferstream.cli import main
from inferstream.errors import ConfigError
from inferstream.pipeline import load_pipeline

GOOD = """
name: demo
bus: sqlite:///{tmp}/bus.db
store: sqlite:///{tmp}/results.db
claim_check_kb: 64
topics:
  raw: {{partitions: 3}}
stages:
  - name: first
    input: raw
    output: mid
    steps: [passthrough, {{step: tag, color: blue}}]
    batch: {{max_size: 8, max_wait_ms: 2}}
    replicas: 2
  - name: second
    input: mid
    steps: [passthrough]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.format(tmp=tmp_path))
    return path


def test_a_good_file_loads_with_every_setting(tmp_path: Path) -> None:
    spec = load_pipeline(write(tmp_path, GOOD))
    first = spec.stage("first")
    assert (first.input, first.output, first.replicas) == ("raw", "mid", 2)
    assert (first.batch.max_size, first.batch.max_wait_ms) == (8, 2.0)
    assert [s.ref for s in first.steps] == ["passthrough", "tag"]
    assert first.steps[1].params == {"color": "blue"}
    assert spec.partitions("raw") == 3 and spec.partitions("mid") == 3
    assert first.group("demo") == "demo.first"
    assert spec.claim_check_bytes == 64 * 1024


@pytest.mark.parametrize(
    ("bus", "blobs", "expected"),
    [
        ("sqlite:///{tmp}/bus.db", "file://{tmp}/blobs", 16 * 1024),
        ("kafka://127.0.0.1:9092", "file://{tmp}/blobs", 256 * 1024),
        ("sqlite:///{tmp}/bus.db", "s3://bucket/blobs", 256 * 1024),
    ],
)
def test_the_claim_check_size_defaults_by_the_bus_and_blobs_in_use(
    tmp_path: Path, bus: str, blobs: str, expected: int
) -> None:
    text = GOOD.replace("claim_check_kb: 64\n", f"blobs: {blobs}\n").replace(
        "bus: sqlite:///{tmp}/bus.db", f"bus: {bus}"
    )
    spec = load_pipeline(write(tmp_path, text))
    assert spec.claim_check_kb is None
    assert spec.claim_check_bytes == expected
    # Worked out from the URLs in use: a command-line override changes it too.
    on_kafka = spec.with_urls(bus="kafka://127.0.0.1:9092")
    assert on_kafka.claim_check_bytes == 256 * 1024
    # A size the file sets holds whatever the URLs.
    assert (
        load_pipeline(write(tmp_path, GOOD))
        .with_urls(bus="kafka://127.0.0.1:9092")
        .claim_check_bytes
        == 64 * 1024
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("steps: [passthrough]", "steps: [pasthrough]"), "unknown step 'pasthrough'"),
        (("input: mid", "input: midd"), "reads topic 'midd' that no stage writes"),
        (("replicas: 2", "replicas: 0"), "replicas must be a whole number of at least 1"),
        (("replicas: 2", "replicas: 2\n    nice: 20"), "nice must be a whole number from 0"),
        (("replicas: 2", "replicas: 2\n    nice: -5"), "nice must be a whole number from 0"),
        (
            ("max_size: 8", "max_sise: 8"),
            "unknown batch setting 'max_sise' (did you mean 'max_size'?)",
        ),
        (("input: raw", "input: mid"), "topics form a cycle"),
        (("name: second", "name: first"), "stage 'first' is defined twice"),
        (("steps: [passthrough]", "steps: [no.such.module:thing]"), "cannot import module"),
    ],
)
def test_validation_names_the_problem_and_the_line(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    text = (
        GOOD.replace(old, new, 1)
        if old != "steps: [passthrough]"
        else _replace_last(GOOD, old, new)
    )
    with pytest.raises(ConfigError) as caught:
        load_pipeline(write(tmp_path, text))
    assert message in str(caught.value)
    assert "pipeline.yaml" in str(caught.value)


def _replace_last(text: str, old: str, new: str) -> str:
    head, _, tail = text.rpartition(old)
    return head + new + tail


def test_unknown_step_error_gives_the_line(tmp_path: Path) -> None:
    text = _replace_last(GOOD, "steps: [passthrough]", "steps: [pasthrough]")
    with pytest.raises(ConfigError, match=r"pipeline.yaml: line 15: stage 'second'"):
        load_pipeline(write(tmp_path, text))


def test_environment_variables_switch_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERSTREAM_BUS", "kafka://127.0.0.1:9092")
    spec = load_pipeline(APP.pipeline_path())
    assert spec.bus == "kafka://127.0.0.1:9092"
    assert spec.store.startswith("sqlite:///")


def test_cli_validate_prints_stages_and_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    assert "first: raw -> [passthrough -> tag] -> mid  x2" in out
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read pipeline file" in capsys.readouterr().err


def test_every_command_has_help() -> None:
    for command in ("validate", "up", "worker", "topics", "replay", "example"):
        done = subprocess.run(
            [sys.executable, "-m", "inferstream", command, "--help"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "usage: inferstream" in done.stdout


def test_topics_and_replay_commands_on_the_embedded_bus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferstream.bus import Record, open_bus
    from inferstream.runner import ensure_topics

    path = write(tmp_path, GOOD)
    spec = load_pipeline(path)
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    bus.produce("raw", [Record(key=str(i).encode(), value=b"v") for i in range(30)])
    consumer = bus.consumer("demo.first", ["raw"])
    got = []
    while len(got) < 30:
        got += consumer.poll_batch(100, 0.2)
    consumer.commit(got)
    consumer.close()
    assert main(["topics", str(path)]) == 0
    assert "demo.first=0" in capsys.readouterr().out
    assert main(["replay", str(path), "--stage", "first", "--to", "earliest"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("asked the workers of group demo.first to pause")
    assert said[-1] == "done: the workers of group demo.first resume from earliest"
    assert main(["topics", str(path)]) == 0
    [raw_line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("raw ")]
    assert "demo.first=30" in raw_line
    assert main(["replay", str(path), "--stage", "first", "--to", "yesterday"]) == 2
    assert "use earliest, latest, an offset" in capsys.readouterr().err
    bus.close()


def test_topic_retention_is_parsed_and_applied(tmp_path: Path) -> None:
    from inferstream.bus import Record, RetentionPolicy, open_bus
    from inferstream.runner import apply_retention, ensure_topics

    text = GOOD.replace(
        "raw: {{partitions: 3}}", "raw: {{partitions: 1, max_messages: 10, retention_hours: 2}}"
    )
    spec = load_pipeline(write(tmp_path, text))
    assert spec.retention == {"raw": RetentionPolicy(max_age_s=7200.0, max_messages=10)}
    bus = open_bus(spec.bus)
    ensure_topics(bus, spec)
    bus.produce("raw", [Record(key=None, value=str(i).encode()) for i in range(25)])
    assert apply_retention(spec) == 15
    [part] = bus.partitions("raw")
    assert (part.low, part.high) == (15, 25)
    bus.close()
    with pytest.raises(ConfigError, match="retention_hours must be a number > 0"):
        load_pipeline(
            write(tmp_path, GOOD.replace("raw: {{partitions: 3}}", "raw: {{retention_hours: -1}}"))
        )


def test_environment_references_are_checked_and_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = GOOD.replace("replicas: 2", "replicas: ${{REPLICAS:-2}}").replace(
        "raw: {{partitions: 3}}", "raw: 5"
    )
    monkeypatch.setenv("REPLICAS", "")  # empty counts as unset, like the shell's :-
    spec = load_pipeline(write(tmp_path, text))
    assert spec.stage("first").replicas == 2 and spec.topics == {"raw": 5}
    monkeypatch.setenv("REPLICAS", "4")
    assert load_pipeline(write(tmp_path, text)).stage("first").replicas == 4
    monkeypatch.delenv("INFERSTREAM_TEST_UNSET_BUS", raising=False)
    unset = GOOD.replace("bus: sqlite:///{tmp}/bus.db", "bus: ${{INFERSTREAM_TEST_UNSET_BUS}}")
    with pytest.raises(ConfigError, match=r"\$\{INFERSTREAM_TEST_UNSET_BUS\} is not set"):
        load_pipeline(write(tmp_path, unset))


def test_nested_step_parameters_carry_no_loader_markers(tmp_path: Path) -> None:
    text = GOOD.replace("{{step: tag, color: blue}}", "{{step: tag, color: blue, extra: {{a: 1}}}}")
    spec = load_pipeline(write(tmp_path, text))
    assert spec.stage("first").steps[1].params == {"color": "blue", "extra": {"a": 1}}


QUOTED = """
name: demo
topics:
  raw: 1
stages:
  - name: first
    input: raw
    replicas: ${REPLICAS:-2}
    steps:
      - step: tag
        version: "${V:-1.0}"
        build: '${V:-7}'
        level: ${V:-3}
"""


def test_a_quoted_environment_reference_stays_a_string(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("V", raising=False)
    monkeypatch.delenv("REPLICAS", raising=False)
    path = tmp_path / "pipeline.yaml"
    path.write_text(QUOTED)
    first = load_pipeline(path).stage("first")
    assert first.replicas == 2
    assert first.steps[0].params == {"version": "1.0", "build": "7", "level": 3}
    monkeypatch.setenv("V", "2.5")
    params = load_pipeline(path).stage("first").steps[0].params
    assert params == {"version": "2.5", "build": "2.5", "level": 2.5}


def test_validate_warns_of_a_dead_letter_topic_no_stage_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inferstream.pipeline import wiring_warnings

    text = GOOD + "  - name: letters\n    input: raw.dlq\n    steps: [passthrough]\n"
    path = write(tmp_path, text)
    [warning] = wiring_warnings(load_pipeline(path))
    assert "stage 'second'" in warning and "'mid.dlq', which no stage reads" in warning
    assert "add a stage reading it" in warning
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().err.strip() == f"inferstream validate: warning: {warning}"
