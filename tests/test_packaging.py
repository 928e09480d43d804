"""Packaging: pyproject.toml, pixi.toml, .ci/run and README.md stay in step.

No pixi binary is needed: pixi.toml is parsed with :mod:`tomllib` and compared with
pyproject.toml through an explicit PyPI -> conda-forge name map. Every third-party import in the
package, the tests and the benchmarks must be declared in the right place.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
PIXI = ROOT / "pixi.toml"
CI_RUN = ROOT / ".ci" / "run"
README = ROOT / "README.md"

#: PyPI distribution (normalised) -> conda-forge package; ``None``: taken from PyPI in pixi.toml
PYPI_TO_CONDA: dict[str, str | None] = {
    "numpy": "numpy",
    "scipy": "scipy",
    "torch": "pytorch",
    "dask": "dask-core",  # dask[array]: dask-core plus numpy, which is listed on its own
    "distributed": "distributed",
    "zarr": "zarr",
    "tifffile": "tifffile",
    "imagecodecs": "imagecodecs",
    "xarray": "xarray",
    "rich": "rich",
    "pillow": "pillow",
    "pyyaml": "pyyaml",
    "fsspec": "fsspec",
    "numba": "numba",
    "jinja2": "jinja2",
    "matplotlib": "matplotlib-base",  # conda-forge's matplotlib without a GUI toolkit
    "pytest": "pytest",
    "pytest-timeout": "pytest-timeout",
    "scikit-image": "scikit-image",
    "ome-zarr-models": "ome-zarr-models",
    "dask-jobqueue": "dask-jobqueue",
    "cryptography": "cryptography",
    "psutil": "psutil",
    "dask-kubernetes": "dask-kubernetes",
    "simpleitk": "simpleitk",
    "itk-elastix": None,
    "s3fs": "s3fs",
    "gcsfs": "gcsfs",
    "moto": None,  # its "server" extra exists on PyPI only
    "ruff": "ruff",
    "mypy": "mypy",
}

#: import name -> PyPI distribution, where they differ beyond ``_`` vs ``-``
IMPORT_TO_DIST: dict[str, str] = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "SimpleITK": "simpleitk",
    "itk": "itk-elastix",
    "skimage": "scikit-image",
}

#: pixi-only conda packages that are not Python distributions of pyproject.toml
PIXI_ONLY = {"python", "cuda-version"}

EXTRAS = ("test", "hpc", "k8s", "peers", "cloud")


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_requirement(req: str) -> tuple[str, str]:
    """``"dask[array]>=2024.8"`` -> ``("dask", ">=2024.8")`` (name normalised, no markers)."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;.*)?", req)
    if m is None:
        raise ValueError(f"cannot parse requirement {req!r}")
    return _norm(m.group(1)), m.group(2).replace(" ", "")


