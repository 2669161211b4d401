"""Tests for the Helm chart in charts/s3cse, its Grafana dashboard and its alert rules.

No helm binary and no cluster: rendering and linting go through Helm v4's own engine, bundled in
the `helm-python-sdk` wheel (INFRA.md §4), and every rendered Kubernetes object is checked against
the OpenAPI schemas that `kubernetes-validate` ships.

Run from the repository root:  python -m pytest tests/chart
Environment:
  S3CSE_METRICS_SCRAPE  path of a real /metrics scrape (written by the Rust integration tests;
                        CI sets it). Unset: metric names are checked against METRICS_CONTRACT.
  S3CSE_BIN             path of a built s3cse binary. Unset: test_rendered_flags_exist_in_binary
                        is skipped.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.chart import lint
from helm_python.errors import HelmError, HelmValuesError

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "s3cse"
DASHBOARD = CHART / "dashboards" / "s3cse-rekey.json"
DASHBOARD_LINK = REPO / "dashboards" / "s3cse-rekey.json"

# Oldest Kubernetes the chart targets that has both podFailurePolicy (GA 1.31) and
# backoffLimitPerIndex/maxFailedIndexes (GA 1.33).
KUBE_VERSION = "1.33.0"
# Custom resources kubernetes-validate has no schema for; checked by hand below.
CRD_KINDS = {"PodMonitor", "PrometheusRule"}

RELEASE, NAMESPACE = "legacy", "storage"

# --------------------------------------------------------------------------------------------
# The metrics contract, kept in this ONE place. It is only the fallback: CI sets
# S3CSE_METRICS_SCRAPE to a real scrape of `s3cse rekey --metrics-addr` saved by the Rust
# integration tests, and then the names in that file are the truth.
# Names as exposed: counters with `_total`; histograms by family name (expanded to
# _bucket/_sum/_count below).
# --------------------------------------------------------------------------------------------
METRICS_CONTRACT = {
    "s3cse_rekey_objects_total": "counter",  # {result}
    "s3cse_rekey_bytes_total": "counter",  # {result}
    "s3cse_rekey_queue_objects": "gauge",  # {state}
    "s3cse_rekey_queue_bytes": "gauge",  # {state}
    "s3cse_rekey_object_duration_seconds": "histogram",  # {action}
    "s3cse_rekey_object_size_bytes": "histogram",
    "s3cse_s3_requests_total": "counter",  # {operation,outcome}
    "s3cse_s3_request_duration_seconds": "histogram",  # {operation}
    "s3cse_kms_requests_total": "counter",  # {operation,outcome}
    "s3cse_kms_request_duration_seconds": "histogram",  # {operation}
    "s3cse_rekey_retries_total": "counter",  # {service,reason}
    "s3cse_rekey_last_success_timestamp_seconds": "gauge",
    "s3cse_build_info": "gauge",  # {version}
}
# kube-state-metrics series the alert rules may use (never the dashboard).
KUBE_STATE_METRICS = {
    "kube_job_failed",
    "kube_job_status_failed",
    "kube_cronjob_created",
    "kube_cronjob_status_last_successful_time",
}
# The gauges of `s3cse audit` (pushed to the Pushgateway, never scraped from a pod): the audit
# alert rules may use these only. Kept apart from METRICS_CONTRACT, which the rekey dashboard covers.
AUDIT_METRICS = {
    "s3cse_audit_objects",  # {class}
    "s3cse_audit_bytes",  # {class}
    "s3cse_audit_remaining_objects",  # {reason}
    "s3cse_audit_last_run_timestamp_seconds",
}
# Flags of `s3cse audit` the chart renders in mode=audit.
AUDIT_FLAGS_CONTRACT = {
    "--kms-key-id", "--target-format", "--versions", "--json", "--concurrency", "--max-listed", "--s3-rps",
    "--pushgateway", "--log-format", "--endpoint-url", "--path-style",
}
# Flags of `s3cse rekey` as specified; the binary's own help text is checked when S3CSE_BIN is set.
REKEY_FLAGS_CONTRACT = {
    "--state", "--kms-key-id", "--aes-key-file", "--rsa-key-file", "--context", "--concurrency",
    "--dry-run", "--reencrypt", "--target-format", "--no-verify", "--s3-rps", "--kms-rps", "--shard", "--shards",
    "--metrics-addr", "--pushgateway", "--log-format", "--endpoint-url", "--path-style",
    "--stop-timeout", "--max-buffer-mib", "--source-kms-key", "--source-kms-account",
    "--max-attempts", "--object-timeout", "--noncurrent",
}

# --------------------------------------------------------------------------------------------
# Value sets. The three "defaults" cases are exactly what the issue asks to render with the
# chart's values.yaml and a single --set; the "full" cases turn every optional feature on.
# --------------------------------------------------------------------------------------------
DEFAULT_CASES = {
    "job": {"mode": "job"},
    "cronjob": {"mode": "cronjob"},
    "sharded": {"mode": "job", "shards": 4},
}
FULL = {
    "rekey": {
        "bucket": "legacy-data",
        "prefix": "2019/invoices",
        "kmsKeyId": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "encryptionContext": {"app": "billing", "env": "prod"},
        "concurrency": 64,
        "maxBufferMib": 128,
        "dryRun": True,
        "reencrypt": True,
        "targetFormat": "v3",
        "verify": False,
        "s3Rps": 500,
        "kmsRps": 200,
        "sourceKmsKeys": ["alias/legacy-2019"],
        "sourceKmsAccounts": ["444455556666"],
        "maxAttempts": 5,
        "objectTimeoutSeconds": 1800,
    },
    "aws": {"region": "eu-west-1", "endpointUrl": "http://seaweedfs:8333", "pathStyle": True},
    "legacyKeys": {
        "existingSecret": "s3cse-legacy-keys",
        "aesKeys": ["aes-2019.key", "aes-2020.key"],
        "rsaKeys": ["rsa-2017.pem"],
    },
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/s3cse"}},
    "metrics": {
        "pushgateway": {"url": "http://pushgateway.monitoring:9091"},
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "additionalLabels": {"team": "storage"}},
    },
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Storage"}},
    "job": {"activeDeadlineSeconds": 86400, "maxFailedIndexes": 1},
}


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        _merge_into(out, copy.deepcopy(part))
    return out


def _merge_into(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge_into(dst[k], v)
        else:
            dst[k] = v


# A shared PostgreSQL state: the database URL in an existing Secret.
PG_STATE = {"backend": "postgres", "postgres": {"secretName": "s3cse-db", "secretKey": "dsn"}}

ALL_CASES = {
    **{f"defaults-{k}": v for k, v in DEFAULT_CASES.items()},
    **{f"full-{k}": merged(FULL, v) for k, v in DEFAULT_CASES.items()},
    "full-sharded-singleNode": merged(FULL, DEFAULT_CASES["sharded"], {"sharding": {"state": "singleNode"}}),
    "no-persistence-no-metrics": {"mode": "cronjob", "persistence": {"enabled": False}, "metrics": {"enabled": False}},
    "existing-claim": {"mode": "job", "persistence": {"existingClaim": "s3cse-state-from-last-year"}},
    "defaults-audit": {"mode": "audit"},
    "postgres-job": {"mode": "job", "workers": 4, "state": PG_STATE},
    "full-postgres-cronjob": merged(FULL, {"mode": "cronjob", "workers": 3, "state": PG_STATE}),
    "full-audit": merged(FULL, {"mode": "audit", "audit": {"versions": True, "concurrency": 16, "maxListed": 50}}),
}


def render(values: dict, name: str = RELEASE) -> list[dict]:
    """All rendered Kubernetes objects (NOTES.txt and empty documents dropped)."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=name, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def render_notes(values: dict) -> str:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload_job_spec(objects: list[dict]) -> dict:
    """The Job spec, whether rendered as a Job or as a CronJob's jobTemplate."""
    jobs = by_kind(objects, "Job")
    crons = by_kind(objects, "CronJob")
    assert len(jobs) + len(crons) == 1, "exactly one Job or CronJob"
    return jobs[0]["spec"] if jobs else crons[0]["spec"]["jobTemplate"]["spec"]


