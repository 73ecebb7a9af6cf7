#!/usr/bin/env python3
"""Runs inside the guest: relays ROUNDS x MIB MiB of StreamData to the hub,
one connection per round, each round ended by a Heartbeat whose echo says
the hub has everything. A relay that stops is caught by the socket timeout
(a hang guard, not a measure), and reported."""
import json
import os
import socket
import struct
import sys

MAGIC = 0x424C494E
HANDSHAKE, HEARTBEAT, STREAM_DATA = 0x01, 0x02, 0x20
PAYLOAD = 32 << 10


def frame(kind, rid, payload=b""):
    return struct.pack("<IBBHIQ", MAGIC, 1, kind, 0, len(payload), rid) + payload


def recv_frame(s):
    data = b""
    while len(data) < 20:
        chunk = s.recv(20 - len(data))
        if not chunk:
            raise EOFError("the hub closed")
        data += chunk
    kind, length = data[5], struct.unpack("<IBBHIQ", data)[4]
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        if not chunk:
            raise EOFError("the hub closed inside a frame")
        body += chunk
    return kind, body


rounds, mib = int(sys.argv[1]), int(sys.argv[2])
chunk = frame(STREAM_DATA, 2, b"r" * PAYLOAD)
done, error = 0, None
for _ in range(rounds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    try:
        s.connect(os.environ["BLINK_VHUB_SOCKET"])
        s.sendall(frame(HANDSHAKE, 1, b"{}"))
        recv_frame(s)
        for _ in range((mib << 20) // PAYLOAD):
            s.sendall(chunk)
        s.sendall(frame(HEARTBEAT, 3))
        if recv_frame(s)[0] != HEARTBEAT:
            raise EOFError("no heartbeat echo")
    except (OSError, EOFError) as e:
        error = f"round {done}: {type(e).__name__}: {e}"
        break
    finally:
        s.close()
    done += 1
print(json.dumps({"event": "execution_result", "rounds": done, "error": error}))
