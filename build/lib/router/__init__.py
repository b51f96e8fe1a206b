"""dicom-router: receive DICOM instances, route them by rules, deliver them durably."""

__version__ = "0.1.0"
