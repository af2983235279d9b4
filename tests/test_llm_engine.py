"""The llama-cpp-python engine with the real SmolLM2 GGUF."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.models

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital city of France?"},
]


def test_streams_a_reply_in_pieces(llm_engine) -> None:
    pieces = list(llm_engine.generate_stream(QUESTION, max_new_tokens=40))
    assert len(pieces) > 1  # streamed token by token, not in one block
    assert "paris" in "".join(pieces).lower()


def test_max_new_tokens_caps_the_reply(llm_engine) -> None:
    pieces = list(llm_engine.generate_stream(QUESTION, max_new_tokens=3))
    assert 1 <= len(pieces) <= 3


def test_should_stop_ends_generation_early(llm_engine) -> None:
    story = [{"role": "user", "content": "Tell me a long story about a lion."}]
    seen: list[str] = []
    pieces = llm_engine.generate_stream(story, max_new_tokens=200, should_stop=lambda: len(seen) >= 5)
    for piece in pieces:
        seen.append(piece)
    assert len(seen) == 5


def test_a_replayed_request_continues_after_the_text_already_sent(llm_engine) -> None:
    full = "".join(llm_engine.generate_stream(QUESTION, max_new_tokens=40))
    words = full.split()
    prefix = " ".join(words[: max(1, len(words) // 2)])
    rest = "".join(llm_engine.generate_stream(QUESTION, max_new_tokens=40, prefix=prefix))
    assert rest.strip()
    assert not rest.lstrip().startswith(prefix)  # continues, does not start over
    assert (prefix + rest).strip().lower().replace(" ", "") == full.strip().lower().replace(" ", "")
