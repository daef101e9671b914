"""The deployment files under deploy/: they parse, agree with each other and with the relay.

Needs PyYAML (the `test` extra) and, for the alert rules, `promtool` (Debian's `prometheus`
package, installed by .ci/run). Without promtool those tests fail under CI (CI=true) and skip
elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.ops.envfile import env_variables
from tests.support.paths import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"

# What the relay exports (prometheus-client). Histograms are listed by their base name.
EXPORTED_METRICS = frozenset(
    {
        "relay_last_event_age_seconds",
        "relay_listener_up",
        "relay_listener_reconnects_total",
        "relay_events_total",
        "relay_deliveries_total",
        "relay_drops_total",
        "relay_resets_total",
        "relay_connections",
        "relay_connections_total",
        "relay_auth_failures_total",
        "relay_delivery_lag_seconds",
        "relay_log_backlog",
        "relay_sequencer_leader",
    }
)
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\brelay_[a-z_]+")

# The settings the relay reads: RELAY_* and DATABASE_URL (relay/ops/config.py), RELAY_SQL_DIR
# (relay/ops/datafiles.py).
# Every environment variable the relay reads: its settings, plus where the SQL files are.
SETTINGS = frozenset({*env_variables(), "RELAY_SQL_DIR"})

ALERTS = frozenset(
    {
        "RelayListenerDown",
        "RelayPipelineStale",
        "RelayReconnectStorm",
        "RelayDeliveryLagHigh",
        "RelayDropsHigh",
        "RelayNoSequencer",
        "RelaySequencerSplit",
    }
)

POD_LABELS = {"app.kubernetes.io/name": "pgrelay", "app.kubernetes.io/component": "relay"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def metric_names(text: str) -> set[str]:
    names = set()
    for name in METRIC_NAME.findall(text):
        for suffix in HISTOGRAM_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return names


def deployment() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(K8S / "deployment.yaml")
    return doc


def relay_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment()["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    assert container["name"] == "relay"
    return container


def container_env() -> dict[str, Any]:
    return {item["name"]: item for item in relay_container()["env"]}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(DEPLOY / "docker-compose.yml")
    return doc


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana" / "relay-dashboard.json").read_text())
    return doc


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]
    ]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    instructions = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line.strip()).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() in {"true", "1"}:
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is missing (apt-get install prometheus); CI requires it")
    return path


# --- every file ---------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses_to_mappings() -> None:
    """Every .yml/.yaml under deploy/ is valid YAML whose documents are all mappings."""
    paths = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
    assert [p.relative_to(DEPLOY).as_posix() for p in paths] == [
        "docker-compose.yml",
        "k8s/deployment.yaml",
        "k8s/kustomization.yaml",
        "k8s/networkpolicy.yaml",
        "k8s/pdb.yaml",
        "k8s/podmonitor.yaml",
        "k8s/secret.example.yaml",
        "k8s/service.yaml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "prometheus/prometheus.yml",
    ]
    for path in paths:
        documents = list(yaml.safe_load_all(path.read_text()))
        assert len(documents) == 1, path
        assert isinstance(documents[0], dict), path


def test_deploy_files_only_set_settings_the_relay_reads() -> None:
    """The Dockerfile, compose file and Deployment set no RELAY_* variable the relay ignores."""
    names = set(re.findall(r"\bRELAY_[A-Z_]+", (DEPLOY / "Dockerfile").read_text()))
    relay = compose()["services"]["relay-1"]
    names |= {n for n in relay["environment"] if n.startswith("RELAY_")}
    names |= {n for n in container_env() if n.startswith("RELAY_")}
    assert names - SETTINGS == set()


def test_env_example_lists_every_setting_once() -> None:
    """relay.env.example names each setting exactly once (set or commented out) and no other."""
    text = (DEPLOY / "relay.env.example").read_text()
    assigned = re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE)
    assert sorted(assigned) == sorted(SETTINGS)


# --- Dockerfile ---------------------------------------------------------------------------


def test_dockerfile_builds_a_wheel_and_runs_it_as_non_root_relay_serve() -> None:
    """The image is multi-stage on python:3.11-slim, non-root, on 8080 (metrics 9480), `relay
    serve`, SIGTERM."""
    instructions = dockerfile_instructions()
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in instructions
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    runs = [args for keyword, args in instructions if keyword == "RUN"]
    assert "python -m pip wheel --wheel-dir /wheels ." in runs
    (install,) = [run for run in runs if "pip install" in run]
    assert install.endswith("python -m pip install --no-index --find-links /wheels pgrelay")
    assert "embedded" not in install
    assert ("COPY", "sql /app/sql") in instructions
    assert ("USER", "10001:10001") in instructions
    assert ("EXPOSE", "8080") in instructions
    assert ("EXPOSE", "9480") in instructions
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert instructions[-2:] == [("ENTRYPOINT", '["relay"]'), ("CMD", '["serve"]')]


def healthcheck_command() -> list[str]:
    (args,) = [args for keyword, args in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    _, _, command = args.partition(" CMD ")
    argv: list[str] = json.loads(command)
    return argv


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_dockerfile_healthcheck_exits_by_the_healthz_status(status: int, exit_code: int) -> None:
    """The HEALTHCHECK command GETs /healthz on RELAY_PORT and exits 0 on 200, 1 on 503."""
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = healthcheck_command()
        assert argv[:2] == ["python", "-c"]
        env = {k: v for k, v in os.environ.items() if k != "RELAY_TLS_CERT"}
        env["RELAY_PORT"] = str(server.server_address[1])
        result = subprocess.run(
            [sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30, check=False
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert result.returncode == exit_code, result.stderr
    assert paths == ["/healthz"]


# --- docker compose -----------------------------------------------------------------------


def test_compose_runs_two_relay_replicas_and_prometheus() -> None:
    """Compose runs relay-1 and relay-2 from the repo's image (default `serve`) plus Prometheus."""
    services = compose()["services"]
    relays = {name for name, svc in services.items() if svc.get("image") == "pgrelay:dev"}
    assert relays == {"init", "relay-1", "relay-2"}
    for name in ("relay-1", "relay-2"):
        relay = services[name]
        assert "command" not in relay
        assert relay["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert relay["environment"]["DATABASE_URL"] == "postgresql://relay:relay@postgres:5432/app"
        assert relay["environment"]["RELAY_JWT_SECRET"].startswith("${RELAY_JWT_SECRET:-")
        assert relay["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
            "init-example": {"condition": "service_completed_successfully"},
        }
    assert services["relay-1"]["ports"] == ["127.0.0.1:8081:8080"]
    assert services["relay-2"]["ports"] == ["127.0.0.1:8082:8080"]
    assert services["prometheus"]["volumes"] == [
        "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
        "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro",
    ]


def test_compose_postgres_16_tracks_commit_timestamps() -> None:
    """Compose's PostgreSQL is 16 with track_commit_timestamp=on."""
    postgres = compose()["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["command"] == ["postgres", "-c", "track_commit_timestamp=on"]


def test_compose_installs_the_schema_then_the_example() -> None:
    """`relay sql install` runs once, then psql applies the thumbnails/generations example."""
    services = compose()["services"]
    assert services["init"]["command"][:2] == ["sql", "install"]
    assert services["init"]["restart"] == "no"
    example = services["init-example"]
    assert example["image"] == "postgres:16"
    assert example["volumes"] == ["../sql:/sql:ro"]
    assert example["command"][:5] == [
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-f",
        "/sql/examples/thumbnails_generations.sql",
    ]
    assert example["depends_on"] == {"init": {"condition": "service_completed_successfully"}}


def test_compose_paths_exist() -> None:
    """Every build context, Dockerfile and bind-mount source in compose exists in the repo."""
    services = compose()["services"]
    for svc in services.values():
        if "build" in svc:
            context = DEPLOY / svc["build"]["context"]
            assert (context / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), volume


def test_compose_prometheus_scrapes_both_replicas_and_loads_the_alerts() -> None:
    """prometheus.yml scrapes /metrics on the metrics port 9480 of both replicas (not on the
    clients' 8080) and loads alerts.yml."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "relay"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["relay-1:9480", "relay-2:9480"]}]


# --- Kubernetes ---------------------------------------------------------------------------


def test_deployment_runs_three_replicas_of_relay_serve() -> None:
    """The Deployment runs 3 replicas of `relay serve` on container port 8080, metrics on 9480."""
    spec = deployment()["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"]["matchLabels"] == POD_LABELS
    assert spec["template"]["metadata"]["labels"] == POD_LABELS
    container = relay_container()
    assert container["args"] == ["serve"]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9480, "protocol": "TCP"},
    ]
    assert container_env()["RELAY_METRICS_PORT"]["value"] == "9480"


def test_deployment_probes_readyz_and_healthz() -> None:
    """Readiness probes /readyz and liveness /healthz, both on the 9480 `metrics` port (bounded
    apart from the clients' sockets)."""
    container = relay_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def test_deployment_runs_non_root_with_a_read_only_root() -> None:
    """Pods run as the image's uid 10001, non-root, read-only root, no privilege escalation."""
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    security = relay_container()["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert relay_container()["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_deployment_drains_before_sigterm_within_the_grace_period() -> None:
    """preStop sleeps 5 s, and that plus the 10 s shutdown fits the 30 s grace period."""
    pod = deployment()["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 30
    assert relay_container()["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert container_env()["RELAY_SHUTDOWN_TIMEOUT"]["value"] == "10s"
    assert 5 + 10 < pod["terminationGracePeriodSeconds"]


def test_deployment_reads_credentials_from_the_secret() -> None:
    """DATABASE_URL and RELAY_JWT_SECRET come from keys that secret.example.yaml defines."""
    secret = load_yaml(K8S / "secret.example.yaml")
    env = container_env()
    for name, key in (("DATABASE_URL", "database-url"), ("RELAY_JWT_SECRET", "jwt-secret")):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": key,
        }
    assert sorted(secret["stringData"]) == ["database-url", "jwt-secret"]


def test_deployment_sets_resources_and_spreads_replicas() -> None:
    """Requests and limits are set, and replicas spread over nodes (hard) and zones (soft)."""
    assert relay_container()["resources"] == {
        "requests": {"cpu": "250m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    spread = deployment()["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in spread] == [
        ("kubernetes.io/hostname", "DoNotSchedule"),
        ("topology.kubernetes.io/zone", "ScheduleAnyway"),
    ]
    assert all(c["labelSelector"]["matchLabels"] == POD_LABELS for c in spread)


def test_service_pdb_policy_and_monitor_select_the_relay_pods() -> None:
    """Service, PDB, NetworkPolicy and PodMonitor all select exactly the relay pods; the Service
    carries only the clients' port, the PodMonitor scrapes the pods' metrics port."""
    service = load_yaml(K8S / "service.yaml")
    assert service["spec"]["selector"] == POD_LABELS
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pdb = load_yaml(K8S / "pdb.yaml")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": POD_LABELS}}
    policy = load_yaml(K8S / "networkpolicy.yaml")
    assert policy["spec"]["podSelector"] == {"matchLabels": POD_LABELS}
    monitor = load_yaml(K8S / "podmonitor.yaml")
    assert monitor["kind"] == "PodMonitor"
    assert monitor["spec"]["selector"] == {"matchLabels": POD_LABELS}
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s"}
    ]


def test_networkpolicy_allows_8080_and_9480_in_and_postgres_and_dns_out() -> None:
    """Ingress only on TCP 8080 and 9480 (metrics); egress only to TCP 5432 and DNS (53)."""
    spec = load_yaml(K8S / "networkpolicy.yaml")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}]},
        {"ports": [{"port": 9480, "protocol": "TCP"}]},
    ]
    assert spec["egress"] == [
        {"ports": [{"port": 5432, "protocol": "TCP"}]},
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
    ]


def test_kustomization_lists_the_manifests_with_podmonitor_optional() -> None:
    """kustomization.yaml applies the four core manifests; PodMonitor is commented out."""
    path = K8S / "kustomization.yaml"
    resources = load_yaml(path)["resources"]
    assert resources == ["deployment.yaml", "service.yaml", "pdb.yaml", "networkpolicy.yaml"]
    assert all((K8S / name).is_file() for name in resources)
    assert "  # - podmonitor.yaml\n" in path.read_text()


# --- alerts and dashboard -----------------------------------------------------------------


def test_listed_metrics_are_the_ones_relay_metrics_registers() -> None:
    """Every metric the deploy files may use is registered by relay.ops.metrics.Metrics."""
    from relay.ops.metrics import Metrics

    registered = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in Metrics().registry.collect()
    }
    assert EXPORTED_METRICS - registered == set()


