#!/usr/bin/env python3
"""Cold `blink-cli run` of a trivial shell agent beside the engine's floor.

The floor is bare QEMU booting the same kernel and initramfs, with the same
machine options, to /init (blink-guest in probe mode), which powers off at
once. Both are measured alternately in one run, so the ratio holds even though
absolute TCG timings vary from machine to machine.

usage: /usr/bin/python3 bench/cold_run.py [--runs N] [--accel tcg|kvm]
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CLI = REPO / "build/src/cli/blink-cli"
HOME = pathlib.Path(os.environ.get("BLINK_HOME") or
                    pathlib.Path(os.environ.get("XDG_DATA_HOME") or
                                 os.path.expanduser("~/.local/share")) / "blink")


def floor_command(accel):
    kvm = accel == "kvm"
    cmdline = "console=ttyS0 quiet panic=-1 8250.nr_uarts=1"
    if not kvm:
        cmdline += " tsc_early_khz=2000000 tsc=reliable"
    return ["qemu-system-x86_64", "-M", "microvm,isa-serial=on,rtc=on,x-option-roms=off",
            "-accel", accel, "-cpu", "host" if kvm else "max", "-m", "512", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(HOME / "kernels/current/vmlinuz"),
            "-initrd", str(HOME / "kernels/current/initramfs.cpio"),
            "-append", cmdline + " blink.mode=probe",
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-device", "virtio-rng-device"]


def timed(cmd, env=None):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - start
    return elapsed, proc


def summary(values):
    return min(values), statistics.median(values), max(values)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--accel", default="tcg")
    args = parser.parse_args()

    env = dict(os.environ, BLINK_HOME=str(HOME), BLINK_ACCEL=args.accel)
    with tempfile.TemporaryDirectory() as tmp:
        agent = pathlib.Path(tmp) / "trivial.sh"
        agent.write_text("#!/bin/sh\necho ok\n")
        agent.chmod(0o755)

        # One warm-up of each so that page cache state is the same for both.
        timed([str(CLI), "run", str(agent)], env)
        timed(floor_command(args.accel))

        blink_times, floor_times = [], []
        for _ in range(args.runs):
            t, proc = timed([str(CLI), "run", str(agent)], env)
            result = json.loads(proc.stdout)
            assert result.get("stdout") == "ok\n", proc.stdout + proc.stderr
            blink_times.append(t)
            t, proc = timed(floor_command(args.accel))
            assert "probe ok" in proc.stdout, proc.stdout + proc.stderr
            floor_times.append(t)

    b, f = summary(blink_times), summary(floor_times)
    print(f"accel {args.accel}, {args.runs} runs each, seconds (min / median / max)")
    print(f"blink-cli run (trivial shell agent): {b[0]:.3f} / {b[1]:.3f} / {b[2]:.3f}")
    print(f"engine floor (qemu to /init, off):   {f[0]:.3f} / {f[1]:.3f} / {f[2]:.3f}")
    print(f"ratio of medians: {b[1] / f[1]:.2f}")


if __name__ == "__main__":
    main()