def _pixi_spec(value: Any) -> str:
    """Version part of a pixi dependency value (a string or a table with ``version``)."""
    if isinstance(value, str):
        return value.replace(" ", "")
    return str(value.get("version", "*")).replace(" ", "")


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pixi() -> dict[str, Any]:
    return tomllib.loads(PIXI.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def declared(pyproject: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{"runtime": {dist: spec}, "test": {...}, ...}`` from pyproject.toml."""
    project = pyproject["project"]
    groups = {"runtime": dict(_split_requirement(r) for r in project["dependencies"])}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = dict(_split_requirement(r) for r in reqs)
    return groups


# --- pyproject.toml ------------------------------------------------------------------------------


def test_pyproject_core_metadata(pyproject: dict[str, Any], declared: dict[str, dict[str, str]]) -> None:
    project = pyproject["project"]
    assert project["requires-python"] == ">=3.11"
    runtime = declared["runtime"]
    required = ("dask", "distributed", "torch", "zarr", "tifffile", "xarray", "rich", "numba", "pillow", "imagecodecs")
    for dist in required:
        assert dist in runtime, f"{dist} missing from [project].dependencies"
    assert runtime["zarr"].startswith(">=3"), f"zarr must be >= 3, got {runtime['zarr']!r}"
    assert runtime["numba"] == ">=0.60"
    for extra in EXTRAS:
        assert extra in declared, f"extra {extra!r} missing from [project.optional-dependencies]"
    assert {"cryptography", "psutil", "pytest"} <= declared["test"].keys()
    assert "dask-jobqueue" in declared["hpc"]
    assert "dask-kubernetes" in declared["k8s"]
    assert {"simpleitk", "itk-elastix"} <= declared["peers"].keys()
    assert {"s3fs", "gcsfs"} <= declared["cloud"].keys()
    assert {"moto", "s3fs"} <= declared["test"].keys()  # the object-store tests run a local S3


def test_pyproject_has_lower_bounds_only(declared: dict[str, dict[str, str]]) -> None:
    for group, reqs in declared.items():
        for dist, spec in reqs.items():
            assert re.fullmatch(r">=[0-9][0-9A-Za-z.]*", spec), (
                f"{dist}{spec} in {group}: use a lower bound only (>=X), no pins or upper bounds"
            )


def test_console_script_resolves_to_a_callable(pyproject: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    target = pyproject["project"]["scripts"]["drmime-batch"]
    module_name, _, attr = target.partition(":")
    func = getattr(importlib.import_module(module_name), attr)
    assert callable(func)
    with pytest.raises(SystemExit, match=r"^0$"):
        func(["--version"])
    from drmime_batch import __version__

    assert capsys.readouterr().out.strip() == f"drmime-batch {__version__}"


def test_installed_entry_point_matches_pyproject(pyproject: dict[str, Any]) -> None:
    try:
        dist = importlib.metadata.distribution("drmime-batch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("drmime-batch is not installed (running from a bare checkout)")
    eps = [ep for ep in dist.entry_points if ep.group == "console_scripts" and ep.name == "drmime-batch"]
    assert len(eps) == 1, f"installed metadata has {len(eps)} drmime-batch console scripts"
    assert eps[0].value == pyproject["project"]["scripts"]["drmime-batch"], (
        "installed entry point differs from pyproject.toml: reinstall with pip install -e ."
    )
    assert callable(eps[0].load())


# --- third-party imports are declared --------------------------------------------------------------


def _local_modules() -> set[str]:
    names = {"drmime_batch", "__future__"}
    for folder in ("tests", "benchmarks", "deploy"):
        names |= {p.stem for p in (ROOT / folder).rglob("*.py")}
    return names


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Top-level modules imported by ``path`` and whether each import is guarded.

    Guarded: inside a function or a ``try`` block, or named by ``pytest.importorskip`` /
    ``importlib.util.find_spec`` / ``importlib.import_module`` (optional at run time).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name.split(".")[0], guarded) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], guarded))
        elif isinstance(node, ast.Call):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if fname in ("importorskip", "find_spec", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                    found.append((arg.value.split(".")[0], True))
        inner = guarded or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Try, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, False)
    return found


def _third_party(folder: str) -> dict[str, dict[str, bool]]:
    """``{distribution: {file: guarded_everywhere}}`` for the third-party imports under ``folder``."""
    local = _local_modules()
    out: dict[str, dict[str, bool]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module, guarded in _imports(path):
            if module in sys.stdlib_module_names or module in local:
                continue
            dist = _norm(IMPORT_TO_DIST.get(module, module))
            rel = path.relative_to(ROOT).as_posix()
            files = out.setdefault(dist, {})
            files[rel] = files.get(rel, True) and guarded
    return out


def test_package_imports_are_declared(declared: dict[str, dict[str, str]]) -> None:
    optional = set().union(*(declared[e] for e in EXTRAS))
    problems = []
    for dist, files in _third_party("drmime_batch").items():
        if dist in declared["runtime"]:
            continue
        unguarded = [f for f, g in files.items() if not g]
        if unguarded:
            problems.append(f"{dist}: imported at module level by {unguarded}; add it to [project].dependencies")
        elif dist not in optional:
            problems.append(f"{dist}: imported by {sorted(files)} but declared nowhere")
    assert not problems, "\n".join(problems)


def test_test_and_benchmark_imports_are_declared(declared: dict[str, dict[str, str]]) -> None:
    strict = declared["runtime"].keys() | declared["test"].keys()
    anywhere = strict | set().union(*(declared[e] for e in EXTRAS))
    problems = []
    for folder, must in (("tests", strict), ("benchmarks", anywhere)):
        for dist, files in _third_party(folder).items():
            if dist in must:
                continue
            unguarded = [f for f, g in files.items() if not g]
            if unguarded or dist not in anywhere:
                problems.append(f"{dist}: imported by {sorted(files)}; declare it in the test extra")
    assert not problems, "\n".join(problems)


def test_import_scanner_sees_guarded_and_unguarded_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import numpy as np\nfrom PIL import Image\n"
        "try:\n    import numba\nexcept ImportError:\n    numba = None\n"
        "def f():\n    import scipy.ndimage\n"
        "sitk = pytest.importorskip('SimpleITK')\n",
        encoding="utf-8",
    )
    assert sorted(_imports(src)) == [
        ("PIL", False), ("SimpleITK", True), ("numba", True), ("numpy", False), ("scipy", True)
    ]  # fmt: skip


# --- pixi.toml -------------------------------------------------------------------------------------


def test_pixi_workspace(pixi: dict[str, Any]) -> None:
    ws = pixi.get("workspace") or pixi["project"]
    assert ws["channels"] == ["conda-forge"]
    assert set(ws["platforms"]) == {"linux-64", "osx-arm64"}
    assert _pixi_spec(pixi["dependencies"]["python"]) == ">=3.11"
    me = pixi["pypi-dependencies"]["drmime-batch"]
    assert me == {"path": ".", "editable": True}, f"the package must be an editable path dependency, got {me!r}"


def _conda_side(deps: dict[str, Any], pypi_deps: dict[str, Any], dist: str) -> str | None:
    """Spec of ``dist`` in a pixi dependency table pair, ``None`` when absent."""
    conda = PYPI_TO_CONDA.get(dist, "<unmapped>")
    if conda == "<unmapped>":
        raise AssertionError(f"{dist} has no entry in PYPI_TO_CONDA (tests/test_packaging.py): add one")
    if conda is not None and conda in deps:
        return _pixi_spec(deps[conda])
    normalised = {_norm(k): v for k, v in pypi_deps.items()}
    if dist in normalised:
        return _pixi_spec(normalised[dist])
    return None


def _reverse(deps: dict[str, Any], pypi_deps: dict[str, Any]) -> set[str]:
    """PyPI distributions named by a pixi dependency table pair."""
    conda_to_pypi = {c: p for p, c in PYPI_TO_CONDA.items() if c is not None}
    names = {conda_to_pypi.get(c, f"<conda:{c}>") for c in deps if c not in PIXI_ONLY}
    return names | {_norm(p) for p in pypi_deps if _norm(p) != "drmime-batch"}


def test_pixi_runtime_dependencies_match_pyproject(pixi: dict[str, Any], declared: dict[str, dict[str, str]]) -> None:
    deps, pypi_deps = pixi["dependencies"], pixi.get("pypi-dependencies", {})
    for dist, spec in declared["runtime"].items():
        got = _conda_side(deps, pypi_deps, dist)
        assert got is not None, f"{dist} (pyproject runtime) missing from pixi.toml [dependencies]"
        assert got == spec, f"{dist}: pyproject says {spec}, pixi.toml says {got}"
    extra = _reverse(deps, pypi_deps) - declared["runtime"].keys()
    assert not extra, f"pixi.toml [dependencies] names packages pyproject.toml does not: {sorted(extra)}"


@pytest.mark.parametrize("extra", EXTRAS)
def test_pixi_features_match_extras(pixi: dict[str, Any], declared: dict[str, dict[str, str]], extra: str) -> None:
    feature = pixi["feature"].get(extra)
    assert feature is not None, f"pixi.toml has no feature {extra!r} for the pyproject extra"
    deps, pypi_deps = feature.get("dependencies", {}), feature.get("pypi-dependencies", {})
    for dist, spec in declared[extra].items():
        got = _conda_side(deps, pypi_deps, dist)
        assert got is not None, f"{dist} (extra {extra}) missing from pixi feature {extra!r}"
        assert got == spec, f"{dist} (extra {extra}): pyproject says {spec}, pixi.toml says {got}"
    surplus = _reverse(deps, pypi_deps) - declared[extra].keys()
    assert not surplus, f"pixi feature {extra!r} names packages the extra does not: {sorted(surplus)}"


def test_pixi_cuda_feature(pixi: dict[str, Any], declared: dict[str, dict[str, str]]) -> None:
    cuda = pixi["feature"]["cuda"]
    assert cuda["platforms"] == ["linux-64"]
    assert str(cuda["system-requirements"]["cuda"]).split(".")[0] == "12"
    torch = cuda["dependencies"]["pytorch"]
    assert isinstance(torch, dict) and torch["build"].startswith("cuda"), "pytorch must be a CUDA build"
    assert _pixi_spec(torch) == declared["runtime"]["torch"]


def test_pixi_environments_cover_every_feature(pixi: dict[str, Any]) -> None:
    envs = pixi["environments"]
    used = {f for env in envs.values() for f in (env if isinstance(env, list) else env.get("features", []))}
    assert {"cuda", "test", "hpc", "k8s", "peers"} <= used
    assert set(pixi["feature"]) <= used, f"features in no environment: {set(pixi['feature']) - used}"
    combos = [set(env if isinstance(env, list) else env.get("features", [])) for env in envs.values()]
    for pair in ({"cuda", "hpc"}, {"cuda", "k8s"}, {"cuda", "test"}):
        assert pair in combos, f"no environment combines {sorted(pair)}"


def _tasks(pixi: dict[str, Any]) -> dict[str, str]:
    tables = [pixi.get("tasks", {})] + [f.get("tasks", {}) for f in pixi.get("feature", {}).values()]
    out: dict[str, str] = {}
    for table in tables:
        for name, task in table.items():
            out[name] = task if isinstance(task, str) else task["cmd"]
    return out


def test_pixi_tasks(pixi: dict[str, Any], pyproject: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    tasks = _tasks(pixi)
    assert tasks["test"] == "python -m pytest -q"
    assert tasks["demo"] == "drmime-batch demo"
    script, command = tasks["demo"].split()
    assert script in pyproject["project"]["scripts"]
    from drmime_batch.cli import build_parser

    with pytest.raises(SystemExit, match=r"^0$"):  # argparse exits 2 for an unknown sub-command
        build_parser().parse_args([command, "--help"])


def test_readme_shows_the_test_command(pixi: dict[str, Any]) -> None:
    cmd = _tasks(pixi)["test"]
    fenced, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            inside = not inside
        elif inside:
            fenced.append(line.strip().removeprefix("$ "))
    assert cmd in fenced, f"README.md has no fenced line {cmd!r} (the pixi 'test' task and .ci/run run it)"


# --- .ci/run -----------------------------------------------------------------------------------------


def _script_lines() -> list[str]:
    lines = (ln.strip() for ln in CI_RUN.read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_ci_run_is_strict_bash_and_executable() -> None:
    text = CI_RUN.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n") or text.startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in _script_lines()
    assert CI_RUN.stat().st_mode & stat.S_IXUSR, ".ci/run must be executable (chmod +x)"
    ls = subprocess.run(["git", "ls-files", "-s", ".ci/run"], cwd=ROOT, capture_output=True, text=True, check=False)
    if ls.returncode == 0 and ls.stdout:
        assert ls.stdout.startswith("100755"), f"git records .ci/run without +x: {ls.stdout.strip()}"
    r = subprocess.run(["bash", "-n", str(CI_RUN)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_ci_run_installs_cpu_torch_first_then_runs_the_readme_command(pixi: dict[str, Any]) -> None:
    lines = _script_lines()
    installs = [i for i, ln in enumerate(lines) if re.search(r"\bpip install\b", ln)]
    torch_at = [i for i in installs if re.search(r"[\"']?torch==2\.13\.0[\"']?(\s|$)", lines[i])]
    package_at = [i for i in installs if re.search(r"-e [\"']?\.\[[\w,]+\][\"']?", lines[i])]
    assert torch_at, ".ci/run does not pip install torch==2.13.0"
    assert package_at, ".ci/run does not pip install -e \".[test,...]\""
    assert {"test", "k8s", "peers"} <= _ci_extras()
    assert max(torch_at) < min(package_at), "torch must be installed before the package"
    assert installs.index(min(package_at)) == len(installs) - 1, "nothing may be pip-installed after the package"
    cmd = _tasks(pixi)["test"]
    runs = [i for i, ln in enumerate(lines) if ln == cmd]
    assert len(runs) == 1, f".ci/run must run {cmd!r} exactly once, as its own line"
    assert runs[0] > min(package_at)
    pytest_runs = [ln for ln in lines if "-m pytest" in ln or ln.startswith("pytest")]
    assert pytest_runs == [cmd], f".ci/run runs pytest other ways too: {pytest_runs}"


def _ci_extras() -> set[str]:
    """The extras of the one ``pip install -e ".[...]"`` line of .ci/run."""
    found = [m for ln in _script_lines() for m in re.findall(r"-e [\"']?\.\[([\w,]+)\][\"']?", ln)]
    assert len(found) == 1, f".ci/run must install the package exactly once, got extras {found}"
    return set(found[0].split(","))


def test_ci_installs_every_extra_the_tests_import(declared: dict[str, dict[str, str]]) -> None:
    """No test may be skipped in CI for a missing extra: whatever the tests import, even guarded
    (``importorskip``, ``find_spec``, inside a test), comes with the extras .ci/run installs."""
    extras = _ci_extras()
    assert extras <= set(EXTRAS), f".ci/run installs unknown extras {sorted(extras - set(EXTRAS))}"
    installed = declared["runtime"].keys() | set().union(*(declared[e] for e in extras))
    missing = {dist: sorted(files) for dist, files in _third_party("tests").items() if dist not in installed}
    assert not missing, f"tests import distributions .ci/run does not install: {missing}"


def _run_ci_tail(tmp_path: Path, pytest_status: int) -> subprocess.CompletedProcess[str]:
    """Run the test part of .ci/run with a stand-in ``python`` that exits ``pytest_status``."""
    text = CI_RUN.read_text(encoding="utf-8")
    marker = "# --- run the tests"
    assert marker in text, f".ci/run lost its {marker!r} line"
    tail = tmp_path / "tail.sh"
    tail.write_text("set -euo pipefail\n" + text[text.index(marker):], encoding="utf-8")
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "fake $*"\nexit {pytest_status}\n', encoding="utf-8")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", str(tail)], capture_output=True, text=True, env=env, timeout=30, check=False)


@pytest.mark.parametrize("status", [0, 1, 2, 5])
def test_ci_run_exit_status(tmp_path: Path, status: int) -> None:
    r = _run_ci_tail(tmp_path, status)
    assert "fake -m pytest -q" in r.stdout
    if status == 5:
        assert r.returncode == 1
        assert "collected no tests" in r.stderr
    else:
        assert r.returncode == status, r.stderr


def test_ci_run_lints_before_the_tests(pyproject: dict[str, Any], declared: dict[str, dict[str, str]]) -> None:
    lines = _script_lines()
    cmd = "python -m pytest -q"
    assert cmd in lines
    for lint in ("python -m ruff check .", "python -m mypy"):
        guarded = [i for i, ln in enumerate(lines) if ln == f"if ! {lint}; then"]
        assert len(guarded) == 1, f".ci/run must run {lint!r} once, as 'if ! {lint}; then' (a failure stops CI)"
        assert guarded[0] < lines.index(cmd), f"{lint!r} must run before the tests"
        assert lines[guarded[0] + 2] == "exit 1", f"a failing {lint!r} must end CI with exit 1"
    assert {"ruff", "mypy"} <= declared["test"].keys(), "the linters belong to the test extra that CI installs"
    assert "ruff" in pyproject["tool"] and "mypy" in pyproject["tool"], "the linters are configured in pyproject.toml"
