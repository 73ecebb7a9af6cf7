#!/usr/bin/env python3
"""Load on blink-server while 4 VMs run: wrk (Debian package) on /api/health
and on GET /api/runs/{id}, each for 10 s with 4 connections, while the
server's 4 workers keep 4 ephemeral VMs busy. Reports throughput and the
latency percentiles wrk measures (target p99 < 20 ms).

usage: /usr/bin/python3 bench/server_load.py [--seconds N]
"""
import argparse
import base64
import http.client
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SERVER = REPO / "build/src/server/blink-server"
HOME = pathlib.Path(os.environ.get("BLINK_HOME") or
                    pathlib.Path(os.environ.get("XDG_DATA_HOME") or
                                 os.path.expanduser("~/.local/share")) / "blink")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return data


def wrk(url, seconds):
    out = subprocess.run(["wrk", "-t2", "-c4", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: m for p, m in re.findall(r"\s+(50|75|90|99)%\s+(\S+)", out)}
    return rate, lat, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=HOME / "tmp") as tmp:
        home = pathlib.Path(tmp) / "home"
        (home / "kernels").mkdir(parents=True)
        (home / "images").mkdir()
        (home / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
        (home / "images/debian-12").symlink_to((HOME / "images/debian-12").resolve())
        port = free_port()
        env = dict(os.environ, BLINK_HOME=str(home), BLINK_ACCEL="tcg", BLINK_LOG="warn")
        server = subprocess.Popen([str(SERVER), "--port", str(port), "--workers", "4"],
                                  env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    call(port, "GET", "/api/health")
                    break
                except OSError:
                    time.sleep(0.1)
            agent = base64.b64encode(b"#!/bin/sh\nsleep 60\n").decode()
            jobs = [call(port, "POST", "/api/runs", {"script_inline": agent})["id"]
                    for _ in range(4)]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                states = [call(port, "GET", f"/api/runs/{j}")["status"] for j in jobs]
                if all(s == "running" for s in states):
                    break
                time.sleep(0.5)
            time.sleep(8)  # let the 4 VMs finish booting: they load the CPUs
            health = wrk(f"http://127.0.0.1:{port}/api/health", args.seconds)
            run = wrk(f"http://127.0.0.1:{port}/api/runs/{jobs[0]}", args.seconds)
            vms = sum(1 for j in jobs if call(port, "GET", f"/api/runs/{j}")["status"]
                      == "running")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=180)

    print(f"4 VMs running during the measurement: {vms == 4}")
    for name, (rate, lat, _) in (("GET /api/health", health), ("GET /api/runs/{id}", run)):
        print(f"{name}: {rate:.0f} requests/s; latency p50 {lat.get('50')}, "
              f"p90 {lat.get('90')}, p99 {lat.get('99')}")


if __name__ == "__main__":
    main()
