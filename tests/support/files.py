"""Writing the small YAML files the rule tests need."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` (dedented, so tests can indent it inline) to ``folder/name``."""
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path