def rekey_container(objects: list[dict]) -> dict:
    (container,) = [c for c in workload_job_spec(objects)["template"]["spec"]["containers"] if c["name"] == "s3cse"]
    return container


def pod_specs(objects: list[dict]) -> list[dict]:
    specs = [o["spec"] for o in by_kind(objects, "Pod")]
    specs.append(workload_job_spec(objects)["template"]["spec"])
    return specs


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# ------------------------------------------------------------------------------- rendering ---


def test_lint_strict_has_no_errors_or_warnings():
    report = lint(CHART, strict=True)
    assert not report["errors"], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not serious, serious


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_lint_strict_with_values(case):
    report = lint(CHART, ALL_CASES[case], strict=True)
    assert not report["errors"], report


@pytest.mark.parametrize("case", sorted(DEFAULT_CASES))
def test_renders_with_default_values_and_one_set(case):
    objects = render(DEFAULT_CASES[case])
    kinds = sorted(o["kind"] for o in objects)
    workload = "CronJob" if case == "cronjob" else "Job"
    assert workload in kinds
    assert "ServiceAccount" in kinds
    # The optional monitoring objects are off by default (their CRDs may not be installed).
    assert not set(kinds) & CRD_KINDS
    # The sharded Job keeps state on per-pod ephemeral volumes, so it creates no PVC.
    assert ("PersistentVolumeClaim" in kinds) == (case != "sharded")


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_every_object_is_valid_kubernetes(case):
    objects = render(ALL_CASES[case])
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # no schema in kubernetes-validate; see the PodMonitor/PrometheusRule tests
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        assert obj["metadata"]["namespace"] == NAMESPACE or obj["kind"] == "ConfigMap"
        checked += 1
    assert checked >= 2


