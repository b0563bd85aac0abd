"""The tiny gpt-oss: byte-identical builds, the real architecture's features, and a tokenizer equal to harmony's."""

from __future__ import annotations

import json

from rig.testing.tiny import build_tiny_model, model_file_hashes


def test_build_is_byte_identical(tiny_model, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    assert again == model_file_hashes(tiny_model)
    assert set(again) >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def test_real_architecture_features(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["architectures"] == ["GptOssForCausalLM"] and cfg["vocab_size"] == 201088
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"]
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    assert rope["rope_type"] == "yarn" and rope["factor"] == 32.0 and rope["original_max_position_embeddings"] == 4096
    assert cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2 and cfg["head_dim"] == 64

    from safetensors import safe_open

    with safe_open(str(tiny_model / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert any(n.endswith("self_attn.sinks") for n in names), "attention sinks"
        assert any("router" in n for n in names), "MoE router"
        lm = f.get_tensor("lm_head.weight").float()
    assert lm.std().item() > 0.2, "lm_head is scaled so distributions are peaked"


def test_tokenizer_matches_harmony(tiny_model):
    from transformers import AutoTokenizer

    from rig.harmony import encoding as harmony_encoding

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    enc = harmony_encoding()
    for text in ["Hello world, it's 2025!\n\n  x", "<|start|>user<|message|>hi<|end|>", "Ünïcode 日本語 123456"]:
        assert tok.encode(text, add_special_tokens=False) == enc.encode(text, allowed_special="all")
    assert tok.convert_ids_to_tokens([200002, 200012]) == ["<|return|>", "<|call|>"]


def test_file_hash_cache_reuses_unchanged_files(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "a.bin").write_bytes(b"x" * 10)
    cache = tmp_path / "cache.json"
    first = model_file_hashes(model, cache=cache)
    entries = json.loads(cache.read_text())
    key = next(iter(entries))
    entries[key]["sha256"] = "from-cache"
    cache.write_text(json.dumps(entries))
    assert model_file_hashes(model, cache=cache) == {"a.bin": "from-cache"}, "an unchanged file is not re-read"
    (model / "a.bin").write_bytes(b"y" * 11)
    assert model_file_hashes(model, cache=cache)["a.bin"] != first["a.bin"], "a changed file is hashed again"
