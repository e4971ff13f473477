"""Capture replay (``replay_capture`` and ``ophyd-xspress replay``) over real sockets.

The two real captures are read from ``../shared/data/xspress3`` next to the
checkout (``XSPRESS_SHARED_DATA`` overrides); tests needing them are skipped,
with the reason, when they are absent.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cbor2
import pytest
import zmq

from ophyd_xspress.cli import main
from ophyd_xspress.protocol import Frame, StreamDecoder
from ophyd_xspress.tools import PeerTimeoutError, read_capture, replay_capture

DUMP = "xspress3-dump.cbors"  # legacy framing, 62 messages, 20 frames
MULTIPART = "xspress3-multipart.cbors"  # multipart framing, 7 messages, 5 frames
FRAMES = {DUMP: 20, MULTIPART: 5}


def shared_data_dir() -> Path:
    env = os.environ.get("XSPRESS_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).parents[2].parent / "shared" / "data" / "xspress3"


@pytest.fixture(params=[DUMP, MULTIPART])
def capture(request: pytest.FixtureRequest) -> Path:
    """Path of one real capture (both, parametrised), or skip."""
    path = shared_data_dir() / request.param
    if not path.is_file():
        pytest.skip(
            f"real capture {request.param} not found in {shared_data_dir()} "
            "(set XSPRESS_SHARED_DATA to the folder holding the .cbors files)"
        )
    return path


@pytest.fixture
def dump_path() -> Path:
    path = shared_data_dir() / DUMP
    if not path.is_file():
        pytest.skip(f"real capture {DUMP} not found in {shared_data_dir()}")
    return path


def decode(messages: Sequence[Sequence[bytes]]) -> list[Any]:
    decoder = StreamDecoder()
    packets: list[Any] = []
    for message in messages:
        packets.extend(decoder.feed(message))
    decoder.finish()
    return packets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Consumer:
    """A PULL or SUB socket collecting whole messages with arrival times."""

    def __init__(self, kind: str, endpoint: str) -> None:
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.PULL if kind == "pull" else zmq.SUB)
        if kind == "sub":
            self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.messages: list[list[bytes]] = []
        self.times: list[float] = []

    def receive(self, count: int, timeout: float = 10.0) -> list[list[bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                pytest.fail(f"received {len(self.messages)} of {count} messages")
            self.messages.append(self.sock.recv_multipart())
            self.times.append(time.monotonic())
        return self.messages

    def quiet(self, seconds: float = 0.2) -> bool:
        return not self.sock.poll(int(seconds * 1000))

    def image_times(self) -> list[float]:
        return [
            t
            for t, m in zip(self.times, self.messages, strict=True)
            if m[0].startswith(b"{") and b'"image"' in m[0][:64]
        ]

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def consumers() -> Iterator[Callable[[str, str], Consumer]]:
    made: list[Consumer] = []

    def make(kind: str, endpoint: str) -> Consumer:
        c = Consumer(kind, endpoint)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class ReplayThread(threading.Thread):
    """``replay_capture`` in a thread; ``endpoint`` once bound, then ``result``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.bound = threading.Event()
        self.endpoint = ""
        self.result: int | None = None
        self.error: BaseException | None = None
        self.elapsed = 0.0
        self._args, self._kwargs = args, kwargs

    def _on_bound(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.bound.set()

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.result = replay_capture(
                *self._args, on_bound=self._on_bound, **self._kwargs
            )
        except BaseException as exc:
            self.error = exc
            self.bound.set()
        self.elapsed = time.monotonic() - t0

    def wait_bound(self) -> str:
        assert self.bound.wait(10), "replay never bound its socket"
        assert self.error is None, self.error
        assert self.endpoint.startswith("tcp://127.0.0.1:")
        return self.endpoint

    def finish(self) -> int:
        self.join(15)
        assert not self.is_alive(), "replay did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


# --- replay_capture -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["push", "pub"])
def test_replay_decodes_like_the_file(capture: Path, consumers: Any, kind: str) -> None:
    messages = list(read_capture(capture))
    expected = decode(messages)
    assert sum(isinstance(p, Frame) for p in expected) == FRAMES[capture.name]

    replay = ReplayThread(
        capture, "tcp://127.0.0.1:0", socket=kind, wait_for_peer=True, peer_timeout=10
    )
    replay.start()
    consumer = consumers("pull" if kind == "push" else "sub", replay.wait_bound())
    received = consumer.receive(len(messages))
    assert replay.finish() == len(messages)
    assert consumer.quiet()
    # same messages, framing preserved, and the same decoded packets
    assert received == messages
    assert decode(received) == expected


def test_replay_of_message_list(consumers: Any) -> None:
    # A capture can be given as messages instead of a file.
    messages = [
        [b'{"htype": "header", "filename": "x.hdf5"}'],
        [b'{"htype": "series_end"}'],
    ]
    replay = ReplayThread(
        messages, "tcp://127.0.0.1:0", socket="push", wait_for_peer=True
    )
    replay.start()
    consumer = consumers("pull", replay.wait_bound())
    assert consumer.receive(2) == messages
    assert replay.finish() == 2


@pytest.mark.parametrize(("name", "rate"), [(DUMP, 100.0), (MULTIPART, 25.0)])
def test_replay_rate_paces_frames(consumers: Any, name: str, rate: float) -> None:
    path = shared_data_dir() / name
    if not path.is_file():
        pytest.skip(f"real capture {name} not found in {shared_data_dir()}")
    n_messages = len(list(read_capture(path)))
    frames = FRAMES[name]
    replay = ReplayThread(
        path, "tcp://127.0.0.1:0", socket="push", wait_for_peer=True, rate=rate
    )
    replay.start()
    consumer = consumers("pull", replay.wait_bound())
    consumer.receive(n_messages)
    replay.finish()
    images = consumer.image_times()
    assert len(images) == frames
    span = images[-1] - images[0]
    paced = (frames - 1) / rate  # 0.19 s for 20 frames at 100 Hz
    assert span >= 0.8 * paced  # arrival times jitter on a busy machine
    assert replay.elapsed >= 0.95 * paced
    # frames are paced, not messages (the legacy capture has 3 per frame)
    assert span < paced + 0.3
    # spread over the span, not sent in one burst at the end
    gaps = [b - a for a, b in itertools.pairwise(images)]
    assert max(gaps) < paced


@pytest.mark.parametrize("kind", ["push", "pub"])
def test_replay_wait_for_peer_times_out(dump_path: Path, kind: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=r"in 0\.2 s"):
        replay_capture(
            dump_path,
            "tcp://127.0.0.1:0",
            socket=kind,  # type: ignore[arg-type]
            wait_for_peer=True,
            peer_timeout=0.2,
        )
    assert time.monotonic() - t0 < 5


def test_replay_loop_twice(dump_path: Path, consumers: Any) -> None:
    messages = list(read_capture(dump_path))
    replay = ReplayThread(
        dump_path, "tcp://127.0.0.1:0", socket="push", wait_for_peer=True, loop=2
    )
    replay.start()
    consumer = consumers("pull", replay.wait_bound())
    received = consumer.receive(2 * len(messages))
    assert replay.finish() == 2 * len(messages)
    assert consumer.quiet()
    assert received == messages * 2
    assert decode(received) == decode(messages) * 2


# --- the command line -----------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make_bad",
    [
        pytest.param(lambda tmp: tmp / "missing.cbors", id="missing"),
        pytest.param(lambda tmp: tmp, id="directory"),
        pytest.param(
            lambda tmp: _write(tmp / "garbage.cbors", b"\xff\xfe not cbor at all"),
            id="garbage",
        ),
        pytest.param(
            lambda tmp: _write(tmp / "dict.cbors", cbor2.dumps({"htype": "header"})),
            id="not-an-array",
        ),
        pytest.param(
            lambda tmp: _write(tmp / "ints.cbors", cbor2.dumps([1, 2, 3])),
            id="array-of-ints",
        ),
        pytest.param(
            lambda tmp: _write(
                tmp / "truncated.cbors", cbor2.dumps([b"x" * 1000])[:500]
            ),
            id="truncated",
        ),
    ],
)
def test_cli_bad_capture_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_bad: Any
) -> None:
    bad = make_bad(tmp_path)
    code = main(["replay", str(bad), "--endpoint", "tcp://127.0.0.1:0"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ophyd-xspress replay: error: ")
    assert bad.name in lines[0]
    assert "Traceback" not in err
    assert out == ""


def test_cli_bad_capture_process_exit_status(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cbors"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ophyd_xspress.cli import main; sys.exit(main())",
            "replay",
            str(missing),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ophyd-xspress replay: error: ")
    assert "nope.cbors" in lines[0]


def test_cli_peer_timeout_exits_2(
    dump_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    code = main(
        [
            "replay",
            str(dump_path),
            "--endpoint",
            endpoint,
            "--socket",
            "push",
            "--wait-for-peer",
            "--peer-timeout",
            "0.2",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "no consumer connected" in err
    assert f"on {endpoint}" in out  # it did bind before waiting


def test_cli_loop_2_sends_twice(
    dump_path: Path, consumers: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = list(read_capture(dump_path))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    consumer = consumers("pull", endpoint)  # connects before the bind; retries
    code = main(
        [
            "replay",
            str(dump_path),
            "--endpoint",
            endpoint,
            "--socket",
            "push",
            "--wait-for-peer",
            "--peer-timeout",
            "10",
            "--loop",
            "2",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    received = consumer.receive(2 * len(messages))
    assert consumer.quiet()
    assert received == messages * 2
    assert out.splitlines() == [
        f"replaying {dump_path} on {endpoint} (push)",
        f"sent {2 * len(messages)} messages",
    ]
    decoder = StreamDecoder()
    for message in received:
        decoder.feed(message)
    decoder.finish()
    assert [s.frames_received for s in decoder.tracker.series] == [20, 20]
    assert sum(decoder.tracker.counts.values()) == 0


def test_cli_rate_paces_frames(
    dump_path: Path, consumers: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    n_messages = len(list(read_capture(dump_path)))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    consumer = consumers("pull", endpoint)
    argv = [
        "replay",
        str(dump_path),
        "--endpoint",
        endpoint,
        "--socket",
        "push",
        "--wait-for-peer",
        "--rate",
        "100",
    ]
    codes: list[int] = []
    cli = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    cli.start()
    consumer.receive(n_messages)  # concurrently, to time the arrivals
    cli.join(15)
    assert codes == [0]
    assert f"sent {n_messages} messages" in capsys.readouterr().out
    images = consumer.image_times()
    assert len(images) == 20
    span = images[-1] - images[0]
    assert span >= 0.19 * 0.8  # 20 frames at 100 Hz: 19 periods
    assert span < 0.19 + 0.3  # frames are paced, not the 62 messages (0.61 s)
