"""What a capture holds, and the Transformers hooks that fill it.

A capture is one forward pass over a token prefix with forward hooks on every decoder layer; the hooks copy out only
the rows of the requested positions, so a position costs layers x hidden numbers per block (plus one row of logits),
never sequence x layers x hidden. Both stacks and the float64 reference fill the same names:

    embed          the embedding row (the residual stream entering layer 0)          [hidden]
    L.attn         layer L's attention block output (after o_proj, before the add)   [hidden]
    L.router       layer L's router logits                                           [experts]
    L.experts      the experts the stack chose, best first                           [k] int
    L.weights      their routing weights                                             [k]
    L.moe          layer L's MoE block output (before the add)                       [hidden]
    L.resid        the residual stream after layer L                                 [hidden]
    norm           the final RMSNorm's output                                        [hidden]
    logits         the lm_head row                                                   [vocab]

A row for position p of a continuation (0 = first generated token) is the prefix row that predicts token p: index
len(prompt) + p - 1 of prompt + continuation[:p]. Rows are kept as float32 (bfloat16 and float32 exactly) or float64.

Transformers is hooked through `register_forward_hook` on `model.model.layers[i].self_attn`, `.mlp.router`, `.mlp`,
the layer, `model.model.norm` and `lm_head` (whose input is cut to the kept rows with `logits_to_keep`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLOCKS = ("attn", "router", "moe", "resid")  # per layer, in forward order
BLOCK_NAMES = {
    "embed": "embedding",
    "attn": "attention",
    "router": "router",
    "moe": "MoE",
    "resid": "residual",
    "norm": "final norm",
    "logits": "logits",
}


@dataclass(frozen=True)
class Task:
    """One forward pass: a token prefix and the rows to keep, keyed by position."""

    prompt_id: str
    sample: int
    token_ids: tuple[int, ...]  # prompt + continuation[:max position]
    rows: dict[int, int]  # position -> row index into token_ids

    def key(self, pos: int) -> tuple[str, int, int]:
        return (self.prompt_id, self.sample, pos)


Rows = dict[str, np.ndarray]  # one position's capture: name -> array (see the module docstring)


@dataclass
class Capture:
    """Every position's rows from one stack (or reference), with what the capture resolved and how long it took."""

    rows: dict[tuple[str, int, int], Rows] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes held per position on average (the O(layers x hidden) claim is checked against this)."""
        if not self.rows:
            return 0
        return sum(a.nbytes for r in self.rows.values() for a in r.values()) // len(self.rows)


def keep(t: Any, rows: Any, dtype: Any) -> np.ndarray:
    """t[rows] (t is [T, ...] or [1, T, ...]; rows None: all) as a NumPy copy in float32, or float64 for float64."""
    import torch

    if t.dim() >= 3 and t.shape[0] == 1:
        t = t[0]
    sel = (t if rows is None else t.index_select(0, rows)).detach()
    if sel.is_floating_point():
        sel = sel.to(torch.float64 if dtype == torch.float64 else torch.float32)
    return sel.cpu().numpy()


class Hooks:
    """Forward hooks that copy the kept rows of every block into `self.out[name]` ([n_rows, ...] arrays).

    `self.rows` (a LongTensor of row indices) is set before each forward pass; `remove()` detaches every hook.
    """

    def __init__(self) -> None:
        self.rows: Any = None
        self.out: dict[str, np.ndarray] = {}
        self._handles: list[Any] = []
        self.dtype: Any = None

    def add(self, module: Any, name: str, pick: Callable[[Any], Any] = lambda o: o, *, all_rows: bool = False) -> None:
        """Keep pick(output)'s kept rows under name (all_rows: the module already sees only the kept rows)."""

        def hook(_mod: Any, _args: Any, output: Any) -> None:
            self.out[name] = keep(pick(output), None if all_rows else self.rows, self.dtype)

        self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def split(self, task: Task) -> dict[tuple[str, int, int], Rows]:
        """The captured [n_rows, ...] arrays cut into one Rows dict per position (in task.rows order)."""
        out = {}
        for j, pos in enumerate(task.rows):
            out[task.key(pos)] = {name: arr[j].copy() for name, arr in self.out.items()}
        self.out = {}
        return out


def hook_transformers(model: Any, hooks: Hooks) -> None:
    """Registers the capture hooks on a GptOssForCausalLM (or a model with the same module names)."""
    inner = model.model
    hooks.add(inner.embed_tokens, "embed")
    for i, layer in enumerate(inner.layers):
        hooks.add(layer.self_attn, f"{i}.attn", lambda o: o[0])
        hooks.add(layer.mlp.router, f"{i}.router", lambda o: o[0])
        hooks.add(layer.mlp.router, f"{i}.weights", lambda o: o[1])
        hooks.add(layer.mlp.router, f"{i}.experts", lambda o: o[2])
        hooks.add(layer.mlp, f"{i}.moe", lambda o: o[0] if isinstance(o, tuple) else o)
        hooks.add(layer, f"{i}.resid", lambda o: o[0] if isinstance(o, tuple) else o)
    hooks.add(inner.norm, "norm")
    hooks.add(model.lm_head, "logits", all_rows=True)  # fed only the kept rows (logits_to_keep)


def run_transformers(
    model: Any, tasks: list[Task], hooks: Hooks, on_task: list[Callable[[Task], None]] | None = None
) -> dict[tuple[str, int, int], Rows]:
    """One forward pass per task (no KV cache, the whole prefix at once); returns every position's rows.

    The logits are computed for the kept rows only (`logits_to_keep`), so a long prefix never materializes
    sequence x vocabulary logits. on_task callbacks run after each task's pass (other hooks' bookkeeping).
    """
    import torch

    device = next(model.parameters()).device
    hooks.dtype = next(model.parameters()).dtype
    out: dict[tuple[str, int, int], Rows] = {}
    for task in tasks:
        rows = torch.tensor(list(task.rows.values()), dtype=torch.long, device=device)
        hooks.rows = rows
        ids = torch.tensor([list(task.token_ids)], dtype=torch.long, device=device)
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=rows)
        for callback in on_task or ():
            callback(task)
        out.update(hooks.split(task))
    return out


def capture_transformers(model: Any, tasks: list[Task]) -> dict[tuple[str, int, int], Rows]:
    """Hooks model, runs every task, removes the hooks; returns every position's rows."""
    hooks = Hooks()
    hook_transformers(model, hooks)
    try:
        return run_transformers(model, tasks, hooks)
    finally:
        hooks.remove()
