"""Supervision: status frames (worker -> master), the heartbeat, the master's view of them."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from p3scan import heartbeat
from p3scan.config import options as config
from p3scan.daemon import status
from p3scan.daemon.master import Master, WorkerInfo
from p3scan.daemon.status import (
    HEADER,
    MAX_FRAME,
    FrameDecoder,
    FrameError,
    Heartbeat,
    WorkerStatus,
    decode,
    encode,
)
from p3scan.daemon.worker import HEARTBEAT_MARGIN, Reporter, heartbeat_timeout
from p3scan.net.destination import Route
from p3scan.proxy.session import SessionInfo

BUSY = WorkerStatus("busy", 1700000000.5, client="10.0.0.2:40000", protocol="POP3",
                    server="192.0.2.1:110", user="jane", messages=2, message="7", bytes=12345)


def make_cfg(**changes: Any) -> config.Config:
    return config.load(["-f", "/dev/null", "-T", "eicar"]).replace(**changes)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


# --- framing ------------------------------------------------------------------------------

def test_a_status_survives_encoding():
    data = encode(BUSY)
    assert HEADER.unpack_from(data)[0] == len(data) - HEADER.size
    assert FrameDecoder().feed(data) == [BUSY]


def test_frames_arrive_in_pieces_of_any_size():
    stream = encode(WorkerStatus("ready", 1.0)) + encode(BUSY) + encode(WorkerStatus("idle", 2))
    for size in (1, 3, 4, 5, 17, len(stream)):
        decoder, got = FrameDecoder(), []
        for start in range(0, len(stream), size):
            got += decoder.feed(stream[start:start + size])
        assert [item.state for item in got] == ["ready", "busy", "idle"], size
        assert got[1] == BUSY and not decoder.buffer


def test_a_partial_frame_waits_for_the_rest():
    data = encode(BUSY)
    decoder = FrameDecoder()
    assert decoder.feed(data[:2]) == []  # not even the length yet
    assert decoder.feed(data[2:-1]) == []
    assert decoder.feed(data[-1:]) == [BUSY]


def test_an_oversize_frame_is_refused_before_its_body_arrives():
    with pytest.raises(FrameError, match="a frame of 4093 bytes"):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME - HEADER.size + 1))
    with pytest.raises(FrameError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'{"since": 1}', b'{"state": "dancing", "since": 1}',
    b'{"state": "busy", "since": "noon"}', b'{"state": "busy", "since": 1, "bytes": "many"}',
    b'{"state": "busy", "since": 1, "bytes": true}', b'{"state": "busy", "since": 1, "user": 5}',
    b"\xff\xfe",
])
def test_a_frame_that_is_not_a_status_is_refused(body: bytes):
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame(body))


def test_unknown_keys_are_ignored_and_missing_ones_take_defaults():
    body = json.dumps({"state": "idle", "since": 5, "later": [1]}).encode()
    assert decode(body) == WorkerStatus("idle", 5)


def test_long_text_is_cut_so_that_a_frame_is_one_atomic_pipe_write():
    worst = WorkerStatus("failed", 1.0, client="\U0001f600" * 5000, protocol="\0" * 5000,
                         server="x" * 5000, user="\u00e9" * 5000, message="7" * 5000,
                         reason="r" * 5000)
    data = encode(worst)
    assert len(data) <= MAX_FRAME
    back = FrameDecoder().feed(data)[0]
    assert back.state == "failed" and back.reason.startswith("rrr")
    reason = encode(WorkerStatus("failed", 1.0, reason="Permission denied " + "x" * 500))
    assert len(FrameDecoder().feed(reason)[0].reason) == status.TEXT_LIMIT


def test_send_never_blocks_on_a_full_pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        sent = 0
        while status.send(write_end, BUSY):
            sent += 1
        assert sent > 10  # then the pipe was full: refused whole, never cut in two
        data = os.read(read_end, 1 << 20)
        assert FrameDecoder().feed(data) == [BUSY] * sent
    finally:
        os.close(read_end)
        os.close(write_end)


# --- heartbeat ----------------------------------------------------------------------------

def test_a_beat_is_a_no_op_outside_a_worker():
    heartbeat.beat()
    heartbeat.beat(object(), "3")


def test_the_installed_beat_gets_the_session_and_message():
    calls = []
    heartbeat.install(lambda session, message: calls.append((session, message)))
    try:
        heartbeat.beat("info", "4")
        heartbeat.beat()
    finally:
        heartbeat.uninstall()
    heartbeat.beat("after", "5")
    assert calls == [("info", "4"), (None, "")]


def test_the_heartbeat_is_shared_with_a_forked_child():
    heart = Heartbeat()
    before = heart.last()
    pid = os.fork()
    if pid == 0:  # the worker's side
        time.sleep(0.05)
        heart.beat()
        os._exit(0)
    os.waitpid(pid, 0)
    assert heart.last() > before
    assert 0 <= heart.silent_for() < 5
    heart.close()


def test_the_heartbeat_timeout_exceeds_every_wait_the_options_allow():
    cfg = make_cfg()  # idletimeout 300, scantimeout 120, connecttimeout 30, timeout 30
    assert heartbeat_timeout(cfg) == 2 * 300 + HEARTBEAT_MARGIN
    cfg = make_cfg(idletimeout=2, connecttimeout=2, timeout=1, scantimeout=100)
    assert heartbeat_timeout(cfg) == 2 * 100 + HEARTBEAT_MARGIN


# --- the worker's reports and the master's view ---------------------------------------------

@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        try:
            os.close(fd)
        except OSError:
            pass


def test_the_worker_reports_a_session_only_when_something_changed(pipe):
    read_end, write_end = pipe
    reporter = Reporter(write_end)
    reporter.state("busy", client="10.0.0.2:40000")
    info = SessionInfo(("10.0.0.2", 40000), Route("POP3", "192.0.2.1", 110, "target"))
    for _ in range(3):
        reporter.session(info, "")
    info.user, info.messages = "jane", 1
    for _ in range(3):
        reporter.session(info, "1")
    got = FrameDecoder().feed(os.read(read_end, 65536))
    assert [(item.state, item.user, item.message) for item in got] == [
        ("busy", "", ""), ("busy", "", ""), ("busy", "jane", "1")]
    assert got[-1].server == "192.0.2.1:110" and got[-1].client == "10.0.0.2:40000"
    assert got[-1].protocol == "POP3" and got[-1].since == got[0].since


def test_the_master_keeps_the_latest_status_of_each_worker(pipe):
    read_end, write_end = pipe
    master = Master(make_cfg(maxchilds=1))
    info = WorkerInfo(4242, read_end, 0, Heartbeat(), 60.0)
    master.workers[4242] = info
    assert master.worker_states()[4242]["state"] == "starting"
    for item in (WorkerStatus("ready", 1.0), BUSY):
        status.send(write_end, item)
    data = encode(WorkerStatus("idle", 3.0))
    os.write(write_end, data[:5])  # the rest comes later
    master._read_status(info)
    assert info.booted and info.busy and not master.starting
    state = master.worker_states()[4242]
    assert state["state"] == "busy" and state["user"] == "jane" and state["message"] == "7"
    assert state["retiring"] is False and 0 <= state["silent"] < 5
    os.write(write_end, data[5:])
    master._read_status(info)
    assert not info.busy and master.worker_states()[4242]["state"] == "idle"


def test_the_master_reads_a_boot_failure_reason(pipe):
    read_end, write_end = pipe
    master = Master(make_cfg())
    info = WorkerInfo(4243, read_end, 0, Heartbeat(), 60.0)
    status.send(write_end, WorkerStatus("failed", 1.0, reason="[Errno 13] Permission denied"))
    master._read_status(info)
    assert info.failure == "[Errno 13] Permission denied" and not info.booted


def test_the_master_ignores_a_worker_whose_status_is_unreadable(pipe, caplog):
    read_end, write_end = pipe
    master = Master(make_cfg())
    info = WorkerInfo(4244, read_end, 0, Heartbeat(), 60.0)
    os.write(write_end, HEADER.pack(1 << 30) + b"junk")
    master._read_status(info)
    assert info.decoder is None and "worker 4244 sent an unreadable status" in caplog.text
    status.send(write_end, WorkerStatus("ready", 1.0))
    master._read_status(info)  # drained, not believed
    assert not info.booted


def test_a_heartbeat_read_during_a_write_is_never_taken_for_silence():
    """A worker beats in another process while the master reads: struct.pack_into zeroes
    the slot before writing, so a read could see a heartbeat from boot time (the soak test
    caught workers killed as 'silent for 5230 s')."""
    heart = Heartbeat()
    child = os.fork()
    if child == 0:  # the worker: beat as fast as it can for a while
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            heart.beat()
        os._exit(0)
    try:
        start = time.monotonic() - 1
        worst = min(heart.last() for _ in range(300_000))
    finally:
        os.waitpid(child, 0)
    assert worst >= start
