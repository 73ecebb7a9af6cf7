#!/usr/bin/env python3
"""Runs inside the guest: exercises the guest-local V-Hub endpoint and
reports what it saw as the fields of its execution_result line. The host
test (test_vhub.py) asserts on them and on the hub's own events."""
import json
import os
import socket
import struct
import subprocess
import sys

MAGIC = 0x424C494E
HANDSHAKE, HEARTBEAT, ERROR = 0x01, 0x02, 0x03
RPC_REQUEST, RPC_RESPONSE = 0x10, 0x11
STDOUT = 0x30
PATH = os.environ["BLINK_VHUB_SOCKET"]


def frame(kind, rid, payload=b"", magic=MAGIC, version=1, length=None):
    n = len(payload) if length is None else length
    return struct.pack("<IBBHIQ", magic, version, kind, 0, n, rid) + payload


def connect(timeout=60):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(PATH)
    return s


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def recv_frame(s):
    head = recv_exact(s, 20)
    if head is None:
        return None
    magic, version, kind, _, length, rid = struct.unpack("<IBBHIQ", head)
    body = recv_exact(s, length)
    return kind, rid, body


def ends(s):
    """True when the other side closed: EOF, or a reset."""
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, socket.timeout):
        return False


def tool(*args):
    p = subprocess.run(["blink-vhub", *args], capture_output=True, text=True, timeout=120)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()}


def concurrent(n=50):
    socks = [connect() for _ in range(n)]
    for i, s in enumerate(socks):
        s.sendall(frame(HANDSHAKE, 1, b"{}") +
                  frame(RPC_REQUEST, 1000 + i, json.dumps({"method": "ping"}).encode()))
    labels, pongs = set(), 0
    for i, s in enumerate(socks):
        kind, rid, body = recv_frame(s)
        labels.add(json.dumps(json.loads(body), sort_keys=True))
        kind, rid, body = recv_frame(s)
        pongs += kind == RPC_RESPONSE and rid == 1000 + i and json.loads(body) == {
            "result": "pong"}
    for s in socks:
        s.close()
    return {"pongs": pongs, "handshakes": sorted(labels)}


HOSTILE = {
    "bad_magic": frame(HEARTBEAT, 1, magic=0x12345678),
    "bad_version": frame(HEARTBEAT, 1, version=9),
    "unknown_type": frame(0x7F, 1),
    "huge_length": frame(STDOUT, 1, length=0xFFFFFFFF),
    "control_type": frame(0x48, 1, b"\0" * 8),
    "cut_frame": frame(STDOUT, 1, b"x" * 100)[:30],
}


def hostile():
    good = connect()
    good.sendall(frame(HANDSHAKE, 1, b"{}"))
    recv_frame(good)
    seen = {}
    for name, raw in HOSTILE.items():
        s = connect()
        s.sendall(raw)
        if name == "cut_frame":
            s.shutdown(socket.SHUT_WR)  # the rest of the frame never comes
        reply = recv_frame(s)
        seen[name] = {"type": reply[0] if reply else None,
                      "error": json.loads(reply[2]).get("error") if reply else None,
                      "closed": ends(s)}
        s.close()
    good.sendall(frame(HEARTBEAT, 7, b"still here"))
    seen["good_after"] = recv_frame(good) == (HEARTBEAT, 7, b"still here")
    good.close()
    return seen


def flood():
    """Heartbeats without reading a single answer: the hub drops us once
    its queue for us is full, and the host closes our connection."""
    good = connect()
    s = connect(timeout=10)
    beat = frame(HEARTBEAT, 9, b"b" * 64) * 4096
    sent, stalled = 0, False
    try:
        while sent < 64 << 20:
            s.sendall(beat)
            sent += len(beat)
    except socket.timeout:
        stalled = True
    except (BrokenPipeError, ConnectionResetError):
        pass
    received, closed = 0, False
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                closed = True
                break
            received += len(chunk)
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    good.sendall(frame(RPC_REQUEST, 3, json.dumps({"method": "ping"}).encode()))
    reply = recv_frame(good)
    return {"sent": sent, "received": received, "stalled": stalled, "closed": closed,
            "good_after": reply is not None and reply[0] == RPC_RESPONSE}


def main():
    result = {"event": "execution_result"}
    result["tool_rpc"] = tool("rpc", "search", '{"q": "x"}')
    result["tool_log"] = tool("log", "hello", "from", "the", "guest")
    result["concurrent"] = concurrent()
    result["hostile"] = hostile()
    result["flood"] = flood()
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
