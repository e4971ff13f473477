"""Fuzzing the receiver thread over a real socket (reliability row 13).

A PUSH socket bound on loopback sends a started :class:`StreamReceiver` (PULL)
a seeded mix of garbage around a valid series: random bytes, truncated and
corrupted JSON, messages with the wrong number of parts, spectra buffers of the
wrong length, metadata parts that are not the pickle they should be, legacy
frames left half sent, and frames that decode but must not be attributed (valid
frames of the wrong shape or dtype, repeats, frames outside any series). Nothing
is stubbed: the receiver's own decoder and run tracker see every byte.

Each garbage item says, by construction, what the decoder makes of it: the
``ProtocolError`` texts the receiver counts and keeps (in order), the legacy
resynchronisations, and the frame it decodes, if any (kept only as a repeat
of a frame the run already has, or counted as outside any series). The test
then checks that the thread lived through all of it, that every frame of the
series is in its own row bit for bit, that the counters say exactly that, and
that a clean series after it is received complete.

Seeded ``random.Random`` rather than hypothesis: one receiver, one socket and
one decoder live through the whole sequence (their state carries from message
to message, which is the point), so examples are not independent and could
not be shrunk one by one.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ophyd_xspress.protocol import (
    Frame,
    SeriesEndMessage,
    StreamEncoder,
    encode_metadata,
    make_frame,
)
from ophyd_xspress.transport import MAX_PARTS

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
N_FRAMES = 40  # the fuzzed series
N_CLEAN = 25  # the clean series after it
SEEDS = [11, 2024, 31337]

#: Bytes of one valid spectra part: 2 channels x 4096 bins x uint32.
NBYTES = 2 * 4096 * 4
#: The decoder's text for a JSON part that is not JSON (or not UTF-8).
BAD_JSON = r"^invalid JSON part \("
#: A pickled Python object in the metadata part, and the error it gives.
PICKLED_OBJECTS: list[tuple[object, str]] = [
    ({"a": 1}, r"^metadata pickle holds dict, expected a list of arrays"),
    ("text", r"^metadata pickle holds str, expected a list of arrays"),
    (42, r"^metadata pickle holds int, expected a list of arrays"),
    (1.5, r"^metadata pickle holds float, expected a list of arrays"),
    (None, r"^metadata pickle holds NoneType, expected a list of arrays"),
    ([1, 2, 3], r"^metadata element 0 is int, not a numpy array$"),
    ((), r"^frame \d+: metadata has 0 arrays, expected at least 8"),
]


def too_many_parts(parts: int) -> str | None:
    """The receiver's text for a message of more parts than the protocol has
    (refused at the socket, before the decoder), or None."""
    if parts <= MAX_PARTS:
        return None
    return rf"^message \d+ had {parts} parts \(at most {MAX_PARTS} in this protocol\)"


@dataclass
class Item:
    """Garbage and what the decoder makes of it."""

    messages: list[list[bytes]]
    #: regexes of the ProtocolError texts the receiver records, in order
    errors: list[str] = field(default_factory=list)
    #: legacy-framing resynchronisations (``decoder.tracker.counts["resync"]``)
    resyncs: int = 0
    #: the number of a frame that decodes (a repeat in a series, else a stray)
    decodes: int | None = None


class Garbage:
    """Seeded garbage built from the simulator's real frames of ``series``."""

    def __init__(self, rng: random.Random, stream: Any, series: int) -> None:
        self.rng = rng
        self.stream = stream
        self.series = series
        self.multipart = StreamEncoder("multipart")
        self.legacy = StreamEncoder("legacy")
        self.header = self.multipart.encode(stream.sim.header())[0][0]
        self.kinds: list[Callable[[int], Item]] = [
            self.random_parts,
            self.binary_single,
            self.brace_single,
            self.bad_header_single,
            self.bad_series_end_single,
            self.json_with_extra_parts,
            self.wrong_part_count,
            self.wrong_buffer_length,
            self.bad_metadata,
            self.bad_image_json,
            self.legacy_bad_buffer,
            self.legacy_bad_metadata,
            self.legacy_lost_spectra,
            self.wrong_shape_frame,
            self.duplicate_frame,
        ]
        #: the kinds drawn so far (each seed must draw every one)
        self.used: set[str] = set()

    # -- helpers ---------------------------------------------------------------------
    def frame(self, k: int) -> Frame:
        return self.stream.frame(self.series, k)

    def parts(self, k: int) -> tuple[bytes, bytes, bytes]:
        head, data, meta = self.multipart.encode(self.frame(k))[0]
        return bytes(head), bytes(data), bytes(meta)

    def image(self, k: int, **changes: Any) -> bytes:
        wire = self.frame(k).info.to_wire()
        wire.update(changes)
        return json.dumps(wire, separators=(", ", ": ")).encode()

    def junk(self, low: int, high: int, first: int | None = None) -> bytes:
        data = self.rng.randbytes(self.rng.randint(low, high))
        if first is not None and data:
            data = bytes([first]) + data[1:]
        return data

    def garble(self, part: bytes) -> bytes:
        """Truncated, or with an invalid UTF-8 byte inside: never valid JSON."""
        if self.rng.random() < 0.5:
            return part[: self.rng.randint(2, len(part) - 1)]
        at = self.rng.randint(1, len(part) - 1)
        return part[:at] + b"\xff" + part[at:]

    def block(self, numbers: list[int], size: int) -> list[Item]:
        """``size`` items using frame numbers from ``numbers``; sometimes a
        legacy frame left open at the end (the next valid message closes it)."""
        kinds = [self.rng.choice(self.kinds) for _ in range(size)]
        if self.rng.random() < 0.3:
            kinds.append(self.legacy_left_open)
        self.used.update(kind.__name__ for kind in kinds)
        return [kind(self.rng.choice(numbers)) for kind in kinds]

    # -- garbage kinds -----------------------------------------------------------------
    def random_parts(self, k: int) -> Item:
        """2-4 random parts, some larger than the receiver's SMALL_PART (received
        zero-copy); the first starts with 0xC0, never UTF-8."""
        parts = [self.junk(1, 20_000, first=0xC0)]
        parts += [self.junk(0, 20_000) for _ in range(self.rng.randint(1, 3))]
        return Item([parts], [too_many_parts(len(parts)) or BAD_JSON])

    def binary_single(self, k: int) -> Item:
        """A stray binary part outside any frame (legacy: a lost JSON part)."""
        return Item([[self.junk(0, 20_000, first=0x01)]], resyncs=1)

    def brace_single(self, k: int) -> Item:
        return Item([[b"{" + self.junk(3, 300, first=0x01)]], [BAD_JSON])

    def bad_header_single(self, k: int) -> Item:
        how = self.rng.choice(["garble", "htype", "limits", "array"])
        if how == "garble":
            return Item([[self.garble(self.header)]], [BAD_JSON])
        if how == "htype":
            part = self.header.replace(b'"header"', b'"headr"')
            return Item([[part]], [r"^unknown htype 'headr'"])
        if how == "limits":
            wire = json.loads(self.header)
            wire["limits"] = [[[654, 626]]]
            part = json.dumps(wire).encode()
            return Item([[part]], [r"^bad header packet: limits: .*low <= high"])
        return Item([[b"[1, 2, 3]"]], [r"^JSON part is a list"])

    def bad_series_end_single(self, k: int) -> Item:
        part = rf'{{"htype": "series_ending", "frame": {k}}}'.encode()
        return Item([[part]], [r"^unknown htype 'series_ending'"])

    def json_with_extra_parts(self, k: int) -> Item:
        """A header or series_end with extra parts: refused whole, not applied."""
        htype, part = self.rng.choice(
            [("header", self.header), ("series_end", b'{"htype": "series_end"}')]
        )
        extra = [self.junk(0, 100) for _ in range(self.rng.randint(1, 3))]
        text = (
            f"{htype} packet sent with {len(extra)} extra part(s); expected a "
            f"single-part message: the whole {len(extra) + 1}-part message was "
            f"ignored (the {htype} was not applied)"
        )
        expected = too_many_parts(len(extra) + 1) or "^" + re.escape(text) + "$"
        return Item([[part, *extra]], [expected])

    def wrong_part_count(self, k: int) -> Item:
        head, data, meta = self.parts(k)
        parts = self.rng.choice(
            [
                [head, data],
                [head, meta],
                [head, data, meta, meta],
                [head, data, meta, data, b""],
            ]
        )
        text = f"frame {k}: multipart message has {len(parts)} parts, expected 3"
        return Item([parts], [too_many_parts(len(parts)) or "^" + re.escape(text)])

    def wrong_buffer_length(self, k: int) -> Item:
        head, data, meta = self.parts(k)
        size = self.rng.choice(
            [
                0,
                1,
                NBYTES - 4,
                NBYTES - 1,
                NBYTES + 1,
                NBYTES + 4,
                NBYTES // 2,
                2 * NBYTES,
            ]
        )
        buffer = (data * 2)[:size]
        text = (
            f"frame {k}: spectra buffer is {size} bytes, expected {NBYTES} "
            "(shape [2, 4096] x uint32)"
        )
        return Item([[head, buffer, meta]], ["^" + re.escape(text) + "$"])

    def bad_meta(self, k: int) -> tuple[bytes, str]:
        """A metadata part that does not decode (never starting with ``{``, so
        that a legacy decoder waiting for it does not take it for JSON), and the
        regex of its error."""
        meta = self.parts(k)[2]
        how = self.rng.choice(
            [
                "not_pickle",
                "empty",
                "opcodes",
                "truncated",
                "object",
                "hostile",
                "shapes",
            ]
        )
        if how == "not_pickle":
            return self.junk(1, 600, first=0x01), r"^metadata part is not a pickle"
        if how == "empty":
            return b"", r"^empty metadata part$"
        if how == "opcodes":
            return b"\x80\x04" + self.junk(
                1, 64
            ), r"^(corrupt metadata pickle: |metadata pickle )"
        if how == "truncated":
            cut = self.rng.randint(1, len(meta) - 1)
            return meta[:cut], r"^corrupt metadata pickle: "
        if how == "object":
            obj, error = self.rng.choice(PICKLED_OBJECTS)
            return pickle.dumps(obj, protocol=4), error
        if how == "hostile":
            error = r"^metadata pickle references builtins\.print: "
            return pickle.dumps(print, protocol=4), error
        # nine arrays (as the header's extra_tags say), for 3 channels, not 2
        error = (
            rf"^frame {k}: scaler output_count_rate has shape \(3,\), expected \(2,\)$"
        )
        return encode_metadata([np.zeros(3, np.uint32)] * 9, 4), error

    def bad_metadata(self, k: int) -> Item:
        head, data, _ = self.parts(k)
        meta, error = self.bad_meta(k)
        return Item([[head, data, meta]], [error])

    def bad_image_json(self, k: int) -> Item:
        head, data, meta = self.parts(k)
        how = self.rng.choice(
            ["garble", "type", "compression", "shape", "negative", "huge", "no_shape"]
        )
        if how == "garble":
            return Item([[self.garble(head), data, meta]], [BAD_JSON])
        if how == "type":
            head, error = (
                self.image(k, type="float16"),
                rf"^frame {k}: spectra type 'float16' is not supported",
            )
        elif how == "compression":
            head, error = (
                self.image(k, compression="bslz4"),
                rf"^frame {k}: compression 'bslz4' is not supported",
            )
        elif how == "shape":
            head = self.image(k, shape=[10**9, 4096])
            error = rf"^frame {k}: shape \[1000000000, 4096\] outside 1\.\.256 channels"
        elif how == "negative":
            head, error = (
                self.image(k, frame=-1),
                r"^bad image packet: frame: Input should be greater than or equal to 0",
            )
        elif how == "huge":
            head, error = (
                self.image(k, frame=2**63),
                r"^bad image packet: frame: Input should be less than",
            )
        else:
            wire = json.loads(head)
            del wire["shape"]
            head, error = (
                json.dumps(wire).encode(),
                r"^bad image packet: shape: Field required",
            )
        return Item([[head, data, meta]], [error])

    def legacy_bad_buffer(self, k: int) -> Item:
        """Legacy: a spectra part of the wrong length (not starting with 0x80): the
        frame is refused and its orphan pickle swallowed."""
        head, data, meta = self.parts(k)
        size = self.rng.choice([1, 100, NBYTES - 4, NBYTES + 4])
        buffer = b"\x01" + (data * 2)[1:size]
        text = f"frame {k}: spectra buffer is {size} bytes, expected {NBYTES}"
        return Item([[head], [buffer], [meta]], ["^" + re.escape(text)])

    def legacy_bad_metadata(self, k: int) -> Item:
        head, data, _ = self.parts(k)
        meta, error = self.bad_meta(k)
        return Item([[head], [data], [meta]], [error])

    def legacy_lost_spectra(self, k: int) -> Item:
        """Legacy: the head of the frame's pickle where the spectra should be.
        Whole, or cut just after a ``.`` (it ends like a pickle): taken for the
        pickle, the spectra part lost (resynchronised), and the real pickle
        after it is a stray binary part (resynchronised again). Cut anywhere
        else: a damaged spectra buffer, the frame refused and the real pickle
        swallowed as its metadata part."""
        head, _, meta = self.parts(k)
        size = self.rng.randint(1, len(meta))
        messages = [[head], [meta[:size]], [meta]]
        if size >= 3 and meta[size - 1] == 0x2E:
            return Item(messages, resyncs=2)
        text = f"frame {k}: spectra buffer is {size} bytes, expected {NBYTES}"
        return Item(messages, ["^" + re.escape(text)])

    def legacy_left_open(self, k: int) -> Item:
        """Legacy: a frame's JSON (and maybe its spectra), then nothing: the next
        message, valid, resynchronises. Only ever last in a block."""
        head, data, _ = self.parts(k)
        messages = [[head], [data]] if self.rng.random() < 0.5 else [[head]]
        return Item(messages, resyncs=1)

    def wrong_shape_frame(self, k: int) -> Item:
        """Frame ``k`` with fewer bins, fewer channels or another dtype: a valid
        frame as far as the stream goes (the header carries no shape). Sent
        only with a number the run already has (dropped as a repeat): with a
        new number it would go to the sink, and what the sink makes of its
        shape is the sink's business, not the receiver's."""
        frame = self.frame(k)
        how = self.rng.choice(["bins", "channels", "dtype"])
        metadata = dict(frame.metadata)
        if how == "bins":
            spectra = frame.spectra[:, :1024]
        elif how == "channels":
            spectra = frame.spectra[:1]
            metadata = {
                name: (a[:, :1] if name == "window_counts" else a[:1])
                for name, a in metadata.items()
            }
        else:
            spectra = frame.spectra.astype(np.uint16)
        odd = make_frame(k, spectra, metadata, exptime=frame.info.exptime)
        encoder = self.rng.choice([self.multipart, self.legacy])
        return Item(encoder.encode(odd), decodes=k)

    def duplicate_frame(self, k: int) -> Item:
        encoder = self.rng.choice([self.multipart, self.legacy])
        return Item(encoder.encode(self.frame(k)), decodes=k)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def send(stream: Any, items: list[Item]) -> None:
    stream.push.send([message for item in items for message in item.messages])


