"""deploy/: the alert rules and Prometheus's configuration pass promtool (Debian's
`prometheus` package; `just test` and `.ci/run` install it), each alert fires on the
series that should fire it (`promtool test rules`), the dashboard's queries parse, and
every metric the dashboard and the rules query is one a running gateway exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.support import Gateway

DEPLOY = Path(__file__).parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "painar-gateway.json"

# Series Prometheus makes itself, not the gateway.
PROMETHEUS_OWN = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}


def promtool(*args: str, cwd: Path = DEPLOY) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `apt-get install prometheus` (just test does it)"
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert len(queries) > 20
    return queries


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def concrete(query: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Prometheus would get it."""
    return query.replace("$__rate_interval", "1m").replace("$instance", ".*")


def metric_names(query: str) -> set[str]:
    stripped = re.sub(r'"[^"]*"', "", query)  # label values
    stripped = re.sub(r"\{[^}]*\}", "", stripped)  # label matchers
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)  # groupings
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)  # ranges
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", stripped):
        if found[1] is None and found[0].lower() not in PROMQL_WORDS:
            names.add(found[0])
    return names


def exported(text: str) -> set[str]:
    """Every series name /metrics can carry, from its TYPE lines (a labelled metric is
    declared before its first sample)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("_sum", "_count", "_created", ""),
    }
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        if kind == "counter":
            name = name.removesuffix("_total")  # written with or without it, by version
        names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def test_the_alert_rules_and_prometheus_config_pass_promtool() -> None:
    assert "SUCCESS: 11 rules found" in promtool("check", "rules", str(RULES))
    promtool("check", "config", "prometheus/prometheus.yml")
    # Each alert fires on a broken deployment's series and not on a healthy one's.
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")


def test_every_alert_has_a_runbook_line() -> None:
    operations = (DEPLOY.parent / "docs" / "operations.md").read_text()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (rule for group in groups for rule in group["rules"]):
        assert f"`{rule['alert']}`" in operations, f"no runbook line for {rule['alert']}"
        assert rule["annotations"]["runbook"].endswith(rule["alert"])


def test_the_dashboards_queries_parse(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": concrete(query)}
                    for n, query in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool("check", "rules", str(path))


async def test_every_metric_the_dashboard_and_the_rules_query_is_exported(
    gateway: Gateway,
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    available = exported(response.text)
    assert "gateway_ready 1.0" in response.text  # evaluated at the scrape
    queried: set[str] = set()
    for query in [*dashboard_queries(), *rule_queries()]:
        queried |= metric_names(query)
    assert "fanout_delivery_seconds_bucket" in queried and "websocket_connections_open" in queried
    missing = sorted(queried - available - PROMETHEUS_OWN)
    assert not missing, f"queried but not exported by the gateway: {missing}"


def test_the_compose_file_mounts_what_the_repository_has() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"gateway-a", "gateway-b", "postgres", "redis", "prometheus", "grafana"} <= set(services)
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which is missing"
