"""Operator settings from the environment and the operator's own metrics."""

from __future__ import annotations

import pytest
from mlrollout.operator import opmetrics
from mlrollout.operator.settings import OperatorSettings, SettingsError
from prometheus_client import generate_latest


def test_defaults_without_environment() -> None:
    assert OperatorSettings.from_env({}) == OperatorSettings()


def test_values_are_read_and_normalised() -> None:
    s = OperatorSettings.from_env(
        {
            "MLROLLOUT_PROMETHEUS_URL": "http://prom:9090/",
            "MLROLLOUT_PROMETHEUS_TIMEOUT": "0.5",
            "MLROLLOUT_METRICS_PORT": "0",
            "MLROLLOUT_POSTING_LEVEL": "warning",
            "MLROLLOUT_NAMESPACE_MODE": "Namespaced",
        }
    )
    assert (s.prometheus_url, s.prometheus_timeout, s.metrics_port, s.posting_level) == (
        "http://prom:9090",
        0.5,
        0,
        "WARNING",
    )
    assert s.namespace_mode == "namespaced"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLROLLOUT_API_TIMEOUT": "soon"}, "MLROLLOUT_API_TIMEOUT='soon' is not a number"),
        ({"MLROLLOUT_API_TIMEOUT": "0"}, "must be between 0.5 and 300"),
        ({"MLROLLOUT_PROMETHEUS_URL": "prom:9090"}, "must start with http:// or https://"),
        ({"MLROLLOUT_POSTING_LEVEL": "LOUD"}, "must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"MLROLLOUT_NAMESPACE_MODE": "everywhere"}, "must be one of cluster, namespaced"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        OperatorSettings.from_env(env)


def text() -> str:
    return generate_latest(opmetrics.REGISTRY).decode()


def test_phase_is_one_hot_and_forget_removes_every_series() -> None:
    opmetrics.observe("t1", "m", "Progressing", 20)
    opmetrics.count(
        "t1", "m", "mlrollout_operator_verdicts_total", {"check": "errorRate", "result": "pass"}, 1
    )
    opmetrics.count("t1", "m", "analysis_errors_total", {}, 2)
    opmetrics.count("t1", "m", "something_else", {}, 1)
    opmetrics.outcomes("t1", "m", promoted=1, rolled_back=0)
    out = text()
    assert 'mlrollout_operator_phase{deployment="m",namespace="t1",phase="Progressing"} 1.0' in out
    assert 'mlrollout_operator_phase{deployment="m",namespace="t1",phase="Healthy"} 0.0' in out
    assert 'mlrollout_operator_canary_weight{deployment="m",namespace="t1"} 20.0' in out
    assert (
        'mlrollout_operator_verdicts_total{check="errorRate",deployment="m",namespace="t1",result="pass"} 1.0'
        in out
    )
    assert 'mlrollout_operator_analysis_errors_total{deployment="m",namespace="t1"} 2.0' in out
    assert 'mlrollout_operator_promotions_total{deployment="m",namespace="t1"} 1.0' in out
    opmetrics.forget("t1", "m")
    assert 'namespace="t1"' not in text()


@pytest.mark.parametrize(("mode", "scanning_disabled"), [("cluster", False), ("namespaced", True)])
def test_namespaced_mode_turns_kopf_scanning_off(mode: str, scanning_disabled: bool) -> None:
    import kopf
    from mlrollout.operator.main import configure_kopf

    settings = kopf.OperatorSettings()
    configure_kopf(settings, OperatorSettings(namespace_mode=mode))
    assert settings.scanning.disabled is scanning_disabled
    assert settings.persistence.finalizer == "mlrollout.io/finalizer"
