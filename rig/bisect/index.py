"""Released versions of one package, from the same sources uv installs from: simple indexes and find-links.

No established tool lists a package's releases between two versions for bisecting, so this reads the package's page
on each simple index (PEP 691 JSON when the server offers it, else the PEP 503 HTML page, `file://` indexes included)
and the file names in each find-links directory. Pre-releases and fully yanked releases are left out unless asked
for; a release that cannot be installed here (no wheel for this Python, a broken dependency) stays in the list and
becomes a skip when its environment fails to build.
"""

from __future__ import annotations

import html.parser
import json
import urllib.parse
import urllib.request
from pathlib import Path

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from rig.bisect.envs import Sources
from rig.errors import UserError

ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


def file_version(filename: str, package: str) -> Version | None:
    """The version in a wheel or sdist file name when it belongs to `package`, else None."""
    name = filename.split("#")[0].rsplit("/", 1)[-1]
    try:
        if name.endswith(".whl"):
            dist, version, _, _ = parse_wheel_filename(name)
        elif name.endswith((".tar.gz", ".zip")):
            dist, version = parse_sdist_filename(name)
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return version if dist == canonicalize_name(package) else None


class _Anchors(html.parser.HTMLParser):
    """(text, attributes) of every <a> in a PEP 503 page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, dict[str, str | None]]] = []
        self._attrs: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._attrs, self._text = dict(attrs), ""

    def handle_data(self, data):
        if self._attrs is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "a" and self._attrs is not None:
            href = self._attrs.get("href") or ""
            self.links.append((self._text.strip() or href.split("#")[0].rsplit("/", 1)[-1], self._attrs))
            self._attrs = None


def _index_files(index: str, package: str, timeout: float) -> list[tuple[str, bool]]:
    """(file name, yanked) for every file of `package` on one simple index; [] when the index lacks the package."""
    url = f"{index.rstrip('/')}/{canonicalize_name(package)}/"
    if url.startswith("file://"):
        page = Path(urllib.parse.urlparse(url).path) / "index.html"
        if not page.exists():
            return []
        body, ctype = page.read_text(errors="replace"), "text/html"
    else:
        req = urllib.request.Request(url, headers={"Accept": ACCEPT, "User-Agent": "inference-rig bisect"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read().decode("utf-8", errors="replace")
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise UserError(f"{url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError) as exc:
            raise UserError(f"{url}: cannot reach the index ({getattr(exc, 'reason', exc)})") from None
    if "json" in ctype:
        data = json.loads(body)
        return [(f["filename"], bool(f.get("yanked"))) for f in data.get("files", [])]
    parser = _Anchors()
    parser.feed(body)
    return [(text, "data-yanked" in attrs) for text, attrs in parser.links]


def _find_links_files(link: str) -> list[tuple[str, bool]]:
    path = Path(urllib.parse.urlparse(link).path) if link.startswith("file://") else Path(link)
    if path.is_dir():
        return [(p.name, False) for p in path.iterdir() if p.is_file()]
    return []


def released_versions(package: str, sources: Sources, *, pre: bool = False, timeout: float = 60.0) -> list[Version]:
    """Every version of `package` on the sources, sorted; yanked-only and (unless pre) pre-releases left out."""
    files: list[tuple[str, bool]] = []
    for index in sources.indexes():
        files += _index_files(index, package, timeout)
    for link in sources.find_links:
        files += _find_links_files(link)
    status: dict[Version, bool] = {}  # version -> has a file that is not yanked
    for name, yanked in files:
        v = file_version(name, package)
        if v is None or (v.is_prerelease and not pre):
            continue
        status[v] = status.get(v, False) or not yanked
    return sorted(v for v, ok in status.items() if ok)


def versions_between(package: str, good: str, bad: str, sources: Sources, *, pre: bool = False) -> list[str]:
    """The released versions from good to bad inclusive, in release order (the endpoints even if not listed)."""
    try:
        g, b = Version(good), Version(bad)
    except InvalidVersion as exc:
        raise UserError(f"not a version: {exc}") from None
    if g == b:
        raise UserError(f"--good and --bad are the same version ({good})")
    lo, hi = min(g, b), max(g, b)
    inside = [v for v in released_versions(package, sources, pre=pre) if lo < v < hi]
    ordered = [str(lo), *(str(v) for v in inside), str(hi)]
    return ordered if g < b else ordered[::-1]
