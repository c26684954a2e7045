"""The models the pipeline serves, as the API sees them: which, at which version, loaded.

A pipeline's ``classify`` steps name the models (``GET /v1/models`` lists them). A step
naming ``name@alias`` serves the deployment's version the alias points at now, or, before
the registry has any version of it, the files an installed application ships (what the
workers take on first use); a step naming a model's files serves those.
:func:`serving_source` says which, for both ``GET /v1/models`` and the v2 protocol.

The v2 protocol (:mod:`inferstream.api.v2`) also lets a caller name a version: any the
registry holds of a served model that the caller's tenant may see (the deployment's and
its own, never another tenant's). Loaded graphs are kept in a :class:`GraphCache` by the
SHA-256 of their bytes, so a version loads once per process however it is named.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from inferstream.api.v2_tensors import Graph
from inferstream.application import find_model
from inferstream.classify import DEFAULT_ROLE, load_model, read_model_info
from inferstream.pipeline import PipelineSpec
from inferstream.registry import ModelRegistry, ModelVersion, RegistryError, parse_ref

#: Graphs one API process keeps loaded (the least recently used is dropped first).
CACHED_GRAPHS = 8

#: Where a model's graph comes from: a registry version, or files (a name an installed
#: application ships, or a path, as the step names it).
ModelSource = ModelVersion | str


@dataclass(frozen=True)
class ServedVersion:
    """One version of a served model, picked for a caller."""

    name: str
    version: str
    sha256: str
    source: ModelSource
    #: Every version the caller may name (the deployment's and its tenant's own).
    versions: tuple[str, ...]


def serving_source(model: str, registry: ModelRegistry | None) -> ModelSource:
    """What the workers of a step naming ``model`` serve now: the deployment's version
    its ``name@alias`` points at, or its files (see the module's docstring)."""
    if "@" not in model or registry is None:
        return model
    name, alias = parse_ref(model)
    try:
        return registry.resolve(name, alias)
    except RegistryError:
        if find_model(name) is None or registry.versions(name):
            raise
        return name  # the shipped files, which the workers adopt on first use


def served_refs(spec: PipelineSpec) -> dict[str, str]:
    """Model name -> the model reference of the step serving it; an acting step's
    before a shadow's, so the name means what the pipeline acts on."""
    steps = [step for stage in spec.stages for step in stage.steps if step.ref == "classify"]
    steps.sort(key=lambda step: step.params.get("role", DEFAULT_ROLE) != DEFAULT_ROLE)
    refs: dict[str, str] = {}
    for step in steps:
        model = str(step.params.get("model", ""))
        name = parse_ref(model)[0] if "@" in model else read_model_info(model)[0].name
        refs.setdefault(name, model)
    return refs


def resolve(
    spec: PipelineSpec, registry: ModelRegistry, name: str, version: str | None, tenant: str
) -> ServedVersion:
    """The version of served model ``name`` a caller of ``tenant`` gets: the one the
    pipeline serves, or ``version`` when named. A :class:`RegistryError` (404) for a
    model the pipeline does not serve or a version the tenant cannot see."""
    refs = served_refs(spec)
    if name not in refs:
        raise RegistryError(
            f"model {name[:128]!r} is not served here; the pipeline serves "
            f"{', '.join(sorted(refs)) or 'no model'}",
            status=404,
        )
    default = _described(serving_source(refs[name], registry))
    visible = registry.versions(name, tenant)
    versions = tuple(dict.fromkeys([v.version for v in visible] + [default[0]]))
    if version is None or (version == default[0] and isinstance(default[2], str)):
        return ServedVersion(name, *default, versions)
    # A tenant's own version before the deployment's of the same name, as the registry.
    named = sorted((v for v in visible if v.version == version), key=lambda v: v.owner != tenant)
    if not named:
        raise RegistryError(
            f"model {name} has no version {version[:128]!r} you can use; its versions: "
            f"{', '.join(versions)}",
            status=404,
        )
    return ServedVersion(name, named[0].version, named[0].sha256, named[0], versions)


def _described(source: ModelSource) -> tuple[str, str, ModelSource]:
    """(version, SHA-256 of the graph, source)."""
    if isinstance(source, ModelVersion):
        return source.version, source.sha256, source
    info, digest = read_model_info(source)
    return info.version, digest, source


class GraphCache:
    """Loaded graphs by the SHA-256 of their bytes, the ``capacity`` most recently used.

    Two requests for a graph not loaded yet may both load it (the second copy is
    dropped): loading holds no lock, so a slow load never stalls the other models.
    """

    def __init__(self, capacity: int = CACHED_GRAPHS) -> None:
        self.capacity = capacity
        self._graphs: OrderedDict[str, Graph] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, served: ServedVersion, registry: ModelRegistry) -> Graph:
        with self._lock:
            graph = self._graphs.get(served.sha256)
            if graph is not None:
                self._graphs.move_to_end(served.sha256)
                return graph
        source = served.source
        model = registry.load(source) if isinstance(source, ModelVersion) else load_model(source)
        graph = Graph(model.session)
        with self._lock:
            graph = self._graphs.setdefault(served.sha256, graph)
            while len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        return graph


__all__ = [
    "CACHED_GRAPHS",
    "GraphCache",
    "ModelSource",
    "ServedVersion",
    "resolve",
    "served_refs",
    "serving_source",
]