def assert_rows(sink: Any, expected: dict[int, Frame]) -> None:
    assert sorted(sink.rows) == sorted(expected)
    for row, want in expected.items():
        got = sink.rows[row]
        assert got.frame == want.frame == row
        assert got.spectra.dtype == want.spectra.dtype
        np.testing.assert_array_equal(got.spectra, want.spectra)
        for name, array in want.metadata.items():
            np.testing.assert_array_equal(got.metadata[name], array)


@pytest.mark.parametrize("active", [True, False], ids=["active", "passive"])
@pytest.mark.parametrize("seed", SEEDS)
def test_garbage_around_a_series_never_kills_the_receiver(
    stream: Any, seed: int, active: bool
) -> None:
    rng = random.Random(seed)
    garbage = Garbage(rng, stream, series=1000 + seed)
    rx = stream.rx
    end = garbage.multipart.encode(SeriesEndMessage())
    anywhere = list(range(N_FRAMES + 5))
    sink = stream.sink()
    # before the header (decoded frames are headless: their series' header
    # was missed): a stray series_end, a stray frame, garbage. An active run
    # counts such frames stale; a passive run that begins after them sets
    # them aside as older than its trigger.
    before = [Item(end), garbage.duplicate_frame(3), *garbage.block(anywhere, 12)]
    if active:
        run = rx.begin(N_FRAMES, sink, active=active)
        send(stream, before)
    else:
        send(stream, before)
        wait_for(lambda: rx.messages >= sum(len(i.messages) for i in before))
        run = rx.begin(N_FRAMES, sink, active=active)
    # the series, with garbage after each frame; what decodes is a repeat
    send(stream, [Item([[garbage.header]])])
    within: list[Item] = []
    last_block: list[Item] = []
    for n in range(N_FRAMES):
        block = garbage.block(list(range(n + 1)), rng.randint(0, 4))
        send(stream, [Item(garbage.multipart.encode(garbage.frame(n))), *block])
        within += block
        last_block = block
    send(stream, [Item(end)])
    # after series_end: strays and garbage
    after = [garbage.duplicate_frame(N_FRAMES + 2), *garbage.block(anywhere, 12)]
    send(stream, after)
    items = [*before, *within, *after]
    wait_for(lambda: rx.messages >= sum(len(item.messages) for item in items) + 2)

    assert run.wait_blocking(TIMEOUT), run.summary()
    assert rx.running
    assert run.error is None
    assert_rows(sink, {n: garbage.frame(n) for n in range(N_FRAMES)})
    # a passive run is done at its last frame: what comes after is not its own
    mine = within if active else within[: len(within) - len(last_block)]
    repeats = [item.decodes for item in mine if item.decodes is not None]
    summary = run.summary()
    assert summary["frames_received"] == N_FRAMES
    assert summary["missing"] == []
    assert summary["out_of_order"] == []
    assert summary["repeated"] == sorted(repeats)
    counts = {"repeated": len(repeats)} if repeats else {}
    strays_before = sum(item.decodes is not None for item in before)
    strays_after = sum(item.decodes is not None for item in after)
    if active:  # the stray series_end came before the run's header
        counts["stale_series_end"] = 1
        counts["stale"] = strays_before + strays_after
    elif strays_before:
        counts["before_trigger"] = strays_before
    assert summary["anomaly_counts"] == counts
    rx.end(run)

    # the receiver recovered: a clean series is received complete, bit for bit
    sink2 = stream.sink()
    run2 = rx.begin(N_CLEAN, sink2, active=active)
    clean = stream.send_series(list(range(N_CLEAN)))
    assert run2.wait_blocking(TIMEOUT), run2.summary()
    assert rx.running
    assert run2.error is None
    assert_rows(sink2, {n: stream.frame(clean, n) for n in range(N_CLEAN)})
    # a passive run sets aside what was left over from before its trigger: the
    # strays, and the repeats that came after the first run's last frame
    late = sum(item.decodes is not None for item in last_block)
    left = strays_after + late
    leftover = {} if active or not left else {"before_trigger": left}
    assert run2.summary()["anomaly_counts"] == leftover
    rx.end(run2)

    # every message was received (the garbage, header, frames and series_end
    # of both series), one ZeroMQ message at a time; the garbage was counted,
    # exactly, and none of it was a decoder bug
    sent = sum(len(item.messages) for item in items) + (N_FRAMES + 2) + (N_CLEAN + 2)
    wait_for(lambda: rx.messages >= sent)
    assert rx.messages == sent
    errors = [error for item in items for error in item.errors]
    strays = sum(item.decodes is not None for item in [*before, *after])
    assert rx.counts["internal_error"] == 0
    assert rx.counts["protocol_error"] > 0
    assert rx.counts["outside_series"] > 0
    assert dict(rx.counts) == {
        "protocol_error": len(errors),
        "outside_series": strays,
    }
    kept = errors[-100:]  # the receiver keeps the last 100 texts
    assert len(rx.errors) == len(kept)
    for text, pattern in zip(rx.errors, kept, strict=True):
        assert re.search(pattern, text), (pattern, text)
    tracker = rx.decoder.tracker.counts
    assert tracker["resync"] == sum(item.resyncs for item in items)
    assert tracker["repeated"] == sum(item.decodes is not None for item in within)
    assert tracker["frame_outside_series"] == strays
    assert tracker["series_end_outside_series"] == 1
    # and this seed drew every kind of garbage
    assert garbage.used == {kind.__name__ for kind in garbage.kinds} | {
        "legacy_left_open"
    }
