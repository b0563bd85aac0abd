"""Environment manifest: captured for real on this machine, secrets never written, diffs, and `rig env`."""

import importlib.metadata
import json
import platform
import time

import pytest
from click.testing import CliRunner

from rig.cli.env import env_command, load_environment
from rig.telemetry import envinfo

SECRETS = {
    "HF_TOKEN": "hf_qWeRtYuIoPaSdFgHjKlZxCvBnM1234",
    "OPENAI_API_KEY": "sk-proj-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "FOO_SECRET": "correct-horse-battery-staple",
    "VLLM_ENDPOINT": "https://alice:s3cretpw@example.invalid/v1",  # a URL with a password: redacted by value
    "TORCH_CACHE_TAG": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",  # a token-shaped value under a plain name
}


@pytest.fixture(scope="module")
def env():
    return envinfo.capture(torch=False)


def test_capture_has_the_keys_and_the_right_values(env):
    for key in ("captured_at", "python", "os", "cpu", "gpu", "torch", "packages", "installed", "env", "rig"):
        assert key in env
    assert env["python"]["version"] == platform.python_version()
    assert env["cpu"]["logical_cores"] >= 1
    numpy_version = importlib.metadata.version("numpy")
    assert f"numpy=={numpy_version}" in env["installed"]
    assert env["packages"]["numpy"] == numpy_version
    assert env["installed"] == sorted(env["installed"], key=lambda s: s.split("==")[0].lower().replace("_", "-"))
    assert env["gpu"]["source"] == "nvml" and isinstance(env["gpu"]["available"], bool)
    assert env["rig"]["version"]
    json.dumps(env)


def test_capture_is_fast_without_importing_torch():
    t0 = time.perf_counter()
    envinfo.capture(torch=False)
    assert time.perf_counter() - t0 < 2.0


def test_secrets_are_redacted_and_never_written(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HOME", "/data/hf-cache")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e7e71c0-0000-4000-8000-000000000001")
    monkeypatch.setenv("VLLM_ATTENTION_BACKEND", "FLASH_ATTN")
    text = json.dumps(envinfo.capture(torch=False))
    for value in SECRETS.values():
        assert value not in text
    assert "s3cretpw" not in text
    env = json.loads(text)["env"]
    assert env["HF_TOKEN"] == envinfo.REDACTED and env["VLLM_ENDPOINT"] == envinfo.REDACTED
    assert env["TORCH_CACHE_TAG"] == envinfo.REDACTED
    assert "OPENAI_API_KEY" not in env and "FOO_SECRET" not in env  # not numerics variables at all
    assert env["HF_HOME"] == "/data/hf-cache" and env["VLLM_ATTENTION_BACKEND"] == "FLASH_ATTN"
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-5e7e71c0-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("NCCL_SOCKET_IFNAME", "eth0", False),
        ("VLLM_API_KEY", "x", True),
        ("HF_HUB_PASS", "x", True),
        ("TORCH_X", "sk-ant-api03-abcdefghijklmnop", True),
        ("TORCH_X", "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6", True),
        ("TORCH_X", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r", False),
        ("CUDA_VISIBLE_DEVICES", "0,1", False),
        ("OMP_NUM_THREADS", "16", False),
        ("HF_HUB_AUTHORITY", "y", True),
    ],
)
def test_looks_secret(name, value, secret):
    assert envinfo.looks_secret(name, value) is secret


def test_torch_facts_when_torch_is_importable():
    pytest.importorskip("torch")
    info = envinfo.capture()["torch"]
    assert info["imported"] and info["version"] and "git_version" in info and "cuda_arch_list" in info
    for flag in (
        "matmul_allow_tf32",
        "cudnn_allow_tf32",
        "deterministic_algorithms",
        "cudnn_benchmark",
        "float32_matmul_precision",
    ):
        assert flag in info["backends"]
    assert info["backends"]["float32_matmul_precision"] in ("highest", "high", "medium")


