"""Applications: what one declares, in one place, so the core can run, store, serve and
show it without knowing it.

An application is a package (bundled under ``inferstream.apps``; any installed
package can be one) holding one :class:`AppSpec`: its pipeline files, its steps,
its record schema (which attribute names the subject, the group and the source,
typed attributes and which are filterable), its prediction heads with their labels
and colours (none for an application that runs no model), summary ratios, the
content types it ingests and its own checks of them, its dashboard panels, HTTP
routes of its own, views of its own on the dashboard (read from those routes) and
periodic chores.

The core finds applications through the ``inferstream.apps`` entry-point group, so
it never imports one: ``[project.entry-points."inferstream.apps"] myapp =
"mypackage:APP"``. Tests and notebooks may :func:`register_app` one
defined in place. Hooks (steps, checks, the example command) are named as
``"module:attribute"`` strings and imported only when used, so declaring an
application costs nothing.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property, partial
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inferstream.errors import ConfigError

if TYPE_CHECKING:  # the codecs (OpenCV) load only where images are checked
    from inferstream.codecs import AppCheck, Checked, ImageLimits

ENTRY_POINT_GROUP = "inferstream.apps"
#: The dashboard's panels an application may list.
PANELS = ("throughput", "mix", "confidence", "accuracy", "models", "stages", "newest")
#: Panels that draw predictions: an application without heads has nothing for them.
PREDICTION_PANELS = frozenset({"mix", "confidence", "accuracy", "models"})
#: What a :class:`DashboardView` draws: ``lines`` (a line chart of named series), ``table``,
#: or ``lanes`` (a schematic: horizontal lanes with spans along them).
VIEW_KINDS = ("lines", "table", "lanes")
#: Paths under an application's prefix the core serves itself (``GET /v1/apps/{app}``
#: and its records): an application's routes and views may not take them.
RESERVED_PATHS = ("/records",)
_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
AttributeKind = Literal["str", "int", "float"]
ViewKind = Literal["lines", "table", "lanes"]


@dataclass(frozen=True)
class Label:
    """One class a prediction head can answer, as people see it."""

    name: str
    colour: str
    title: str = ""

    @property
    def shown(self) -> str:
        return self.title or self.name.replace("_", " ").capitalize()


@dataclass(frozen=True)
class Head:
    """One thing a model predicts about a record, with the labels it can answer."""

    name: str
    labels: tuple[Label, ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)


@dataclass(frozen=True)
class Attribute:
    """A typed attribute of the application's records; ``filterable`` ones are indexed."""

    name: str
    kind: AttributeKind = "str"
    filterable: bool = False
    description: str = ""
    #: A client may send it at ingest (what the content itself says wins).
    client: bool = False
    #: Stored encrypted under the tenant's data key when a key-encryption key is
    #: configured (``docs/encryption.md``); never filterable, never the subject, group
    #: or source (those have clear columns of their own).
    sensitive: bool = False


@dataclass(frozen=True)
class Ratio:
    """A summary figure: the share of a group's records that ``head`` labelled ``label``."""

    name: str
    head: str
    label: str


@dataclass(frozen=True)
class DashboardView:
    """A chart or table of the application's own on the dashboard.

    ``route`` is one of its own GET routes (``routes``), relative to
    ``/v1/apps/<name>``, answering the caller's tenant's data in the shape of ``kind``:
    ``lines`` ``{"series": [{"name", "points": [[x, y], ...]}], "x_label", "y_label"}``,
    ``table`` ``{"columns": [...], "rows": [[...], ...]}``, ``lanes`` ``{"unit", "lanes":
    [{"name", "length", "spans": [{"from", "to", "label", "style"}], "marks": [...]}]}``
    (a schematic: each lane a bar of ``length``; ``spans`` drawn on it, ``marks`` in a
    thin strip beneath, each with a ``style`` of ``item``, ``muted`` or ``alert``); any
    may add a ``note``.
    The page asks it again every ``refresh_s`` seconds.
    """

    title: str
    kind: ViewKind
    route: str
    refresh_s: float = 5.0


