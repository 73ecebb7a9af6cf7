#!/usr/bin/env python3
"""V-Hub round trip and relay throughput, beside a raw copy over the same channel.

One VM runs a guest agent against `blink-cli serve`:
  rtt    N sequential `ping` RPCs on one connection (guest -> carrier -> hub
         -> carrier -> guest). The hub prints one `rpc` line per request and
         the guest sends the next request only after the answer, so the time
         between consecutive lines, taken on the host, is one round trip.
  relay  StreamData frames (32 KiB payloads) that the hub turns into JSON
         lines; MB/s from the first to the last line, on the host.
A second VM, in the same benchmark run, sends the same StreamData bytes to a
sink of our own that only reads: the raw copy over the same channel (guest
socket, blink-guest, the org.blink.vhub port, the host carrier, a Unix
socket), without the hub's work. Guest clocks under TCG are not trusted:
every time here is the host's.

usage: /usr/bin/python3 bench/vhub_rtt.py [--pings N] [--mib M]
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = REPO / "build/src/cli/blink-cli"

AGENT = r'''#!/usr/bin/env python3
import json, os, socket, struct, sys
MAGIC = 0x424C494E
def frame(kind, rid, payload=b""):
    return struct.pack("<IBBHIQ", MAGIC, 1, kind, 0, len(payload), rid) + payload
def recv_frame(s):
    head = b""
    while len(head) < 20:
        head += s.recv(20 - len(head))
    n = struct.unpack("<IBBHIQ", head)[4]
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return head[5], body
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["BLINK_VHUB_SOCKET"])
    return s
pings, total = int(sys.argv[1]), int(sys.argv[2])
if pings:
    s = connect()
    s.sendall(frame(0x01, 1, b"{}")); recv_frame(s)
    request = json.dumps({"method": "ping"}).encode()
    for i in range(pings):
        s.sendall(frame(0x10, 100 + i, request)); recv_frame(s)
    s.close()
s = connect()
s.sendall(frame(0x01, 1, b"{}")); recv_frame(s)
chunk = frame(0x20, 2, b"x" * (32 << 10))
for _ in range(total // (32 << 10)):
    s.sendall(chunk)
s.sendall(frame(0x02, 3)); recv_frame(s)
print(json.dumps({"event": "execution_result", "done": True}))
'''


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def run_vm(hub_path, agent, pings, total):
    proc = subprocess.run([str(CLI), "run", "--vhub", hub_path, agent, "--", str(pings),
                           str(total)], capture_output=True, text=True, timeout=1800)
    result = json.loads(proc.stdout)
    if not result.get("done"):
        raise SystemExit(f"guest agent failed: {result}")


def with_serve(tmp, agent, pings, total):
    path = str(tmp / "hub.sock")
    hub = subprocess.Popen([str(CLI), "serve", "--socket", path], stdout=subprocess.PIPE,
                           text=True)
    hub.stdout.readline()
    rpc_times, data_times = [], []

    def read():
        for line in hub.stdout:
            now = time.monotonic()
            event = json.loads(line)
            if event["event"] == "rpc":
                rpc_times.append(now)
            elif event["event"] == "stream_data":
                data_times.append((now, len(event["data"])))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run_vm(path, agent, pings, total)
    hub.terminate()
    hub.wait()
    reader.join()
    rtts = [(b - a) * 1000 for a, b in zip(rpc_times, rpc_times[1:])]
    span = data_times[-1][0] - data_times[0][0]
    relayed = sum(n for _, n in data_times[1:])
    return rtts, relayed / span / 1e6


def with_sink(tmp, agent, total):
    path = str(tmp / "sink.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    marks = []

    def serve():
        conn, _ = server.accept()
        conn.recv(4096)  # the handshake, rewritten by the host
        conn.sendall(bytes.fromhex("4e494c42010100000200000001000000000000007b7d"))
        got, first = 0, None
        while got < total:
            chunk = conn.recv(min(1 << 20, total - got))
            if not chunk:
                break
            if first is None:
                first = (time.monotonic(), len(chunk))
            got += len(chunk)
        marks.append((first, time.monotonic(), got))
        head = conn.recv(20)  # the closing heartbeat: echo it
        conn.sendall(head)
        conn.recv(1)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    run_vm(path, agent, 0, total)
    thread.join()
    (first_time, first_len), last, got = marks[0]
    return (got - first_len) / (last - first_time) / 1e6


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--mib", type=int, default=16)
    args = parser.parse_args()
    total = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        agent = tmp / "agent.py"
        agent.write_text(AGENT)
        agent.chmod(0o755)
        rtts, relay = with_serve(tmp, agent, args.pings, total)
        raw = with_sink(tmp, agent, total + 20 * (total >> 15))
    print(json.dumps({
        "rpc_round_trip_ms": {"n": len(rtts), "median": round(statistics.median(rtts), 3),
                              "p99": round(percentile(rtts, 99), 3)},
        "relay_mb_per_s": round(relay, 2),
        "raw_copy_mb_per_s": round(raw, 2),
        "mib": args.mib,
        "accel": os.environ.get("BLINK_ACCEL", "auto"),
    }))


if __name__ == "__main__":
    main()
