"""The deploy files, checked by the tools that will read them: the Kubernetes manifests against the Kubernetes
schemas (offline: kubernetes-validate ships them), the compose file with `docker compose config` where it exists,
the compose stack's Prometheus config with promtool; and what no schema knows, structurally (the PodMonitor, every
secret key and ConfigMap referenced exists, every container hardened, health-gated start-up order)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from proxy.policy import load_policy
from tests.backend.harness import PRODUCTION_POLICY, ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
# The oldest Kubernetes the manifests are for: native sidecars (initContainers with restartPolicy Always) are on by
# default from 1.29; 1.30 is the oldest minor the schemas below and the upstream project still both cover.
KUBERNETES_VERSION = "1.30.0"
# Custom resources: the Kubernetes schemas do not know them, so they are checked structurally below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


MANIFESTS = sorted(K8S.glob("*.yaml"))
RESOURCES = [(path.name, doc) for path in MANIFESTS for doc in documents(path)]


def resources(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in RESOURCES if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for doc in resources(kind) if doc["metadata"]["name"] == name]
    return found


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in resources("Deployment"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def inbox_pod() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment", "inbox-backend")["spec"]["template"]["spec"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in all_containers(pod) if c["name"] == name]
    return found


# --- Kubernetes: the real schemas --------------------------------------------------------------------------------


def test_every_manifest_file_is_found_and_holds_resources() -> None:
    names = {path.name for path in MANIFESTS}
    assert {"deployment.yaml", "configmap.yaml", "redis.yaml", "secret.example.yaml", "podmonitor.yaml"} <= names
    assert all(documents(path) for path in MANIFESTS)


@pytest.mark.parametrize(
    ("filename", "resource"),
    [pytest.param(name, doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}") for name, doc in RESOURCES
     if (doc["apiVersion"], doc["kind"]) not in CUSTOM_KINDS],
)
def test_each_resource_validates_against_the_kubernetes_schema(filename: str, resource: dict[str, Any]) -> None:
    # strict: an unknown field (a typo, a field of a newer version) is an error, not silently dropped by the API.
    assert kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True) == "1.30"


def test_only_the_podmonitor_is_beyond_the_kubernetes_schemas() -> None:
    unknown = set()
    for _, doc in RESOURCES:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError:
            unknown.add((doc["apiVersion"], doc["kind"]))
    assert unknown == CUSTOM_KINDS


def test_the_schema_check_has_teeth() -> None:
    deployment = one("Deployment", "inbox-backend")
    # Before 1.28 a container had no restartPolicy: the schema of 1.27 refuses the native sidecar.
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(deployment, "1.27.0", strict=True)
    # and a misspelt field is refused, where the API server would drop it and run the pod without it
    redis = one("Deployment", "redis")
    typo = yaml.safe_load(yaml.safe_dump(redis).replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


def test_the_schemas_ship_with_the_package_so_validation_needs_no_network() -> None:
    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    assert (package / "v1.30.0-local-strict" / "deployment-apps-v1.json").is_file()


# --- Kubernetes: what the schemas cannot see ---------------------------------------------------------------------


def test_the_sidecar_is_a_native_sidecar_that_gates_the_backends_start() -> None:
    pod = inbox_pod()
    [sidecar] = pod["initContainers"]
    [backend] = pod["containers"]
    assert (sidecar["name"], backend["name"]) == ("egress-sidecar", "backend")
    assert sidecar["restartPolicy"] == "Always"
    # The kubelet starts the backend once the sidecar's startupProbe passes; /ready is 200 once it listens.
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/health"
    assert backend["readinessProbe"]["httpGet"]["path"] == "/health"
    # It stops after the backend: no preStop sleep guessing how long the backend's drain takes.
    assert "lifecycle" not in sidecar
    assert sidecar["command"][:3] == ["python", "-m", "proxy"]
    assert backend["command"] == ["python", "-m", "inbox_backend"]


def test_every_container_is_hardened() -> None:
    checked = []
    for deployment, pod in pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, deployment
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, deployment
        assert pod["automountServiceAccountToken"] is False, deployment
        mounts_by_volume = {v["name"]: v for v in pod["volumes"]}
        for c in all_containers(pod):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, c["name"]
            assert context["readOnlyRootFilesystem"] is True, c["name"]
            assert context["runAsNonRoot"] is True, c["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, c["name"]
            assert "privileged" not in context
            # Every mount is of a declared volume; a read-only root still gives Python a writable /tmp.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(mounts_by_volume), c["name"]
            if c["image"].startswith("inbox-egress"):
                assert "emptyDir" in mounts_by_volume[mounts["/tmp"]], c["name"]
            checked.append(c["name"])
    assert sorted(checked) == ["backend", "egress-sidecar", "redis"]


def secret_key_refs() -> Iterator[tuple[str, str]]:
    for _, pod in pod_specs():
        for c in all_containers(pod):
            for env in c.get("env", []):
                if ref := env.get("valueFrom", {}).get("secretKeyRef"):
                    yield ref["name"], ref["key"]


def test_the_example_secret_has_exactly_the_keys_the_deployment_reads() -> None:
    secret = one("Secret", "inbox-secrets")
    assert "example" in (K8S / "secret.example.yaml").read_text().splitlines()[0].lower()
    refs = set(secret_key_refs())
    assert {name for name, _ in refs} == {"inbox-secrets"}
    assert {key for _, key in refs} == set(secret["stringData"])
    assert all(value.startswith("CHANGE-ME") for value in secret["stringData"].values())


def test_every_configmap_referenced_exists_and_holds_the_production_policy() -> None:
    configmaps = {doc["metadata"]["name"]: doc for doc in resources("ConfigMap")}
    referenced = set()
    for _, pod in pod_specs():
        referenced |= {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        for c in all_containers(pod):
            referenced |= {e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e}
            referenced |= {e["valueFrom"]["configMapKeyRef"]["name"] for e in c.get("env", [])
                           if "configMapKeyRef" in e.get("valueFrom", {})}
    assert referenced == {"egress-policy"} and referenced <= set(configmaps)
    assert configmaps["egress-policy"]["data"]["policy.yaml"] == PRODUCTION_POLICY.read_text()
    sidecar = container(inbox_pod(), "egress-sidecar")
    assert {"name": "policy", "mountPath": "/etc/egress", "readOnly": True} in sidecar["volumeMounts"]
    assert "/etc/egress/policy.yaml" in sidecar["command"]


def test_the_sidecars_environment_makes_a_valid_production_policy_with_the_redis_service() -> None:
    # What the loader refuses (a Redis cache without a key secret, say) must not first show up in a pod's log.
    sidecar = container(inbox_pod(), "egress-sidecar")
    environ = {e["name"]: e.get("value", f"<{e['name']} from a Secret>") for e in sidecar["env"]}
    assert load_policy(PRODUCTION_POLICY, environ).cache.backend == "redis"
    redis_url = urlsplit(environ["REDIS_URL"])
    service = one("Service", redis_url.hostname or "")
    assert redis_url.port in {p["port"] for p in service["spec"]["ports"]}
    redis = one("Deployment", "redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert redis["spec"]["selector"]["matchLabels"] == redis["spec"]["template"]["metadata"]["labels"]
    [redis_container] = redis["spec"]["template"]["spec"]["containers"]
    assert redis_container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert {"--save", "--appendonly"} <= set(redis_container["args"])  # a cache: nothing on disk


def declared_ports(pod: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in all_containers(pod) for p in c.get("ports", [])}


def test_services_select_the_pods_and_target_declared_ports() -> None:
    pods = {doc["metadata"]["name"]: doc["spec"]["template"] for doc in resources("Deployment")}
    for service in resources("Service"):
        [pod] = [p for p in pods.values() if service["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in declared_ports(pod["spec"]), (service["metadata"]["name"], port)
    # the admin port is not behind any Service (the PodMonitor reaches it at the pod IP)
    assert not [p for s in resources("Service") for p in s["spec"]["ports"] if p["targetPort"] == "admin"]


def alert_jobs() -> set[str]:
    return set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))


def test_prometheus_finds_both_processes_of_the_pod() -> None:
    template = one("Deployment", "inbox-backend")["spec"]["template"]
    pod, labels, annotations = template["spec"], template["metadata"]["labels"], template["metadata"]["annotations"]
    ports = declared_ports(pod)
    assert ports == {"admin": 9901, "http": 8000}
    # The annotations: one port, a declared one.
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) in ports.values()
    assert annotations["prometheus.io/path"] == "/metrics"
    # The PodMonitor: both, by port name, each with the job name the alerts use.
    [monitor] = resources("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert sorted(e["port"] for e in endpoints) == sorted(ports)
    assert all(e["path"] == "/metrics" for e in endpoints)
    jobs = {e["port"]: r["replacement"] for e in endpoints for r in e["relabelings"] if r["targetLabel"] == "job"}
    assert jobs == {"http": "inbox-backend", "admin": "egress-sidecar"}
    assert alert_jobs() <= set(jobs.values())


# --- compose ---------------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    [doc] = documents(COMPOSE)
    return doc


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    deps = service.get("depends_on", {})
    return {name: {"condition": "service_started"} for name in deps} if isinstance(deps, list) else deps


def test_compose_runs_the_sidecar_in_the_backends_network_namespace() -> None:
    services = compose()["services"]
    assert set(services) == {"backend", "sidecar", "simulator", "redis", "prometheus"}
    assert services["sidecar"]["network_mode"] == "service:backend"
    assert services["sidecar"]["command"][:3] == ["python", "-m", "proxy"]
    assert services["backend"]["command"] == ["python", "-m", "inbox_backend"]


def test_compose_starts_each_service_once_what_it_needs_is_healthy() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, how in depends_on(service).items():
            assert dependency in services, (name, dependency)
            if how["condition"] == "service_healthy":
                assert "test" in services[dependency]["healthcheck"], (name, dependency)
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    sidecar = depends_on(services["sidecar"])
    assert sidecar["redis"]["condition"] == "service_healthy"
    assert sidecar["simulator"]["condition"] == "service_healthy"
    # Its network namespace: started is all it can wait for (the backend is healthy only once the sidecar is up).
    assert sidecar["backend"]["condition"] == "service_started"
    assert depends_on(services["backend"])["simulator"]["condition"] == "service_healthy"
    assert {d: h["condition"] for d, h in depends_on(services["prometheus"]).items()} == {
        "backend": "service_healthy", "sidecar": "service_healthy"}
    # The checks ask the endpoints that mean ready: the sidecar's /ready, the backend's /health.
    assert "9901/ready" in " ".join(services["sidecar"]["healthcheck"]["test"])
    assert "8000/health" in " ".join(services["backend"]["healthcheck"]["test"])


def test_the_sidecar_environment_of_compose_makes_a_valid_production_policy() -> None:
    environment = compose()["services"]["sidecar"]["environment"]
    policy = load_policy(PRODUCTION_POLICY, {k: str(v) for k, v in environment.items()})
    assert policy.cache.backend == "redis"
    assert urlsplit(environment["REDIS_URL"]).hostname in compose()["services"]


def prometheus_mounts() -> dict[str, Path]:
    volumes = compose()["services"]["prometheus"]["volumes"]
    return {target: (DEPLOY / source).resolve() for source, target, _ in (v.split(":") for v in volumes)}


def test_compose_prometheus_scrapes_both_at_the_backends_hostname_with_the_repos_alerts() -> None:
    mounts = prometheus_mounts()
    assert mounts["/etc/prometheus/alerts.yml"] == ALERTS
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = {job["job_name"]: t for job in config["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {"egress-sidecar": "backend:9901", "inbox-backend": "backend:8000"}
    assert alert_jobs() <= set(targets)
    # the sidecar listens for admin on the port scraped, in the backend's namespace
    assert compose()["services"]["sidecar"]["environment"]["EGRESS_ADMIN"].endswith(":9901")


def has_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not has_docker_compose(), reason="`docker compose` is not installed: only the structural "
                    "compose checks ran")
def test_docker_compose_accepts_the_file() -> None:
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    # Laid out as the container sees it: the config with alerts.yml beside it.
    for target, source in prometheus_mounts().items():
        shutil.copy(source, tmp_path / Path(target).name)
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 1 rule files found" in done.stdout + done.stderr
