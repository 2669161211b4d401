"""The chart's alert rules, as rendered by Helm, through Prometheus's own tooling: `promtool check
rules` on every rendered PrometheusRule, and `promtool test rules` unit tests that show each alert
firing when it should and staying silent otherwise.

promtool is Debian's `prometheus` package (scripts/test.sh installs it). The unit tests run on
the rendered rules with their annotations removed: promtool compares annotations exactly, and
these tests are about when an alert fires; `check rules` validates the annotation templates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_chart import FULL, NAMESPACE, merged, one, render

PROMTOOL = shutil.which("promtool")
POD = "legacy-s3cse-7x2kq"  # the release's pod, as the default selector matches it
SEL = f'namespace="{NAMESPACE}", pod="{POD}"'
PERIOD = 3600  # schedulePeriodSeconds: "no recent success" after 2 periods = 7200 s
TEAM = {"severity": "warning", "team": "storage"}


def need_promtool():
    if PROMTOOL:
        return
    if os.environ.get("CI"):
        pytest.fail("promtool is missing (apt-get install prometheus)")
    pytest.skip("promtool is missing (apt-get install prometheus)")


def rendered_rules(mode: str) -> dict:
    values = merged(FULL, {"mode": mode}, {"metrics": {"prometheusRule": {"schedulePeriodSeconds": PERIOD}}})
    return one(render(values), "PrometheusRule")["spec"]


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["job", "cronjob", "audit"])
def test_promtool_checks_the_rendered_rules(mode, tmp_path):
    need_promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(mode)))
    r = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def alert(name: str, severity: str = "warning", **labels: str) -> dict:
    return {"exp_labels": {"severity": severity, "team": "storage", **labels}}


# One promtool test group per scenario: (mode, input series, [(eval_time, alertname, [alerts])]).
SCENARIOS = {
    "no-success-for-two-periods-fires": ("cronjob", [
        (f"s3cse_rekey_last_success_timestamp_seconds{{{SEL}}}", "0x300"),
    ], [
        ("1h", "S3cseRekeyNoRecentSuccess", []),
        ("2h5m", "S3cseRekeyNoRecentSuccess", []),  # past 2 periods, but `for: 10m` not yet
        ("2h15m", "S3cseRekeyNoRecentSuccess", [alert("S3cseRekeyNoRecentSuccess")]),
    ]),
    "recent-success-stays-silent": ("cronjob", [
        # Succeeds every run: the timestamp follows the clock (promtool's starts at 0).
        (f"s3cse_rekey_last_success_timestamp_seconds{{{SEL}}}", "0+60x300"),
        (f'kube_cronjob_created{{namespace="{NAMESPACE}", cronjob="legacy-s3cse"}}', "0x300"),
    ], [
        ("4h", "S3cseRekeyNoRecentSuccess", []),
    ]),
    "never-succeeded-cronjob-fires": ("cronjob", [
        (f'kube_cronjob_created{{namespace="{NAMESPACE}", cronjob="legacy-s3cse"}}', "0x300"),
    ], [
        ("1h", "S3cseRekeyNoRecentSuccess", []),
        ("2h15m", "S3cseRekeyNoRecentSuccess", [alert("S3cseRekeyNoRecentSuccess")]),
    ]),
    "kube-state-success-counts-too": ("cronjob", [
        (f'kube_cronjob_created{{namespace="{NAMESPACE}", cronjob="legacy-s3cse"}}', "0x300"),
        (f'kube_cronjob_status_last_successful_time{{namespace="{NAMESPACE}", cronjob="legacy-s3cse"}}', "0+60x300"),
    ], [
        ("4h", "S3cseRekeyNoRecentSuccess", []),
    ]),
    "failed-objects-in-the-queue-fire": ("job", [
        (f's3cse_rekey_queue_objects{{{SEL}, shard="0", state="failed"}}', "0 0 3x20"),
        (f's3cse_rekey_objects_total{{{SEL}, shard="0", result="failed"}}', "0x22"),
    ], [
        ("1m", "S3cseRekeyFailedObjects", []),
        ("5m", "S3cseRekeyFailedObjects", [alert("S3cseRekeyFailedObjects", namespace=NAMESPACE, shard="0")]),
    ]),
    "objects-failing-now-fire": ("job", [
        (f's3cse_rekey_queue_objects{{{SEL}, shard="2", state="failed"}}', "0x22"),
        (f's3cse_rekey_objects_total{{{SEL}, shard="2", result="failed"}}', "0 0 0 1 2 3x18"),
    ], [
        ("2m", "S3cseRekeyFailedObjects", []),
        ("5m", "S3cseRekeyFailedObjects", [alert("S3cseRekeyFailedObjects", namespace=NAMESPACE, shard="2")]),
    ]),
    "no-failures-stay-silent": ("job", [
        (f's3cse_rekey_queue_objects{{{SEL}, shard="0", state="failed"}}', "0x40"),
        (f's3cse_rekey_queue_objects{{{SEL}, shard="0", state="done"}}', "0+10x40"),
        (f's3cse_rekey_objects_total{{{SEL}, shard="0", result="failed"}}', "0x40"),
        (f's3cse_rekey_objects_total{{{SEL}, shard="0", result="rewritten"}}', "0+10x40"),
    ], [
        ("30m", "S3cseRekeyFailedObjects", []),
    ]),
    "another-release-fails-silently-for-us": ("job", [
        (f's3cse_rekey_queue_objects{{namespace="{NAMESPACE}", pod="other-s3cse-1", shard="0", state="failed"}}', "5x20"),
    ], [
        ("10m", "S3cseRekeyFailedObjects", []),
    ]),
    "failed-job-fires": ("job", [
        (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="legacy-s3cse", condition="true"}}', "0 0 1x10"),
        (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="legacy-s3cse", condition="false"}}', "1 1 0x10"),
    ], [
        ("1m", "S3cseRekeyJobFailed", []),
        ("3m", "S3cseRekeyJobFailed", [alert("S3cseRekeyJobFailed", "critical", namespace=NAMESPACE, job_name="legacy-s3cse")]),
    ]),
    "running-job-stays-silent": ("job", [
        (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="legacy-s3cse", condition="true"}}', "0x10"),
        (f'kube_job_failed{{namespace="{NAMESPACE}", job_name="unrelated", condition="true"}}', "1x10"),
    ], [
        ("5m", "S3cseRekeyJobFailed", []),
    ]),
    "kms-throttling-above-5pct-for-15m-fires": ("job", [
        # 10 throttled per 100 ok: 9% of KMS requests.
        (f's3cse_kms_requests_total{{{SEL}, operation="GenerateDataKey", outcome="ok"}}', "0+100x40"),
        (f's3cse_kms_requests_total{{{SEL}, operation="GenerateDataKey", outcome="throttled"}}', "0+10x40"),
    ], [
        ("10m", "S3cseRekeyKmsThrottled", []),  # pending
        ("25m", "S3cseRekeyKmsThrottled", [alert("S3cseRekeyKmsThrottled", namespace=NAMESPACE)]),
    ]),
    "kms-throttling-below-5pct-stays-silent": ("job", [
        (f's3cse_kms_requests_total{{{SEL}, operation="GenerateDataKey", outcome="ok"}}', "0+100x40"),
        (f's3cse_kms_requests_total{{{SEL}, operation="GenerateDataKey", outcome="throttled"}}', "0+2x40"),
    ], [
        ("30m", "S3cseRekeyKmsThrottled", []),
    ]),
    "audit-remaining-objects-fire": ("audit", [
        ('s3cse_audit_objects{job="s3cse-audit", bucket="legacy-data", prefix="2019/invoices", class="remaining"}', "7x10"),
    ], [
        ("5m", "S3cseAuditRemainingObjects", [alert("S3cseAuditRemainingObjects", bucket="legacy-data", prefix="2019/invoices")]),
    ]),
    "audit-all-current-stays-silent": ("audit", [
        ('s3cse_audit_objects{job="s3cse-audit", bucket="legacy-data", prefix="2019/invoices", class="remaining"}', "0x10"),
        ('s3cse_audit_objects{job="s3cse-audit", bucket="other-bucket", prefix="", class="remaining"}', "9x10"),
        ('s3cse_audit_last_run_timestamp_seconds{job="s3cse-audit", bucket="legacy-data", prefix="2019/invoices"}', "0+60x10"),
    ], [
        ("5m", "S3cseAuditRemainingObjects", []),
        ("5m", "S3cseAuditNoRecentRun", []),
    ]),
    "audit-not-run-for-two-periods-fires": ("audit", [
        ('s3cse_audit_last_run_timestamp_seconds{job="s3cse-audit", bucket="legacy-data", prefix="2019/invoices"}', "0x300"),
    ], [
        ("1h", "S3cseAuditNoRecentRun", []),
        ("2h15m", "S3cseAuditNoRecentRun", [alert("S3cseAuditNoRecentRun")]),
    ]),
}


def without_annotations(spec: dict) -> dict:
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return spec


@pytest.mark.parametrize("mode", ["job", "cronjob", "audit"])
def test_every_alert_has_a_firing_and_a_silent_scenario(mode):
    names = {r["alert"] for g in rendered_rules(mode)["groups"] for r in g["rules"]}
    fires, silent = set(), set()
    for m, _, evals in SCENARIOS.values():
        for _, name, alerts in evals:
            if m == mode or (m == "job" and mode == "cronjob"):
                (fires if alerts else silent).add(name)
    assert names <= fires, sorted(names - fires)
    assert names <= silent, sorted(names - silent)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_promtool_unit_tests_of_the_alerts(scenario, tmp_path):
    need_promtool()
    mode, series, evals = SCENARIOS[scenario]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(without_annotations(rendered_rules(mode))))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series],
            "alert_rule_test": [
                {"eval_time": t, "alertname": name, "exp_alerts": alerts} for t, name, alerts in evals
            ],
        }],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    r = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert r.returncode == 0, f"{scenario}:\n{r.stdout}\n{r.stderr}"