def test_diff_returns_only_differences():
    a = {
        "captured_at": "t1",
        "torch": {"version": "2.13", "backends": {"matmul_allow_tf32": False}},
        "gpu": {"devices": [{"name": "H100", "uuid": "GPU-a"}]},
        "env": {"OMP_NUM_THREADS": "8"},
        "installed": ["numpy==2.3.5", "torch==2.13.0", "zzz==1"],
    }
    b = {
        "captured_at": "t2",
        "torch": {"version": "2.13", "backends": {"matmul_allow_tf32": True}},
        "gpu": {"devices": [{"name": "H100", "uuid": "GPU-b"}]},
        "env": {},
        "installed": ["numpy==2.3.5", "torch==2.11.0", "vllm==0.32.0"],
    }
    assert envinfo.diff(a, b) == [
        ("env.OMP_NUM_THREADS", "8", None),
        ("gpu.devices.0.uuid", "GPU-a", "GPU-b"),
        ("installed.torch", "2.13.0", "2.11.0"),
        ("installed.vllm", None, "0.32.0"),
        ("installed.zzz", "1", None),
        ("torch.backends.matmul_allow_tf32", False, True),
    ]
    assert envinfo.diff(a, a) == []
    assert envinfo.diff({"k": None}, {}) == [("k", None, None)]  # present-but-None differs from absent


def _run_dir(path, environment):
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1, "environment": environment}))
    return str(path)


def test_cli_json_parses():
    result = CliRunner().invoke(env_command, ["--json", "--no-torch"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["python"]["version"] == platform.python_version()


def test_cli_tables():
    result = CliRunner().invoke(env_command, ["--no-torch"])
    assert result.exit_code == 0, result.output
    assert "Key packages" in result.output and "numpy" in result.output


def test_cli_diff_shows_only_what_differs(tmp_path):
    base = {
        "python": {"version": "3.11.7"},
        "torch": {"version": "2.13.0", "cudnn": 91000},
        "env": {"NVIDIA_TF32_OVERRIDE": "0"},
        "installed": ["numpy==2.3.5", "triton==3.9.0"],
    }
    other = json.loads(json.dumps(base))
    other["torch"]["cudnn"] = 90800
    other["installed"][1] = "triton==3.5.0"
    run_a, run_b = _run_dir(tmp_path / "a", base), _run_dir(tmp_path / "b", other)
    result = CliRunner().invoke(env_command, ["--diff", run_a, run_b])
    assert result.exit_code == 0, result.output
    assert "torch.cudnn" in result.output and "91000" in result.output and "90800" in result.output
    assert "installed.triton" in result.output
    assert "python.version" not in result.output and "numpy" not in result.output
    assert "NVIDIA_TF32_OVERRIDE" not in result.output
    as_json = CliRunner().invoke(env_command, ["--diff", run_a, run_b, "--json"])
    assert {row["key"] for row in json.loads(as_json.output)} == {"torch.cudnn", "installed.triton"}
    same = CliRunner().invoke(env_command, ["--diff", run_a, str(tmp_path / "a" / "manifest.json")])
    assert same.exit_code == 0 and "no differences" in same.output


def test_cli_diff_missing_or_malformed_manifest_exits_2_with_one_line(tmp_path):
    run_a = _run_dir(tmp_path / "a", {"python": {"version": "3.11.7"}})
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(env_command, ["--diff", run_a, str(tmp_path / "empty")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "manifest.json" in lines[0] and "empty" in lines[0]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(env_command, ["--diff", run_a, str(bad)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "bad.json" in result.output
    no_env = tmp_path / "noenv.json"
    no_env.write_text(json.dumps({"schema_version": 1, "status": "complete"}))
    result = CliRunner().invoke(env_command, ["--diff", run_a, str(no_env)])
    assert result.exit_code == 2 and "'environment'" in result.output


def test_load_environment_accepts_a_capture_file(tmp_path):
    f = tmp_path / "env.json"
    f.write_text(json.dumps({"python": {"version": "3.12.1"}, "installed": []}))
    assert load_environment(f)["python"]["version"] == "3.12.1"
