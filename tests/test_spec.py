"""RunSpec: TOML + flag overrides, canonical hashing, rejection of unknown fields, translators."""

from __future__ import annotations

import pytest

from rig.errors import UserError
from rig.run.spec import RunSpec, SamplingSpec, load_spec, parse_engine_args, to_openai, to_transformers, to_vllm


def test_hash_is_canonical_and_sensitive():
    a = RunSpec(model="m", engine_args=(("b", 1), ("a", "x")))
    b = RunSpec.from_dict({"model": "m", "engine_args": {"a": "x", "b": 1}})
    assert a.hash() == b.hash() and len(a.hash()) == 16
    assert RunSpec(model="m", dtype="float32").hash() != RunSpec(model="m").hash()
    assert RunSpec(model="m", batch_size=4).hash() != RunSpec(model="m").hash()
    assert RunSpec(model="m", sampling=SamplingSpec(seed=1)).hash() != RunSpec(model="m").hash()
    assert RunSpec.from_dict(a.to_dict()) == RunSpec.from_dict(b.to_dict())


def test_toml_then_flags(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('stack = "vllm"\nmodel = "m"\ndtype = "float32"\n[sampling]\ntemperature = 0.7\nseed = 3\n')
    spec = load_spec(path, {"dtype": "bfloat16", "sampling.seed": 9, "sampling.top_p": None})
    assert spec.stack == "vllm" and spec.dtype == "bfloat16"
    assert spec.sampling.temperature == 0.7 and spec.sampling.seed == 9 and spec.sampling.top_p == 1.0
    assert spec.sampling.stop_token_ids == (200002, 200012) and spec.logprobs == 20


@pytest.mark.parametrize(
    "text,match",
    [
        ('model = "m"\ncolour = 1\n', "unknown field 'colour'"),
        ('model = "m"\n[sampling]\ntemprature = 1\n', r"\[sampling\]: unknown field 'temprature'"),
        ('model = "m"\ndtype = "int3"\n', "dtype must be one of"),
        ('model = "m"\nlogprobs = 50\n', "between 0 and 20"),
        ("model = = 1\n", "not valid TOML"),
    ],
)
def test_bad_specs_are_rejected_by_name(tmp_path, text, match):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_spec(path)


def test_engine_args_parse_json_values():
    assert parse_engine_args(["kv_cache_dtype=fp8", "max_num_seqs=4", "x=true"]) == {
        "kv_cache_dtype": "fp8",
        "max_num_seqs": 4,
        "x": True,
    }
    with pytest.raises(UserError):
        parse_engine_args(["oops"])


def test_translators_pass_every_sampling_field_explicitly():
    greedy = RunSpec(model="m")
    hf = to_transformers(greedy)
    assert hf["do_sample"] is False and hf["top_k"] is None and hf["eos_token_id"] == [200002, 200012]
    native = RunSpec(model="m", sampling=SamplingSpec(temperature=0.8, top_k=40, top_p=0.9, coupled=False))
    hf = to_transformers(native)
    assert hf["do_sample"] is True and hf["temperature"] == 0.8 and hf["top_k"] == 40 and hf["top_p"] == 0.9
    v = to_vllm(native, seed=5)
    assert v["temperature"] == 0.8 and v["top_k"] == 40 and v["seed"] == 5 and v["logprobs"] == 20
    coupled = RunSpec(model="m", sampling=SamplingSpec(temperature=0.8))
    assert coupled.sampling.use_coupled
    assert to_transformers(coupled)["do_sample"] is False and to_vllm(coupled)["temperature"] == 0.0
    assert to_openai(native, seed=5)["seed"] == 5
