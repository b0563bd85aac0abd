"""Harmony, the gpt-oss chat format: its special token IDs, the encoding, decoding and channel parsing, in one place.

Every module that needs to know what a token means (the suite renderer, the runner's completion records, the diff's
channel labels, the report's token view, the tiny model's tokenizer) reads it from here. The encoding comes from
`openai_harmony` as installed by `oss-harmony`, which works offline.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

VOCAB_SIZE = 201088  # o200k_harmony, special and reserved tokens included
SPECIAL_MIN = 199998  # IDs from here on are special or reserved (o200k has 199998 ordinary ranks)
ENDOFTEXT = 199999  # <|endoftext|>, the pad token of the tiny model
RETURN = 200002  # <|return|>: the answer is complete (a stop token)
CONSTRAIN = 200003  # <|constrain|>
CHANNEL = 200005  # <|channel|>
START = 200006  # <|start|>
END = 200007  # <|end|>: closes one message (analysis), not the whole answer
MESSAGE = 200008  # <|message|>
CALL = 200012  # <|call|>: a tool call (a stop token)
STOP_TOKEN_IDS = (RETURN, CALL)  # what ends a whole answer
ANALYSIS_TOKEN, FINAL_TOKEN = 35644, 17196  # the ordinary tokens "analysis" and "final" (pinned by a test)
CHANNELS = ("other", "analysis", "final")


@lru_cache(maxsize=1)
def encoding():
    """The gpt-oss harmony encoding (loaded once; offline with oss-harmony)."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def decode(token_ids: list[int] | tuple[int, ...] | np.ndarray) -> str:
    """Text for token IDs, special tokens included (harmony's decoder)."""
    return encoding().decode([int(t) for t in token_ids])


def parse_channels(token_ids: list[int] | tuple[int, ...] | np.ndarray) -> dict[str, str | None]:
    """Split a completion into harmony channels: {"analysis": ..., "final": ...} (None where absent).

    A completion cut off mid-message still yields what was parsed before the cut; one that does not follow the harmony
    format (a tiny random model's output, say) yields None for both.
    """
    channels: dict[str, str | None] = {"analysis": None, "final": None}
    # A channel is named only in a message header, after <|channel|>: without that token no text has a channel.
    # (Harmony's streaming parser spends ~30 us a token on output that is not harmony, like a random model's.)
    if not np.any(np.asarray(token_ids, dtype=np.int64) == CHANNEL):
        return channels

    from openai_harmony import Role, StreamableParser

    parser = StreamableParser(encoding(), Role.ASSISTANT)
    try:
        for t in token_ids:
            parser.process(int(t))
    except Exception:  # noqa: BLE001 - malformed output is data here, not an error
        pass
    try:
        messages = list(parser.messages)
    except Exception:  # noqa: BLE001
        messages = []
    for m in messages:
        ch = getattr(m, "channel", None)
        text = "".join(getattr(c, "text", "") for c in (m.content or []))
        if ch in channels:
            channels[ch] = (channels[ch] or "") + text
    # A message still open at the cut (no <|end|> yet)
    try:
        ch, partial = parser.current_channel, parser.current_content
        if ch in channels and partial:
            channels[ch] = (channels[ch] or "") + partial
    except Exception:  # noqa: BLE001
        pass
    return channels
