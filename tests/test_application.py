"""Applications declare themselves in one AppSpec; the core finds them by entry point
or registration, and takes steps, models and pipeline files from them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from inferstream.application import (
    AppSpec,
    Attribute,
    DashboardView,
    Head,
    Label,
    Ratio,
    app_named,
    find_model,
    installed_apps,
    register_app,
)
from inferstream.errors import ConfigError
from inferstream.pipeline import load_pipeline, validate
from inferstream.steps import resolve_factory

SEX = Head("sex", (Label("female", "#e69f00"), Label("male", "#0072b2")))


def test_the_bundled_eggs_app_is_found_through_its_entry_point() -> None:
    eggs = installed_apps()["eggs"]
    assert eggs.subject == "egg_id" and eggs.group == "tray"
    assert eggs.head("sex").label_names == ("female", "male", "not_developing")
    assert eggs.pipeline_path().name == "eggs.yaml" and eggs.pipeline_path().is_file()
    assert find_model("egg_sexing") == eggs.models_dir
    assert eggs.client_attributes == ("tray", "scanner")


def test_a_declaration_that_contradicts_itself_is_refused() -> None:
    with pytest.raises(ConfigError, match="'egg' is named as subject"):
        AppSpec(name="x", title="X", package=__name__, subject="egg", heads=(SEX,))
    with pytest.raises(ConfigError, match="does not have"):
        AppSpec(
            name="x", title="X", package=__name__, subject="egg", heads=(SEX,),
            attributes=(Attribute("egg"),), ratios=(Ratio("r", "sex", "rooster"),),
        )  # fmt: skip


def test_an_unknown_panel_is_refused() -> None:
    with pytest.raises(ConfigError, match="no dashboard panel radar"):
        AppSpec(
            name="x", title="X", package=__name__, subject="egg", heads=(SEX,),
            attributes=(Attribute("egg"),), panels=("mix", "radar"),
        )  # fmt: skip


def _with_views(*views: DashboardView, routes: str | None = "m:make_routes") -> AppSpec:
    return AppSpec(
        name="x", title="X", package=__name__, subject="egg", heads=(SEX,),
        attributes=(Attribute("egg"),), routes=routes, views=views,
    )  # fmt: skip


def test_a_view_declaration_is_checked() -> None:
    trend = DashboardView("Trend", "lines", "/trend")
    assert _with_views(trend, DashboardView("Now", "table", "/now?flow=prod")).views[0] == trend
    with pytest.raises(ConfigError, match="declares views but no routes"):
        _with_views(trend, routes=None)
    refused = [
        (
            DashboardView("Pie", "pie", "/p"),  # type: ignore[arg-type]
            "no view kind 'pie'; the kinds are lines, table, lanes",
        ),
        (DashboardView(" ", "lines", "/p"), "every view needs a title of its own"),
        (DashboardView("T", "table", "now"), "route 'now' must be one of the application's own"),
        (DashboardView("T", "table", "/records"), "and not with /records"),
        (DashboardView("T", "table", "/jobs/{job}"), "has a path parameter"),
        (DashboardView("T", "table", "/t", refresh_s=0.1), "ask at most once a second"),
    ]
    for view, says in refused:
        with pytest.raises(ConfigError, match="application 'x'") as caught:
            _with_views(view)
        assert says in str(caught.value)
    with pytest.raises(ConfigError, match="every view needs a title of its own"):
        _with_views(trend, DashboardView("Trend", "table", "/other"))


def test_a_view_must_read_a_route_the_application_serves() -> None:
    from inferstream.api.app_routes import load_routes
    from inferstream.apps import leaves

    wrong = replace(leaves.APP, views=(DashboardView("Gone", "lines", "/gone"),))
    with pytest.raises(ConfigError, match="view 'Gone' reads GET /gone, which its routes do"):
        load_routes(wrong)


def test_an_unknown_app_names_the_installed_ones() -> None:
    with pytest.raises(ConfigError, match=r"installed: .*eggs"):
        app_named("no-such-app")


def test_a_registered_app_lends_its_steps_to_pipeline_files(tmp_path: Path) -> None:
    register_app(
        AppSpec(
            name="lending", title="Lending", package=__name__, subject="item",
            attributes=(Attribute("item"),), heads=(SEX,),
            steps={"shout": "inferstream.builtin_steps:tag"},
        )
    )  # fmt: skip
    assert resolve_factory("shout", app_named("lending").steps).__name__ == "tag"
    file = tmp_path / "p.yaml"
    file.write_text(
        "name: p\napp: lending\ntopics: {in: {partitions: 1}}\n"
        "stages:\n  - {name: s, input: in, steps: [shout]}\n"
    )
    validate(load_pipeline(file))  # the app's step is known
    file.write_text(file.read_text().replace("app: lending", "app: nowhere"))
    with pytest.raises(ConfigError, match="no application 'nowhere'"):
        validate(load_pipeline(file))


def test_an_app_declared_in_a_plain_module_has_a_folder_and_no_models() -> None:
    app = AppSpec(
        name="in-a-module", title="M", package=__name__, subject="item",
        attributes=(Attribute("item"),), heads=(SEX,),
    )  # fmt: skip
    register_app(app)
    assert app.folder == Path(__file__).parent
    assert find_model("egg_sexing") == installed_apps()["eggs"].models_dir
