"""Each provider folder's ``reasponse_example.md`` is a real stream: replayed through its dialect,
it gives a non-empty answer, and nothing in it counts as drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dialects import DIALECTS
from drift import DriftLog
from streaming import iter_data, iter_sse_events

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "reasponse_example.md"
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
FOLDERS = sorted(path.parent for path in (ROOT / "porviders").glob(f"*/{EXAMPLE}"))


def example_stream(folder: Path) -> bytes:
    """The fenced block of the example that holds ``data:`` lines."""
    blocks = [block for block in FENCE.findall((folder / EXAMPLE).read_text(encoding="utf-8")) if "data: " in block]
    assert len(blocks) == 1, f"{folder.name}: expected one block of data: lines"
    return blocks[0].encode()


def test_every_shipped_folder_has_an_example():
    assert [folder.name for folder in FOLDERS] == sorted(p.name for p in (ROOT / "porviders").iterdir() if p.is_dir())


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda folder: folder.name)
def test_the_example_stream_replays_to_an_answer_without_drift(folder):
    dialect = DIALECTS[json.loads((folder / "metadata.json").read_text())["dialect"]]
    drift = DriftLog()
    deltas = list(dialect.iter_deltas(iter_data(iter_sse_events([example_stream(folder)])), "TOKEN", drift))
    answer = "".join(delta.content for delta in deltas)
    usage = deltas[-1].usage
    assert answer.strip()
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert drift.snapshot() == {"counts": dict.fromkeys(drift.snapshot()["counts"], 0), "last": None}


def test_the_qwen_example_shows_todays_shapes():
    stream = example_stream(ROOT / "porviders" / "qwen").decode()
    for shape in ('"response_index"', '"thinking_summary"', '"phase": "answer"', '"usage"', '"response.info"'):
        assert shape in stream
    deltas = list(DIALECTS["qwen"].iter_deltas(iter_data(iter_sse_events([stream.encode()])), "T", DriftLog()))
    assert "".join(d.reasoning for d in deltas) == "I recognize a greeting.\n\nA short, friendly answer fits."
    assert "".join(d.content for d in deltas) == "Hello! How can I help?"
    assert deltas[-1].usage["completion_tokens"] == 32  # the latest counters, not their sum


def test_the_openai_parser_counts_a_reply_without_content_as_drift():
    chunk = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}
    drift = DriftLog()
    list(DIALECTS["openai"].iter_deltas([json.dumps(chunk)], "KEY", drift))
    assert drift.snapshot()["counts"]["empty_reply"] == 1
