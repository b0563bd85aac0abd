"""Suite validation (each kind of bad line) and harmony rendering stability."""

from __future__ import annotations

import json

import pytest

from rig.errors import UserError
from rig.harmony import decode, parse_channels
from rig.run.suite import RenderOptions, load_suite, token_hash


def write_suite(tmp_path, lines):
    path = tmp_path / "s.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = [
    {"id": "a", "messages": [{"role": "user", "content": "What is 2+2?"}], "reference": 4, "category": "arithmetic"},
    {
        "id": "b",
        "messages": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
        "reasoning_effort": "low",
    },
    {"id": "c", "text": "The capital of France is"},
    {"id": "d", "token_ids": [200006, 1428, 200008]},
]


def test_good_suite_renders_every_kind(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, GOOD)))
    kinds = [p.kind for p in suite.prompts]
    assert kinds == ["chat", "chat", "text", "tokens"]
    a = suite.prompts[0]
    assert a.reference == 4 and a.reference_type == "numeric" and a.category == "arithmetic"
    text = decode(a.token_ids)
    assert text.startswith("<|start|>system<|message|>") and "Current date: 2025-08-05" in text
    assert "Reasoning: medium" in text and text.endswith("<|start|>assistant")
    assert "Reasoning: low" in decode(suite.prompts[1].token_ids)
    assert "Be terse." in decode(suite.prompts[1].token_ids)
    assert suite.prompts[3].token_ids == (200006, 1428, 200008)
    assert all(p.sha256 == token_hash(p.token_ids) for p in suite.prompts)


def test_rendering_is_stable_and_pinned(tmp_path):
    path = str(write_suite(tmp_path, GOOD))
    one, two = load_suite(path), load_suite(path)
    assert [p.token_ids for p in one.prompts] == [p.token_ids for p in two.prompts]
    assert one.hash == two.hash
    other_date = load_suite(path, RenderOptions(conversation_date="2026-01-01"))
    assert "Current date: 2026-01-01" in decode(other_date.prompts[0].token_ids)
    assert other_date.hash != one.hash
    # the raw-text and token-ID prompts do not depend on the render options
    assert other_date.prompts[2].token_ids == one.prompts[2].token_ids


def test_bundled_default_suite():
    suite = load_suite("default")
    assert len(suite.prompts) >= 24
    cats = {p.category for p in suite.prompts}
    assert {"factual", "arithmetic", "reasoning", "code", "instruction", "safety"} <= cats
    numeric = [p for p in suite.prompts if p.reference_type == "numeric"]
    assert numeric and all(isinstance(p.reference, int | float) for p in numeric)


BAD = [
    ("{not json", "line 2", "not valid JSON"),
    ('["a list"]', "line 2", "expected a JSON object"),
    ({"messages": [{"role": "user", "content": "x"}]}, "line 2", "field 'id'"),
    ({"id": "x"}, "line 2", "exactly one of"),
    ({"id": "x", "text": "a", "token_ids": [1]}, "line 2", "exactly one of"),
    ({"id": "x", "messages": []}, "line 2", "field 'messages'"),
    ({"id": "x", "messages": [{"role": "robot", "content": "x"}]}, "line 2", "messages[0].role"),
    ({"id": "x", "messages": [{"role": "user", "content": 3}]}, "line 2", "messages[0].content"),
    ({"id": "x", "messages": [{"role": "user"}]}, "line 2", "messages[0]"),
    ({"id": "x", "token_ids": [1, "2"]}, "line 2", "field 'token_ids'"),
    ({"id": "x", "token_ids": [999999]}, "line 2", "outside the vocabulary"),
    ({"id": "x", "text": "a", "reasoning_effort": "extreme"}, "line 2", "reasoning_effort"),
    ({"id": "x", "text": "a", "reference": [1]}, "line 2", "field 'reference'"),
    ({"id": "x", "text": "a", "reference": "1", "reference_type": "fuzzy"}, "line 2", "reference_type"),
    ({"id": "x", "text": "a", "colour": "red"}, "line 2", "unknown field 'colour'"),
    ({"id": "a", "text": "dup"}, "line 2", "duplicate id"),
]


@pytest.mark.parametrize("line,where,what", BAD, ids=[b[2] for b in BAD])
def test_bad_lines_name_file_line_and_field(tmp_path, line, where, what):
    path = write_suite(tmp_path, [GOOD[0], line])
    with pytest.raises(UserError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert str(path) in message and f":{where.split()[1]}:" in message and what in message
    assert "\n" not in message


def test_unknown_suite_name():
    with pytest.raises(UserError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_parse_channels_splits_analysis_and_final():
    from rig.harmony import encoding as harmony_encoding

    enc = harmony_encoding()
    ids = enc.encode(
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>",
        allowed_special="all",
    )
    assert parse_channels(ids) == {"analysis": "Think.", "final": "Answer."}
    cut = enc.encode("<|channel|>analysis<|message|>Still thinking", allowed_special="all")
    assert parse_channels(cut) == {"analysis": "Still thinking", "final": None}


def test_parse_channels_shortcut_without_a_channel_token_agrees_with_the_parser():
    """Output with no <|channel|> token skips harmony's parser; the parser itself gives the same answer."""
    import numpy as np
    from openai_harmony import Role, StreamableParser

    from rig.harmony import CHANNEL
    from rig.harmony import encoding as harmony_encoding

    rng = np.random.default_rng(3)
    enc = harmony_encoding()
    samples = [rng.integers(0, 201_088, 64) for _ in range(5)]
    samples.append(np.asarray(enc.encode("<|start|>assistant<|message|>No channel.<|end|>", allowed_special="all")))
    for ids in samples:
        ids = ids[ids != CHANNEL]
        parser = StreamableParser(enc, Role.ASSISTANT)
        try:
            for t in ids:
                parser.process(int(t))
        except Exception:  # noqa: BLE001 - what parse_channels tolerates
            pass
        assert all(getattr(m, "channel", None) is None for m in parser.messages)
        assert parser.current_channel is None
        assert parse_channels(ids) == {"analysis": None, "final": None}
