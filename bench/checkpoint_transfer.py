#!/usr/bin/env python3
"""Checkpoints and .boxlite transfer of a session with 256 MiB written.

Measured in one run, so the ratios hold on any machine:
  - export + import beside `tar | zstd -1` and back of the same files
    (the session disk and the image's base disk); target <= 1.5x
  - disk checkpoint and restore latency of the stopped session
  - fork of that session beside a copy of its disk file (`cp`)
  - memory-checkpoint resume of a stopped warm session beside a cold boot of
    the same session (both: `session restore` until the VM runs); target <= 10%

usage: /usr/bin/python3 bench/checkpoint_transfer.py [--runs N]
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = REPO / "build/src/cli/blink-cli"
HOME = pathlib.Path(os.environ.get("BLINK_HOME") or
                    pathlib.Path(os.environ.get("XDG_DATA_HOME") or
                                 os.path.expanduser("~/.local/share")) / "blink")
ENV = dict(os.environ, BLINK_HOME=str(HOME))


def cli(*args, home=None):
    env = dict(ENV, BLINK_HOME=str(home)) if home else ENV
    start = time.monotonic()
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, env=env)
    elapsed = time.monotonic() - start
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    if event.get("event") == "error":
        raise SystemExit(f"{args}: {event}")
    return elapsed, event


def timed_shell(command):
    start = time.monotonic()
    subprocess.run(command, shell=True, check=True)
    return time.monotonic() - start


def med(values):
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    name = "bench-transfer"
    subprocess.run([str(CLI), "session", "remove", "--name", name, "--force"],
                   capture_output=True, env=ENV)

    with tempfile.TemporaryDirectory(dir=HOME / "tmp") as tmp:
        tmp = pathlib.Path(tmp)
        agent = tmp / "fill.sh"
        agent.write_text("#!/bin/sh\nhead -c 268435456 /dev/urandom > /var/blink/memory/data\n"
                         "sync\n")
        agent.chmod(0o755)
        trivial = tmp / "trivial.sh"
        trivial.write_text("#!/bin/sh\ntrue\n")
        trivial.chmod(0o755)
        cli("session", "open", "--name", name)
        cli("session", "run", "--name", name, agent)

        disk = HOME / "sessions" / name / "disk.qcow2"
        image = HOME / "images/debian-12/disk.qcow2"
        written = disk.stat().st_blocks * 512

        exp, imp, tar, untar = [], [], [], []
        for i in range(args.runs):
            out = tmp / f"x{i}.boxlite"
            t, _ = cli("session", "export", "--name", name, "--output", out)
            exp.append(t)
            home = tmp / f"home{i}"
            (home / "kernels").mkdir(parents=True)
            (home / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
            t, _ = cli("session", "import", out, home=home)
            imp.append(t)
            ref = tmp / f"ref{i}.tar.zst"
            tar.append(timed_shell(f"tar -C / -cf - {str(disk)[1:]} {str(image)[1:]} "
                                   f"| zstd -q -1 -o {ref}"))
            dest = tmp / f"untar{i}"
            dest.mkdir()
            untar.append(timed_shell(f"zstd -q -dc {ref} | tar -C {dest} -xf -"))
            archive_size = out.stat().st_size
            ref_size = ref.stat().st_size
            shutil.rmtree(home)
            shutil.rmtree(dest)
            out.unlink()
            ref.unlink()

        cps, rss = [], []
        for i in range(args.runs):
            t, _ = cli("session", "checkpoint", "--name", name, "--snapshot", f"cp-{i}")
            cps.append(t)
            t, _ = cli("session", "restore", "--name", name, "--snapshot", f"cp-{i}")
            rss.append(t)

        # Fork of the same session beside a plain copy of its disk file.
        # (All copies first: the first fork leaves the session's disk an
        # empty overlay over the layer that now holds the data.)
        forks, copies, fork_bytes = [], [], 0
        for i in range(args.runs):
            copies.append(timed_shell(f"cp --sparse=always {disk} {tmp}/copy.qcow2"))
            (tmp / "copy.qcow2").unlink()
        for i in range(args.runs):
            t, _ = cli("session", "fork", "--name", name, "--to", f"bench-fork-{i}")
            forks.append(t)
            fork_disk = HOME / "sessions" / f"bench-fork-{i}" / "disk.qcow2"
            fork_bytes = fork_disk.stat().st_blocks * 512
        for i in range(args.runs):
            cli("session", "remove", "--name", f"bench-fork-{i}", "--force")

        # Warm: a memory checkpoint and a disk checkpoint of the same state.
        cli("session", "remove", "--name", name, "--force")
        cli("session", "open", "--name", name, "--warm")
        cli("session", "checkpoint", "--name", name, "--snapshot", "mem", "--memory")
        cli("session", "checkpoint", "--name", name, "--snapshot", "disk", "--disk-only")
        resume, cold = [], []
        for _ in range(args.runs):
            cli("session", "stop", "--name", name)
            resume.append(cli("session", "restore", "--name", name, "--snapshot", "mem")[0])
            cli("session", "stop", "--name", name)
            cold.append(cli("session", "restore", "--name", name, "--snapshot", "disk")[0])
        cli("session", "remove", "--name", name, "--force")

    print(f"session data written: {written / 2**20:.0f} MiB on the disk; "
          f"{args.runs} runs, medians in seconds")
    print(f"export {med(exp):.2f} + import {med(imp):.2f} = {med(exp) + med(imp):.2f}; "
          f"tar|zstd -1 {med(tar):.2f} + back {med(untar):.2f} = {med(tar) + med(untar):.2f}; "
          f"ratio {(med(exp) + med(imp)) / (med(tar) + med(untar)):.2f}")
    print(f"archive {archive_size / 2**20:.0f} MiB; tar|zstd -1 {ref_size / 2**20:.0f} MiB")
    print(f"disk checkpoint (stopped) {med(cps):.3f}; restore {med(rss):.3f}")
    print(f"fork {med(forks):.3f} (fork's disk {fork_bytes / 2**10:.0f} KiB); "
          f"cp of the disk file {med(copies):.3f}; ratio {med(forks) / med(copies):.2f}")
    print(f"warm resume from memory checkpoint {med(resume):.3f}; cold boot {med(cold):.3f}; "
          f"ratio {med(resume) / med(cold):.2f}")


if __name__ == "__main__":
    main()
