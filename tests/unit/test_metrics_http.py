"""The /metrics and /healthz endpoint over real HTTP on a loopback port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from lifecycle_common import health, metrics_http
from lifecycle_common.health import Status


def get(url: str, accept: str = "") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    counter = Counter("lifecycle_test_things_total", "Things.", registry=registry)
    state = {"status": Status.OK}

    def report():
        if state["status"] is None:
            raise RuntimeError("check broke")
        return health.report([health.Check("thing", state["status"], "detail")])
    server = metrics_http.MetricsServer("127.0.0.1", 0, registry, report).start()
    yield f"http://127.0.0.1:{server.port}", counter, state
    server.stop()


def test_metrics_in_the_prometheus_text_format(endpoint):
    url, counter, _ = endpoint
    counter.inc(3)
    code, content_type, body = get(url + "/metrics")
    assert code == 200 and content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["lifecycle_test_things"].samples[0].value == 3


def test_openmetrics_when_the_scraper_asks(endpoint):
    url, _, _ = endpoint
    code, content_type, body = get(url + "/metrics", "application/openmetrics-text")
    assert code == 200 and content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


@pytest.mark.parametrize(("status", "code"), [
    (Status.OK, 200), (Status.DEGRADED, 200), (Status.FAILING, 503)])
def test_health_is_json_and_503_only_while_failing(endpoint, status, code):
    url, _, state = endpoint
    state["status"] = status
    got, content_type, body = get(url + "/healthz")
    assert got == code and content_type == "application/json"
    assert json.loads(body) == {"status": status.value,
                                "checks": {"thing": {"status": status.value, "detail": "detail"}}}


def test_a_health_check_that_raises_is_failing(endpoint):
    url, _, state = endpoint
    state["status"] = None
    code, _, body = get(url + "/healthz")
    assert code == 503 and json.loads(body)["status"] == "failing"
    assert "check broke" in json.loads(body)["checks"]["health"]["detail"]


def test_other_paths_are_not_found(endpoint):
    url, _, _ = endpoint
    assert get(url + "/")[0] == 404


def test_a_port_in_use_is_a_bind_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(metrics_http.BindError, match=f"127.0.0.1:{port}"):
            metrics_http.MetricsServer("127.0.0.1", port, CollectorRegistry(),
                                       lambda: health.report([]))


def test_port_zero_turns_the_endpoint_off():
    assert metrics_http.start("127.0.0.1", 0, CollectorRegistry(), lambda: health.report([])) is None


def test_an_ipv6_address_is_served():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    server = metrics_http.MetricsServer("::1", 0, CollectorRegistry(), lambda: health.report([]))
    server.start()
    try:
        code, _, body = get(f"http://[::1]:{server.port}/healthz")
    finally:
        server.stop()
    assert (code, json.loads(body)["status"]) == (200, "ok")