@dataclass(frozen=True)
class AppSpec:
    """Everything the core needs to run, store, serve and show one application."""

    name: str
    title: str
    #: The package holding the pipeline files and ``models/`` (e.g. "mypackage").
    package: str
    #: Attribute that names what a record is about; feedback is keyed by it.
    subject: str
    #: What its models predict; none for an application that runs no model (its
    #: records then carry no prediction, and feedback has nothing to correct).
    heads: tuple[Head, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    #: Attribute grouping records for summaries, and its noun as people say it.
    group: str | None = None
    group_noun: str = "group"
    #: Attribute naming the device a record came from.
    source: str | None = None
    ratios: tuple[Ratio, ...] = ()
    #: Content types the application ingests (each must have a core codec).
    content_types: tuple[str, ...] = ()
    #: content type -> "module:function(data, limits) -> Checked": the application's own
    #: check, taking the codec's place for its uploads (it must refuse what that would).
    checks: Mapping[str, str] = field(default_factory=dict)
    #: step name in pipeline files -> "module:factory".
    steps: Mapping[str, str] = field(default_factory=dict)
    #: pipeline name -> file name inside ``package``; the first is the default.
    pipelines: Mapping[str, str] = field(default_factory=dict)
    #: "module:function(subparsers)" registering ``inferstream example <name>``.
    example: str | None = None
    #: Dashboard panels it shows, of: throughput, mix, confidence, accuracy, stages,
    #: newest (none listed: all it has data for). The figures at the top are always shown.
    panels: tuple[str, ...] = ()
    #: "module:function() -> inferstream.api.app_routes.AppRoutes": HTTP routes of its
    #: own, mounted under ``/v1/apps/<name>`` with the roles it declares for each.
    routes: str | None = None
    #: Charts and tables of its own on the dashboard, each read from one of its routes.
    views: tuple[DashboardView, ...] = ()
    #: learner name in pipeline files (``retraining:``) -> "module:function": fits a
    #: model version on labelled records (see :mod:`inferstream.retraining`).
    learners: Mapping[str, str] = field(default_factory=dict)
    #: "module:function(pipeline: PipelineSpec) -> object": periodic chores (e.g. purging
    #: what its retention no longer keeps), run by ``inferstream up`` every minute and
    #: by ``inferstream housekeep``.
    housekeeping: str | None = None
    #: "module:function(mapping) -> settings": reads an installation's settings of the
    #: application (the pipeline file's ``settings:`` section), raising ConfigError for
    #: anything wrong; the result is given to its checks as ``settings=`` and to its
    #: steps as ``StepContext.app.parsed_settings``. None: it takes no settings.
    configure: str | None = None
    #: The installation's settings as written (see :meth:`with_settings`).
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _APP_NAME.fullmatch(self.name):
            raise ConfigError(
                f"application name {self.name[:64]!r} must be 1-63 lowercase letters, digits, "
                "'-' or '_', starting with a letter or digit"
            )
        self._check_attributes()
        unknown = sorted(set(self.panels) - set(PANELS))
        if unknown:
            raise ConfigError(
                f"application {self.name!r}: no dashboard panel {', '.join(unknown)}; the "
                f"panels are {', '.join(PANELS)}"
            )
        predicting = sorted(PREDICTION_PANELS.intersection(self.panels))
        if predicting and not self.heads:
            raise ConfigError(
                f"application {self.name!r} predicts nothing (no heads), so it has no data for "
                f"the panel(s) {', '.join(predicting)}; list throughput, stages or newest"
            )
        for ratio in self.ratios:
            if ratio.label not in self.head(ratio.head).label_names:
                raise ConfigError(
                    f"application {self.name!r}: ratio {ratio.name!r} counts label "
                    f"{ratio.label!r}, which head {ratio.head!r} does not have"
                )
        self._check_views()

    def _check_attributes(self) -> None:
        for attribute in self.attributes:
            if not _ATTRIBUTE_NAME.fullmatch(attribute.name):
                raise ConfigError(
                    f"application {self.name!r}: attribute {attribute.name[:64]!r} must be a "
                    "plain identifier (letters, digits, _), since it is filtered and indexed"
                )
            if attribute.sensitive and attribute.filterable:
                raise ConfigError(
                    f"application {self.name!r}: attribute {attribute.name!r} is declared "
                    "both sensitive and filterable; a sensitive attribute is stored encrypted, "
                    "so nothing can filter by it: drop filterable=True, or sensitive=True if "
                    "records must be found by it"
                )
        names = [attribute.name for attribute in self.attributes]
        for special in (self.subject, self.group, self.source):
            if special is not None and special not in names:
                raise ConfigError(
                    f"application {self.name!r}: {special!r} is named as subject, group or "
                    "source but is not among its attributes; declare it there"
                )
        columns = {name for name in (self.subject, self.group, self.source) if name}
        clear = sorted(columns.intersection(self.sensitive_attributes))
        if clear:
            raise ConfigError(
                f"application {self.name!r}: {', '.join(clear)} is named as subject, group or "
                "source, which are stored in clear columns of their own (indexed, summed "
                "up), so it cannot be sensitive; name another attribute there, or drop "
                "sensitive=True"
            )

    def _check_views(self) -> None:
        if self.views and self.routes is None:
            raise ConfigError(
                f"application {self.name!r} declares views but no routes; a view reads one "
                "of the application's own GET routes, so declare routes='module:function'"
            )
        titles = [view.title for view in self.views]
        for view in self.views:
            what = f"application {self.name!r}: view {view.title[:64]!r}"
            if not view.title.strip() or titles.count(view.title) > 1:
                raise ConfigError(f"{what}: every view needs a title of its own")
            if view.kind not in VIEW_KINDS:
                raise ConfigError(
                    f"{what}: no view kind {view.kind!r}; the kinds are {', '.join(VIEW_KINDS)}"
                )
            if not view.route.startswith("/") or view.route.startswith(RESERVED_PATHS):
                raise ConfigError(
                    f"{what}: route {view.route[:64]!r} must be one of the application's own "
                    f"paths, starting with '/' (relative to /v1/apps/{self.name}) and not "
                    f"with {', '.join(RESERVED_PATHS)}"
                )
            if "{" in view.route:
                raise ConfigError(
                    f"{what}: route {view.route[:64]!r} has a path parameter, which the "
                    "dashboard cannot fill; give the view a route of its own"
                )
            if not view.refresh_s >= 1:
                raise ConfigError(
                    f"{what}: refresh_s is {view.refresh_s}; ask at most once a second"
                )

    def head(self, name: str) -> Head:
        for head in self.heads:
            if head.name == name:
                return head
        known = ", ".join(head.name for head in self.heads) or "none"
        raise ConfigError(f"application {self.name!r} has no head {name!r}; it has {known}")

    @property
    def first_head(self) -> Head | None:
        """The head whose champion a record carries (listings, summaries); None without."""
        return self.heads[0] if self.heads else None

    @property
    def dashboard_panels(self) -> tuple[str, ...]:
        """The panels the dashboard shows: those listed, else every one it has data for."""
        if self.panels:
            return self.panels
        return PANELS if self.heads else tuple(p for p in PANELS if p not in PREDICTION_PANELS)

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)

    @property
    def sensitive_attributes(self) -> frozenset[str]:
        """Attributes stored encrypted when a key-encryption key is configured."""
        return frozenset(a.name for a in self.attributes if a.sensitive)

    @property
    def client_attributes(self) -> tuple[str, ...]:
        """Attributes a client may send with an upload."""
        return tuple(a.name for a in self.attributes if a.client)

    @property
    def folder(self) -> Path:
        """The folder of ``package`` (a package's own, or the one a module sits in)."""
        try:
            return Path(str(resources.files(self.package)))
        except TypeError:  # a plain module, e.g. an application defined in a test
            module = importlib.import_module(self.package)
            return Path(str(module.__file__)).parent

    @property
    def models_dir(self) -> Path:
        return self.folder / "models"

    def pipeline_path(self, name: str | None = None) -> Path:
        """The application's pipeline file ``name`` (default: its first)."""
        if not self.pipelines:
            raise ConfigError(f"application {self.name!r} ships no pipeline file")
        chosen = name or next(iter(self.pipelines))
        if chosen not in self.pipelines:
            raise ConfigError(
                f"application {self.name!r} has no pipeline {chosen!r}; it has "
                f"{', '.join(self.pipelines)}"
            )
        return self.folder / self.pipelines[chosen]

    def with_settings(self, settings: Mapping[str, Any] | None) -> AppSpec:
        """This application as one installation configured it; the settings are read
        (and refused with :class:`ConfigError`) here, not at the first upload."""
        if not settings:
            return self
        if self.configure is None:
            raise ConfigError(
                f"application {self.name!r} takes no settings; remove the pipeline file's "
                "settings: section"
            )
        configured = dataclasses.replace(self, settings=dict(settings))
        _ = configured.parsed_settings
        return configured

    @cached_property
    def parsed_settings(self) -> Any:
        """The installation's settings as the application reads them (None: it takes none)."""
        if self.configure is None:
            return None
        return load_ref(self.configure, f"application {self.name!r} settings")(self.settings)

    @cached_property
    def own_checks(self) -> dict[str, AppCheck]:
        """The application's checks, by content type, imported once (see ``checks``), with
        the installation's settings bound where the application takes settings."""
        what = f"application {self.name!r} check"
        checks = {kind: load_ref(ref, what) for kind, ref in self.checks.items()}
        if self.configure is None:
            return checks
        return {
            kind: partial(check, settings=self.parsed_settings) for kind, check in checks.items()
        }

    def check_upload(self, data: bytes, limits: ImageLimits) -> Checked:
        """An upload checked as this application takes it, wherever it comes from (the
        API, a watched folder, a DICOM receiver): only its content types, each through
        its own check where it declares one, else the core codec's."""
        from inferstream import codecs  # (OpenCV loads here, not at every command's start)

        return codecs.check(data, limits, self.own_checks, self.content_types or None)


