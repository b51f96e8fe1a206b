"""The chart's pods, run for real on this machine: an SCP pod and a worker pod as
helm/dicom-router renders them.

Each "pod" is a process in a mount namespace of its own (``unshare``) whose mounts
are made from its rendered manifest, as the kubelet would make them: the
ConfigMaps' files, the shared spool volume (owned as ``fsGroup`` leaves it), an
emptyDir, and a read-only root file system if the container asks for one. It runs
the container's args with the pod's environment as the pod's user (``setpriv``).
storescu sends to the SCP pod, the worker pod delivers to a capture SCP: what the
chart renders works, and writes nowhere but where the chart gives it room.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import storescu
from tests.support.helm_chart import HELM, Manifest, container, env_of, render
from tests.support.ports import free_port
from tests.support.router_proc import RedisServer
from tests.support.synthetic import write_ct_series
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(HELM is None, reason="helm comes with the test extras on x86_64 only"),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None,
        reason="needs root, unshare and setpriv to build the pods' mount namespaces",
    ),
]

VENV_BIN = Path(sys.executable).parent
KEEP_VISIBLE = sorted({Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()})
"""The project and its virtual env: the pod runs this code, wherever it lies (a
checkout under /tmp must stay visible once the emptyDir covers /tmp)."""
Manifests = dict[tuple[str, str], Manifest]


def _pod_spec(deployment: Manifest) -> Manifest:
    return dict(deployment["spec"]["template"]["spec"])


def _mount_script(deployment: Manifest, sources: dict[str, Path], work: Path) -> list[str]:
    """Shell lines making the pod's volume mounts, from its manifest.

    ``sources``: a folder standing for each ConfigMap or claim volume. An emptyDir
    gets a fresh folder. A mount point the machine lacks is made in an overlay of
    its nearest existing parent, so the machine's own folders stay as they are.
    """
    volumes = {v["name"]: v for v in _pod_spec(deployment)["volumes"]}
    overlays: list[str] = []  # first: later mounts may hide the folders they use
    mounts: list[str] = []
    overlaid: list[Path] = []

    def overlay(folder: Path) -> None:
        if folder in overlaid:
            return
        overlaid.append(folder)
        upper, scratch = work / f"upper{len(overlaid)}", work / f"scratch{len(overlaid)}"
        upper.mkdir()
        scratch.mkdir()
        options = shlex.quote(f"lowerdir={folder},upperdir={upper},workdir={scratch}")
        overlays.append(f"mount -t overlay overlay -o {options} {shlex.quote(str(folder))}")

    for mount in container(deployment)["volumeMounts"]:
        target, volume = Path(mount["mountPath"]), volumes[mount["name"]]
        if "emptyDir" in volume:
            source = work / f"empty-{mount['name']}"
            source.mkdir()
            source.chmod(0o1777)
        else:
            source = sources[mount["name"]] / mount.get("subPath", "")
        if not target.exists():
            overlay(next(parent for parent in target.parents if parent.exists()))
            made = target if source.is_dir() else target.parent
            mounts.append(f"mkdir -p {shlex.quote(str(made))}")
            if not source.is_dir():
                mounts.append(f": > {shlex.quote(str(target))}")
        hidden = [path for path in KEEP_VISIBLE if path.is_relative_to(target)]
        for path in hidden:  # shown again inside the mount, which then carries them
            inside = shlex.quote(str(source / path.relative_to(target)))
            mounts.append(f"mkdir -p {inside} && mount --bind {shlex.quote(str(path))} {inside}")
        bind = "--rbind" if hidden else "--bind"
        mounts.append(f"mount {bind} {shlex.quote(str(source))} {shlex.quote(str(target))}")
    # This machine's Python lives under /root: let the pod's user reach it.
    overlay(Path("/root"))
    lines = ["set -eu", *overlays, "chmod 711 /root", *mounts]
    if container(deployment)["securityContext"].get("readOnlyRootFilesystem"):
        lines.append("mount -o remount,bind,ro /")
    return lines


def _pod_command(deployment: Manifest, pod_name: str) -> list[str]:
    """The container's args under the pod's environment, as Kubernetes expands it."""
    env = {name: value.replace("$(POD_NAME)", pod_name)
           for name, value in env_of(deployment).items() if isinstance(value, str)}  # fmt: skip
    env |= {"POD_NAME": pod_name, "PATH": f"{VENV_BIN}:/usr/bin:/bin", "TCP_NODELAY": "1"}
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
            str(VENV_BIN / "dicom-router"), *container(deployment)["args"]]  # fmt: skip


class Pod:
    """One pod of a Deployment, in a mount namespace of its own (see the module doc)."""

    def __init__(
        self, deployment: Manifest, name: str, root: Path, sources: dict[str, Path]
    ) -> None:
        self.name = name
        work = root / name
        work.mkdir()
        security = _pod_spec(deployment)["securityContext"]
        become = (f"exec setpriv --reuid {security['runAsUser']} "
                  f"--regid {security['runAsGroup']} --clear-groups ")  # fmt: skip
        script = [*_mount_script(deployment, sources, work), "cd /",
                  become + shlex.join(_pod_command(deployment, name))]  # fmt: skip
        self.log_path = work / "log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def ready(self, port: int) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pod {self.name} exited:\n{self.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _volume_sources(manifests: Manifests, root: Path) -> dict[str, Path]:
    """A folder for each volume: the ConfigMaps' files, and the spool volume as
    ``fsGroup`` leaves it (root's, writable by the pods' group)."""
    sources = {name: root / name for name in ("config", "rules", "spool")}
    for folder in sources.values():
        folder.mkdir()
    for volume, config_map in (("config", "rel-dicom-router"), ("rules", "rel-dicom-router-rules")):
        for name, text in manifests[("ConfigMap", config_map)]["data"].items():
            (sources[volume] / name).write_text(text)
    fs_group = _pod_spec(manifests[("Deployment", "rel-dicom-router-scp")])["securityContext"]
    os.chown(sources["spool"], 0, fs_group["fsGroup"])
    sources["spool"].chmod(0o2770)
    return sources


def test_an_scp_pod_and_a_worker_pod_receive_and_deliver(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    scp_port, scp_metrics, worker_metrics = free_port(), free_port(), free_port()
    files = write_ct_series(tmp_path / "ct", 5, rows=64, cols=64, seed=31)
    sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    with CaptureSCP(ae_title="PACS") as pacs:
        values: dict[str, Any] = {
            "config": {
                "broker_url": redis_server.url,
                "spool": {"min_free_mb": 1},
                "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1",
                                          "port": pacs.port}},
            },
            "rules": {"all.yaml": "rules:\n  - name: all\n    forward: [pacs]\n"},
            "scp": {"port": scp_port},
            "metrics": {"port": scp_metrics, "workerPort": worker_metrics},
        }  # fmt: skip
        manifests = render(values=values)
        sources = _volume_sources(manifests, tmp_path)
        pods = [Pod(manifests[("Deployment", f"rel-dicom-router-{role}")], f"rel-{role}-0",
                    tmp_path, sources) for role in ("scp", "worker")]  # fmt: skip
        try:
            wait_until(lambda: pods[0].ready(scp_metrics), 60, "the SCP pod to be ready")
            wait_until(lambda: pods[1].ready(worker_metrics), 60, "the worker pod to be ready")
            assert storescu(files, scp_port).returncode == 0
            pacs.wait_for_count(len(files), timeout=60)
            assert set(pacs.sop_instance_uids()) == sent
        finally:
            codes = {pod.name: pod.stop() for pod in pods}
    logs = {pod.name: pod.log_path.read_text() for pod in pods}
    assert codes == {"rel-scp-0": 0, "rel-worker-0": 0}, logs
    # Each pod kept its own audit trail on the shared volume: the SCP received,
    # the worker forwarded.
    audit = sources["spool"] / "audit"
    assert (audit / "rel-scp-0.jsonl").read_text().count('"event":"received"') == len(files)
    assert (audit / "rel-worker-0.jsonl").read_text().count('"event":"forwarded"') == len(files)
    # Everything on the volume was written by the pods' user; delivered files are gone.
    user = _pod_spec(manifests[("Deployment", "rel-dicom-router-scp")])["securityContext"]
    assert {path.stat().st_uid for path in sources["spool"].rglob("*")} == {user["runAsUser"]}
    assert not list((sources["spool"] / "spool" / "incoming").rglob("*.dcm"))
