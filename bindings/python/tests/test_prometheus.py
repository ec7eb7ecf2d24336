"""Metrics through a real Prometheus server (Debian's ``prometheus``, which ``scripts/test.sh``
installs when missing), scraping the endpoint of ``metrics_addr`` on loopback: rows pushed, an
event-time lag, a Kafka consumer lag and the checkpoint histogram come back through
Prometheus's HTTP API with the figures the test put in."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import laminardb
import pyarrow as pa
import pytest
from conftest import kafka_address, services_env


def prometheus_binary() -> str:
    p = shutil.which("prometheus")
    if p:
        return p
    msg = "no prometheus binary: scripts/test.sh installs Debian's prometheus package"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def kafka_broker():
    """The broker, or None outside CI when there is none (the Kafka part is then skipped)."""
    address = kafka_address()
    if address is None and os.environ.get("CI"):
        pytest.fail(f"no Kafka broker: run scripts/services.sh start kafka (it writes LAMINAR_KAFKA to {services_env()})")
    return address


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


class Prometheus:
    """A Prometheus server on loopback scraping ``target`` every second."""

    def __init__(self, tmp: Path, target: str):
        self.port = free_port()
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: laminardb\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(tmp / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (tmp / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready in 60 s"
            time.sleep(0.2)

    def query(self, expr: str):
        """The instant vector of ``expr``: a list of (labels, float value)."""
        q = urllib.parse.urlencode({"query": expr})
        r = get_json(f"http://127.0.0.1:{self.port}/api/v1/query?{q}")
        assert r["status"] == "success", r
        return [(s["metric"], float(s["value"][1])) for s in r["data"]["result"]]

    def wait_for(self, expr: str, ok, timeout=60.0):
        """Polls ``expr`` until ``ok(result)`` holds; returns the result."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.query(expr)
            if res and ok(res):
                return res
            assert time.monotonic() < deadline, f"{expr}: {res} after {timeout} s"
            time.sleep(0.5)

    def targets_up(self):
        r = get_json(f"http://127.0.0.1:{self.port}/api/v1/targets")
        return [t["health"] for t in r["data"]["activeTargets"]]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.mark.timeout(240)
def test_prometheus_scrapes_rows_lags_and_checkpoints(tmp_path):
    prometheus_binary()
    broker = kafka_broker()
    db = laminardb.open(
        str(tmp_path / "db"),
        config={"durability": "checkpoint", "metrics_addr": "127.0.0.1:0", "workers": 1},
    )
    text = db.metrics_text()
    assert "# TYPE laminardb_source_records_total counter" in text
    addr = db.metrics_endpoint()
    assert addr and addr.startswith("127.0.0.1:") and not addr.endswith(":0"), addr
    prom = Prometheus(tmp_path, addr)
    try:
        db.execute(
            "CREATE SOURCE clicks (k BIGINT NOT NULL, ts TIMESTAMP NOT NULL, "
            "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
        )
        db.execute(
            "CREATE MATERIALIZED VIEW per_k AS SELECT k, COUNT(*) AS n, window_start "
            "FROM clicks GROUP BY k, TUMBLE(ts, INTERVAL '10' SECOND)"
        )
        # Event times 120 s in the past: the event-time lag is about two minutes.
        now_us = int(time.time() * 1e6)
        n = 1500
        ts = pa.array([now_us - 120_000_000 + i * 1000 for i in range(n)], pa.timestamp("us"))
        db.insert("clicks", pa.record_batch([pa.array([i % 5 for i in range(n)], pa.int64()), ts], names=["k", "ts"]))
        if broker:
            from confluent_kafka import Producer

            topic = f"prom-{uuid.uuid4().hex[:8]}"
            p = Producer({"bootstrap.servers": broker})
            for i in range(400):
                p.produce(topic, json.dumps({"id": i}).encode())
            assert p.flush(30) == 0
            db.execute(
                f"CREATE SOURCE ev (id BIGINT) FROM KAFKA WITH (topic = '{topic}', "
                f"'properties.bootstrap.servers' = '{broker}', format = 'json', 'scan.startup.mode' = 'earliest-offset')"
            )
        db.checkpoint()
        db.checkpoint()

        prom.wait_for('laminardb_source_records_total{source="clicks"}', lambda r: r[0][1] == n)
        assert prom.targets_up() == ["up"]
        lag = prom.query('laminardb_source_event_time_lag_seconds{source="clicks"}')
        assert len(lag) == 1 and 100 < lag[0][1] < 600, lag
        prom.wait_for("laminardb_checkpoint_duration_seconds_count", lambda r: r[0][1] == 2)
        inf = prom.query('laminardb_checkpoint_size_bytes_bucket{le="+Inf"}')
        assert [v for _, v in inf] == [2.0], inf
        q = prom.query("histogram_quantile(0.5, laminardb_checkpoint_duration_seconds_bucket)")
        assert len(q) == 1 and 0 <= q[0][1] < 30, q
        assert prom.query("laminardb_checkpoints_failed_total")[0][1] == 0
        if broker:
            prom.wait_for('laminardb_source_records_total{source="ev"}', lambda r: r[0][1] == 400)
            # Caught up: the consumer lag of the one partition is 0 records.
            lag = prom.wait_for('laminardb_source_lag_records{source="ev"}', lambda r: r[0][1] == 0)
            assert [m["partition"] for m, _ in lag] == ["0"], lag
    finally:
        prom.stop()
        db.close()
    # The endpoint stops with the database: nothing listens on its port any more.
    with pytest.raises(OSError):
        socket.create_connection(tuple([addr.rsplit(":", 1)[0], int(addr.rsplit(":", 1)[1])]), timeout=2).close()


def test_metrics_addr_is_a_config_key_and_a_bad_one_fails_open():
    assert "metrics_addr" in laminardb.LaminarConfig.keys()
    with pytest.raises(laminardb.LaminarError) as e:
        laminardb.open(":memory:", config={"metrics_addr": "no-such-host.invalid:x"})
    assert "metrics_addr" in str(e.value)
    db = laminardb.open(":memory:")
    assert db.metrics_endpoint() is None
    db.close()
