"""blink-cli session: persistent disks, warm VMs, concurrency, crash recovery."""
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import CLI, HOME, live_pids, our_pids, qemu_pids, run_cli


def shim_pids():
    """Live shims of this test run's homes."""
    return our_pids("blink-shim", b"--home")


def active_executions(name):
    db = sqlite3.connect(f"file:{HOME / 'blink.db'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM executions WHERE session = ? AND "
                          "finished_at IS NULL", (name,)).fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def session(request):
    """A session name unique to the test, removed afterwards."""
    name = "t-" + request.node.name.replace("test_", "")[:24].replace("[", "-").rstrip("]")
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in name)
    run_cli("session", "remove", "--name", name, "--force")
    yield name
    run_cli("session", "remove", "--name", name, "--force")


def info(name):
    r = run_cli("session", "info", "--name", name)
    assert r.returncode == 0, r
    return r.event["session"]


def test_cold_session_keeps_data_across_stop(session, agent):
    r = run_cli("session", "open", "--name", session)
    assert r.returncode == 0 and r.event["event"] == "session_opened", r
    assert r.event["created"] is True and r.event["state"] == "stopped"

    write = agent("#!/bin/sh\necho remembered > /var/blink/memory/note\nsync\n", name="w.sh")
    r = run_cli("session", "run", "--name", session, write)
    assert r.returncode == 0 and r.event["session"] == session, r
    assert info(session)["state"] == "stopped"  # a cold session's VM ends with the run

    assert run_cli("session", "stop", "--name", session).event["event"] == "session_stopped"
    read = agent("#!/bin/sh\ncat /var/blink/memory/note\n", name="r.sh")
    r = run_cli("session", "run", "--name", session, read)
    assert r.event["stdout"] == "remembered\n", r

    # Opening again reports created:false and changes nothing.
    r = run_cli("session", "open", "--name", session, "--warm")
    assert r.event["created"] is False and r.event["warm"] is False
    assert info(session)["state"] == "stopped"


def test_warm_session_reuses_the_vm(session, agent):
    r = run_cli("session", "open", "--name", session, "--warm")
    assert r.returncode == 0 and r.event["state"] == "running", r
    boot_id = r.event["boot_id"]
    assert boot_id

    probe = agent("#!/bin/sh\ncat /proc/sys/kernel/random/boot_id\n")
    for _ in range(2):
        r = run_cli("session", "run", "--name", session, probe)
        assert r.event["stdout"].strip() == boot_id, r

    # Earlier runs' agent files are gone from the guest's /run: only ours is.
    r = run_cli("session", "run", "--name", session,
                agent("#!/bin/sh\nls /run/blink/agents | wc -l\n", name="count.sh"))
    assert r.event["stdout"].strip() == "1", r

    listed = run_cli("session", "ls").event
    assert listed["event"] == "session_list"
    assert any(s["name"] == session and s["state"] == "running" for s in listed["sessions"])

    shim = info(session)["shim_pid"]
    assert run_cli("session", "stop", "--name", session).returncode == 0
    st = info(session)
    assert st["state"] == "stopped" and st["last_end"] == "clean stop"
    assert shim not in shim_pids()


