"""`rig bisect` and `rig check`: the searches, the verdict's exit codes, and the three bisects on real stacks.

The planted change for versions and commits is real: `rigplug`, a package built in the test, registers a torch
device-backend plugin (the `torch.backends` entry point, which `import torch` loads); from release 1.4 (and at one
commit) its plugin replaces the CPU sigmoid with one computed in bfloat16, a "fast kernel" that moves the tiny gpt-oss's
fp32 log-probabilities by about 1e-3 nats (its experts' SwiGLU calls torch.sigmoid). Nothing reaches the network: the
versions come from a find-links directory of wheels written here, and the commits from a git repository made here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from rig.bisect.search import BAD, GOOD, SKIP, bisect_ordered, ddmin
from rig.bisect.settings import Change, apply_changes, spec_changes

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

PLUGIN_NOOP = '''
def autoload():
    """Nothing to register in this release."""
'''
PLUGIN_PLANTED = '''
def autoload():
    """A "fast" CPU sigmoid computed in bfloat16: moves fp32 numerics by about 1e-3."""
    global _LIB
    import torch

    if _LIB is not None:
        return
    _LIB = torch.library.Library("aten", "IMPL")

    def sigmoid(x):
        with torch._C._AutoDispatchBelowAutograd():
            y = x.to(torch.bfloat16)
            return (1.0 / (1.0 + torch.exp(-y))).to(x.dtype)

    _LIB.impl("sigmoid", sigmoid, "CPU")
'''
ENTRY_POINTS = "[torch.backends]\nrigplug = rigplug:autoload\n"


def plugin_source(version: str, planted: bool) -> str:
    return f"__version__ = {version!r}\n_LIB = None\n" + (PLUGIN_PLANTED if planted else PLUGIN_NOOP)


def make_wheel(outdir: Path, name: str, version: str, files: dict[str, str], requires=(), entry_points="") -> Path:
    """A pure-Python wheel written by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    entries = dict(files)
    entries[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    entries[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: rig-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        entries[f"{dist}/entry_points.txt"] = entry_points
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    entries[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in entries.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    """Commits in the test repositories need an identity; CI machines may have none configured."""
    for key, value in (("NAME", "rig tests"), ("EMAIL", "rig-tests@example.invalid")):
        for who in ("AUTHOR", "COMMITTER"):
            monkeypatch.setenv(f"GIT_{who}_{key}", value)


@pytest.fixture(scope="module")
def small_suite(tmp_path_factory) -> Path:
    """The default suite's first 8 prompts (8 sequences: enough for the floor's sign test at alpha 0.01)."""
    lines = (ROOT / "rig" / "run" / "suites" / "default.jsonl").read_text().splitlines()[:8]
    path = tmp_path_factory.mktemp("suite") / "suite8.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_spec(path: Path, **fields) -> Path:
    sampling = fields.pop("sampling", {"max_new_tokens": 8})
    engine_args = fields.pop("engine_args", {})
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    lines += ["[sampling]", *(f"{k} = {json.dumps(v)}" for k, v in sampling.items())]
    if engine_args:
        lines += ["[engine_args]", *(f"{k} = {json.dumps(v)}" for k, v in engine_args.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def rig(*args, cwd=None, check=False, timeout=1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    res = subprocess.run([PY, "-m", "rig", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                         timeout=timeout)  # fmt: skip
    if check and res.returncode != 0:
        raise AssertionError(f"rig {args[0]} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


# ---- the searches -----------------------------------------------------------------------------------------------


def test_bisect_ordered_skips_and_reports_ambiguity():
    outcomes = [GOOD, GOOD, SKIP, GOOD, BAD, BAD]
    calls = []
    res = bisect_ordered(len(outcomes), lambda i: calls.append(i) or outcomes[i])
    assert (res.last_good, res.first_bad, res.skipped_between) == (3, 4, [])
    assert calls[0] == 2 and len(calls) == len(set(calls))  # the midpoint first; each candidate at most once
    # a skip right before the first bad: the answer names both
    res = bisect_ordered(4, lambda i: [GOOD, SKIP, BAD, BAD][i])
    assert (res.last_good, res.first_bad, res.skipped_between) == (0, 2, [1])
    # known verdicts replay without calling the test again
    res = bisect_ordered(
        len(outcomes), lambda i: pytest.fail("no test needed"), done={2: SKIP, 1: GOOD, 3: GOOD, 4: BAD}
    )
    assert (res.last_good, res.first_bad) == (3, 4)


def test_ddmin_single_culprit_and_interacting_pair():
    changes = ["stack", "dtype", "attention", "batch_size", "engine_args.kv_cache_dtype"]
    res = ddmin(changes, lambda s: BAD if "attention" in s else GOOD)
    assert res.minimal == ["attention"]
    res = ddmin(changes, lambda s: BAD if {"dtype", "engine_args.kv_cache_dtype"} <= set(s) else GOOD)
    assert res.minimal == ["dtype", "engine_args.kv_cache_dtype"]
    assert len({t for t, _ in res.tests}) == len(res.tests)  # no configuration tested twice
    res = ddmin(changes, lambda s: SKIP if "stack" in s else (BAD if "batch_size" in s else GOOD))
    assert res.minimal == ["batch_size"]


def test_spec_changes_and_apply():
    good = {"stack": "hf", "dtype": "float32", "batch_size": 1, "sampling": {"seed": 0}, "engine_args": {"a": 1}}
    bad = {"stack": "hf", "dtype": "bfloat16", "batch_size": 4, "sampling": {"seed": 1}, "engine_args": {"b": 2}}
    changes = spec_changes(good, bad)
    assert [c.path for c in changes] == ["dtype", "batch_size", "sampling.seed", "engine_args.a", "engine_args.b"]
    assert Change("engine_args.a", 1, None).text() == "engine arg a 1 -> (unset)"
    assert apply_changes(good, tuple(changes)) == bad
    assert apply_changes(good, (changes[0],))["dtype"] == "bfloat16"


def test_versions_between_from_find_links_and_a_file_index(tmp_path):
    from rig.bisect.envs import Sources
    from rig.bisect.index import versions_between

    links = tmp_path / "links"
    links.mkdir()
    for v in ("1.0", "1.1", "1.2rc1", "1.3", "2.0"):
        make_wheel(links, "rigplug", v, {"rigplug/__init__.py": ""})
    (links / "other_pkg-1.2-py3-none-any.whl").write_bytes(b"")
    index = tmp_path / "simple" / "rigplug"
    index.mkdir(parents=True)
    (index / "index.html").write_text(
        '<a href="../../f/rigplug-1.2.tar.gz">rigplug-1.2.tar.gz</a>'
        '<a href="../../f/rigplug-1.4-py3-none-any.whl" data-yanked="">rigplug-1.4-py3-none-any.whl</a>'
    )
    sources = Sources(index_url=f"file://{tmp_path / 'simple'}", find_links=(str(links),))
    assert versions_between("rigplug", "1.0", "2.0", sources) == ["1.0", "1.1", "1.2", "1.3", "2.0"]
    assert versions_between("rigplug", "1.3", "1.0", sources) == ["1.3", "1.2", "1.1", "1.0"]  # a fix, bisected
    assert "1.2rc1" in versions_between("rigplug", "1.0", "2.0", sources, pre=True)


# ---- rig check: git bisect's exit codes -------------------------------------------------------------------------


def test_check_exit_codes_and_git_bisect_run(tmp_path, small_suite):
    """rig check gives 0, 1, 125 and 128; as `git bisect run`'s verdict it names the commit that moved the stub."""
    ref, ref2 = tmp_path / "ref", tmp_path / "ref2"
    for out in (ref, ref2):
        rig("run", "--stack", "stub", "--model", "stub", "--suite", small_suite, "--max-new-tokens", 16, "--out", out,
            "-q", "--telemetry-hz", 0, check=True)  # fmt: skip
    spec = write_spec(tmp_path / "bad.toml", stack="stub", model="stub", sampling={"max_new_tokens": 16},
                      engine_args={"perturb": 0.3})  # fmt: skip
    common = ("check", "--reference", ref, "--floor", ref2)
    assert rig(*common, "--out", tmp_path / "same").returncode == 0  # the reference's spec again
    res = rig(*common, "--spec", spec, "--out", tmp_path / "moved")
    assert res.returncode == 1 and "DIVERGED" in res.stdout
    crash = write_spec(tmp_path / "crash.toml", stack="stub", model="stub", engine_args={"fail_at_batch": 0})
    res = rig(*common, "--spec", crash, "--out", tmp_path / "crash")
    assert res.returncode == 125 and "planted failure" in res.stderr
    assert rig("check", "--reference", tmp_path / "nothing", "--out", tmp_path / "x").returncode == 128

    # git bisect run over a repository whose file sets the stub's perturbation; one commit's run crashes (a skip)
    repo = tmp_path / "repo"
    repo.mkdir()
    shas = []
    for value in ("0", "fail", "0.001", "0.3", "0.3"):
        (repo / "perturb.txt").write_text(value + "\n")
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True) if not shas else None
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"perturb {value}"], cwd=repo, check=True)
        shas.append(
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        )
    script = tmp_path / "step.sh"
    script.write_text(
        "#!/bin/sh\nset -e\n"
        'v=$(cat perturb.txt); h=$(git rev-parse --short HEAD); spec="' + str(tmp_path) + '/spec-$h.toml"\n'
        'if [ "$v" = fail ]; then ea="fail_at_batch = 0"; else ea="perturb = $v"; fi\n'
        'printf \'stack = "stub"\\nmodel = "stub"\\n[sampling]\\nmax_new_tokens = 16\\n\' > "$spec"\n'
        'printf \'[engine_args]\\n%s\\n\' "$ea" >> "$spec"\n'
        f'exec {PY} -m rig check --reference {ref} --floor {ref2} --spec "$spec" --out {tmp_path}/runs/$h\n'
    )
    script.chmod(0o755)
    subprocess.run(["git", "bisect", "start", shas[-1], shas[0]], cwd=repo, check=True, capture_output=True)
    res = subprocess.run(["git", "bisect", "run", str(script)], cwd=repo, capture_output=True, text=True)
    assert f"{shas[3]} is the first bad commit" in res.stdout, res.stdout + res.stderr


# ---- settings ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_top1(tmp_path_factory) -> Path:
    """The tiny gpt-oss with one expert per token: a checkpoint whose tokens really differ."""
    from rig.testing.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny-top1") / "tiny-top1"
    build_tiny_model(out, top_k=1, with_tokenizer=False)
    return out


def test_settings_bisect_names_the_one_field(tmp_path, tiny_model, tiny_top1, small_suite):
    """fp32, batch 1 against a spec that changes the model, the dtype and the batch size: bf16 and batch 4 move the
    numbers within rounding (the verdict agrees), the other checkpoint moves the tokens; the bisect names it alone."""
    from rig.bisect.runs import thresholds_from
    from rig.bisect.settings import bisect_settings
    from rig.run.runner import execute
    from rig.run.spec import RunSpec, SamplingSpec
    from rig.run.suite import load_suite

    suite = load_suite(str(small_suite))
    good = RunSpec(
        stack="hf", model=str(tiny_model), dtype="float32", batch_size=1, sampling=SamplingSpec(max_new_tokens=8)
    )
    bad = good.replace(model=str(tiny_top1), dtype="bfloat16", batch_size=4)
    runs = tmp_path / "runs"
    good_run = execute(good, runs / "good", suite=suite, telemetry_hz=0)
    bad_run = execute(bad, runs / "bad", suite=suite, telemetry_hz=0)

    result = bisect_settings(tmp_path / "bisect", good_run, bad_run, thresholds=thresholds_from({}))
    assert result["minimal"] == ["model"], result
    assert result["sentence"].startswith(f"model {tiny_model} -> {tiny_top1} alone reproduces it")
    assert result["runs_needed"] == 2  # the floor replicate and the model change alone; good and bad were reused
    assert "2 runs recorded" in result["sentence"]
    state = json.loads((tmp_path / "bisect" / "bisect.json").read_text())
    assert state["result"]["first_bad"] in state["steps"]
    for name in ("diff.json", "report.html", "summary.md"):
        assert (tmp_path / "bisect" / name).exists()
    # rerun: everything answers from the bisect directory, nothing is recorded again
    again = bisect_settings(tmp_path / "bisect", good_run, bad_run, thresholds=thresholds_from({}))
    assert again["minimal"] == ["model"] and again["runs_needed"] == 2


# ---- versions ---------------------------------------------------------------------------------------------------


def _own_processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_versions_bisect_names_the_release_skips_a_broken_one_and_resumes(tmp_path, tiny_model, small_suite):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for v in ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5"):
        requires = ["rigplug-missing-dependency>=1"] if v == "1.2" else []  # 1.2 cannot be installed
        make_wheel(wheels, "rigplug", v, {"rigplug/__init__.py": plugin_source(v, planted=v >= "1.4")}, requires,
                   ENTRY_POINTS)  # fmt: skip
    spec = write_spec(tmp_path / "spec.toml", stack="hf", model=str(tiny_model), dtype="float32", batch_size=8)
    bisect_dir = tmp_path / "bisect"
    cmd = [PY, "-m", "rig", "bisect", "versions", "--package", "rigplug", "--good", "1.0", "--bad", "1.5",
           "--spec", str(spec), "--suite", str(small_suite), "--dir", str(bisect_dir), "--no-index",
           "--find-links", str(wheels), "--no-pip-config", "--env-cache", str(tmp_path / "envs")]  # fmt: skip

    # first attempt: killed (SIGKILL, the whole process group) while rigplug 1.1's run is being recorded
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    state_path, deadline = bisect_dir / "bisect.json", time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if (bisect_dir / "runs" / "rigplug-1.1" / "manifest.json").exists():
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    assert not _own_processes_mentioning(str(bisect_dir)), "the step's run outlived the killed bisect"
    before = json.loads(state_path.read_text())["steps"]
    assert before["rigplug-1.2"]["outcome"] == SKIP and "rigplug-missing-dependency" in before["rigplug-1.2"]["line"]
    assert before["rigplug-1.5"]["outcome"] == BAD and not before["rigplug-1.1"].get("outcome")

    # the same command again: resumes, reusing every finished step and the incomplete run
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming" in res.stderr
    assert res.stdout.startswith("rigplug 1.4 is the first bad version"), res.stdout
    state = json.loads(state_path.read_text())
    steps = state["steps"]
    assert state["result"]["first_bad"] == "rigplug-1.4" and state["result"]["last_good"] == "rigplug-1.3"
    for key, step in before.items():
        if step.get("outcome"):
            assert steps[key]["started_at"] == step["started_at"], f"{key} was run again"
    assert "resuming the incomplete run" in (bisect_dir / "logs" / "rigplug-1.1.log").read_text()
    assert steps["rigplug-1.1"]["outcome"] == GOOD and steps["rigplug-1.3"]["outcome"] == GOOD
    assert steps["rigplug-1.4"]["probe"]["packages"]["rigplug"]["version"] == "1.4"
    assert steps["rigplug-1.4"]["changes"] == {"rigplug": [None, "1.4"]}  # nothing else differs from the project's
    for name in ("diff.json", "report.html", "summary.md"):
        assert (bisect_dir / name).exists()
    assert (bisect_dir / "verdicts" / "rigplug-1.4.json").exists()


# ---- commits ----------------------------------------------------------------------------------------------------


def test_commits_bisect_names_the_commit(tmp_path, tiny_model, small_suite):
    repo = tmp_path / "rigplug"
    (repo / "rigplug").mkdir(parents=True)
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "rigplug"\nversion = "0.1"\n\n'
        '[project.entry-points."torch.backends"]\nrigplug = "rigplug:autoload"\n\n'
        '[tool.setuptools]\npackages = ["rigplug"]\n'
    )
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    shas = []
    for message, planted, readme in (
        ("initial plugin", False, "a torch plugin\n"),
        ("docs", False, "a torch plugin; it does nothing yet\n"),
        ("a faster sigmoid", True, "a torch plugin; it does nothing yet\n"),
        ("more docs", True, "a torch plugin with a fast sigmoid\n"),
    ):
        (repo / "rigplug" / "__init__.py").write_text(plugin_source("0.1", planted))
        (repo / "README").write_text(readme)
        subprocess.run(["git", "add", "."], cwd=repo, check=True)
        subprocess.run(["git", "commit", "-qm", message], cwd=repo, check=True)
        shas.append(
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        )
    spec = write_spec(tmp_path / "spec.toml", stack="hf", model=str(tiny_model), dtype="float32", batch_size=8)
    res = rig("bisect", "commits", "--repo", repo, "--good", shas[0], "--bad", shas[-1], "--spec", spec,
              "--suite", small_suite, "--dir", tmp_path / "bisect", "--no-index", "--no-pip-config",
              "--env-cache", tmp_path / "envs", "--probe", "rigplug")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"{shas[2][:12]} a faster sigmoid is the first bad commit"), res.stdout
    state = json.loads((tmp_path / "bisect" / "bisect.json").read_text())
    assert state["result"]["commit"] == shas[2]
    assert state["steps"][f"commit-{shas[1][:12]}"]["outcome"] == GOOD
    assert "is the first bad commit" in (tmp_path / "bisect" / "logs" / "git-bisect.log").read_text()
    # the user's repository is left as it was: no bisect in progress, nothing changed
    assert subprocess.run(["git", "bisect", "log"], cwd=repo, capture_output=True).returncode != 0
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""
