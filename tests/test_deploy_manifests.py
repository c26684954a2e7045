"""deploy/k8s, rendered offline (``kubectl kustomize``): every object valid against the
Kubernetes schemas (kubernetes-validate, strict) and KEDA's ScaledObject schema (committed
under deploy/k8s/schemas), and saying what the pipeline file says: a Deployment per
stage, scaled on its group's lag no further than its input's partitions; the API with
probes on /healthz and /readyz; a disruption budget, requests and limits for each; no
process as root. The base and the example overlay are both checked."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from inferstream.cli import build_parser
from inferstream.pipeline import PipelineSpec, StageSpec, load_pipeline

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
FLAGSHIP = ROOT / "src" / "inferstream" / "apps" / "eggs" / "eggs.yaml"
KEDA_SCHEMA = K8S / "schemas" / "keda.sh_scaledobject_v1alpha1.json"
#: Where the pods mount the pipeline ConfigMap, and the file in it.
PIPELINE_DIR = "/etc/inferstream/pipeline"
PIPELINE_PATH = f"{PIPELINE_DIR}/eggs.yaml"
#: The oldest Kubernetes docs/deploy.md supports (preStop sleep), and the newest the
#: validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version() + ".0")
#: The keys of the Secret an installation makes (never committed).
SECRET = "inferstream-secrets"
SECRET_KEYS = {"INFERSTREAM_STORE", "INFERSTREAM_JWT_SECRET", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "INFERSTREAM_KEK", "INFERSTREAM_AUDIT_KEY"}  # fmt: skip
#: Keys the example leaves commented out: optional, and every role reads them.
OPTIONAL_KEYS = {"INFERSTREAM_KEK", "INFERSTREAM_AUDIT_KEY"}

Doc = dict[str, Any]


def _render(folder: Path) -> list[Doc]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is needed to render deploy/k8s (kubectl kustomize)"
    rendered = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True,
                              text=True, check=False, timeout=120)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return _render(K8S / "base")


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> list[Doc]:
    """The example overlay, its git-ignored secrets.env made from the example file."""
    copied = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copied)
    example = copied / "overlays" / "example"
    shutil.copy(example / "secrets.env.example", example / "secrets.env")
    return _render(example)


@pytest.fixture(params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    docs: list[Doc] = request.getfixturevalue(request.param)
    return docs


@pytest.fixture(scope="module")
def pipeline() -> PipelineSpec:
    return load_pipeline(K8S / "base" / "eggs.yaml")


def _of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    (found,) = [doc for doc in _of_kind(docs, kind) if doc["metadata"]["name"] == name]
    return found


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    """(workload name, pod spec) of every Deployment and CronJob."""
    for doc in _of_kind(docs, "Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    for doc in _of_kind(docs, "CronJob"):
        yield doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(workload name, pod spec, container) of every container of every workload."""
    for name, pod in _pod_specs(docs):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield name, pod, container


def _stage_deployment(docs: list[Doc], stage: StageSpec) -> Doc:
    (found,) = [
        doc
        for doc in _of_kind(docs, "Deployment")
        if doc["spec"]["template"]["metadata"]["labels"].get("inferstream.io/stage") == stage.name
    ]
    return found


def _scaled_object_of(docs: list[Doc], deployment: str) -> Doc:
    (found,) = [
        doc
        for doc in _of_kind(docs, "ScaledObject")
        if doc["spec"]["scaleTargetRef"]["name"] == deployment
    ]
    return found


