"""Splitting a byte stream into JSON messages: QEMU's bounds and resync rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.api.framing import Frame, FrameError, JsonSplitter, OverrunError


def _feed(splitter: JsonSplitter, *chunks: bytes) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        for item in splitter.feed(chunk):
            out.append(json.loads(item.data) if isinstance(item, Frame) else item)
    return out


def test_messages_split_anywhere_come_out_whole() -> None:
    stream = b'{"execute": "a", "arguments": {"s": "}{\\"]"}}\n  [1, [2]]{"x": {}}'
    for cut in range(len(stream)):
        assert _feed(JsonSplitter(), stream[:cut], stream[cut:]) == [
            {"execute": "a", "arguments": {"s": '}{"]'}},
            [1, [2]],
            {"x": {}},
        ]


def test_single_quoted_strings_become_json() -> None:
    assert _feed(JsonSplitter(), b"{'a': 'it\\'s \"q\"', \"b\": \"\\'\"}") == [{"a": 'it\'s "q"', "b": "'"}]


def test_top_level_scalars_are_messages_of_their_own() -> None:
    splitter = JsonSplitter()
    assert _feed(splitter, b'42 true "s"\n') == [42, True, "s"]


def test_a_control_character_throws_the_message_away_up_to_a_line_end() -> None:
    splitter = JsonSplitter()
    out = _feed(splitter, b'{"a": [1, \x01 2]}\n{"b": 1}')
    assert out == [FrameError("JSON parse error, invalid character"), {"b": 1}]
    assert not splitter.pending


def test_oversized_and_too_deep_are_reported_once_and_skipped() -> None:
    splitter = JsonSplitter(max_bytes=100, max_depth=4)
    out = _feed(splitter, b'{"a": "' + b"x" * 1000 + b'"}', b'{"ok": 1}', b"[[[[[[]]]]]]", b"[[[]]]")
    assert out == [
        FrameError("JSON token size limit exceeded"),
        {"ok": 1},
        FrameError("JSON nesting depth limit exceeded"),
        [[[]]],
    ]


def test_a_message_too_long_to_skip_is_an_overrun() -> None:
    splitter = JsonSplitter(max_bytes=100, max_skip=10_000)
    with pytest.raises(OverrunError):
        _feed(splitter, b"[", *[b"1," * 500] * 40)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_garbage_never_raises_and_never_keeps_more_than_the_bound(chunks: list[bytes]) -> None:
    splitter = JsonSplitter(max_bytes=256, max_depth=8, max_skip=1 << 20)
    for chunk in chunks:
        for item in splitter.feed(chunk):
            assert isinstance(item, Frame | FrameError)
            if isinstance(item, Frame):
                assert len(item.data) <= 256 + 64
        assert len(splitter._buf) <= 256 + 64
    # after a line end, a well-formed message always comes out
    last = list(splitter.feed(b'\x1b\n{"z": 1}'))[-1]
    assert isinstance(last, Frame)
    assert json.loads(last.data) == {"z": 1}


def test_raw_control_characters_inside_a_string_are_lexical_errors() -> None:
    out = _feed(JsonSplitter(), b'{"a": "x\ry"}\n{"b": "\t"}\n{"c": 1}\xfe{"d": 2}')
    error = FrameError("JSON parse error, invalid character")
    assert out == [error, error, {"c": 1}, error, {"d": 2}]
