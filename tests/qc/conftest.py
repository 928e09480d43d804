"""Shared helpers of the QC tests live in ``tests/cli/_batch_data.py``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
