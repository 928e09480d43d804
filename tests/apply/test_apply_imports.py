"""Applying a stored transform needs no torch: the warp path must not import it (startup time)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _apply_support import Store


def _modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; its last line of output, split."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[-1].split()


def test_io_and_transforms_do_not_import_torch() -> None:
    code = "import sys, drmime_batch.io, drmime_batch.transforms\nprint('torch' in sys.modules)\n"
    assert _modules_after(code) == ["False"]


def test_apply_slide_command_does_not_import_torch(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "applied.ome.zarr"
    code = (
        "import sys\n"
        "from drmime_batch.cli import main\n"
        f"rc = main(['apply', 'slide', {str(store.out)!r}, 'affine', {str(store.moving)!r}, '--out', {str(out)!r}])\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    assert _modules_after(code) == ["0", "False"]
    assert (out / "zarr.json").is_file()


def test_the_core_names_still_resolve_lazily() -> None:
    code = (
        "import sys, drmime_batch.core as core\n"
        "before = 'torch' in sys.modules\n"
        "from drmime_batch.core import optimise, RegistrationConfig\n"
        "print(before, 'torch' in sys.modules, callable(optimise), core.RegistrationConfig is RegistrationConfig,\n"
        "      sorted(core.__all__) == sorted(n for n in core.__all__ if hasattr(core, n)))\n"
    )
    assert _modules_after(code) == ["False", "True", "True", "True", "True"]
