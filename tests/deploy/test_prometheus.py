"""The alerting rules and the dashboard: promtool, the metric names they use, and a real Prometheus.

Needs the ``prometheus`` system package (``promtool`` and ``prometheus``); ``.ci/run``
installs it with apt-get.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from histoedge.serving.client import InferenceClient
from histoedge.serving.schema import Tensor
from histoedge.serving.server import InferenceServer
from histoedge.serving.settings import ServerSettings
from tests.serving.helpers import free_port, sample_images
from tests.support.model_packages import write_model_version

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "histoedge-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "histoedge-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "histoedge-dashboard.json"


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: install the 'prometheus' system package (apt-get install prometheus)")
    return path


def test_promtool_checks_and_rule_tests_pass():
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                          capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


@pytest.fixture
def busy_server(tmp_path):
    """A server with a profiled model that has answered, abstained and received feedback."""
    images = sample_images(64, seed=2)
    write_model_version(tmp_path / "models", "tiny", 1, profile_images=images, uncertainty_band=(0.4, 0.6))
    settings = ServerSettings(repo=tmp_path / "models", host="127.0.0.1", port=0, http_port=0,
                              metrics_port=free_port(), poll_seconds=0, threads=1)
    server = InferenceServer(settings, CollectorRegistry()).start()
    try:
        with InferenceClient(f"127.0.0.1:{server.port}") as client:
            for start in range(0, 64, 8):
                client.infer([Tensor("image", "UINT8", images[start:start + 8])], "tiny", abstain=True)
                client.feedback(client.last_id, ("benign", "malignant")[start // 8 % 2])
        yield server
    finally:
        server.stop(grace=1)


def _names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bhistoedge_[a-z_]+\b", expression))


def test_rules_and_dashboard_use_metrics_the_server_exports(busy_server):
    exported = set(re.findall(r"^(histoedge_[a-z_]+)", generate_latest(busy_server.metrics.registry).decode(),
                              re.MULTILINE))
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    used = set().union(*(_names_in(rule["expr"]) for rule in rules))
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used |= set().union(*(_names_in(expr) for expr in targets))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    assert {"histoedge_drift_psi", "histoedge_quality_failures_total", "histoedge_feedback_sensitivity",
            "histoedge_request_seconds_bucket", "histoedge_batch_size_bucket"} <= used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_real_prometheus_scrapes_the_drift_metric(tmp_path, busy_server):
    prometheus = _tool("prometheus")
    metrics_port, web_port = busy_server.settings.metrics_port, free_port()
    shutil.copy(RULES, tmp_path / RULES.name)
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES.name}]\n"
        "scrape_configs:\n"
        f"  - job_name: histoedge\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    process = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web_port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    api = f"http://127.0.0.1:{web_port}/api/v1"
    query = 'histoedge_drift_psi{model="tiny",feature="focus",window="count"}'
    try:
        deadline, result = time.monotonic() + 60, []
        while time.monotonic() < deadline and not result:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                result = _get(f"{api}/query?query={urllib.parse.quote(query)}")["data"]["result"]
            except OSError:
                pass
            time.sleep(0.3)
        assert result, f"no drift series scraped:\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        expected = busy_server.metrics.registry.get_sample_value(
            "histoedge_drift_psi", {"model": "tiny", "version": "1", "feature": "focus", "window": "count"})
        assert result[0]["metric"]["job"] == "histoedge" and result[0]["metric"]["version"] == "1"
        assert float(result[0]["value"][1]) == pytest.approx(expected)
        rules = _get(f"{api}/rules")["data"]["groups"][0]["rules"]
        assert len(rules) == 6 and all(rule["health"] != "err" for rule in rules)
        sensitivity = _get(f"{api}/query?query=histoedge_feedback_sensitivity")["data"]["result"]
        assert sensitivity and np.isfinite(float(sensitivity[0]["value"][1]))
    finally:
        process.terminate()
        process.wait(timeout=20)
