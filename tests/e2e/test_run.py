"""blink-cli run: agents in real VMs, end to end."""
import json
import os
import platform
import subprocess

import pytest

from conftest import HOME, qemu_pids, run_cli


def tmp_leftovers(home=HOME):
    return sorted(p.name for p in (home / "tmp").iterdir())


def test_python_agent_runs_in_the_guest_kernel(agent):
    path = agent("#!/usr/bin/env python3\n"
                 "import json, platform\n"
                 "print('hi from python')\n"
                 "print(json.dumps({'event': 'execution_result', 'kernel': platform.release(),"
                 " 'memory_keys': ['a', 'b']}))\n", name="agent.py")
    r = run_cli("run", path)
    assert r.returncode == 0, r
    ev = r.event
    assert ev["event"] == "execution_result"
    assert ev["exit_code"] == 0 and ev["timed_out"] is False
    assert ev["stdout"].startswith("hi from python\n")
    assert ev["memory_keys"] == ["a", "b"]
    assert ev["kernel"].endswith("cloud-amd64")
    assert ev["kernel"] != platform.release()
    assert isinstance(ev["duration_ms"], int)


def test_shell_agent_with_arguments_and_env(agent):
    path = agent('#!/bin/sh\n'
                 'printf "%s|" "$@"; echo\n'
                 'echo "GREETING=$GREETING EMPTY=[$EMPTY]"\n'
                 'echo "to stderr" >&2\n'
                 'pwd; id -u\n')
    r = run_cli("run", "--env", "GREETING=hello world", "--env", "EMPTY=", path,
                "--", "a b", "--flag", "")
    assert r.returncode == 0, r
    lines = r.event["stdout"].splitlines()
    assert lines[0] == "a b|--flag||"
    assert lines[1] == "GREETING=hello world EMPTY=[]"
    assert r.event["stderr"] == "to stderr\n"


def test_non_zero_exit_passes_through(agent):
    r = run_cli("run", agent("#!/bin/sh\necho failing >&2\nexit 7\n"))
    assert r.returncode == 7
    assert r.event["exit_code"] == 7 and r.event["signal"] is None
    assert r.event["stderr"] == "failing\n"


def test_agent_killed_by_signal(agent):
    r = run_cli("run", agent("#!/bin/sh\nkill -TERM $$\n"))
    assert r.returncode == 128 + 15, r
    assert r.event["signal"] == "SIGTERM" and r.event["exit_code"] == -1


def test_script_without_shebang_runs_under_sh(agent):
    # As execvp(3) and POSIX shells do: a text file the kernel cannot exec
    # (ENOEXEC) is run by /bin/sh.
    r = run_cli("run", agent("echo no-shebang-$((6 * 7))\n"))
    assert r.returncode == 0, r
    assert r.event["stdout"] == "no-shebang-42\n"


def test_missing_interpreter_is_127(agent):
    r = run_cli("run", agent("#!/usr/bin/does-not-exist\n"))
    assert r.returncode == 127, r


def test_large_output_on_both_streams(agent):
    # 100 MiB on each stream at once: no deadlock, bounded memory, truncation marked.
    path = agent("#!/usr/bin/env python3\n"
                 "import os, threading\n"
                 "block = b'x' * (1 << 20)\n"
                 "def pump(fd):\n"
                 "    for _ in range(100):\n"
                 "        view = memoryview(block)\n"
                 "        while view:\n"
                 "            view = view[os.write(fd, view):]\n"
                 "threads = [threading.Thread(target=pump, args=(fd,)) for fd in (1, 2)]\n"
                 "[t.start() for t in threads]\n"
                 "[t.join() for t in threads]\n", name="big.py")
    r = run_cli("run", "--output-cap", str(1 << 20), path, timeout=900)
    assert r.returncode == 0, r.stderr
    ev = r.event
    assert ev["stdout_bytes"] == 100 << 20 and ev["stderr_bytes"] == 100 << 20
    assert ev["stdout_truncated"] and ev["stderr_truncated"]
    assert len(ev["stdout"]) == 1 << 20 and set(ev["stdout"]) == {"x"}


