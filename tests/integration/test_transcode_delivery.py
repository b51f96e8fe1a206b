"""Transfer-syntax conversion on the way out, with real peers.

Destinations that accept only one transfer syntax (pynetdicom capture SCPs limited
to JPEG-LS lossless, to implicit VR little endian, to JPEG baseline) and Orthanc
behind a rule that asks for JPEG-LS. Each destination must receive exactly what it
accepts, decodable to the same pixels; what cannot be converted (an undecodable
video syntax, 32-bit samples for JPEG-LS, lossy output no rule asked for) ends in
the dead-letter store with its reason, a metric and an audit event.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG4HP41,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    generate_uid,
)

from tests.support.capture_scp import CaptureSCP
from tests.support.dcmtk import dcmsend, storescu
from tests.support.orthanc import Orthanc
from tests.support.router_proc import RedisServer, RouterProcess, start_router, write_config
from tests.support.synthetic import pydicom_test_files_dir, write_ct_series
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"

RULES = f"""
rules:
  - name: everything
    forward: [jls, implicit]
    continue: true
  - name: images-to-orthanc-as-jpeg-ls
    match: {{Modality: {{in: [CT, MR]}}}}
    forward: [orthanc]
    actions:
      - transcode: jpeg-ls-lossless
    continue: true
  - name: secondary-capture-lossy
    match: {{SOPClassUID: "{SECONDARY_CAPTURE}"}}
    forward: [lossyonly]
    actions:
      - transcode: jpeg-baseline
    continue: true
  - name: ct-uncompressed
    match: {{Modality: CT}}
    forward: [lossyonly]
"""

#: pydicom test files sent in their own transfer syntax.
SAMPLES = (
    "CT_small.dcm",  # explicit VR little endian, 16-bit signed
    "MR_small_RLE.dcm",  # RLE
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL_422
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless
    "examples_ybr_color.dcm",  # multi-frame JPEG baseline
    "SC_rgb_small_odd.dcm",  # native RGB, odd size
    "rtdose.dcm",  # 32-bit multi-frame: JPEG-LS cannot carry it
)


def _capture(ae_title: str, syntax: str) -> CaptureSCP:
    return CaptureSCP(ae_title=ae_title, transfer_syntaxes=[syntax])


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, Any]]:
    with (
        _capture("JLS", JPEGLSLossless) as jls,
        _capture("IMPLICIT", ImplicitVRLittleEndian) as implicit,
        _capture("LOSSY", JPEGBaseline8Bit) as lossy,
        Orthanc() as orthanc,
    ):
        yield {"jls": jls, "implicit": implicit, "lossyonly": lossy, "orthanc": orthanc}


def _dest(ae_title: str, port: int, syntaxes: list[str] | None = None) -> dict[str, Any]:
    dest: dict[str, Any] = {"ae_title": ae_title, "host": "127.0.0.1", "port": port,
                            "timeout": "10s", "retry": {"max_attempts": 3,
                            "initial_delay": "0.2s", "max_delay": "1s"}}  # fmt: skip
    if syntaxes:
        dest["transfer_syntaxes"] = syntaxes
    return dest


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, redis_session: RedisServer, peers: dict[str, Any]
) -> Iterator[RouterProcess]:
    redis_session.client().flushall()
    orthanc: Orthanc = peers["orthanc"]
    destinations = {
        "jls": _dest("JLS", peers["jls"].port, ["jpeg-ls-lossless"]),
        "implicit": _dest("IMPLICIT", peers["implicit"].port, ["implicit-little"]),
        "lossyonly": _dest("LOSSY", peers["lossyonly"].port, ["jpeg-baseline"]),
        "orthanc": _dest(orthanc.aet, orthanc.dicom_port),
    }
    path, config = write_config(
        tmp_path_factory.mktemp("router"), redis_session.url, destinations, RULES
    )
    proc = start_router(path, config, workers=2)
    try:
        yield proc
    finally:
        proc.stop()


def _video_instance(path: Path) -> Path:
    """An MPEG-4 video instance: stored and routed as received, never decodable here."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.file_meta.MediaStorageSOPClassUID = VIDEO_ENDOSCOPIC
    ds.SOPClassUID = VIDEO_ENDOSCOPIC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "VIDEO-1", "Video^Patient", "ES"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1080, 1920, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_PARTIAL_420"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01\x67" + bytes(range(200)) + b"\x00"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(dcmread(path).pixel_array)


def _pixels_of_bytes(data: bytes) -> np.ndarray:
    return np.asarray(dcmread(io.BytesIO(data)).pixel_array)


