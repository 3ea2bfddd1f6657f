"""Helpers the unit tests share: fake_qwen frames as the SSE reader hands them over, expected usage."""

from __future__ import annotations

from converters import fold_messages
from fronts.openai_chat import parse_chat_request


def fold(messages: list[dict]) -> str:
    """Fold OpenAI messages as the service does: parsed by the OpenAI front, then folded."""
    return fold_messages(parse_chat_request({"model": "m", "messages": messages}).messages)


def data_of(raw: bytes) -> str:
    """The JSON text of one fake_qwen SSE frame, as the SSE reader hands it over."""
    text = raw.decode()
    assert text.startswith("data: ")
    return text[len("data: ") :].strip()


def datas(frames: list[bytes]) -> list[str]:
    return [data_of(raw) for raw in frames]


def usage_total(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


USAGE = usage_total(5, 7, reasoning=3)


def import_lines(out: str) -> list[str]:
    """What an import printed before the next step it ends with (that step and the shadowing lines
    are tests/test_first_hour.py's)."""
    lines = out.splitlines()
    end = next(
        (i for i, line in enumerate(lines) if line.startswith(("Next: start the service", "Next: the folder"))), None
    )
    assert end is not None, f"no next step in: {out!r}"
    return lines[:end]
