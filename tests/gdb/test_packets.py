"""Framing of the remote protocol (gdb manual §E.1): round trips, escapes, run-length
decoding, and a hostile peer's garbage, bad checksums and oversized packets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.gdb.packets import MAX_PACKET, Event, EventKind, PacketReader, checksum, frame


def events(data: bytes, limit: int = MAX_PACKET) -> list[Event]:
    return list(PacketReader(limit).feed(data))


def test_a_packet_from_gdb() -> None:
    assert events(b"$qSupported:multiprocess+#c6") == [Event(EventKind.PACKET, b"qSupported:multiprocess+")]
    assert checksum(b"OK") == 0x9A
    assert frame(b"OK") == b"$OK#9a"


def test_acks_interrupts_and_noise_between_packets() -> None:
    got = events(b"+-\x03xyz$g#67+")
    assert [e.kind for e in got] == [
        EventKind.ACK,
        EventKind.NACK,
        EventKind.INTERRUPT,
        EventKind.PACKET,
        EventKind.ACK,
    ]


def test_escapes_are_undone_and_done() -> None:
    # X packet data 0x23 0x24 0x7d 0x2a sent escaped as gdb does
    body = b"X1000,4:}\x03}\x04}]}\x0a"
    packet = b"$" + body + b"#" + b"%02x" % checksum(body)
    assert events(packet) == [Event(EventKind.PACKET, b"X1000,4:#$}*")]
    assert frame(b"a#b$c}d*") == b"$a}\x03b}\x04c}]d}\x0a#" + b"%02x" % checksum(b"a}\x03b}\x04c}]d}\x0a")


def test_run_length_encoding_is_expanded() -> None:
    # "0* " is '0' followed by 32 - 29 = 3 more
    body = b"0* 1"
    assert events(b"$" + body + b"#%02x" % checksum(body)) == [Event(EventKind.PACKET, b"00001")]


def test_bad_checksum_and_bad_escape_are_refused() -> None:
    assert events(b"$g#00")[0].kind is EventKind.BAD_PACKET
    assert events(b"$g#zz")[0].kind is EventKind.BAD_PACKET
    dangling = b"abc}"
    assert events(b"$" + dangling + b"#%02x" % checksum(dangling))[0].kind is EventKind.BAD_PACKET
    assert events(b"$*#%02x" % checksum(b"*"))[0].kind is EventKind.BAD_PACKET  # nothing to repeat


def test_oversized_packet_is_refused_and_the_next_one_read() -> None:
    big = b"m" * (3 * 64)
    got = events(b"$" + big + b"#00" + frame(b"g"), limit=64)
    assert [e.kind for e in got] == [EventKind.BAD_PACKET, EventKind.PACKET]
    assert got[1].payload == b"g"


def test_run_length_cannot_inflate_past_the_limit() -> None:
    body = b"0" + b"*~" * 3  # each "*~" repeats the last byte 126 - 29 = 97 times
    got = events(b"$" + body + b"#%02x" % checksum(body), limit=100)
    assert got[0].kind is EventKind.BAD_PACKET


def test_a_restarted_packet() -> None:
    got = events(b"$m10" + frame(b"g"))
    assert [e.kind for e in got] == [EventKind.BAD_PACKET, EventKind.PACKET]


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_frame_round_trip(payload: bytes) -> None:
    assert events(frame(payload)) == [Event(EventKind.PACKET, payload)]


@given(st.lists(st.binary(max_size=80), max_size=6), st.integers(1, 50))
@settings(max_examples=200)
def test_split_anywhere_gives_the_same_packets(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(frame(p) for p in payloads)
    reader = PacketReader()
    got = [e for i in range(0, len(stream), chunk) for e in reader.feed(stream[i : i + chunk])]
    assert got == [Event(EventKind.PACKET, p) for p in payloads]


@given(st.binary(max_size=3000))
@settings(max_examples=300)
def test_garbage_never_raises_and_stays_bounded(data: bytes) -> None:
    reader = PacketReader(limit=256)
    for event in reader.feed(data):
        assert len(event.payload) <= 256
    # whatever came before, a whole packet after it is read (a pending '$' may eat
    # the first; the second then arrives intact)
    after = list(reader.feed(frame(b"g") + frame(b"?")))
    assert after[-1] == Event(EventKind.PACKET, b"?")
