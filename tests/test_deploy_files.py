"""Static checks of deploy/: compose, nginx, Dockerfile and Kubernetes manifests.

No container engine is needed: the files are parsed and cross-checked against the code
(config keys, CLI subcommands, the Kafka version of the dev stack).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tracker import config as configmod
from tracker import devstack

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
SUBCOMMANDS = {"run", "collector", "worker", "sink", "migrate", "init", "dev"}
# SKVOZ_* variables read by the code that are not config keys.
NON_CONFIG_VARS = {"SKVOZ_CONFIG", "SKVOZ_LOG_LEVEL"}
COLLECTOR_PORT = 8080


# -- helpers -------------------------------------------------------------------------------------


def known_env_vars() -> set[str]:
    """Every SKVOZ_* name tracker.config.apply_env reads, derived from the Config model."""
    names = set()
    for name, info in configmod.Config.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, configmod._Section):
            names |= {f"SKVOZ_{name}_{key}".upper() for key in ann.model_fields}
        else:
            names.add(f"SKVOZ_{name}".upper())
    return names


def check_env_names(names, where: str) -> None:
    known = known_env_vars() | NON_CONFIG_VARS
    unknown = sorted(n for n in names if n.startswith("SKVOZ_") and n not in known)
    assert not unknown, f"{where}: {unknown} are not config keys (known: {sorted(known)})"


def check_env_values(env: dict[str, str], where: str) -> None:
    """The values must also pass the config's own parsing and validation."""
    env = {k: v for k, v in env.items() if k.startswith("SKVOZ_") and k not in NON_CONFIG_VARS}
    env.setdefault("SKVOZ_PII_KEY", "x" * 32)
    try:
        configmod.Config.model_validate(configmod.apply_env({}, env))
    except Exception as e:  # pydantic ValidationError or JSON error: say where
        pytest.fail(f"{where}: SKVOZ_* values do not validate: {e}")


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR} as with an empty environment, except that
    a required or plain variable becomes "x" (some value, as a deployment would have)."""

    def sub(m: re.Match) -> str:
        op, arg = m.group(2), m.group(3)
        return arg if op and "-" in op else "x"

    return _INTERP.sub(sub, value)


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def load_k8s() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def skvoz_command(cmd, where: str) -> str:
    assert isinstance(cmd, list) and len(cmd) >= 2, f"{where}: command must be a list [skvoz, sub]: {cmd!r}"
    assert cmd[0] == "skvoz", f"{where}: command must start with skvoz: {cmd!r}"
    assert cmd[1] in SUBCOMMANDS, f"{where}: unknown subcommand {cmd[1]!r}"
    return cmd[1]


# -- the checkers themselves must catch mistakes ---------------------------------------------------


def test_env_check_rejects_unknown_keys():
    check_env_names(["SKVOZ_KAFKA_BOOTSTRAP", "SKVOZ_REDIS_URL", "SKVOZ_PROJECTS"], "ok")
    with pytest.raises(AssertionError, match="SKVOZ_KAFKA_BOOTSTRAPS"):
        check_env_names(["SKVOZ_KAFKA_BOOTSTRAPS"], "typo")
    with pytest.raises(AssertionError):
        check_env_names(["SKVOZ_REDIS_HOST"], "no such key")
    with pytest.raises(pytest.fail.Exception):
        check_env_values({"SKVOZ_SERVER_PORT": "eighty"}, "bad value")


def test_non_config_vars_are_really_read_by_the_code():
    code = "\n".join(p.read_text() for p in (ROOT / "tracker").glob("*.py"))
    for name in NON_CONFIG_VARS:
        assert name in code, f"{name} is allow-listed but nothing in tracker/ reads it"


def test_interpolate():
    assert interpolate("${A:-8}") == "8"
    assert interpolate("http://u:${P:?set it}@h:1") == "http://u:x@h:1"
    assert interpolate("${CONFIG_FILE:-../skvoz.toml}:/etc/x") == "../skvoz.toml:/etc/x"


# -- compose ---------------------------------------------------------------------------------------


def test_compose_services_and_images():
    services = load_compose()["services"]
    required = {"kafka", "clickhouse", "redis", "nginx", "migrate", "collector-1", "collector-2", "worker", "sink"}
    assert required <= set(services), f"missing services: {required - set(services)}"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["nginx"]["image"].startswith("nginx:")
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), f"{name}: neither image nor build"


def test_compose_skvoz_commands():
    services = load_compose()["services"]
    roles = {}
    for name, svc in services.items():
        if "command" in svc and str(svc.get("image", "")).startswith("skvoz"):
            roles[name] = skvoz_command(svc["command"], f"compose service {name}")
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (ROOT / "deploy" / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile")
    assert roles == {
        "migrate": "migrate", "collector-1": "collector", "collector-2": "collector",
        "worker": "worker", "sink": "sink",
    }
    assert services["migrate"]["restart"] == "no", "migrate is a one-shot"


def test_compose_env_vars_are_config_keys():
    services = load_compose()["services"]
    for name, svc in services.items():
        env = compose_env(svc)
        check_env_names(env, f"compose service {name}")
        if any(k.startswith("SKVOZ_") for k in env):
            check_env_values({k: interpolate(v) for k, v in env.items()}, f"compose service {name}")
            assert "SKVOZ_KAFKA_BOOTSTRAP" in env and "SKVOZ_PII_KEY" in env, name


def test_compose_ports_depends_and_volumes():
    doc = load_compose()
    services = doc["services"]
    volumes = set(doc.get("volumes") or {})
    for name, svc in services.items():
        for p in svc.get("ports", []):
            parts = interpolate(str(p)).split("/")[0].split(":")
            assert all(x.isdigit() and 0 < int(x) < 65536 for x in parts), f"{name}: bad port {p!r}"
        for p in svc.get("expose", []):
            assert str(p).isdigit(), f"{name}: bad expose {p!r}"
        deps = svc.get("depends_on") or {}
        for dep, cond in (deps.items() if isinstance(deps, dict) else ((d, None) for d in deps)):
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name
            if cond:
                assert cond["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy, but it has no healthcheck"
        for v in svc.get("volumes", []):
            src = interpolate(str(v)).split(":")[0]
            if not src.startswith((".", "/")):
                assert src in volumes, f"{name}: named volume {src!r} not declared"
    assert services["nginx"]["volumes"][0].startswith("./nginx.conf:")
    assert any(str(p).endswith(f":{COLLECTOR_PORT}") for p in services["nginx"]["ports"])


def test_compose_kafka_is_kraft_and_matches_the_dev_broker():
    kafka = load_compose()["services"]["kafka"]
    env = compose_env(kafka)
    assert kafka["image"] == f"apache/kafka:{devstack.KAFKA_VERSION}"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "ZOOKEEPER" not in " ".join(env).upper()
    cid = interpolate(env["CLUSTER_ID"])
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16, "CLUSTER_ID must be a base64url 16-byte id"
    listeners = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:9092" in listeners
    for name, svc in load_compose()["services"].items():
        boot = compose_env(svc).get("SKVOZ_KAFKA_BOOTSTRAP")
        if boot:
            assert boot == "kafka:9092", f"{name} points at {boot}, not the advertised listener"


def test_pom_kafka_version_matches_devstack():
    pom = (DEPLOY / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{devstack.KAFKA_VERSION}</kafka.version>" in pom
    assert devstack.KAFKA_VERSION.split(".")[0] == "4", "KRaft-only Kafka 4.x"


# -- nginx -----------------------------------------------------------------------------------------


def nginx_upstreams(text: str) -> dict[str, list[tuple[str, int]]]:
    text = re.sub(r"#[^\n]*", "", text)
    ups = {}
    for m in re.finditer(r"upstream\s+(\S+)\s*\{([^}]*)\}", text):
        servers = re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)", m.group(2), re.M)
        ups[m.group(1)] = [(h, int(p)) for h, p in servers]
    return ups


def test_nginx_upstreams_are_compose_collectors():
    text = (DEPLOY / "nginx.conf").read_text()
    services = load_compose()["services"]
    ups = nginx_upstreams(text)
    assert ups, "no upstream block"
    collectors = {n for n, s in services.items() if s.get("command") == ["skvoz", "collector"]}
    hosts = set()
    for name, servers in ups.items():
        assert servers, f"upstream {name} has no servers"
        for host, port in servers:
            assert host in services, f"nginx upstream {name}: {host!r} is not a compose service"
            assert port == COLLECTOR_PORT
            hosts.add(host)
        assert re.search(rf"proxy_pass\s+http://{re.escape(name)}\s*;", text), f"upstream {name} unused"
    assert hosts == collectors, "every collector behind nginx, and nothing else"
    assert re.search(r"listen\s+8080\s*;", text)


def test_nginx_upstream_parser_catches_a_wrong_name():
    ups = nginx_upstreams("upstream a { server collector-3:8080; }")
    assert ups == {"a": [("collector-3", 8080)]}
    assert "collector-3" not in load_compose()["services"]


@pytest.mark.skipif(not shutil.which("nginx"), reason="nginx not installed")
def test_nginx_config_syntax(tmp_path):
    # nginx -t resolves upstream host names, so check a copy pointed at loopback.
    text = (DEPLOY / "nginx.conf").read_text()
    for host in {h for s in nginx_upstreams(text).values() for h, _ in s}:
        text = re.sub(rf"\bserver\s+{re.escape(host)}:", "server 127.0.0.1:", text)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\n" + text)
    r = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "err.log")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install '.[scale]'" in text
    for src in ("pyproject.toml", "tracker", "streams", "sink"):
        assert re.search(rf"^COPY .*\b{re.escape(src)}\b", text, re.M), f"{src} not copied"
        assert (ROOT / src).exists()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    skvoz_command(cmd, "Dockerfile CMD")
    assert re.search(r"^USER (?!root)\S+", text, re.M), "run as non-root"
    assert f"EXPOSE {COLLECTOR_PORT}" in text


# -- Kubernetes ------------------------------------------------------------------------------------


def k8s_by_kind() -> dict[str, list[dict]]:
    kinds: dict[str, list[dict]] = {}
    for _, doc in load_k8s():
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def pod_specs():
    for path, doc in load_k8s():
        if doc["kind"] in ("Deployment", "Job"):
            yield path, doc, doc["spec"]["template"]["spec"]


def test_k8s_documents_are_well_formed():
    docs = load_k8s()
    assert docs
    kinds = k8s_by_kind()
    for kind in ("Namespace", "ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "Job"):
        assert kind in kinds, f"no {kind} in deploy/k8s"
    ns = kinds["Namespace"][0]["metadata"]["name"]
    seen = set()
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        meta = doc["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]), f"{path}: bad name {meta['name']}"
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == ns, f"{path}: {doc['kind']}/{meta['name']} not in namespace {ns}"
        key = (doc["kind"], meta["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_k8s_deployments_roles_and_references():
    kinds = k8s_by_kind()
    configmaps = {d["metadata"]["name"]: d for d in kinds["ConfigMap"]}
    secrets = {d["metadata"]["name"]: d for d in kinds["Secret"]}
    roles = {}
    for path, doc, spec in pod_specs():
        where = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Deployment":
            sel = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert sel.items() <= labels.items(), f"{where}: selector does not match pod labels"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{where}: unknown ConfigMap"
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{where}: unknown Secret"
        for c in spec["containers"]:
            role = skvoz_command(c["command"], where)
            roles.setdefault(role, []).append(doc)
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: mount of undeclared volume {m['name']}"
            env_names = [e["name"] for e in c.get("env", [])]
            check_env_names(env_names, where)
            check_env_values({e["name"]: e["value"] for e in c.get("env", []) if "value" in e}, where)
            for ef in c.get("envFrom", []):
                if "secretRef" in ef:
                    assert ef["secretRef"]["name"] in secrets, f"{where}: unknown Secret"
                if "configMapRef" in ef:
                    assert ef["configMapRef"]["name"] in configmaps, f"{where}: unknown ConfigMap"
    assert set(roles) == {"collector", "worker", "sink", "migrate"}
    assert all(d["kind"] == "Deployment" for r in ("collector", "worker", "sink") for d in roles[r])
    assert [d["kind"] for d in roles["migrate"]] == ["Job"]


def test_k8s_config_and_secret_validate_as_skvoz_config():
    kinds = k8s_by_kind()
    cm = next(d for d in kinds["ConfigMap"] if "skvoz.toml" in d["data"])
    secret_env = {}
    for s in kinds["Secret"]:
        data = dict(s.get("stringData") or {})
        data.update({k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()})
        check_env_names(data, f"Secret {s['metadata']['name']}")
        secret_env.update(data)
    for c in kinds["ConfigMap"]:
        check_env_names(c.get("data", {}), f"ConfigMap {c['metadata']['name']}")
    toml = tomllib.loads(cm["data"]["skvoz.toml"])
    env = {k: v for k, v in secret_env.items() if k.startswith("SKVOZ_")}
    cfg = configmod.Config.model_validate(configmod.apply_env(toml, env))
    assert cfg.kafka.bootstrap, "scale-out needs [kafka] bootstrap"
    assert cfg.redis.url and cfg.clickhouse.url
    assert cfg.projects, "SKVOZ_PROJECTS in the Secret should define the projects"
    assert cfg.server.port == COLLECTOR_PORT


def test_k8s_worker_replicas_within_partitions():
    kinds = k8s_by_kind()
    cm = next(d for d in kinds["ConfigMap"] if "skvoz.toml" in d["data"])
    partitions = tomllib.loads(cm["data"]["skvoz.toml"])["kafka"]["partitions"]
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    for d in deployments.values():
        role = d["spec"]["template"]["spec"]["containers"][0]["command"][1]
        if role in ("worker", "sink"):
            assert 1 <= d["spec"]["replicas"] <= partitions, f"{role}: replicas above partitions idle"


def test_k8s_services_and_hpa_point_at_collectors():
    kinds = k8s_by_kind()
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    collectors = {
        n for n, d in deployments.items()
        if d["spec"]["template"]["spec"]["containers"][0]["command"] == ["skvoz", "collector"]
    }
    assert collectors
    for svc in kinds["Service"]:
        sel = svc["spec"]["selector"]
        matches = [n for n, d in deployments.items() if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert matches, f"Service {svc['metadata']['name']} selects no pods"
        for port in svc["spec"]["ports"]:
            for n in matches:
                ports = {p.get("name"): p["containerPort"] for c in deployments[n]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                tp = port["targetPort"]
                assert tp in ports or tp in ports.values(), f"Service {svc['metadata']['name']}: targetPort {tp} not on {n}"
    for c in collectors:
        container = deployments[c]["spec"]["template"]["spec"]["containers"][0]
        assert {p["containerPort"] for p in container["ports"]} == {COLLECTOR_PORT}
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for hpa in kinds["HorizontalPodAutoscaler"]:
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in collectors, "the HPA scales collectors only"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s_kustomization_lists_every_file():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl not installed")
def test_k8s_kustomize_builds():
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    built = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert len(built) == len(load_k8s())


# -- README ----------------------------------------------------------------------------------------


def test_readme_scaling_out():
    text = (DEPLOY / "README.md").read_text()
    assert re.search(r"^## Scaling out", text, re.M)
    for must in ("partitions", "consumer lag", "dead-letter", "ClickHouse insert errors"):
        assert must.lower() in text.lower(), f"deploy/README.md should cover {must!r}"
