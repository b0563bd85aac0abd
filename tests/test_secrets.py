"""Secrets in the environment never reach a run directory (every file is scanned, byte by byte)."""

from __future__ import annotations

import json

from rig.run import runner
from rig.run.spec import RunSpec, SamplingSpec
from rig.run.suite import load_suite

SECRETS = {
    "OPENAI_API_KEY": "sk-test-0123456789abcdefSECRET",
    "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyzSECRET",
    "FOO_SECRET": "made-up-foo-secret-value-42",
    "HF_HUB_TOKEN_URL": "https://user:hunter2pass@example.invalid/x",
}


def test_no_secret_reaches_any_file(tiny_model, tmp_path, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    suite_path = tmp_path / "s.jsonl"
    suite_path.write_text(json.dumps({"id": "q", "messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    spec = RunSpec(model=str(tiny_model), sampling=SamplingSpec(max_new_tokens=4))
    out = runner.execute(spec, tmp_path / "run", suite=load_suite(str(suite_path)), telemetry_hz=20.0)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"manifest.json", "prompts.jsonl", "completions.jsonl"} <= {p.name for p in files}
    assert any(p.suffix == ".parquet" for p in files)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "HF_TOKEN" in manifest["environment"]["env"], "the variable's name is recorded (redacted), not dropped"
    for path in files:
        data = path.read_bytes()
        for value in [*SECRETS.values(), "hunter2pass"]:
            assert value.encode() not in data, f"{value!r} leaked into {path}"
