"""The previous release, for the rolling-upgrade tests: which commit it is, and its
package extracted from git and run beside this checkout's.

``PREVIOUS_RELEASE`` is the one place that names it. At each release, move it to the
commit of the release before the new one (``docs/deploy.md``, "Rolling upgrades").
The old code runs in subprocesses with ``PYTHONPATH=<extracted>/src``, ahead of this
checkout in ``sys.path``, on the same virtualenv's dependencies; its applications load
through the same entry points (``inferstream.apps.eggs:APP`` resolves on sys.path).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pb2 import FieldDescriptorProto, FileDescriptorProto
from google.protobuf.message import Message

#: The last commit that landed with CI green before the rolling-upgrade tests (no
#: release tags yet): its workers must run beside this checkout's.
PREVIOUS_RELEASE = "6deca1683cd8e22ecf5f3c6c59d4208160d8cc66"

REPO = Path(__file__).resolve().parents[1]
#: Runs under either release: writes and reads through its own code (see its docstring).
PROBE = Path(__file__).with_name("upgrade_probe.py")


def extract_previous_release(folder: Path) -> Path:
    """The previous release's ``src`` folder, extracted into ``folder`` from git.

    Fails (never skips) when this clone lacks the commit: the tests need the history.
    """
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
        capture_output=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        pytest.fail(
            f"the previous release {PREVIOUS_RELEASE} is not in this clone of {REPO}; the "
            "rolling-upgrade tests run its code, so fetch the full history (git fetch "
            "--unshallow, or a CI checkout with fetch-depth: 0)"
        )
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS_RELEASE, "src/inferstream"],
        capture_output=True, check=True,
    )  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    src = folder / "src"
    imported = run_python(src, ["-c", "import inferstream; print(inferstream.__file__)"])
    assert Path(imported.strip()).is_relative_to(src), f"the old release did not load: {imported}"
    return src


def release_env(src: Path | None) -> dict[str, str]:
    """The environment of a process running the release at ``src`` (None: this checkout,
    which the virtualenv's editable install puts on sys.path after ``PYTHONPATH``)."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def run_python(src: Path | None, args: Sequence[str], stdin: str = "") -> str:
    """``python ARGS`` under the release at ``src``; its standard output (fails the test
    with the process's errors when it exits non-zero)."""
    done = subprocess.run(
        [sys.executable, *args], env=release_env(src), input=stdin, cwd=REPO,
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        who = "the previous release" if src is not None else "this checkout"
        pytest.fail(f"python {' '.join(args)} under {who} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def probe(src: Path | None, *args: str, stdin: str = "") -> Any:
    """What ``upgrade_probe.py ARGS`` printed under the release at ``src`` (None: this
    checkout), parsed."""
    [answer] = probes(src, list(args), stdin=stdin)
    return answer


def probes(src: Path | None, *commands: list[str], stdin: str = "") -> list[Any]:
    """Several probe commands in one process of the release at ``src``; their answers."""
    args = [arg for i, command in enumerate(commands) for arg in ["then"] * bool(i) + command]
    out = run_python(src, [str(PROBE), *args], stdin=stdin)
    return [json.loads(line) for line in out.splitlines()]


def worker(src: Path | None, pipeline: Path, stage: str, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:  # fmt: skip
    """``inferstream worker PIPELINE --stage STAGE`` of the release at ``src``."""
    return subprocess.Popen(
        [sys.executable, "-m", "inferstream", "worker", str(pipeline), "--stage", stage],
        env={**release_env(src), **(env or {})},
        cwd=REPO,
    )


def assert_same_reads(old: dict[str, Any], new: dict[str, Any]) -> None:
    """Two releases' reads of one tenant (``upgrade_probe read-store``) agree: the same
    records, predictions, feedback and dead letters, field by field on the fields both
    releases' rows have (a release may add one)."""
    assert old["count"] == new["count"] == len(old["records"]) == len(new["records"])
    assert old["records"].keys() == new["records"].keys()
    for ident, old_record in old["records"].items():
        new_record = new["records"][ident]
        for part in ("row", "feedback"):
            assert _common(old_record[part], new_record[part]), (ident, part)
        assert len(old_record["predictions"]) == len(new_record["predictions"]), ident
        for a, b in zip(old_record["predictions"], new_record["predictions"], strict=True):
            assert _common(a, b), ident
    assert old["dead_letters"].keys() == new["dead_letters"].keys()
    for ident, letter in old["dead_letters"].items():
        assert _common(letter, new["dead_letters"][ident]), ident


def _common(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal on the keys both have, and those are most of either's."""
    if a is None or b is None:
        return a is b
    shared = a.keys() & b.keys()
    assert len(shared) >= 0.8 * max(len(a), len(b)), (sorted(a), sorted(b))
    return {k: a[k] for k in shared} == {k: b[k] for k in shared}


# -- the envelope's schema in each release ---------------------------------------------

#: A field of the envelope's schema: (message full name, field number).
FieldKey = tuple[str, int]


def schema_fields(file_descriptor: bytes) -> dict[FieldKey, FieldDescriptorProto]:
    """Every field of every message (nested ones too) of a serialized ``.proto`` file."""
    proto = FileDescriptorProto.FromString(file_descriptor)
    found: dict[FieldKey, FieldDescriptorProto] = {}
    pending = [(f"{proto.package}.{m.name}", m) for m in proto.message_type]
    while pending:
        name, message = pending.pop()
        if message.options.map_entry:
            continue  # a map's key and value: the map field itself is its parent's
        found.update({(name, field.number): field for field in message.field})
        pending += [(f"{name}.{nested.name}", nested) for nested in message.nested_type]
    return found


def enum_values(file_descriptor: bytes) -> dict[FieldKey, str]:
    """Every value of every enum of a serialized ``.proto`` file: (enum, number) -> name."""
    proto = FileDescriptorProto.FromString(file_descriptor)
    enums = [(f"{proto.package}.{e.name}", e) for e in proto.enum_type]
    pending = [(f"{proto.package}.{m.name}", m) for m in proto.message_type]
    while pending:
        name, message = pending.pop()
        enums += [(f"{name}.{e.name}", e) for e in message.enum_type]
        pending += [(f"{name}.{nested.name}", nested) for nested in message.nested_type]
    return {(name, value.number): value.name for name, enum in enums for value in enum.value}


def reserved_numbers(file_descriptor: bytes) -> dict[str, set[int]]:
    """The numbers each top-level message reserves (fields removed the proper way)."""
    proto = FileDescriptorProto.FromString(file_descriptor)
    return {
        f"{proto.package}.{m.name}": {n for r in m.reserved_range for n in range(r.start, r.end)}
        for m in proto.message_type
    }


def known_only(message: Message, known: set[FieldKey]) -> Message:
    """A copy of ``message`` without the fields outside ``known``, at every depth."""
    copy = type(message)()
    copy.CopyFrom(message)
    for holder, field in list(_set_fields(copy)):
        if (holder.DESCRIPTOR.full_name, field.number) not in known:
            holder.ClearField(field.name)
    return copy


def fields_set(messages: Iterable[Message]) -> set[FieldKey]:
    """The fields set anywhere in ``messages``, nested messages and map values included."""
    return {
        (holder.DESCRIPTOR.full_name, field.number)
        for message in messages
        for holder, field in _set_fields(message)
    }


def _set_fields(message: Message) -> Iterator[tuple[Message, FieldDescriptor]]:
    """Each set field with the message holding it, outer fields before inner ones."""
    for field, value in message.ListFields():
        yield message, field
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = value.values() if field.message_type.fields_by_name[
                "value"].message_type is not None else []  # fmt: skip
        else:
            values = value if field.is_repeated else [value]
        for item in values:
            yield from _set_fields(item)
