"""Environments that differ from the project's environment only in what is being bisected, built with uv and cached.

The project's environment (the interpreter running the rig, usually .venv) is the *base*. For a candidate (a package
version, or a source checkout) uv resolves the candidate against the base as it is installed (`uv pip install
--dry-run --python BASE`: installed versions are kept wherever they satisfy the candidate), which yields exactly the
distributions that must change: the package itself and any dependency its version cannot share with the base
(Transformers 4.55 needs an older huggingface-hub and tokenizers). The environment is then an *overlay*: a fresh `uv
venv` holding only those distributions (`--no-deps`), with a .pth file that appends the base's site-packages behind
them, so every other package is the base's own file. "Differs only in" is thus checked, not assumed: each environment
records the changes (bisect logs list them), and each run probes which version its interpreter actually imports.

A date environment is the same kind of overlay over the pins `uv pip compile --exclude-newer DATE` gives for the
requirements: every requirement and dependency moves to its newest release as of that day (newer or older than the
base's; `uv pip install --upgrade` would never downgrade), except the packages held by --keep (CPU torch builds).
Files on an index that publishes no upload dates (a local index, find-links) cannot be dated: uv keeps them.

Environments are cached under ~/.cache/rig/envs/LABEL-HASH (HASH covers the base's frozen requirements, the
candidate and the package sources), complete when rig-env.json exists; uv's own cache hardlinks wheels, so a revisit
costs nothing and a new environment for one pure-Python package costs seconds. Where pip is configured with extra
indexes, find-links or constraints (pip.conf, PIP_*), uv gets the same sources, so it finds what pip finds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.files import atomic_write_bytes, atomic_write_json, now_iso

PYPI = "https://pypi.org/simple"
MARKER = "rig-env.json"
# " + transformers==4.55.0", " - tokenizers==0.23.3", " + rigplug==0.1 (from file:///...)", " + rigplug @ file:///..."
CHANGE_LINE = re.compile(r"^\s*([+-])\s+([A-Za-z0-9._-]+)(?:==(\S+))?(?:\s+@\s+(\S+))?(?:\s+\(from (\S+)\))?\s*$")


class EnvError(Exception):
    """A candidate environment could not be built (the candidate is skipped, never blamed)."""


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rig" / "envs"


def uv_bin() -> str:
    """The uv executable: the `uv` package's binary, else uv on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise UserError("bisecting versions and commits needs uv: pip install uv (or inference-rig[bisect])")


def rig_source_root() -> Path:
    """The directory holding the `rig` package that runs now: every environment imports this rig."""
    import rig

    return Path(rig.__file__).resolve().parents[1]


# ---- where packages come from -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sources:
    """Package sources for uv and for listing versions: pip's configuration by default, overridable per bisect."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    no_index: bool = False

    def uv_args(self) -> list[str]:
        args: list[str] = []
        if self.no_index:
            args.append("--no-index")
        else:
            if self.index_url:
                args += ["--index-url", self.index_url]
            for url in self.extra_index_urls:
                args += ["--extra-index-url", url]
            if self.extra_index_urls:  # pip's behaviour: the best match across indexes, not the first index's
                args += ["--index-strategy", "unsafe-best-match"]
        for link in self.find_links:
            args += ["--find-links", link]
        for c in self.constraints:
            args += ["--constraint", c]
        return args

    def indexes(self) -> list[str]:
        """Simple-API index URLs in search order (none with --no-index)."""
        return [] if self.no_index else [self.index_url or PYPI, *self.extra_index_urls]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def configured(
        cls,
        python: str,
        *,
        use_pip_config: bool = True,
        index_url: str | None = None,
        extra_index_urls: tuple[str, ...] = (),
        find_links: tuple[str, ...] = (),
        no_index: bool = False,
    ) -> Sources:
        """pip's configured sources (pip config list, which includes PIP_* variables) plus the given ones."""
        cfg: dict[str, list[str]] = {}
        if use_pip_config:
            cfg = pip_config(python)
        first = (cfg.get("index-url") or [None])[0]
        return cls(
            index_url=index_url or first,
            extra_index_urls=tuple(dict.fromkeys([*cfg.get("extra-index-url", []), *extra_index_urls])),
            find_links=tuple(dict.fromkeys([*cfg.get("find-links", []), *find_links])),
            constraints=tuple(dict.fromkeys(cfg.get("constraint", []))),
            no_index=no_index or bool(cfg.get("no-index")),
        )


