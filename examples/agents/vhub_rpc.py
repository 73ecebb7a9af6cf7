#!/usr/bin/env python3
"""An agent that talks to the V-Hub over a raw socket (docs/vhub.md).

It connects to $BLINK_VHUB_SOCKET (the guest-local endpoint blink-guest
provides), or to the host over vsock (CID 2, port 10000) when started with
--vsock, sends a Handshake, calls the methods named on its command line
(default: ping and time) with RpcRequest, sends one line of Stdout for the
hub's log, and prints an execution_result line with what it got back.

    blink-cli serve --socket /tmp/hub.sock &
    blink-cli run --vhub /tmp/hub.sock examples/agents/vhub_rpc.py -- ping time
"""
import json
import os
import socket
import struct
import sys

MAGIC, VERSION = 0x424C494E, 1
HANDSHAKE, HEARTBEAT, ERROR = 0x01, 0x02, 0x03
RPC_REQUEST, RPC_RESPONSE, RPC_ERROR = 0x10, 0x11, 0x12
STDOUT = 0x30
HEADER = struct.Struct("<IBBHIQ")  # magic, version, type, flags, length, request id


def send(sock, kind, request_id, payload=b""):
    sock.sendall(HEADER.pack(MAGIC, VERSION, kind, 0, len(payload), request_id) + payload)


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the hub closed the connection")
        data += chunk
    return data


def receive(sock):
    magic, version, kind, _flags, length, request_id = HEADER.unpack(read_exactly(sock, 20))
    if magic != MAGIC or version != VERSION:
        raise ValueError("not a BLIN frame")
    return kind, request_id, read_exactly(sock, length)


def connect(use_vsock):
    if use_vsock:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.connect((2, 10000))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(os.environ.get("BLINK_VHUB_SOCKET", "/run/blink/vhub.sock"))
    sock.settimeout(60)
    return sock


def call(sock, request_id, method, params=None):
    body = json.dumps({"method": method, "params": params}).encode()
    send(sock, RPC_REQUEST, request_id, body)
    kind, rid, payload = receive(sock)
    if rid != request_id or kind not in (RPC_RESPONSE, RPC_ERROR):
        raise ValueError(f"unexpected answer type {kind:#x} for request {rid}")
    return kind == RPC_RESPONSE, json.loads(payload)


def main():
    args = sys.argv[1:]
    use_vsock = "--vsock" in args
    methods = [a for a in args if a != "--vsock"] or ["ping", "time"]

    sock = connect(use_vsock)
    send(sock, HANDSHAKE, 1, b"{}")
    _, _, hello = receive(sock)

    answers = {}
    for n, method in enumerate(methods, start=2):
        ok, answer = call(sock, n, method)
        answers[method] = answer if ok else {"rpc_error": answer.get("error")}

    send(sock, STDOUT, 100, b"vhub_rpc agent done\n")
    send(sock, HEARTBEAT, 101)  # its echo means the hub has the line above
    receive(sock)
    sock.close()

    print(json.dumps({"event": "execution_result", "hub": json.loads(hello),
                      "answers": answers}))


if __name__ == "__main__":
    main()