def test_long_release_name_keeps_cronjob_name_within_52_chars():
    objects = render({"mode": "cronjob"}, name="a-very-long-release-name-for-a-migration-of-legacy-data")
    name = one(objects, "CronJob")["metadata"]["name"]
    assert len(name) <= 52 and not name.endswith("-")


# ------------------------------------------------------------------------ workload shapes ---


def test_job_mode():
    objects = render(merged(FULL, {"mode": "job"}))
    spec = one(objects, "Job")["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["ttlSecondsAfterFinished"] == 604800
    assert "completionMode" not in spec
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob",
            "onExitCodes": {"containerName": "s3cse", "operator": "In", "values": [2]}} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    args = rekey_container(objects)["args"]
    assert args[:2] == ["rekey", "s3://legacy-data/2019/invoices"]
    assert flag_value(args, "--state") == "/var/lib/s3cse/state.db"
    assert "--shards" not in args


def test_cronjob_mode():
    objects = render({"mode": "cronjob", "cronjob": {"schedule": "30 1 * * *", "timeZone": "Europe/Berlin"}})
    cron = one(objects, "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["schedule"] == "30 1 * * *"
    assert cron["timeZone"] == "Europe/Berlin"
    assert cron["startingDeadlineSeconds"] == 3600
    assert cron["successfulJobsHistoryLimit"] == 3 and cron["failedJobsHistoryLimit"] == 3
    job = cron["jobTemplate"]["spec"]
    assert job["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    # State persists between runs: the PVC the chart creates, kept on uninstall.
    pvc = one(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in job["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert not by_kind(objects, "Job")


def test_existing_claim_is_used_and_not_created():
    objects = render(ALL_CASES["existing-claim"])
    assert not by_kind(objects, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in workload_job_spec(objects)["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "s3cse-state-from-last-year"


def test_sharded_job_is_indexed_with_per_pod_state():
    objects = render(merged(FULL, {"mode": "job", "shards": 4}))
    spec = one(objects, "Job")["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 2
    assert spec["maxFailedIndexes"] == 1
    assert "backoffLimit" not in spec  # per-index limits instead of one global budget
    container = rekey_container(objects)
    args = container["args"]
    assert flag_value(args, "--shards") == "4"
    assert "--shard" not in args
    assert flag_value(args, "--state") == "/var/lib/s3cse/state-$(JOB_COMPLETION_INDEX).db"
    env = {e["name"]: e for e in container["env"]}
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim = volumes["state"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "10Gi"
    assert not by_kind(objects, "PersistentVolumeClaim")


def test_sharded_single_node_shares_one_pvc_on_one_node():
    objects = render(ALL_CASES["full-sharded-singleNode"])
    pod = one(objects, "Job")["spec"]["template"]["spec"]
    pvc = one(objects, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels(objects).items()


@pytest.mark.parametrize("case", ["postgres-job", "full-postgres-cronjob"])
def test_postgres_state_is_a_parallel_work_queue_without_a_volume(case):
    objects = render(ALL_CASES[case])
    spec = workload_job_spec(objects)
    workers = ALL_CASES[case]["workers"]
    # The work-queue pattern: N pods at once, no completion count, no index.
    assert spec["parallelism"] == workers
    assert "completions" not in spec and "completionMode" not in spec
    assert spec["backoffLimit"] == 3
    container = rekey_container(objects)
    assert "--state" not in container["args"] and "--shards" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["S3CSE_STATE"]["valueFrom"]["secretKeyRef"] == {"name": "s3cse-db", "key": "dsn"}
    assert "JOB_COMPLETION_INDEX" not in env
    # No state volume, no PVC: the CronJob resumes from the database.
    assert not by_kind(objects, "PersistentVolumeClaim")
    pod = spec["template"]["spec"]
    assert "state" not in {v["name"] for v in pod["volumes"]}
    assert "state" not in {m["name"] for m in container["volumeMounts"]}
    assert "affinity" not in pod


def test_postgres_notes_and_guards():
    notes = render_notes(ALL_CASES["postgres-job"])
    assert "4 pod(s) sharing one queue" in notes and "s3cse-db" in notes
    with pytest.raises(HelmError, match="secretName"):
        render({"state": {"backend": "postgres"}})
    with pytest.raises(HelmError, match="workers"):
        render({"workers": 2})
    with pytest.raises((HelmError, HelmValuesError), match="workers|shards"):
        render({"shards": 2, "state": PG_STATE})


def pod_labels(objects: list[dict]) -> dict:
    return workload_job_spec(objects)["template"]["metadata"]["labels"]


@pytest.mark.parametrize("case", sorted(ALL_CASES))
def test_restricted_pod_security(case):
    objects = render(ALL_CASES[case])
    for pod in pod_specs(objects):
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
        assert psc["fsGroup"] == 65532
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]
    pod = workload_job_spec(objects)["template"]["spec"]
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    mounts = {m["mountPath"] for m in rekey_container(objects)["volumeMounts"]}
    # An audit keeps no state, PostgreSQL keeps it elsewhere: only SQLite mounts a volume.
    state = set() if "audit" in case or "postgres" in case else {"/var/lib/s3cse"}
    assert {"/tmp"} | state <= mounts


def test_legacy_keys_are_mounted_files_never_env():
    objects = render(merged(FULL, {"mode": "job"}))
    container = rekey_container(objects)
    args = container["args"]
    aes = [args[i + 1] for i, a in enumerate(args) if a == "--aes-key-file"]
    rsa = [args[i + 1] for i, a in enumerate(args) if a == "--rsa-key-file"]
    assert aes == ["/etc/s3cse/legacy-keys/aes-2019.key", "/etc/s3cse/legacy-keys/aes-2020.key"]
    assert rsa == ["/etc/s3cse/legacy-keys/rsa-2017.pem"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "legacy-keys")
    assert mount["readOnly"] is True and mount["mountPath"] == "/etc/s3cse/legacy-keys"
    pod = workload_job_spec(objects)["template"]["spec"]
    secret = next(v for v in pod["volumes"] if v["name"] == "legacy-keys")["secret"]
    assert secret["secretName"] == "s3cse-legacy-keys"
    assert {i["key"] for i in secret["items"]} == {"aes-2019.key", "aes-2020.key", "rsa-2017.pem"}
    assert secret["defaultMode"] == 0o440
    for env in container.get("env", []):
        assert "secretKeyRef" not in env.get("valueFrom", {}), env
    assert "envFrom" not in container
    # Nothing the chart renders is a Secret: key material never goes through values.
    assert not by_kind(objects, "Secret")


def test_service_account_carries_irsa_annotation():
    objects = render(merged(FULL, {"mode": "cronjob"}))
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    pod = workload_job_spec(objects)["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in rekey_container(objects)["env"]}
    assert env["AWS_REGION"] == "eu-west-1"


# s3cse's exit after the stop timeout: lease release, Pushgateway push (8 s after a stop), a last
# scrape (5 s). The chart's guard and this test use the same margin.
STOP_EXIT_MARGIN = 15


# An audit writes nothing: SIGTERM just ends it, so it has no stop timeout.
@pytest.mark.parametrize("case", sorted(c for c in ALL_CASES if "audit" not in c))
def test_stop_timeout_fits_the_grace_period(case):
    objects = render(ALL_CASES[case])
    pod = workload_job_spec(objects)["template"]["spec"]
    stop = int(flag_value(rekey_container(objects)["args"], "--stop-timeout"))
    assert pod["terminationGracePeriodSeconds"] >= stop + STOP_EXIT_MARGIN
    if case.startswith("defaults-"):
        assert (stop, pod["terminationGracePeriodSeconds"]) == (45, 60)


def test_stop_timeout_and_grace_period_values():
    objects = render({"mode": "cronjob", "rekey": {"stopTimeoutSeconds": 0},
                      "terminationGracePeriodSeconds": 15})
    assert flag_value(rekey_container(objects)["args"], "--stop-timeout") == "0"
    assert workload_job_spec(objects)["template"]["spec"]["terminationGracePeriodSeconds"] == 15
    # SIGKILL would come before s3cse has released its objects and flushed its metrics.
    with pytest.raises(HelmError, match="terminationGracePeriodSeconds"):
        render({"rekey": {"stopTimeoutSeconds": 50}, "terminationGracePeriodSeconds": 60})


def test_template_guards():
    # A Secret's key names without the Secret.
    with pytest.raises(HelmError, match="existingSecret"):
        render({"legacyKeys": {"aesKeys": ["k"]}})
    with pytest.raises(HelmError, match="podMonitor"):
        render({"metrics": {"enabled": False, "podMonitor": {"enabled": True}}})


@pytest.mark.parametrize("mode", ["job", "cronjob", "sharded"])
def test_notes_render(mode):
    notes = render_notes(DEFAULT_CASES[mode])
    assert "s3://example-bucket" in notes and "placeholders" in notes
    if mode == "sharded":
        assert "EMPTY state" in notes


def test_audit_mode_is_a_stateless_cronjob_running_s3cse_audit(known_metrics):
    objects = render(ALL_CASES["full-audit"])
    cron = one(objects, "CronJob")["spec"]
    assert cron["schedule"] == "0 2 * * *" and cron["concurrencyPolicy"] == "Forbid"
    assert not by_kind(objects, "Job")
    container = rekey_container(objects)
    args = container["args"]
    assert args[:2] == ["audit", "s3://legacy-data/2019/invoices"]
    assert flag_value(args, "--kms-key-id") == FULL["rekey"]["kmsKeyId"]
    assert flag_value(args, "--pushgateway") == "http://pushgateway.monitoring:9091"
    assert flag_value(args, "--concurrency") == "16" and flag_value(args, "--max-listed") == "50"
    assert flag_value(args, "--s3-rps") == "500"
    assert {"--versions", "--json", "--path-style"} <= flags_in(args)
    assert flags_in(args) <= AUDIT_FLAGS_CONTRACT, sorted(flags_in(args) - AUDIT_FLAGS_CONTRACT)
    # No state, no legacy key, no /metrics server: none of rekey's flags, volumes or ports.
    assert not flags_in(args) & {"--state", "--aes-key-file", "--rsa-key-file", "--metrics-addr", "--context"}
    assert not by_kind(objects, "PersistentVolumeClaim") and not by_kind(objects, "PodMonitor")
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]
    assert "ports" not in container
    assert pod_labels(objects)["app.kubernetes.io/component"] == "audit"
    # Exit 1 is the verdict (objects remain): a retry would only say it again.
    (fail,) = [r for r in cron["jobTemplate"]["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert sorted(fail["onExitCodes"]["values"]) == [1, 2]
    # Alerts: the audit's own, on the pushed gauges of this bucket and prefix.
    rules = {r["alert"]: r for r in rules_of(objects)}
    assert set(rules) == {"S3cseAuditRemainingObjects", "S3cseAuditNoRecentRun"}
    remaining = rules["S3cseAuditRemainingObjects"]["expr"]
    assert 'job="s3cse-audit"' in remaining and 'bucket="legacy-data"' in remaining
    assert 'prefix="2019/invoices"' in remaining and 'class="remaining"' in remaining
    for r in rules.values():
        used = promql_metric_names(r["expr"])
        assert used and used <= AUDIT_METRICS | KUBE_STATE_METRICS, (r["alert"], sorted(used))
        assert r["labels"]["team"] == "storage" and r["annotations"]["summary"]
        assert "{{ $" not in r["expr"]


def test_audit_mode_defaults_and_guards():
    objects = render({"mode": "audit"})
    args = rekey_container(objects)["args"]
    assert args[:2] == ["audit", "s3://example-bucket"]
    assert "--versions" not in args and "--json" in args and "--pushgateway" not in args
    assert not by_kind(objects, "PersistentVolumeClaim")
    notes = render_notes({"mode": "audit"})
    assert "s3cse audits s3://example-bucket" in notes and "placeholders" in notes
    # Alerts on gauges that can only arrive through a Pushgateway need one.
    with pytest.raises(HelmError, match="pushgateway"):
        render({"mode": "audit", "metrics": {"prometheusRule": {"enabled": True}}})
    # A failJobOnExitCodes list that already has 1 keeps it once.
    objects = render({"mode": "audit", "job": {"failJobOnExitCodes": [1, 2]}})
    (fail,) = [r for r in workload_job_spec(objects)["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail["onExitCodes"]["values"] == [1, 2]


def test_audit_flags_exist_in_binary():
    binary = os.environ.get("S3CSE_BIN")
    if not binary:
        pytest.skip("S3CSE_BIN is not set: no built s3cse binary to compare the chart's flags with")
    result = subprocess.run([binary, "help", "audit"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    args = rekey_container(render(ALL_CASES["full-audit"]))["args"]
    for flag in sorted(flags_in(args)):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout), flag


# ----------------------------------------------------------------------- values schema ---

BAD_VALUES = {
    "unknown mode": {"mode": "daily"},
    "shards 0": {"shards": 0},
    "shards as string": {"shards": "4"},
    "cronjob with shards": {"mode": "cronjob", "shards": 3},
    "unknown shard state": {"mode": "job", "shards": 2, "sharding": {"state": "nfs"}},
    "bucket wrong type": {"rekey": {"bucket": 42}},
    "bucket not a name": {"rekey": {"bucket": "s3://my-bucket"}},
    "prefix with leading slash": {"rekey": {"prefix": "/logs"}},
    "concurrency 0": {"rekey": {"concurrency": 0}},
    "max buffer 0": {"rekey": {"maxBufferMib": 0}},
    "log format": {"rekey": {"logFormat": "xml"}},
    "dryRun as string": {"rekey": {"dryRun": "yes"}},
    "context value not a string": {"rekey": {"encryptionContext": {"n": 1}}},
    "size not a quantity": {"persistence": {"size": "ten gigs"}},
    "typo at top level": {"shard": 4},
    "typo nested": {"metrics": {"podmonitor": {"enabled": True}}},
    "exit code out of range": {"job": {"failJobOnExitCodes": [256]}},
    "pushgateway not a URL": {"metrics": {"pushgateway": {"url": "pushgateway:9091"}}},
    "stop timeout negative": {"rekey": {"stopTimeoutSeconds": -1}},
    "stop timeout as string": {"rekey": {"stopTimeoutSeconds": "45"}},
    "grace period 0": {"terminationGracePeriodSeconds": 0},
    "audit with shards": {"mode": "audit", "shards": 2},
    "audit typo": {"mode": "audit", "audit": {"version": True}},
    "audit concurrency 0": {"mode": "audit", "audit": {"concurrency": 0}},
    "noncurrent unknown": {"rekey": {"noncurrent": "purge"}},
    "state backend unknown": {"state": {"backend": "mysql"}},
    "workers 0": {"workers": 0},
    "postgres with shards": {"shards": 4, "state": PG_STATE},
    "workers without postgres": {"workers": 3},
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values_through_helm(case):
    # Helm validates values against values.schema.json before rendering (as on install/lint).
    with pytest.raises(HelmValuesError):
        render(BAD_VALUES[case])


def test_schema_is_valid_and_accepts_values_yaml():
    # The same check with a second, independent validator (check-jsonschema).
    schema = CHART / "values.schema.json"
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--check-metaschema", str(schema)],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(CHART / "values.yaml")],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_value_is_commented():
    """Each key in values.yaml has a comment line directly above it (or is a parent of commented keys)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key, rest = m.groups()
        is_parent = rest.strip() == "" and i + 1 < len(lines) and (
            len(lines[i + 1]) - len(lines[i + 1].lstrip()) > len(indent))
        above = lines[i - 1].strip() if i else ""
        if not is_parent and not above.startswith("#"):
            missing.append(key)
    # Entries of the security-context and resources maps are Kubernetes fields documented as a block.
    allowed = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy", "type",
               "allowPrivilegeEscalation", "readOnlyRootFilesystem", "cpu", "memory", "grafana_dashboard"}
    assert not [k for k in missing if k not in allowed], missing


# ------------------------------------------------------------------ metrics: names used ---

PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "bool", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (functions, keywords, labels and ranges removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^{}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        if token.lower() in PROMQL_KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def sample_names_from_exposition(text: str) -> set[str]:
    """Sample names in a Prometheus or OpenMetrics text exposition, from TYPE lines and samples."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(None, 3)
            kind = kind.strip()
            if kind == "counter":
                names.add(family if family.endswith("_total") else family + "_total")
            elif kind in ("histogram", "gaugehistogram"):
                names |= {family + "_bucket", family + "_sum", family + "_count"}
            elif kind == "summary":
                names |= {family, family + "_sum", family + "_count"}
            elif kind == "info":
                names.add(family + "_info")
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def contract_sample_names() -> set[str]:
    names = set()
    for family, kind in METRICS_CONTRACT.items():
        if kind == "histogram":
            names |= {family + "_bucket", family + "_sum", family + "_count"}
        else:
            names.add(family)
    return names


@pytest.fixture(scope="session")
def known_metrics() -> set[str]:
    scrape = os.environ.get("S3CSE_METRICS_SCRAPE")
    if scrape:
        names = sample_names_from_exposition(Path(scrape).read_text())
        assert any(n.startswith("s3cse_") for n in names), f"{scrape} has no s3cse_ metrics"
        return names
    print("S3CSE_METRICS_SCRAPE unset: checking metric names against METRICS_CONTRACT in this file")
    return contract_sample_names()


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for t in panel.get("targets", []):
            exprs.append(t["expr"])
    return exprs


def dashboard_variable_metrics(dashboard: dict) -> set[str]:
    names = set()
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)(\{.*\})?\s*,\s*\w+\s*\)", var["definition"])
        assert m, var["definition"]
        names.add(m.group(1))
    return names


def test_promql_name_extraction_itself():
    expr = ('histogram_quantile(0.99, sum by (le, operation) (rate(a_bucket{job=~"$job", x="or"}[$__rate_interval])))'
            ' / on() group_left sum without (shard) (b_total offset 5m) > bool 3 or absent(c)')
    assert promql_metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_dashboard_link_is_the_chart_copy():
    assert DASHBOARD_LINK.read_bytes() == DASHBOARD.read_bytes()
    if DASHBOARD_LINK.is_symlink():
        assert DASHBOARD_LINK.resolve() == DASHBOARD.resolve()


def test_dashboard_configmap_embeds_the_file():
    objects = render(merged(FULL, {"mode": "cronjob"}))
    cm = one(objects, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["s3cse-rekey.json"]) == json.loads(DASHBOARD.read_text())


def test_dashboard_structure():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("done", "eta", "objects/s", "bytes/s", "failed", "s3 latency", "kms latency",
                  "throttling", "per shard"):
        assert topic in titles, topic
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]


def test_dashboard_uses_only_exported_metrics(known_metrics):
    dash = json.loads(DASHBOARD.read_text())
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dash)))
    used |= dashboard_variable_metrics(dash)
    assert used, "no metric found in the dashboard"
    assert used <= known_metrics, sorted(used - known_metrics)


def test_dashboard_covers_every_metric_family():
    dash = json.loads(DASHBOARD.read_text())
    used = set().union(*(promql_metric_names(e) for e in dashboard_exprs(dash)))
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert set(METRICS_CONTRACT) <= families, sorted(set(METRICS_CONTRACT) - families)


def rules_of(objects: list[dict]) -> list[dict]:
    rule = one(objects, "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


@pytest.mark.parametrize("mode", ["job", "cronjob", "sharded"])
def test_alert_rules_use_only_exported_or_kube_state_metrics(mode, known_metrics):
    rules = rules_of(render(merged(FULL, DEFAULT_CASES[mode])))
    for rule in rules:
        used = promql_metric_names(rule["expr"])
        assert used, rule["alert"]
        unknown = used - known_metrics - KUBE_STATE_METRICS
        assert not unknown, (rule["alert"], sorted(unknown))


@pytest.mark.parametrize("mode", ["job", "cronjob"])
def test_prometheus_rule_structure(mode):
    objects = render(merged(FULL, {"mode": mode}, {"metrics": {"prometheusRule": {"schedulePeriodSeconds": 3600}}}))
    rule = one(objects, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    rules = {r["alert"]: r for r in rules_of(objects)}
    expected = {"S3cseRekeyFailedObjects", "S3cseRekeyJobFailed", "S3cseRekeyKmsThrottled"}
    if mode == "cronjob":
        expected.add("S3cseRekeyNoRecentSuccess")
        expr = rules["S3cseRekeyNoRecentSuccess"]["expr"]
        assert "> 7200" in expr and "s3cse_rekey_last_success_timestamp_seconds" in expr
    assert set(rules) == expected
    assert 'condition="true"' in rules["S3cseRekeyJobFailed"]["expr"]
    assert 'outcome="throttled"' in rules["S3cseRekeyKmsThrottled"]["expr"]
    assert rules["S3cseRekeyKmsThrottled"]["for"] == "15m"
    for r in rules.values():
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["labels"]["team"] == "storage"
        assert r["annotations"]["summary"]
        # The release's selector, not every s3cse in the cluster.
        if "s3cse_" in r["expr"]:
            assert f'namespace="{NAMESPACE}"' in r["expr"]
        assert "{{ $" not in r["expr"]


def test_pod_monitor_structure():
    objects = render(merged(FULL, {"mode": "job", "shards": 3}))
    pm = one(objects, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels(objects).items()
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in rekey_container(objects)["ports"]}
    assert endpoint["port"] == "metrics" and ports["metrics"] == 9464
    assert endpoint["path"] == "/metrics"
    (relabel,) = endpoint["relabelings"]
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_batch_kubernetes_io_job_completion_index"]
    assert relabel["targetLabel"] == "shard"
    # The Helm test pod is not scraped.
    test_pod = one(objects, "Pod")
    assert not pm["spec"]["selector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()


# ---------------------------------------------------------------------- CLI flags ---


def rendered_rekey_args() -> list[list[str]]:
    """The s3cse container args of every case that turns flags on."""
    out = []
    for case in ("full-job", "full-cronjob", "full-sharded", "full-sharded-singleNode"):
        args = rekey_container(render(ALL_CASES[case]))["args"]
        assert args[0] == "rekey"
        out.append(args)
    return out


def flags_in(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_rendered_flags_are_in_the_cli_contract():
    used = set().union(*(flags_in(a) for a in rendered_rekey_args()))
    assert used <= REKEY_FLAGS_CONTRACT, sorted(used - REKEY_FLAGS_CONTRACT)
    # The full cases exercise every flag the chart can emit except --shard (it uses --shards).
    assert REKEY_FLAGS_CONTRACT - used == {"--shard"}


def test_rendered_flags_exist_in_binary():
    binary = os.environ.get("S3CSE_BIN")
    if not binary:
        reason = "S3CSE_BIN is not set: no built s3cse binary to compare the chart's flags with"
        print(reason)
        pytest.skip(reason)
    result = subprocess.run([binary, "help", "rekey"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    help_text = result.stdout + result.stderr
    for args in rendered_rekey_args():
        for flag in sorted(flags_in(args)):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), \
                f"{flag} is rendered by the chart but not in `s3cse help rekey`"
