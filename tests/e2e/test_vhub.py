"""blink-cli serve: the V-Hub host side, driven by a real BLIN client."""
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import AGENTS, CLI, REPO, live_pids, run_cli

MAGIC = 0x424C494E
HANDSHAKE, HEARTBEAT, ERROR = 0x01, 0x02, 0x03
RPC_REQUEST, RPC_RESPONSE, RPC_ERROR = 0x10, 0x11, 0x12
STREAM_DATA, STDOUT, STDERR = 0x20, 0x30, 0x31


def frame(kind, rid, payload=b"", magic=MAGIC, version=1, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IBBHIQ", magic, version, kind, 0, n, rid) + payload


def recv_frame(sock):
    head = b""
    while len(head) < 20:
        chunk = sock.recv(20 - len(head))
        if not chunk:
            return None
        head += chunk
    magic, version, kind, _, length, rid = struct.unpack("<IBBHIQ", head)
    assert magic == MAGIC and version == 1
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        assert chunk
        body += chunk
    return kind, rid, body


class Hub:
    def __init__(self, tmp_path, *args):
        self.path = str(tmp_path / "hub.sock")
        self.proc = subprocess.Popen([str(CLI), "serve", "--socket", self.path, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events = []
        first = json.loads(self.proc.stdout.readline())
        assert first["event"] == "vhub_listening"
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.path)
        return s

    def wait_event(self, predicate, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for e in list(self.events):
                if predicate(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no such event in {self.events}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0
        self.reader.join(timeout=10)


@pytest.fixture
def hub(tmp_path):
    h = Hub(tmp_path)
    yield h
    if h.proc.poll() is None:
        h.stop()


def test_handshake_vector_and_reply(hub):
    s = hub.connect()
    # The exact 20 header bytes of a Handshake with request id 1 and 2 bytes.
    payload = b"{}"
    raw = frame(HANDSHAKE, 1, payload)
    assert raw[:20] == bytes.fromhex("4e494c42" "01" "01" "0000" "02000000" "0100000000000000")
    s.sendall(raw)
    kind, rid, body = recv_frame(s)
    assert (kind, rid) == (HANDSHAKE, 1)
    assert json.loads(body)["status"] == "blink-vhub-ready"

    s.sendall(frame(HANDSHAKE, 2, json.dumps({"session": "my-agent"}).encode()))
    kind, rid, body = recv_frame(s)
    assert json.loads(body) == {"status": "blink-vhub-ready", "session": "my-agent"}
    s.sendall(frame(HEARTBEAT, 3, b"beat"))
    assert recv_frame(s) == (HEARTBEAT, 3, b"beat")


def test_builtin_rpc_and_relay(hub):
    s = hub.connect()
    s.sendall(frame(RPC_REQUEST, 7, json.dumps({"method": "ping", "params": {}}).encode()))
    kind, rid, body = recv_frame(s)
    assert (kind, rid, json.loads(body)) == (RPC_RESPONSE, 7, {"result": "pong"})
    s.sendall(frame(RPC_REQUEST, 8, json.dumps({"method": "time"}).encode()))
    kind, rid, body = recv_frame(s)
    assert kind == RPC_RESPONSE and abs(json.loads(body)["result"]["unix_ms"] / 1000
                                        - time.time()) < 60
    s.sendall(frame(RPC_REQUEST, 9, json.dumps({"method": "nope"}).encode()))
    kind, rid, body = recv_frame(s)
    assert (kind, rid) == (RPC_ERROR, 9) and "unknown method" in json.loads(body)["error"]

    s.sendall(frame(STDOUT, 11, b"hello out") + frame(STDERR, 12, b"hello err\xff"))
    e = hub.wait_event(lambda e: e["event"] == "stdout")
    assert e["data"] == "hello out" and e["request_id"] == 11
    e = hub.wait_event(lambda e: e["event"] == "stderr")
    assert e["data"] == "hello err\ufffd"


def test_rpc_handler_program(tmp_path):
    handler = tmp_path / "handler.py"
    handler.write_text("import json, sys\n"
                       "req = json.load(sys.stdin)\n"
                       "json.dump({'result': {'echo': req['params'], 'method': req['method']}},"
                       " sys.stdout)\n")
    hub = Hub(tmp_path, "--handler", f"/usr/bin/python3 {handler}")
    try:
        s = hub.connect()
        s.sendall(frame(RPC_REQUEST, 21, json.dumps({"method": "search",
                                                     "params": {"q": "x"}}).encode()))
        kind, rid, body = recv_frame(s)
        assert (kind, rid) == (RPC_RESPONSE, 21)
        assert json.loads(body) == {"result": {"echo": {"q": "x"}, "method": "search"}}
    finally:
        hub.stop()


def test_a_handler_out_of_time_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    handler = tmp_path / "slow.sh"
    handler.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {pid_file}\nsleep 600\n")
    handler.chmod(0o755)
    os.environ["BLINK_VHUB_HANDLER_TIMEOUT"] = "2"
    try:
        hub = Hub(tmp_path, "--handler", str(handler))
    finally:
        del os.environ["BLINK_VHUB_HANDLER_TIMEOUT"]
    try:
        s = hub.connect()
        s.sendall(frame(RPC_REQUEST, 31, json.dumps({"method": "slow"}).encode()))
        kind, rid, _ = recv_frame(s)
        assert (kind, rid) == (RPC_ERROR, 31)
        child = int(pid_file.read_text())
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
            time.sleep(0.1)  # killed; gone once its parent (init) reaps it
        state = open(f"/proc/{child}/stat").read().split()[2] \
            if os.path.exists(f"/proc/{child}") else "gone"
        assert state in ("gone", "Z"), state
    finally:
        hub.stop()


def test_one_sandbox_cannot_take_every_handler(tmp_path):
    handler = tmp_path / "slow.sh"
    handler.write_text("#!/bin/sh\nexec sleep 600\n")
    handler.chmod(0o755)
    os.environ["BLINK_VHUB_HANDLER_TIMEOUT"] = "5"
    try:
        hub = Hub(tmp_path, "--handler", str(handler))
    finally:
        del os.environ["BLINK_VHUB_HANDLER_TIMEOUT"]
    try:
        def peer(session, rid):
            s = hub.connect()
            s.sendall(frame(HANDSHAKE, 1, json.dumps({"session": session}).encode()))
            assert recv_frame(s)[0] == HANDSHAKE
            s.sendall(frame(RPC_REQUEST, rid, json.dumps({"method": "slow"}).encode()))
            return s

        greedy = [peer("greedy", 100 + i) for i in range(66)]
        other = peer("other", 7)
        errors = [json.loads(recv_frame(s)[2])["error"] for s in greedy]
        assert errors.count("handler unavailable") == 2  # 64 handlers per sandbox
        kind, rid, body = recv_frame(other)
        assert (kind, rid) == (RPC_ERROR, 7)
        assert json.loads(body)["error"] != "handler unavailable"  # it got a handler
    finally:
        hub.stop()


def test_fifty_connections_at_once(hub):
    socks = [hub.connect() for _ in range(50)]
    for i, s in enumerate(socks):
        s.sendall(frame(RPC_REQUEST, 1000 + i, json.dumps({"method": "ping"}).encode()))
    for i, s in enumerate(socks):
        kind, rid, _ = recv_frame(s)
        assert (kind, rid) == (RPC_RESPONSE, 1000 + i)


@pytest.mark.parametrize("raw", [
    frame(HEARTBEAT, 1, magic=0x12345678),             # bad magic
    frame(HEARTBEAT, 1, version=9),                    # unknown version
    frame(0x7F, 1),                                    # unknown type
    frame(STDOUT, 1, length=0xFFFFFFFF),               # a 4 GiB claim
])
def test_hostile_frames_close_only_that_peer(hub, raw):
    good = hub.connect()
    bad = hub.connect()
    bad.sendall(raw)
    reply = recv_frame(bad)
    assert reply is not None and reply[0] == ERROR
    assert bad.recv(1) == b""  # then the hub hangs up
    good.sendall(frame(HEARTBEAT, 5, b"ok"))
    assert recv_frame(good) == (HEARTBEAT, 5, b"ok")


def test_half_frame_then_rest(hub):
    s = hub.connect()
    raw = frame(HEARTBEAT, 6, b"split")
    s.sendall(raw[:11])
    time.sleep(0.3)
    s.sendall(raw[11:])
    assert recv_frame(s) == (HEARTBEAT, 6, b"split")


def test_stop_removes_the_socket(tmp_path):
    hub = Hub(tmp_path)
    assert os.path.exists(hub.path)
    hub.stop()
    assert not os.path.exists(hub.path)
    assert hub.events[-1]["event"] == "vhub_stopped"


# ---- guest programs through a VM's V-Hub carrier (real VMs) ----

HANDLER = ("import json, sys\n"
           "req = json.load(sys.stdin)\n"
           "json.dump({'result': {'echo': req['params'], 'method': req['method']}}, sys.stdout)\n")


@pytest.fixture(scope="module")
def guest_checks(tmp_path_factory):
    """One VM runs agents/vhub_checks.py against `serve` with a handler; the
    tests below read its report and the hub's events."""
    tmp = tmp_path_factory.mktemp("vhub-guest")
    (tmp / "handler.py").write_text(HANDLER)
    hub = Hub(tmp, "--handler", f"/usr/bin/python3 {tmp / 'handler.py'}")
    try:
        result = run_cli("run", "--vhub", hub.path, AGENTS / "vhub_checks.py", timeout=900)
    finally:
        hub.stop()
    assert result.returncode == 0, result
    return result.event, hub.events


def test_guest_rpc_round_trip_through_handler(guest_checks):
    report, events = guest_checks
    rpc = report["tool_rpc"]
    assert rpc["rc"] == 0, rpc
    assert json.loads(rpc["out"]) == {"result": {"echo": {"q": "x"}, "method": "search"}}
    calls = [e for e in events if e["event"] == "rpc" and e.get("method") == "search"]
    assert len(calls) == 1 and calls[0]["run"].startswith("run-")


def test_guest_fifty_connections_at_once(guest_checks):
    report, events = guest_checks
    assert report["concurrent"]["pongs"] == 50
    # Every handshake names the run as the host knows it, never the guest.
    (hello,) = report["concurrent"]["handshakes"]
    hello = json.loads(hello)
    assert hello["status"] == "blink-vhub-ready" and hello["run"].startswith("run-")
    pings = [e for e in events if e["event"] == "rpc" and e.get("method") == "ping"]
    assert len({e["connection"] for e in pings}) >= 50


def test_guest_stdout_relay_seen_on_the_hub(guest_checks):
    report, events = guest_checks
    assert report["tool_log"]["rc"] == 0, report["tool_log"]
    lines = [e for e in events if e["event"] == "stdout"
             and e["data"] == "hello from the guest\n"]
    assert len(lines) == 1 and lines[0]["run"].startswith("run-")


def test_guest_hostile_frames(guest_checks):
    report, events = guest_checks
    hostile = report["hostile"]
    expected = {
        "bad_magic": "bad magic",
        "bad_version": "unsupported version",
        "unknown_type": "unknown message type",
        "huge_length": "payload longer than the maximum",
        "control_type": "message type not accepted by the hub",
        "cut_frame": "connection ended inside a frame",
    }
    for case, error in expected.items():
        assert hostile[case] == {"type": ERROR, "error": error, "closed": True}, case
    assert hostile["good_after"] is True
    # The host stopped them: the hub never saw a broken frame.
    assert not [e for e in events if e["event"] == "protocol_error"]


def test_guest_flood_closes_only_the_flooder(guest_checks):
    flood = guest_checks[0]["flood"]
    assert flood["closed"] is True and flood["good_after"] is True
    assert flood["received"] < flood["sent"]  # the hub dropped it, answers unread


def test_guest_relay_of_many_mib_completes(tmp_path):
    """Guest-to-hub streams several times larger than every buffer between
    them, so the carrier's queue to the hub fills and drains over and over:
    each round must arrive whole (a relay that stops trips the agent's
    socket timeout)."""
    rounds, mib = 4, 8
    hub = Hub(tmp_path)
    try:
        result = run_cli("run", "--vhub", hub.path, AGENTS / "vhub_relay.py", "--", rounds, mib,
                         timeout=1800)
    finally:
        hub.stop()
    assert result.returncode == 0, result
    assert result.event["error"] is None and result.event["rounds"] == rounds, result.event
    data = [e for e in hub.events if e["event"] == "stream_data"]
    assert len(data) == rounds * (mib << 20) // (32 << 10)
    assert {len(e["data"]) for e in data} == {32 << 10}


def test_run_without_hub_gets_no_hub(monkeypatch):
    """The example agent, in a run with no hub configured anywhere."""
    monkeypatch.delenv("BLINK_VHUB_SOCKET", raising=False)
    result = run_cli("run", REPO / "examples/agents/vhub_rpc.py", timeout=600)
    assert result.returncode == 0, result
    assert result.event["hub"]["status"] == "no-hub"
    assert result.event["answers"] == {"ping": {"rpc_error": "no hub"},
                                       "time": {"rpc_error": "no hub"}}


class StallingHub:
    """A hub of our own: it reads the first connection's handshake and then
    nothing more; it answers the second connection's heartbeat after noting
    the shim's peak memory."""

    def __init__(self, tmp_path, session):
        self.path = str(tmp_path / "stall.sock")
        self.session = session
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(8)
        self.handshakes, self.report, self.shim_peak_kib = [], None, None
        self.held = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        for index in range(2):
            conn, _ = self.server.accept()
            conn.settimeout(300)
            self.handshakes.append(json.loads(recv_frame(conn)[2]))
            if index == 0:
                self.held.append(conn)  # never read again
                continue
            self.report = int(recv_frame(conn)[2])
            self.shim_peak_kib = self._shim_peak()
            kind, rid, body = recv_frame(conn)
            conn.sendall(frame(kind, rid, body))

    def _shim_peak(self):
        (pid,) = live_pids(f"blink-shim .*--name {self.session}")
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])


def test_session_hub_memory_stays_bounded(tmp_path, fresh_home):
    """`session open --vhub` is kept for the session's VM; a guest program
    that writes to a hub that reads nothing stalls, and the shim's memory
    stays bounded; another connection of the same VM still works."""
    name = "vhub-stall"
    hub = StallingHub(tmp_path, name)
    opened = run_cli("session", "open", "--name", name, "--vhub", hub.path, home=fresh_home)
    assert opened.returncode == 0, opened
    try:
        result = run_cli("session", "run", "--name", name, AGENTS / "vhub_stall.py",
                         home=fresh_home, timeout=900)
    finally:
        run_cli("session", "remove", "--name", name, "--force", home=fresh_home)
    assert result.returncode == 0, result
    # The hub hears the session's name from the host, not the guest's claim.
    assert hub.handshakes == [{"session": name}, {"session": name}]
    assert result.event["stalled"] is True
    assert result.event["b_answer"] == [HEARTBEAT, 3]
    # 64 MiB were offered; only the bounded buffers between took any.
    assert hub.report == result.event["sent"] < 16 << 20
    assert hub.shim_peak_kib < 128 << 10