def test_concurrent_runs_in_a_warm_session(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    results = {}

    def one(i):
        path = agent("#!/usr/bin/env python3\n"
                     "import os, sys\n"
                     f"block = b'{chr(ord('a') + i)}' * (1 << 20)\n"
                     "for _ in range(10):\n"
                     "    os.write(1, block)\n"
                     f"sys.exit({10 + i})\n", name=f"c{i}.py")
        results[i] = run_cli("session", "run", "--name", session, path)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(4):
        ev = results[i].event
        assert ev["exit_code"] == 10 + i, results[i]
        assert ev["stdout_bytes"] == 10 << 20
        assert set(ev["stdout"]) == {chr(ord("a") + i)}


@pytest.mark.parametrize("victim", ["shim", "qemu"])
def test_kill_9_then_recover(session, agent, victim):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    write = agent("#!/bin/sh\necho kept > /var/blink/memory/k\nsync\n", name="w.sh")
    assert run_cli("session", "run", "--name", session, write).returncode == 0

    st = info(session)
    os.kill(st["shim_pid"] if victim == "shim" else st["qemu_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while st["shim_pid"] in shim_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert info(session)["state"] == "crashed"

    r = run_cli("session", "run", "--name", session,
                agent("#!/bin/sh\ncat /var/blink/memory/k\n", name="r.sh"))
    assert r.event["stdout"] == "kept\n", r
    assert info(session)["state"] == "running"


def test_racing_warm_opens_start_one_vm(session):
    before = qemu_pids()
    env = dict(os.environ, BLINK_HOME=str(HOME))
    procs = [subprocess.Popen([str(CLI), "session", "open", "--name", session, "--warm"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env) for _ in range(2)]
    events = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert sorted(e["created"] for e in events) == [False, True]
    assert len(qemu_pids() - before) == 1


def test_remove_refuses_while_running_unless_forced(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    slow = agent("#!/bin/sh\nsleep 60\n")
    runner = subprocess.Popen([str(CLI), "session", "run", "--name", session, str(slow)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, BLINK_HOME=str(HOME)))
    try:
        deadline = time.monotonic() + 60
        while not active_executions(session) and time.monotonic() < deadline:
            time.sleep(0.1)
        r = run_cli("session", "remove", "--name", session)
        assert r.event["code"] == "busy", r
        r = run_cli("session", "remove", "--name", session, "--force")
        assert r.event["event"] == "session_removed"
    finally:
        runner.wait(timeout=60)
    assert run_cli("session", "info", "--name", session).event["code"] == "not_found"
    assert not (HOME / "sessions" / session).exists()


def test_full_guest_disk_is_a_clear_agent_error(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    fill = agent("#!/usr/bin/env python3\n"
                 "import os\n"
                 "st = os.statvfs('/var')\n"
                 "fd = os.open('/var/filler', os.O_CREAT | os.O_WRONLY)\n"
                 "try:\n"
                 "    os.posix_fallocate(fd, 0, st.f_bfree * st.f_frsize - (4 << 20))\n"
                 "except OSError:\n"
                 "    pass\n"
                 "try:\n"
                 "    with open('/var/more', 'wb') as f:\n"
                 "        for _ in range(64):\n"
                 "            f.write(b'x' * (1 << 20))\n"
                 "        f.flush(); os.fsync(f.fileno())\n"
                 "except OSError as e:\n"
                 "    print('write failed:', e.strerror)\n", name="fill.py")
    r = run_cli("session", "run", "--name", session, fill)
    assert "No space left on device" in r.event["stdout"], r
    clean = agent("#!/bin/sh\nrm -f /var/filler /var/more && echo usable > /tmp/x && cat /tmp/x\n",
                  name="clean.sh")
    assert run_cli("session", "run", "--name", session, clean).event["stdout"] == "usable\n"


@pytest.mark.parametrize("args, code", [
    (["session", "open", "--name", "ab"], "invalid"),
    (["session", "open", "--name", "x" * 33], "invalid"),
    (["session", "open", "--name", "bad/name"], "invalid"),
    (["session", "open", "--name", "ok-name", "--image", "no-such-image"], "not_found"),
    (["session", "run", "--name", "no-such-session", "/bin/sh"], "not_found"),
    (["session", "stop", "--name", "no-such-session"], "not_found"),
    (["session", "info", "--name", "no-such-session"], "not_found"),
    (["session", "remove", "--name", "no-such-session"], "not_found"),
    (["session", "open"], "usage"),
    (["session", "run", "--name", "abc", "--image", "x", "/bin/sh"], "invalid"),
    (["session", "stop", "--name", "abc", "--warm"], "usage"),
    (["session", "frob"], "usage"),
])
def test_session_bad_input(args, code):
    r = run_cli(*args)
    assert r.returncode != 0 and r.event["event"] == "error", r
    assert r.event["code"] == code, r
    assert not (HOME / "sessions" / "ok-name").exists()


def test_spawn_pipes_stdin_and_exit_code(session):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    env = dict(os.environ, BLINK_HOME=str(HOME))
    proc = subprocess.run([str(CLI), "session", "spawn", "--name", session, "--env", "X=1",
                           "--", "sh", "-c", "tr a-z A-Z; echo x=$X; exit 4"],
                          input="hello\n", capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["HELLO", "x=1"], proc
    event = json.loads(lines[-1])
    assert event["event"] == "exec_finished" and event["exit_code"] == 4
    assert proc.returncode == 4


def test_spawn_with_a_pty_sees_resize_and_ctrl_c(session):
    import pty
    import fcntl
    import struct
    import termios

    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.environ["BLINK_HOME"] = str(HOME)
        os.execv(str(CLI), [str(CLI), "session", "spawn", "--name", session, "--tty", "--",
                            "sh", "-c", "tty; stty size; trap 'stty size' WINCH; echo ready; "
                            "while :; do sleep 0.1; done"])
    output = b""

    def read_until(token, seconds=60):
        nonlocal output
        deadline = time.monotonic() + seconds
        while token not in output and time.monotonic() < deadline:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        return token in output

    assert read_until(b"ready"), output
    assert b"/dev/pts/" in output and b"30 100" in output
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    assert read_until(b"50 120"), output
    os.write(master, b"\x03")  # Ctrl-C through the raw terminal
    assert read_until(b"exec_finished"), output
    _, status = os.waitpid(pid, 0)
    os.close(master)
    last = output.decode(errors="replace").strip().splitlines()[-1]
    event = json.loads(last[last.index("{"):])
    assert event["signal"] == "SIGINT" or event["exit_code"] == 130, event


def test_session_run_timeout_is_enforced_by_the_shim(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    r = run_cli("session", "run", "--name", session, "--timeout", "2",
                agent("#!/bin/sh\necho begun\nsleep 100\n"))
    assert r.returncode == 124 and r.event["timed_out"] is True, r
    assert r.event["stdout"] == "begun\n"
    # The VM is still fine afterwards.
    assert run_cli("session", "run", "--name", session,
                   agent("#!/bin/sh\necho still\n", name="b.sh")).event["stdout"] == "still\n"


def test_looking_during_a_warm_open_breaks_nothing(session, agent):
    env = dict(os.environ, BLINK_HOME=str(HOME))
    opener = subprocess.Popen([str(CLI), "session", "open", "--name", session, "--warm"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    states = set()
    while opener.poll() is None:
        r = run_cli("session", "ls")
        states |= {s["state"] for s in r.event["sessions"] if s["name"] == session}
        time.sleep(0.2)
    assert json.loads(opener.stdout.read())["state"] == "running"
    assert "crashed" not in states
    r = run_cli("session", "run", "--name", session, agent("#!/bin/sh\necho up\n"))
    assert r.event["stdout"] == "up\n", r


def test_stop_never_signals_a_stranger(session):
    assert run_cli("session", "open", "--name", session).returncode == 0
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        db = sqlite3.connect(HOME / "blink.db")
        db.execute("UPDATE sessions SET state = 'running', shim_pid = ? WHERE name = ?",
                   (stranger.pid, session))
        db.commit()
        db.close()
        assert info(session)["state"] == "crashed"  # not our shim: the VM is gone
        assert run_cli("session", "stop", "--name", session).returncode == 0
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_cold_session_stops_when_its_client_is_killed(session, agent):
    assert run_cli("session", "open", "--name", session).returncode == 0
    env = dict(os.environ, BLINK_HOME=str(HOME))
    runner = subprocess.Popen([str(CLI), "session", "run", "--name", session,
                               str(agent("#!/bin/sh\nsleep 600\n"))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while not active_executions(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    deadline = time.monotonic() + 60
    while info(session)["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info(session)["state"] == "stopped"
    assert shim_pids() == set() or all(
        session not in open(f"/proc/{p}/cmdline").read() for p in shim_pids())


def test_disk_size_grows_the_guest_root(session, agent):
    r = run_cli("session", "open", "--name", session, "--disk-size", "8")
    assert r.returncode == 0 and r.event["disk_size_gib"] == 8, r
    r = run_cli("session", "run", "--name", session,
                agent("#!/bin/sh\ndf -k / | awk 'NR==2 {print $2}'\n"))
    assert int(r.event["stdout"]) > 7 * 1024 * 1024, r
    r = run_cli("session", "open", "--name", session + "-x", "--disk-size", "2")
    assert r.event["code"] == "invalid" and "smaller" in r.event["error"], r
    assert run_cli("session", "info", "--name", session + "-x").event["code"] == "not_found"


def test_open_killed_while_booting_leaves_a_session_the_next_command_uses(fresh_home, agent):
    home = fresh_home
    env = dict(os.environ, BLINK_HOME=str(home), BLINK_ACCEL="auto")
    opener = subprocess.Popen([str(CLI), "session", "open", "--name", "orphan-1", "--warm"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Until the shim has put its pid in the row and is booting.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and opener.poll() is None:
            info = run_cli("session", "info", "--name", "orphan-1", home=home).event
            if info.get("session", {}).get("state") == "starting" and \
                    info["session"]["shim_pid"] > 0:
                break
            time.sleep(0.05)
        assert opener.poll() is None, "the open ended before its shim was seen booting"
        opener.send_signal(signal.SIGKILL)
        opener.wait()

        # The booting shim is not taken for a crash, and the next command
        # waits for it rather than starting a second VM on the same disk.
        state = run_cli("session", "info", "--name", "orphan-1", home=home).event["session"]
        assert state["state"] in ("starting", "running"), state
        r = run_cli("session", "run", "--name", "orphan-1",
                    agent("#!/bin/sh\necho adopted\n"), home=home)
        assert r.event["stdout"] == "adopted\n", r
        assert len(live_pids(f"blink-shim --home {home} --name orphan-1 ")) == 1
    finally:
        assert run_cli("session", "remove", "--name", "orphan-1", "--force",
                       home=home).returncode == 0
    assert live_pids(f"blink-shim --home {home} --name orphan-1 ") == set()


def test_no_shim_or_qemu_left():
    """Runs last in this module."""
    assert shim_pids() == set()
    assert qemu_pids() == set()

