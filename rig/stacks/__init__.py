"""The stack registry: names map to "module:Class" strings, imported on first use.

Importing `rig` must never drag in torch or vllm, so a stack's module is imported only when a run asks for it.
"""

from __future__ import annotations

import importlib

from rig.errors import UserError

REGISTRY: dict[str, str] = {
    "hf": "rig.stacks.hf:HFStack",
    "vllm": "rig.stacks.vllm:VLLMStack",
    "openai": "rig.stacks.openai:OpenAIStack",
}


def get_stack(name: str) -> type:
    """The Stack class registered under name (imports its module now)."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown stack {name!r}; known stacks: {', '.join(sorted(REGISTRY))}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"hf": "hf", "vllm": "vllm (or cpu on a machine without a GPU)", "openai": "none"}[name]
        raise UserError(
            f"stack {name!r} needs a package that is not installed ({exc.name}); install the extra {extra}"
        ) from None
    return getattr(module, cls_name)