def _by_uid(capture: CaptureSCP) -> dict[str, Path]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in capture.received()}


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_each_destination_receives_only_what_it_accepts(
    router: RouterProcess, peers: dict[str, Any], tmp_path: Path
) -> None:
    ct_files = write_ct_series(tmp_path / "ct", 4, rows=128, cols=128, seed=5)
    samples = [pydicom_test_files_dir() / name for name in SAMPLES]
    video = _video_instance(tmp_path / "video.dcm")
    sent = storescu(ct_files, router.port, called_ae="ROUTER", calling_ae="CT01")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    sent = dcmsend([*samples, video], router.port, called_ae="ROUTER", calling_ae="MODALITY")
    assert sent.returncode == 0, sent.stdout + sent.stderr

    originals = {_uid(f): f for f in [*ct_files, *samples]}
    rtdose, sc_odd = _uid(samples[-1]), _uid(samples[-2])
    video_uid = _uid(video)
    # JPEG-LS cannot carry 32-bit samples, and the codec cannot encode a 3x3 image.
    to_jls = set(originals) - {rtdose, sc_odd}
    jls, implicit, lossy = peers["jls"], peers["implicit"], peers["lossyonly"]
    jls.wait_for_count(len(to_jls), timeout=120)
    implicit.wait_for_count(len(originals), timeout=120)

    # Every instance arrives once, in the one syntax the destination accepts, with the
    # same pixels as the source (lossless conversion, also of JPEG baseline sources).
    for capture, syntax, expected in (
        (jls, JPEGLSLossless, to_jls),
        (implicit, ImplicitVRLittleEndian, set(originals)),
    ):
        received = _by_uid(capture)
        assert set(received) == expected
        assert len(capture.received()) == len(expected), "an instance arrived twice"
        for uid, path in received.items():
            ds = dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == syntax, uid
            assert ds.SOPInstanceUID == uid
            if "PixelData" in ds:
                assert np.array_equal(ds.pixel_array, _pixels(originals[uid])), uid

    # What cannot be converted is dead-lettered, with the reason, per destination.
    dead = router.wait_for_audit("dead_lettered", 4 + len(ct_files), timeout=60)
    reasons = {(e["sop_instance_uid"], e["destination"]): e["status"] for e in dead}
    assert (
        "needs BitsAllocated 8, 16; this instance has BitsAllocated 32" in reasons[(rtdose, "jls")]
    )
    assert "cannot convert to jpeg-ls-lossless" in reasons[(sc_odd, "jls")]
    assert "cannot convert" in reasons[(video_uid, "jls")]
    assert "cannot convert" in reasons[(video_uid, "implicit")]
    for ct in ct_files:
        reason = reasons[(_uid(ct), "lossyonly")]
        assert "lossy and no rule asked for lossy compression" in reason
    assert video_uid not in _by_uid(jls) and video_uid not in _by_uid(implicit)

    # A rule that names a lossy syntax gets one, marked as lossy (PS3.3 C.7.6.1.1.5):
    # a new instance that names its uncompressed predecessor.
    def lossy_copy() -> Path | None:
        for path in lossy.received():
            ds = dcmread(path, stop_before_pixels=True)
            sources = ds.get("SourceImageSequence") or []
            if any(item.get("ReferencedSOPInstanceUID") == sc_odd for item in sources):
                return path
        return None

    wait_until(lambda: lossy_copy() is not None, 60, "the lossy secondary capture")
    copy_path = lossy_copy()
    assert copy_path is not None
    lossy_ds = dcmread(copy_path)
    assert lossy_ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert lossy_ds.SOPInstanceUID != sc_odd
    assert lossy_ds.LossyImageCompression == "01"
    assert "ISO_10918_1" in list(np.atleast_1d(lossy_ds.LossyImageCompressionMethod))
    assert lossy_ds.pixel_array.shape == _pixels(originals[sc_odd]).shape
    (event,) = [e for e in router.audit_events("forwarded")
                if (e["sop_instance_uid"], e["destination"]) == (sc_odd, "lossyonly")]  # fmt: skip
    assert event["delivered_sop_instance_uid"] == lossy_ds.SOPInstanceUID
    assert event["transfer_syntax"] == JPEGBaseline8Bit

    status, metrics = router.http("/metrics")
    assert status == 200
    assert 'dicom_router_dead_letters{destination="lossyonly"}' in metrics
    assert 'dicom_router_transcode_seconds_count{syntax="jpeg-ls-lossless"}' in metrics
    assert 'dicom_router_transcode_failures_total{syntax="jpeg-ls-lossless"}' in metrics
    # Bytes forwarded count what was sent (the converted copies), not what is stored;
    # the capture SCP rebuilds each file's meta header, hence the small allowance.
    counted = _metric(metrics, 'dicom_router_bytes_forwarded_total{destination="jls"}')
    arrived = sum(path.stat().st_size for path in jls.received())
    stored = sum(originals[uid].stat().st_size for uid in to_jls)
    assert abs(counted - arrived) <= 400 * len(to_jls), (counted, arrived, stored)
    forwarded = router.audit_events("forwarded")
    sent_as = {(e["sop_instance_uid"], e["destination"]): e.get("transfer_syntax")
               for e in forwarded}  # fmt: skip
    assert all(sent_as[(uid, "jls")] == JPEGLSLossless for uid in to_jls)


def test_orthanc_decodes_what_the_rule_converted(
    router: RouterProcess, peers: dict[str, Any], tmp_path: Path
) -> None:
    orthanc: Orthanc = peers["orthanc"]
    ct_files = write_ct_series(tmp_path / "ct", 3, rows=96, cols=96, seed=9)
    sent = storescu(ct_files, router.port, called_ae="ROUTER", calling_ae="CT02")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    wanted = {_uid(f): f for f in ct_files}
    wait_until(lambda: wanted.keys() <= orthanc.sop_instance_uids().keys(), 60, "CT in Orthanc")
    for uid, orthanc_id in orthanc.sop_instance_uids().items():
        if uid not in wanted:
            continue
        stored = orthanc.get_json(f"/instances/{orthanc_id}/metadata?expand")
        assert stored["TransferSyntax"] == JPEGLSLossless
        png = orthanc.request("GET", f"/instances/{orthanc_id}/frames/0/rendered")
        assert png[:8] == b"\x89PNG\r\n\x1a\n", "Orthanc could not decode the converted frame"
        # Orthanc's own decoder: the frame as a NumPy array (REST API, Orthanc >= 1.10).
        decoded = np.load(
            io.BytesIO(orthanc.request("GET", f"/instances/{orthanc_id}/frames/0/numpy?rescale=0"))
        )
        source = _pixels(wanted[uid])
        assert np.array_equal(decoded.reshape(source.shape), source)
        assert np.array_equal(_pixels_of_bytes(orthanc.instance_file(orthanc_id)), source)


def _metric(text: str, series: str) -> float:
    """The value of one series in Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in the metrics")