def test_timeout_kills_the_vm(agent):
    before = qemu_pids()
    r = run_cli("run", "--timeout", "3", agent("#!/bin/sh\necho started\nsleep 1000\n"))
    assert r.returncode == 124, r
    assert r.event["timed_out"] is True
    assert r.event["stdout"] == "started\n"
    assert qemu_pids() <= before


def test_memory_hog_is_killed_not_the_host(agent):
    path = agent("#!/usr/bin/env python3\n"
                 "chunks = []\n"
                 "while True:\n"
                 "    chunks.append(bytearray(16 << 20))\n", name="hog.py")
    r = run_cli("run", "--memory", "256", "--timeout", "120", path)
    assert r.event["event"] == "execution_result", r
    assert r.event["signal"] == "SIGKILL" and r.event["oom_killed"] is True
    assert r.returncode == 128 + 9


def test_fork_bomb_is_contained(agent):
    # The classic bomb: the guest's process and memory limits hold it inside
    # the VM; the run ends at its timeout and the VM is gone afterwards.
    before = qemu_pids()
    r = run_cli("run", "--timeout", "15", agent("#!/bin/bash\nbomb() { bomb | bomb & }\nbomb\n"
                                                "sleep 1000\n"))
    assert r.event["event"] == "execution_result", r
    assert r.event["timed_out"] is True and r.returncode == 124
    assert qemu_pids() <= before
    # The host is fine: the next run works.
    assert run_cli("run", agent("#!/bin/sh\necho fine\n", name="after")).event["stdout"] == "fine\n"


def test_guest_kernel_panic_is_reported(agent):
    before = qemu_pids()
    r = run_cli("run", agent("#!/bin/sh\necho c > /proc/sysrq-trigger\nsleep 100\n"))
    assert r.returncode == 125, r
    assert r.event["event"] == "error"
    assert "panic" in r.event["error"]
    assert qemu_pids() <= before


def test_stream_copies_output_live_to_stderr(agent):
    r = run_cli("run", "--stream", agent("#!/bin/sh\necho streamed-line\n"))
    assert r.returncode == 0
    assert "streamed-line" in r.stderr
    assert r.event["stdout"] == "streamed-line\n"


@pytest.mark.parametrize("args, fragment", [
    (["run"], "missing the agent PATH"),
    (["run", "--timeout", "zero", "x"], "--timeout"),
    (["run", "--memory", "12", "x"], "--memory"),
    (["run", "--cpus", "0", "x"], "--cpus"),
    (["run", "--env", "NOEQUALS", "x"], "--env"),
    (["run", "--bogus", "x"], "unknown"),
    (["frobnicate"], "unknown command"),
])
def test_usage_errors(args, fragment):
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.event["event"] == "error" and fragment in r.event["error"]


def test_missing_agent(tmp_path):
    r = run_cli("run", tmp_path / "nope.py")
    assert r.returncode == 125 and r.event["code"] == "not_found"
    assert "nope.py" in r.event["error"]


def test_directory_agent(tmp_path):
    r = run_cli("run", tmp_path)
    assert r.returncode == 125 and "directory" in r.event["error"]


def test_unreadable_agent(agent):
    path = agent("#!/bin/sh\necho hi\n", mode=0)
    if os.geteuid() == 0:
        # root reads any file; a FIFO stands in as the unreadable kind here.
        path.unlink()
        os.mkfifo(path)
        r = run_cli("run", path)
        assert r.returncode == 125 and "not a regular file" in r.event["error"]
    else:
        r = run_cli("run", path)
        assert r.returncode == 125 and r.event["code"] == "permission"


def test_unknown_image_and_bad_image_name(agent):
    path = agent("#!/bin/sh\ntrue\n")
    r = run_cli("run", "--image", "no-such-image", path)
    assert r.returncode == 125 and r.event["code"] == "not_found"
    r = run_cli("run", "--image", "../../etc", path)
    assert r.returncode == 125 and r.event["code"] == "invalid"


def test_qemu_not_installed(agent, tmp_path):
    empty = tmp_path / "emptybin"
    empty.mkdir()
    r = run_cli("run", agent("#!/bin/sh\ntrue\n"), env={"PATH": str(empty)})
    assert r.returncode == 125 and r.event["code"] == "missing_dependency"
    assert "qemu-system-x86" in r.event["error"]


