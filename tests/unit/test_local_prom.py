"""The generated Prometheus scrape config and the binary lookup."""

from __future__ import annotations

import pytest
from mlrollout.operator.local.prom import (
    PrometheusMissingError,
    ScrapeTarget,
    find_prometheus,
    prom_duration,
    scrape_config,
)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1.0, "1s"), (15, "15s"), (0.5, "500ms"), (0.25, "250ms"), (2.5, "2500ms")],
)
def test_prom_duration(seconds: float, text: str) -> None:
    assert prom_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, -1])
def test_prom_duration_rejects_non_positive(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        prom_duration(seconds)


def test_each_target_keeps_its_own_labels() -> None:
    targets = [
        ScrapeTarget("127.0.0.1:9002", {"namespace": "local", "deployment": "fraud"}),
        ScrapeTarget("127.0.0.1:9001", {"namespace": "local", "deployment": "fraud"}),
        ScrapeTarget("127.0.0.1:9100", {"namespace": "local", "deployment": "fraud"}, job="router"),
    ]
    cfg = scrape_config(targets, interval_s=1.0)
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["global"]["scrape_timeout"] == "1s"
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert set(jobs) == {"mlrollout", "router"}
    model_groups = jobs["mlrollout"]["static_configs"]
    # sorted by address, so the file does not churn when targets come in another order
    assert [g["targets"] for g in model_groups] == [["127.0.0.1:9001"], ["127.0.0.1:9002"]]
    assert all(g["labels"] == {"deployment": "fraud", "namespace": "local"} for g in model_groups)
    assert jobs["mlrollout"]["honor_labels"] is True


def test_metrics_path_gets_its_own_job() -> None:
    targets = [
        ScrapeTarget("127.0.0.1:1", {}),
        ScrapeTarget("127.0.0.1:2", {}, metrics_path="/-/metrics"),
    ]
    cfg = scrape_config(targets, interval_s=0.5)
    paths = sorted(job["metrics_path"] for job in cfg["scrape_configs"])
    assert paths == ["/-/metrics", "/metrics"]
    assert len({job["job_name"] for job in cfg["scrape_configs"]}) == 2
    assert cfg["global"]["scrape_interval"] == "500ms"


def test_no_targets_is_a_valid_config() -> None:
    assert scrape_config([], 1.0)["scrape_configs"] == []


def test_missing_binary_says_how_to_install(tmp_path) -> None:
    with pytest.raises(PrometheusMissingError, match="apt-get install prometheus"):
        find_prometheus(str(tmp_path / "no-such-prometheus"))
