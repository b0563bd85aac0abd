"""A deterministic tiny gpt-oss: the real architecture at toy size, for the demo and the tests.

Neither CI nor the development machines have a GPU or reach a model hub, yet the rig's claims must be tested on real
stacks. This module builds a checkpoint that Transformers and vLLM both load as `GptOssForCausalLM`: attention sinks,
alternating sliding and full attention, a top-k MoE router, SwiGLU with clamp, YaRN with the real model's numbers, and
the real vocabulary (201088) so harmony token IDs are valid. `lm_head` is scaled so the distributions are peaked like
a trained model's rather than near-uniform (which would make every position a near-tie).

The tokenizer files are rebuilt offline from the harmony encoding's own vocabulary (o200k_harmony), so servers that
want a tokenizer (vLLM's OpenAI-compatible server) get the real one. Every build is byte-identical.

A build is written into a hidden directory next to the target and renamed into place only when complete: a missing
package, an interrupt or a full disk leaves no half-built model that later commands would accept.

    rig tiny-model models/tiny-gpt-oss
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rig.errors import UserError
from rig.files import model_file_hashes

SEED = 20250805
LM_HEAD_SCALE = 20.0
VOCAB_SIZE = 201088
N_ORDINARY_TOKENS = 199998  # o200k ranks; IDs from here on are special or reserved
PAD_TOKEN_ID = 199999  # <|endoftext|>

# The o200k regular expression (tiktoken's o200k_base / o200k_harmony pre-tokenizer).
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

TINY_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 64,
    "head_dim": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"],
    "max_position_embeddings": 131072,
    "rope_theta": 150000.0,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
    },
    "swiglu_limit": 7.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
    "pad_token_id": PAD_TOKEN_ID,
    "eos_token_id": 200002,
    "bos_token_id": 199998,
}


def tiny_config(*, layers: int | None = None, experts: int | None = None, top_k: int | None = None) -> dict[str, Any]:
    """TINY_CONFIG with the depth, expert count and experts per token overridden (None keeps each as it is).

    Deeper models alternate sliding and full attention starting with sliding, as gpt-oss and vLLM's loader do.
    """
    cfg = dict(TINY_CONFIG)
    if layers is not None:
        if layers < 1:
            raise UserError(f"--layers must be at least 1, not {layers}")
        cfg["num_hidden_layers"] = layers
        cfg["layer_types"] = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if experts is not None:
        cfg["num_local_experts"] = experts
    if top_k is not None:
        cfg["num_experts_per_tok"] = top_k
    if not 1 <= cfg["num_experts_per_tok"] <= cfg["num_local_experts"]:
        raise UserError(
            f"--top-k must be between 1 and the number of experts ({cfg['num_local_experts']}), "
            f"not {cfg['num_experts_per_tok']}"
        )
    return cfg


# Modules the build imports; tiktoken only for the tokenizer (transformers' TikTokenConverter reads the vocabulary).
REQUIRES = ("torch", "transformers")
REQUIRES_TOKENIZER = ("tiktoken",)


def check_build_requirements(with_tokenizer: bool = True) -> None:
    """Raises UserError naming the extra to install when a module the build needs is missing (imports nothing)."""
    from rig.stacks import torch_companion_hint

    for module in REQUIRES + (REQUIRES_TOKENIZER if with_tokenizer else ()):
        if importlib.util.find_spec(module) is None:
            raise UserError(
                f"building the tiny model needs packages that are not installed ({module} is not installed): "
                "pip install 'inference-rig[hf]' (or '[cpu]')"
            )
    if hint := torch_companion_hint():
        raise UserError(hint)


def build_tiny_model(
    out_dir: str | Path,
    *,
    dtype: str = "bfloat16",
    with_tokenizer: bool = True,
    layers: int | None = None,
    experts: int | None = None,
    top_k: int | None = None,
) -> dict[str, str]:
    """Write the tiny checkpoint to out_dir; returns {file name: sha256} of what was written.

    layers, experts and top_k override the default shape (tiny_config); None keeps the demo's model.

    The files are built in a hidden sibling directory and renamed into place when complete. An existing tiny model
    at out_dir is replaced by the new build (byte-identical for the same options); any other existing non-empty
    directory is refused rather than overwritten.
    """
    config = tiny_config(layers=layers, experts=experts, top_k=top_k)
    check_build_requirements(with_tokenizer)
    out = Path(os.path.abspath(out_dir))  # "models/tiny/." and the like get a real name and parent
    if out.exists() and not out.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not _looks_like_tiny_model(out):
        raise UserError(f"{out_dir} exists and is not a tiny model; remove it or choose another directory")
    created = _make_parents(out.parent)
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        _write_tiny_model(tmp, config, dtype=dtype, with_tokenizer=with_tokenizer)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in created:  # innermost first; only the ones this call made, and only if still empty
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    return model_file_hashes(out)


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p path; returns the directories it created, innermost first."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
    return missing


def _move_into_place(tmp: Path, out: Path) -> None:
    """Renames the finished build tmp to out; an existing out is moved aside first and removed after."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _looks_like_tiny_model(path: Path) -> bool:
    """True for a directory a tiny-model build wrote (complete or not, any shape): config.json has the tiny width."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return cfg.get("model_type") == "gpt_oss" and all(
        cfg.get(k) == TINY_CONFIG[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "head_dim")
    )


def _write_tiny_model(out: Path, tiny: dict[str, Any], *, dtype: str, with_tokenizer: bool) -> None:
    """Writes the checkpoint of config dict `tiny` into the existing directory out."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(**tiny)
    config.dtype = dtype
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = GptOssForCausalLM(config)
        gen = torch.Generator().manual_seed(SEED)
        with torch.no_grad():
            # Fill every parameter from one seeded generator in a fixed order, so the bytes do not depend on how a
            # Transformers release happens to initialise modules.
            for name, param in sorted(model.named_parameters()):
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                elif name.endswith("bias"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                elif name.endswith("sinks"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
                else:
                    param.copy_(torch.randn(param.shape, generator=gen) * config.initializer_range)
            model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    # Explicit greedy defaults; the rig passes every sampling field anyway (the real gpt-oss config samples).
    GenerationConfig(
        do_sample=False, eos_token_id=[200002, 200012], pad_token_id=PAD_TOKEN_ID, bos_token_id=199998
    ).save_pretrained(out)
    if with_tokenizer:
        build_tokenizer(out)


def build_tokenizer(out_dir: Path) -> None:
    """tokenizer.json and its config, rebuilt from the harmony encoding's vocabulary (works offline)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from rig.harmony import encoding as harmony_encoding

    enc = harmony_encoding()
    inner = enc._inner
    with tempfile.TemporaryDirectory() as tmp:
        ranks = Path(tmp) / "o200k_harmony.tiktoken"
        lines = []
        for rank in range(N_ORDINARY_TOKENS):
            lines.append(base64.b64encode(bytes(inner.decode_bytes([rank]))).decode() + f" {rank}\n")
        ranks.write_text("".join(lines))
        special = _special_tokens()
        converter = TikTokenConverter(
            vocab_file=str(ranks), pattern=O200K_PATTERN, extra_special_tokens=list(special), add_prefix_space=False
        )
        # tiktoken keeps a copy of every vocabulary file it reads in /tmp/data-gym-cache, keyed by the file's path;
        # this path is new on every build, so each build would leave 3 MB behind. An empty cache dir turns that off.
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            tok = converter.converted()
        finally:
            if saved is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|return|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    fast.save_pretrained(out_dir)
    # Drop fields that vary between runs or library versions without changing the tokenizer.
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("name_or_path", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _special_tokens() -> list[str]:
    """Special token strings for IDs 199998..201087 in ID order (reserved slots named as harmony names them)."""
    from rig.harmony import encoding as harmony_encoding

    enc = harmony_encoding()
    names = []
    for tid in range(N_ORDINARY_TOKENS, VOCAB_SIZE):
        try:
            names.append(enc.decode([tid]))
        except Exception:  # noqa: BLE001 - IDs with no token get a reserved name
            names.append(f"<|reserved_{tid}|>")
    return names


def is_tiny_model(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "model.safetensors").exists() and (Path(model_dir) / "config.json").exists()