def pip_config(python: str) -> dict[str, list[str]]:
    """{option: values} from `python -m pip config list` (files and PIP_* variables; later entries win)."""
    try:
        out = subprocess.run(
            [python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    cfg: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        option = key.split(".", 1)[-1].strip()
        values = value.strip().strip("'\"").split()
        if option in ("index-url", "extra-index-url", "find-links", "constraint", "no-index"):
            cfg[option] = values
    return cfg


# ---- the project's environment ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    """The environment every candidate differs from: an interpreter, its site-packages and its frozen requirements."""

    python: str
    version: str
    site_dirs: tuple[str, ...]
    freeze: tuple[str, ...]

    @property
    def hash(self) -> str:
        h = hashlib.sha256(json.dumps([self.python, self.version, self.site_dirs, self.freeze]).encode())
        return h.hexdigest()[:12]

    def versions(self) -> dict[str, str]:
        """{canonical name: version} of the pinned distributions."""
        out = {}
        for line in self.freeze:
            name, sep, version = line.partition("==")
            if sep:
                out[canonical(name)] = version
        return out

    @classmethod
    def of(cls, python: str) -> Base:
        code = "import json, site, sys; print(json.dumps([sys.version.split()[0], site.getsitepackages()]))"
        try:
            res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, timeout=120)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise UserError(f"cannot run the base interpreter {python}: {exc}") from None
        version, sites = json.loads(res.stdout)
        freeze = _uv(["pip", "freeze", "--python", python], check=True).stdout.splitlines()
        return cls(python, version, tuple(sites), tuple(sorted(ln.strip() for ln in freeze if ln.strip())))


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv(args: list[str], *, check: bool = False, log: Path | None = None, timeout: float = 1800) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["NO_COLOR"] = "1"
    cmd = [uv_bin(), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"$ {' '.join(cmd)}\n{res.stdout}{res.stderr}")
    if check and res.returncode != 0:
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-4:])
        raise EnvError(f"uv {args[0]} {args[1] if len(args) > 1 else ''} failed: {tail}")
    return res


# ---- environments -----------------------------------------------------------------------------------------------


@dataclass
class Env:
    """A built environment: its interpreter and what differs from the base ({name: [base version, new version]})."""

    path: Path
    label: str
    changes: dict[str, list[str | None]] = field(default_factory=dict)
    built_s: float = 0.0
    cached: bool = False

    @property
    def python(self) -> str:
        return str(self.path / "bin" / "python")

    def describe_changes(self) -> str:
        if not self.changes:
            return "no change from the base environment"
        return ", ".join(f"{n} {a or '(absent)'} -> {b or '(removed)'}" for n, (a, b) in sorted(self.changes.items()))