def test_blink_home_not_writable(agent, tmp_path):
    path = agent("#!/bin/sh\ntrue\n")
    r = run_cli("run", path, home="/proc/version/blink")
    assert r.returncode == 125 and "blink home" in r.event["error"]
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        r = run_cli("run", path, home=ro / "home")
        assert r.returncode == 125 and r.event["code"] == "permission"


def test_not_set_up_home(agent, tmp_path):
    r = run_cli("run", agent("#!/bin/sh\ntrue\n"), home=tmp_path / "empty")
    assert r.returncode == 125 and r.event["code"] == "not_setup"
    assert "setup.sh" in r.event["error"]


def test_guest_that_never_gets_ready_hits_the_boot_bound(agent, tmp_path, fresh_home):
    # An initramfs whose /init sleeps forever: the VM boots but never says Ready.
    src = tmp_path / "sleeper.c"
    src.write_text("#include <unistd.h>\nint main(void){for(;;)pause();}\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    subprocess.run(["gcc", "-static", "-O2", "-o", str(tree / "init"), str(src)], check=True)
    kdir = fresh_home / "kernels" / "sleeper"
    kdir.mkdir()
    (kdir / "vmlinuz").symlink_to((HOME / "kernels/current/vmlinuz").resolve())
    with open(kdir / "initramfs.cpio", "wb") as out:
        subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=b"init\n", cwd=tree,
                       stdout=out, check=True)
    (fresh_home / "kernels/current").unlink()
    (fresh_home / "kernels/current").symlink_to("sleeper")
    before = qemu_pids()
    r = run_cli("run", "--boot-timeout", "8", agent("#!/bin/sh\ntrue\n"), home=fresh_home,
                env={"BLINK_ACCEL": "tcg"})
    assert r.returncode == 125, r
    assert r.event["code"] == "timeout" and "ready" in r.event["error"]
    assert qemu_pids() <= before
    assert tmp_leftovers(fresh_home) == []


def test_accel_auto_settles_and_caches(agent, fresh_home):
    cache = fresh_home / "cache"
    if cache.exists():
        for p in cache.iterdir():
            p.unlink()
    path = agent("#!/bin/sh\ntrue\n")
    r = run_cli("run", path, home=fresh_home, env={"BLINK_ACCEL": "auto"})
    assert r.returncode == 0, r
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        verdict = (fresh_home / "cache/accel").read_text().split("\n")[1]
        assert verdict in ("kvm", "tcg")
    r = run_cli("run", path, home=fresh_home, env={"BLINK_ACCEL": "bogus"})
    assert r.returncode == 125 and "BLINK_ACCEL" in r.event["error"]


def test_nul_bytes_in_output_are_kept(agent):
    r = run_cli("run", agent('#!/bin/sh\nprintf "a\\000b\\n"\nexit 3\n'))
    assert r.returncode == 3, r
    assert r.event["stdout"] == "a\x00b\n"


def test_commas_in_blink_home(agent, tmp_path):
    home = tmp_path / "with,comma,file.driver=null-co"
    (home / "kernels").mkdir(parents=True)
    (home / "images").mkdir()
    (home / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
    (home / "images/debian-12").symlink_to((HOME / "images/debian-12").resolve())
    r = run_cli("run", agent("#!/bin/sh\necho fine > /tmp/x && cat /tmp/x\n"), home=home,
                env={"BLINK_ACCEL": "tcg"})
    assert r.returncode == 0 and r.event["stdout"] == "fine\n", r


def test_oversized_environment_entry_is_refused_before_boot(agent):
    before = qemu_pids()
    r = run_cli("run", "--env", "BIG=" + "x" * 70000, agent("#!/bin/sh\ntrue\n"))
    assert r.returncode == 125 and r.event["code"] == "invalid", r
    assert "longer than" in r.event["error"]
    assert qemu_pids() <= before


def test_nothing_left_behind():
    """Runs last in this module: no QEMU of ours and no temp files remain."""
    assert qemu_pids() == set()
    assert tmp_leftovers() == []
