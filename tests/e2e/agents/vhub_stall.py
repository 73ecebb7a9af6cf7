#!/usr/bin/env python3
"""Runs inside the guest against a hub that never reads connection A: A's
sends stall once the bounded buffers between guest and hub are full, and
connection B still works. Reports how much A got through."""
import json
import os
import socket
import struct

MAGIC = 0x424C494E
HANDSHAKE, HEARTBEAT, STDOUT = 0x01, 0x02, 0x30
ATTEMPT = 64 << 20


def frame(kind, rid, payload=b""):
    return struct.pack("<IBBHIQ", MAGIC, 1, kind, 0, len(payload), rid) + payload


def connect(timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(os.environ["BLINK_VHUB_SOCKET"])
    return s


a = connect(10)
a.sendall(frame(HANDSHAKE, 1, b'{"session": "not-me"}'))
chunk = frame(STDOUT, 2, b"f" * (64 << 10))
sent, stalled = 0, False
try:
    while sent < ATTEMPT:
        a.sendall(chunk)
        sent += len(chunk)
except socket.timeout:
    stalled = True

b = connect(120)
b.sendall(frame(HANDSHAKE, 1, b"{}") + frame(STDOUT, 2, str(sent).encode()) + frame(HEARTBEAT, 3))
head = b""
while len(head) < 20:
    head += b.recv(20 - len(head))
kind, rid = struct.unpack("<IBBHIQ", head)[2], struct.unpack("<IBBHIQ", head)[5]
print(json.dumps({"event": "execution_result", "sent": sent, "stalled": stalled,
                  "b_answer": [kind, rid]}))