class Envs:
    """Builds and caches candidate environments over one base with one set of package sources."""

    def __init__(
        self,
        base: Base,
        sources: Sources,
        cache_dir: Path | None = None,
        build_isolation: bool = False,
        without: tuple[str, ...] = (),
    ):
        self.base, self.sources = base, sources
        self.without = tuple(sorted(canonical(n) for n in without))  # never installed into a candidate
        self.cache_dir = (Path(cache_dir) if cache_dir else cache_root()).resolve()
        self.build_isolation = build_isolation

    def _path(self, label: str, identity: dict[str, Any]) -> Path:
        blob = json.dumps(
            {
                "base": self.base.hash,
                "sources": self.sources.to_dict(),
                "rig": str(rig_source_root()),
                "without": list(self.without),
                **identity,
            },
            sort_keys=True,
        )
        slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", label)[:80]
        return self.cache_dir / f"{slug}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def overlay(
        self, label: str, requirements: list[str], log: Path, identity: str = "", resolve_args: tuple[str, ...] = ()
    ) -> Env:
        """The base plus what `requirements` (pins such as "transformers==5.3.0", or a source path) must change.

        identity distinguishes candidates whose requirement text is the same (a checkout at different commits);
        resolve_args go to the resolution only (a date's --upgrade --exclude-newer). Raises EnvError when uv cannot
        resolve or install them.
        """
        path = self._path(
            label, {"kind": "overlay", "requirements": requirements, "identity": identity, "resolve": resolve_args}
        )
        with _locked(path) as cached:
            if cached is not None:
                return Env(path, label, cached.get("changes", {}), cached.get("built_s", 0.0), cached=True)
            t0 = time.perf_counter()
            build = [] if self.build_isolation else ["--no-build-isolation"]
            plan = _uv(
                ["pip", "install", "--dry-run", "--python", self.base.python, *build, *self.sources.uv_args()]
                + list(resolve_args)
                + requirements,
                log=log,
            )
            if plan.returncode != 0:
                raise EnvError(f"cannot resolve {' '.join(requirements)[:200]}: {_tail(plan)}")
            installs, changes = _parse_plan(plan.stdout + plan.stderr)
            left_out = sorted(n for n in changes if n in self.without)
            installs = [i for i in installs if canonical(re.split(r"[=@ ]", i)[0]) not in self.without]
            changes = {n: c for n, c in changes.items() if n not in self.without}
            paths = [r for r in requirements if Path(r).exists()]
            if paths and not any(" @ " in i for i in installs):
                raise EnvError(f"uv planned no install from {paths[0]} (already installed in the base?)")
            self._venv(path, log, base_sites=self.base.site_dirs)
            if installs:
                res = _uv(
                    ["pip", "install", "--python", str(path / "bin" / "python"), "--no-deps", *build]
                    + self.sources.uv_args()
                    + installs,
                    log=log,
                )
                if res.returncode != 0:
                    raise EnvError(f"cannot install {' '.join(installs)[:200]}: {_tail(res)}")
            built = round(time.perf_counter() - t0, 2)
            _mark(path, {"label": label, "requirements": requirements, "changes": changes, "built_s": built,
                         "left_out": left_out})  # fmt: skip
            return Env(path, label, changes, built)

    def dated(self, label: str, requirements: list[str], date: str, keep: dict[str, str], log: Path) -> Env:
        """The base with every requirement, and their dependencies, at their newest releases as of `date` (`uv pip
        compile --exclude-newer`: newer or older than the base's), the `keep` packages held at their versions."""
        path = self._path(label, {"kind": "dated", "requirements": requirements, "date": date, "keep": keep})
        path.parent.mkdir(parents=True, exist_ok=True)
        resolved = path.parent / f".{path.name}.pins.txt"  # the date's resolution, kept: a revisit skips it
        if resolved.exists():
            return self.overlay(label, resolved.read_text().split(), log, identity=f"{date} {path.name}")
        req_in, constraints = path.parent / f".{path.name}.in", path.parent / f".{path.name}.keep.txt"
        req_in.write_text("".join(f"{r}\n" for r in requirements))
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(keep.items())))
        # `uv pip install --upgrade --exclude-newer` never downgrades what is installed; a compile ignores it.
        res = _uv(
            ["pip", "compile", str(req_in), "--exclude-newer", date, "--constraint", str(constraints), "--python",
             self.base.python, "--no-header", "--no-annotate", *self.sources.uv_args()],
            log=log,
        )  # fmt: skip
        if res.returncode != 0:
            raise EnvError(f"cannot resolve the requirements as of {date}: {_tail(res)}")
        pins = [ln.strip() for ln in res.stdout.splitlines() if "==" in ln and not ln.lstrip().startswith("#")]
        atomic_write_bytes(resolved, "\n".join(pins).encode() + b"\n")
        return self.overlay(label, pins, log, identity=f"{date} {path.name}")

    def _venv(self, path: Path, log: Path, base_sites: tuple[str, ...]) -> None:
        if path.exists():
            shutil.rmtree(path)  # an environment whose build was cut short
        res = _uv(["venv", "--quiet", "--python", self.base.python, str(path)], log=log)
        if res.returncode != 0:
            raise EnvError(f"uv venv failed: {_tail(res)}")
        # With site imported (no -S): only then is sys.prefix the venv's, not the base interpreter's.
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = subprocess.run(
            [str(path / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        if not Path(site).resolve().is_relative_to(path.resolve()):  # never write into another environment
            raise EnvError(f"{path}: its site-packages resolve to {site}, outside the environment")
        # The rig that runs the bisect, first; then (overlays) the base's site-packages, behind the overlay's own.
        Path(site, "_rig_source.pth").write_text(f"{rig_source_root()}\n")
        if base_sites:
            lines = "".join(f"import site; site.addsitedir({s!r})\n" for s in base_sites)
            Path(site, "zz_rig_base.pth").write_text(lines)


def _parse_plan(text: str) -> tuple[list[str], dict[str, list[str | None]]]:
    """From `uv pip install --dry-run` output: what to install (pins or URLs) and {name: [old, new]}."""
    installs: list[str] = []
    changes: dict[str, list[str | None]] = {}
    for line in text.splitlines():
        m = CHANGE_LINE.match(line)
        if not m:
            continue
        sign, name, version, at_url, from_url = m.groups()
        url = at_url or from_url
        entry = changes.setdefault(canonical(name), [None, None])
        if sign == "-":
            entry[0] = version or url
        else:
            entry[1] = version or url
            installs.append(f"{name} @ {url}" if url else f"{name}=={version}")
    return installs, changes


def _tail(res: Any) -> str:
    text = (res.stderr + res.stdout).splitlines()
    lines = [ln.strip() for ln in text if ln.strip() and not ln.startswith(("Using Python", "Resolved", "Prepared"))]
    return " | ".join(lines[-4:])[-500:]


def _mark(path: Path, info: dict[str, Any]) -> None:
    atomic_write_json(path / MARKER, {**info, "created_at": now_iso()})


@contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any] | None]:
    """Holds the environment's lock; yields its marker when it is already complete, else None (build it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            marker = path / MARKER
            yield json.loads(marker.read_text()) if marker.exists() else None
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
