"""Applications: what one declares, in one place, so the core can run, store, serve and
show it without knowing it.

An application is a package (bundled under ``inferstream.apps``; any installed
package can be one) holding one :class:`AppSpec`: its pipeline files, its steps,
its record schema (which attribute names the subject, the group and the source,
typed attributes and which are filterable), its prediction heads with their labels
and colours, summary ratios, the content types it ingests and its own checks of
them, and its dashboard panels.

The core finds applications through the ``inferstream.apps`` entry-point group, so
it never imports one: ``[project.entry-points."inferstream.apps"] myapp =
"mypackage:APP"``. Tests and notebooks may :func:`register_app` one
defined in place. Hooks (steps, checks, the example command) are named as
``"module:attribute"`` strings and imported only when used, so declaring an
application costs nothing.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from inferstream.errors import ConfigError

if TYPE_CHECKING:  # the codecs (OpenCV) load only where images are checked
    from inferstream.codecs import AppCheck

ENTRY_POINT_GROUP = "inferstream.apps"
#: The dashboard's panels an application may list.
PANELS = ("throughput", "mix", "confidence", "accuracy", "stages", "newest")
_APP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
AttributeKind = Literal["str", "int", "float"]


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


@dataclass(frozen=True)
class Ratio:
    """A summary figure: the share of a group's records that ``head`` labelled ``label``."""

    name: str
    head: str
    label: str


@dataclass(frozen=True)
class AppSpec:
    """Everything the core needs to run, store, serve and show one application."""

    name: str
    title: str
    #: The package holding the pipeline files and ``models/`` (e.g. "mypackage").
    package: str
    #: Attribute that names what a record is about; feedback is keyed by it.
    subject: str
    heads: tuple[Head, ...]
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
    #: newest (none listed: all). The figures at the top are always shown.
    panels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _APP_NAME.fullmatch(self.name):
            raise ConfigError(
                f"application name {self.name[:64]!r} must be 1-63 lowercase letters, digits, "
                "'-' or '_', starting with a letter or digit"
            )
        for attribute in self.attributes:
            if not _ATTRIBUTE_NAME.fullmatch(attribute.name):
                raise ConfigError(
                    f"application {self.name!r}: attribute {attribute.name[:64]!r} must be a "
                    "plain identifier (letters, digits, _), since it is filtered and indexed"
                )
        names = [attribute.name for attribute in self.attributes]
        for special in (self.subject, self.group, self.source):
            if special is not None and special not in names:
                raise ConfigError(
                    f"application {self.name!r}: {special!r} is named as subject, group or "
                    "source but is not among its attributes; declare it there"
                )
        unknown = sorted(set(self.panels) - set(PANELS))
        if unknown:
            raise ConfigError(
                f"application {self.name!r}: no dashboard panel {', '.join(unknown)}; the "
                f"panels are {', '.join(PANELS)}"
            )
        for ratio in self.ratios:
            if ratio.label not in self.head(ratio.head).label_names:
                raise ConfigError(
                    f"application {self.name!r}: ratio {ratio.name!r} counts label "
                    f"{ratio.label!r}, which head {ratio.head!r} does not have"
                )

    def head(self, name: str) -> Head:
        for head in self.heads:
            if head.name == name:
                return head
        known = ", ".join(head.name for head in self.heads)
        raise ConfigError(f"application {self.name!r} has no head {name!r}; it has {known}")

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)

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

    @cached_property
    def own_checks(self) -> dict[str, AppCheck]:
        """The application's checks, by content type, imported once (see ``checks``)."""
        what = f"application {self.name!r} check"
        return {kind: load_ref(ref, what) for kind, ref in self.checks.items()}


_REGISTERED: dict[str, AppSpec] = {}


def register_app(app: AppSpec) -> AppSpec:
    """Make ``app`` known in this process (an installed one is found without this)."""
    _REGISTERED[app.name] = app
    return app


def installed_apps() -> dict[str, AppSpec]:
    """Every application: registered in this process, then installed (entry points)."""
    found = dict(_REGISTERED)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found:
            continue
        app = entry.load()
        if not isinstance(app, AppSpec):
            raise ConfigError(
                f"entry point {entry.name!r} of group {ENTRY_POINT_GROUP} names "
                f"{entry.value}, which is not an inferstream.application.AppSpec"
            )
        found[entry.name] = app
    return found


def app_named(name: str) -> AppSpec:
    apps = installed_apps()
    if name not in apps:
        raise ConfigError(
            f"no application {name!r} is installed; installed: {', '.join(sorted(apps)) or 'none'}"
            " (an application registers in the entry-point group "
            f"{ENTRY_POINT_GROUP!r})"
        )
    return apps[name]


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
    "Head",
    "Label",
    "Ratio",
    "app_named",
    "find_model",
    "installed_apps",
    "load_ref",
    "register_app",
]
