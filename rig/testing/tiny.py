"""A deterministic tiny gpt-oss: the real architecture at toy size, for the demo and the tests.

Neither CI nor the development machines have a GPU or reach a model hub, yet the rig's claims must be tested on real
stacks. This module builds a checkpoint that Transformers and vLLM both load as `GptOssForCausalLM`: attention sinks,
alternating sliding and full attention, a top-k MoE router, SwiGLU with clamp, YaRN with the real model's numbers, and
the real vocabulary (201088) so harmony token IDs are valid. `lm_head` is scaled so the distributions are peaked like
a trained model's rather than near-uniform (which would make every position a near-tie).

The tokenizer files are rebuilt offline from the harmony encoding's own vocabulary (o200k_harmony), so servers that
want a tokenizer (vLLM's OpenAI-compatible server) get the real one. Every build is byte-identical.

    rig tiny-model models/tiny-gpt-oss
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

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


def build_tiny_model(out_dir: str | Path, *, dtype: str = "bfloat16", with_tokenizer: bool = True) -> dict[str, str]:
    """Write the tiny checkpoint to out_dir; returns {file name: sha256} of what was written."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = GptOssConfig(**TINY_CONFIG)
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
    return model_file_hashes(out)


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
        tok = converter.converted()
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