def test_alerts_yml_uses_only_exported_metrics() -> None:
    """Every relay_* name in alerts.yml (expressions and text) is a metric the relay exports."""
    names = metric_names((PROMETHEUS / "alerts.yml").read_text())
    assert names - EXPORTED_METRICS == set()
    assert "relay_sequencer_leader" in names


def test_alerts_are_labelled_and_annotated() -> None:
    """The seven alerts each have a `for`, a severity, and summary/description/one-line runbook."""
    rules = alert_rules()
    assert sorted(rule["alert"] for rule in rules) == sorted(ALERTS)
    for rule in rules:
        assert re.fullmatch(r"\d+m", rule["for"]), rule["alert"]
        assert rule["labels"] == {"severity": rule["labels"]["severity"]}
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert sorted(rule["annotations"]) == ["description", "runbook", "summary"]
        assert "\n" not in rule["annotations"]["runbook"], rule["alert"]


def test_alert_unit_tests_fire_and_stay_quiet_for_every_alert() -> None:
    """alerts_test.yml has a firing and a not-firing case for each alert."""
    tests = load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert firing == ALERTS
    assert quiet == ALERTS


@pytest.mark.parametrize(
    ("command", "file"),
    [("check", "alerts.yml"), ("test", "alerts_test.yml")],
    ids=["check_rules_accepts_alerts", "unit_tests_pass"],
)
def test_promtool_rules(command: str, file: str) -> None:
    """`promtool check rules` accepts alerts.yml; `promtool test rules` passes every case in alerts_test.yml."""
    result = subprocess.run(
        [promtool(), command, "rules", f"deploy/prometheus/{file}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_only_exported_metrics_and_charts_them_all() -> None:
    """The dashboard's queries name exactly the exported metrics, every one of them."""
    names = set().union(*(metric_names(query) for query in dashboard_queries()))
    assert names == EXPORTED_METRICS


def test_dashboard_takes_its_datasource_from_a_variable() -> None:
    """schemaVersion 39; every panel and query uses the ${datasource} Prometheus variable."""
    board = dashboard()
    assert board["schemaVersion"] == 39
    (variable,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    source = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in dashboard_panels() if p["type"] != "row"]
    assert all(p["datasource"] == source for p in panels)
    assert all(t["datasource"] == source for p in panels for t in p["targets"])
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids))