_REGISTERED: dict[str, AppSpec] = {}


def register_app(app: AppSpec) -> AppSpec:
    """Make ``app`` known in this process (an installed one is found without this)."""
    _REGISTERED[app.name] = app
    return app


def installed_apps() -> dict[str, AppSpec]:
    """Every application: registered in this process, then installed (entry points)."""
    found = dict(_REGISTERED)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in found:
            found[entry.name] = _load_entry(entry)
    return found


def _load_entry(entry: metadata.EntryPoint) -> AppSpec:
    try:
        app = entry.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"application {entry.name!r} is installed but cannot be loaded from "
            f"{entry.value}: {exc}"
        ) from exc
    if not isinstance(app, AppSpec):
        raise ConfigError(
            f"entry point {entry.name!r} of group {ENTRY_POINT_GROUP} names "
            f"{entry.value}, which is not an inferstream.application.AppSpec"
        )
    return app


def app_named(name: str) -> AppSpec:
    """The application ``name``; only its own entry point is loaded, so another
    installed application that cannot load does not stop this one."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    entries = metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not entries:
        installed = sorted({*_REGISTERED, *metadata.entry_points(group=ENTRY_POINT_GROUP).names})
        raise ConfigError(
            f"no application {name!r} is installed; installed: {', '.join(installed) or 'none'}"
            " (an application registers in the entry-point group "
            f"{ENTRY_POINT_GROUP!r})"
        )
    return _load_entry(next(iter(entries)))


def find_model(name: str) -> Path | None:
    """The folder of the installed application that ships model ``name``, if one does."""
    for app in installed_apps().values():
        if (app.models_dir / f"{name}.onnx").is_file():
            return app.models_dir
    return None


def load_ref(ref: str, what: str) -> Any:
    """Import ``"module:attribute"``; :class:`ConfigError` saying which ``what`` failed."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what}: {ref!r} is not 'module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what}: cannot import {module_name!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what}: module {module_name!r} has no {attr!r}") from None


__all__ = [
    "ENTRY_POINT_GROUP",
    "AppSpec",
    "Attribute",
    "DashboardView",
    "Head",
    "Label",
    "Ratio",
    "app_named",
    "find_model",
    "installed_apps",
    "load_ref",
    "register_app",
]