def _environment(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's variables: its ConfigMaps' (envFrom) then its own (a value, or
    ``secret:NAME/KEY`` for a Secret's key)."""
    variables: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config_map = _named(docs, "ConfigMap", source["configMapRef"]["name"])
        variables.update(config_map["data"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        variables[var["name"]] = f"secret:{ref['name']}/{ref['key']}" if ref else var["value"]
    return variables


# -- quantities ------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}  # fmt: skip


def _quantity(text: str | int) -> float:
    match = _QUANTITY.match(str(text))
    assert match is not None, f"{text!r} is not a Kubernetes quantity"
    return float(match.group(1)) * _FACTORS[match.group(2)]


# -- the tests ---------------------------------------------------------------------------


def test_the_base_pipeline_file_is_the_flagships() -> None:
    copied = K8S / "base" / "eggs.yaml"
    assert copied.read_bytes() == FLAGSHIP.read_bytes(), (
        f"{copied} differs from {FLAGSHIP}; copy it again (kustomize reads no file outside "
        "its folder)"
    )


def _strict(schema: Any) -> Any:
    """``schema`` refusing fields it does not name, as kubernetes-validate's strict mode
    does (the API server would prune them silently: a misspelt field is simply lost)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        preserves = schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and "additionalProperties" not in schema and not preserves:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def keda_validator() -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(KEDA_SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_every_object_is_valid_against_its_schema(
    rendered: list[Doc], keda_validator: jsonschema.Draft7Validator
) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {"Deployment", "ScaledObject", "PodDisruptionBudget", "Service"} <= kinds
    errors = []
    for doc in rendered:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "ScaledObject":
            errors += [f"{where}: {e.message}" for e in keda_validator.iter_errors(doc)]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                errors.append(f"{where} on Kubernetes {version}: {exc.message}")
    assert errors == []


def test_the_keda_schema_refuses_a_misspelt_field(
    base: list[Doc], keda_validator: jsonschema.Draft7Validator
) -> None:
    scaled = copy.deepcopy(_of_kind(base, "ScaledObject")[0])
    scaled["spec"]["maxReplicaCont"] = scaled["spec"].pop("maxReplicaCount")
    assert not keda_validator.is_valid(scaled)


def test_a_deployment_per_stage_runs_that_stage(
    rendered: list[Doc], pipeline: PipelineSpec
) -> None:
    workers = [
        doc
        for doc in _of_kind(rendered, "Deployment")
        if doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        == "worker"
    ]
    assert len(workers) == len(pipeline.stages)
    for stage in pipeline.stages:
        (container,) = _stage_deployment(rendered, stage)["spec"]["template"]["spec"]["containers"]
        assert container["args"][:4] == ["worker", PIPELINE_PATH, "--stage", stage.name]


def test_every_command_is_one_the_cli_accepts(rendered: list[Doc]) -> None:
    parser = build_parser()
    commands, refused = set(), []
    for name, _pod, container in _containers(rendered):
        try:
            commands.add(parser.parse_args(container["args"]).command)
        except SystemExit:
            refused.append(f"{name}: inferstream {' '.join(container['args'])}")
    assert refused == []
    assert commands == {"worker", "serve", "housekeep"}


def test_each_stage_scales_on_its_groups_lag_no_further_than_its_partitions(
    rendered: list[Doc], pipeline: PipelineSpec
) -> None:
    for stage in pipeline.stages:
        deployment = _stage_deployment(rendered, stage)
        # KEDA's HPA owns the count; a replicas field would reset it on every apply.
        assert "replicas" not in deployment["spec"], stage.name
        scaled = _scaled_object_of(rendered, deployment["metadata"]["name"])["spec"]
        (topic,) = stage.inputs
        (trigger,) = scaled["triggers"]
        settings = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert settings["consumerGroup"] == stage.group(pipeline.name)
        assert settings["topic"] == topic
        assert scaled["maxReplicaCount"] <= pipeline.partitions(topic), stage.name
        # The file's replicas are the floor; a dead-letter stage waits at zero.
        floor = 0 if topic.endswith(".dlq") else stage.replicas
        assert scaled["minReplicaCount"] == floor, stage.name
        assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
        # KEDA's pitfalls with offsets (the reasons: workers/classify.yaml).
        assert settings["offsetResetPolicy"] == stage.start
        assert settings["scaleToZeroOnInvalidOffset"] == "false"
        assert settings["excludePersistentLag"] == "true"
        assert settings["limitToPartitionsWithLag"] == "true"
        assert settings["allowIdleConsumers"] == "false"
        assert int(settings["lagThreshold"]) >= stage.batch.max_size
        # KEDA reads the brokers from the worker's environment: the ones its bus names.
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        environment = _environment(rendered, container)
        brokers = environment[settings["bootstrapServersFromEnv"]]
        assert environment["INFERSTREAM_BUS"] == "kafka://$(KAFKA_BOOTSTRAP_SERVERS)"
        assert settings["bootstrapServersFromEnv"] == "KAFKA_BOOTSTRAP_SERVERS"
        assert re.fullmatch(r"[\w.-]+:\d+(,[\w.-]+:\d+)*", brokers), brokers


def test_the_api_serves_the_pipeline_with_probes_on_healthz_and_readyz(
    rendered: list[Doc],
) -> None:
    api = _named(rendered, "Deployment", "inferstream-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["serve", PIPELINE_PATH]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == int(container["args"][container["args"].index("--port") + 1])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert _environment(rendered, container)["INFERSTREAM_JWT_SECRET"].startswith("secret:")
    service = _named(rendered, "Service", "inferstream-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"]


def test_every_deployment_has_a_disruption_budget_that_lets_a_node_drain(
    rendered: list[Doc],
) -> None:
    budgets = _of_kind(rendered, "PodDisruptionBudget")
    for deployment in _of_kind(rendered, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            budget
            for budget in budgets
            if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, deployment["metadata"]["name"]
        spec = covering[0]["spec"]
        if "minAvailable" in spec:
            assert spec["minAvailable"] < deployment["spec"]["replicas"]
        else:
            assert spec["maxUnavailable"] >= 1


def test_every_container_requests_cpu_and_memory_within_its_limits(rendered: list[Doc]) -> None:
    for name, _pod, container in _containers(rendered):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            limit = _quantity(resources["limits"][resource])
            assert 0 < request <= limit, f"{name}: {resource} {request} > limit {limit}"


def _containerfile_user() -> int:
    """The uid the image runs as (tests/test_deploy_image.py holds it numeric)."""
    (user,) = re.findall(r"^USER\s+(\S+)", (ROOT / "deploy" / "Containerfile").read_text(), re.M)
    uid = user.partition(":")[0]
    assert uid.isdigit(), f"USER {user}: Kubernetes checks runAsNonRoot only on a number"
    return int(uid)


def test_nothing_runs_as_root_or_writes_to_its_image(rendered: list[Doc]) -> None:
    for name, pod in _pod_specs(rendered):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == _containerfile_user() != 0, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
    for name, _pod, container in _containers(rendered):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name


def test_every_container_runs_the_one_image_at_a_fixed_tag(rendered: list[Doc]) -> None:
    images = {container["image"] for _name, _pod, container in _containers(rendered)}
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert "/" not in tag and name, f"{image}: name a tag"
    assert tag != "latest"


def test_every_container_has_the_pipeline_file_and_its_three_urls(rendered: list[Doc]) -> None:
    pipeline_maps = {
        doc["metadata"]["name"]
        for doc in _of_kind(rendered, "ConfigMap")
        if "eggs.yaml" in doc["data"]
    }
    for name, pod, container in _containers(rendered):
        assert PIPELINE_PATH in container["args"], name
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert volumes[mounts[PIPELINE_DIR]]["configMap"]["name"] in pipeline_maps, name
        environment = _environment(rendered, container)
        # Unset, the file's defaults would be a private SQLite bus and store in the pod.
        assert environment["INFERSTREAM_BUS"].startswith("kafka://"), name
        # The Secret's name, with the hash an overlay's secretGenerator adds.
        store = environment["INFERSTREAM_STORE"]
        assert re.fullmatch(rf"secret:{SECRET}(-[a-z0-9]+)?/INFERSTREAM_STORE", store), name
        # A bucket every pod reaches alike (a file:// folder would be each pod's own).
        assert environment["INFERSTREAM_BLOBS"].startswith("s3://"), name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= environment.keys(), name
        # Blobs a worker encrypts, the API and the chores must open, and the audit chain
        # each writes must be signed with the one key.
        assert environment.keys() >= OPTIONAL_KEYS, name


def test_no_secret_is_committed_and_every_reference_names_a_documented_key(base: list[Doc]) -> None:
    assert _of_kind(base, "Secret") == []
    references = {
        value.removeprefix(f"secret:{SECRET}/")
        for _name, _pod, container in _containers(base)
        for value in _environment(base, container).values()
        if value.startswith("secret:")
    }
    assert references == SECRET_KEYS
    example = K8S / "overlays" / "example"
    lines = (example / "secrets.env.example").read_text().splitlines()
    keys = {line.partition("=")[0] for line in lines if line and not line.startswith("#")}
    assert keys == SECRET_KEYS - OPTIONAL_KEYS
    assert all(f"# {key}=" in "\n".join(lines) for key in OPTIONAL_KEYS)
    assert "secrets.env" in (example / ".gitignore").read_text().split()


def test_the_overlays_secret_and_config_reach_every_container(overlay: list[Doc]) -> None:
    secrets = {doc["metadata"]["name"]: doc for doc in _of_kind(overlay, "Secret")}
    for name, _pod, container in _containers(overlay):
        for var in container["env"]:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["key"] in secrets[ref["name"]]["data"], f"{name}: {var['name']}"
    assert all(doc["metadata"]["namespace"] == "inferstream" for doc in overlay
               if doc["kind"] != "Namespace")  # fmt: skip
    images = {container["image"] for _name, _pod, container in _containers(overlay)}
    assert images == {"registry.example.com/inferstream:0.1.0"}
