"""An application that runs no model (no heads): its records are stored without a
prediction, its dashboard shows only the panels it has data for, and feedback has
nothing to correct. Also: naming one application loads only that one."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from inferstream.api.live_aggregate import View, describe_app
from inferstream.application import PANELS, AppSpec, Attribute, Head, Label, app_named
from inferstream.envelope import ModelRole, Prediction, new_envelope
from inferstream.errors import ConfigError, InvalidInput
from inferstream.store import ResultFilter, ResultsStore
from inferstream.store.step import StoreStep, check_record, record_rows

RESIZER = AppSpec(
    name="resizer",
    title="Resizer",
    package=__name__,
    subject="file",
    group="job",
    attributes=(Attribute("file"), Attribute("job"), Attribute("width", "int")),
)


def output(**attributes: str) -> Any:
    return new_envelope(
        b"x", "image/png", tenant="studio", attributes={"file": "a.png", "job": "j1", **attributes}
    )


def test_its_records_carry_no_prediction() -> None:
    record, answers = record_rows(output(width="200"), stored_at_us=5, app=RESIZER)
    assert answers == []
    assert (record.head, record.label, record.confidence, record.model_name) == ("", "", 0.0, "")
    assert record.subject == "a.png" and record.group == "j1"
    assert record.attributes == {"file": "a.png", "job": "j1", "width": 200}


def test_a_prediction_for_it_is_refused() -> None:
    env = output()
    env.predictions.append(
        Prediction(model_name="m", label="x", role=ModelRole.MODEL_ROLE_CHAMPION)
    )
    with pytest.raises(InvalidInput, match="it has none"):
        check_record(env, RESIZER)


def test_the_sink_stores_its_records(tmp_path: Path) -> None:
    store = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}")
    try:
        store.register_app(RESIZER)
        outcomes = StoreStep(store, app=RESIZER).process([output(width="10"), output()])
        assert all(not isinstance(o, BaseException) for o in outcomes)
        rows = store.list_results("studio", ResultFilter(app="resizer", group="j1")).items
        assert len(rows) == 2 and {row.label for row in rows} == {""}
    finally:
        store.close()


def test_its_dashboard_shows_only_what_it_has_data_for() -> None:
    assert RESIZER.first_head is None
    assert RESIZER.dashboard_panels == ("throughput", "stages", "newest")
    assert View.of(RESIZER) == View(())
    described = describe_app(RESIZER)
    assert described["labels"] == [] and described["head"] == "" and described["ratios"] == []
    with pytest.raises(ConfigError, match=r"predicts nothing .* panel.*accuracy, mix"):
        AppSpec(
            name="x", title="X", package=__name__, subject="f", attributes=(Attribute("f"),),
            panels=("mix", "newest", "accuracy"),
        )  # fmt: skip
    with_head = AppSpec(
        name="y", title="Y", package=__name__, subject="f", attributes=(Attribute("f"),),
        heads=(Head("h", (Label("a", "#000000"),)),),
    )  # fmt: skip
    assert with_head.dashboard_panels == PANELS


def test_naming_an_application_loads_only_that_one(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint("broken", "no_such_module_anywhere:APP", "inferstream.apps")
    real = metadata.entry_points

    def entry_points(**params: Any) -> Any:
        found = list(real(**params))
        if params.get("group") == "inferstream.apps" and params.get("name") in (None, "broken"):
            found.append(broken)
        return metadata.EntryPoints(found)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    assert app_named("eggs").name == "eggs"
    with pytest.raises(ConfigError, match="'broken' is installed but cannot be loaded"):
        app_named("broken")
