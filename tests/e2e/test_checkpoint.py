"""Checkpoints, memory checkpoints, export and import (.boxlite), end to end."""
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from conftest import CLI, HOME, run_cli


@pytest.fixture
def session(request):
    name = "k-" + request.node.name.replace("test_", "")[:24]
    name = "".join(c if c.isalnum() or c in "_-" else "-" for c in name)
    run_cli("session", "remove", "--name", name, "--force")
    yield name
    run_cli("session", "remove", "--name", name, "--force")


def run_in(session, agent, text, name="a.sh", home=None):
    r = run_cli("session", "run", "--name", session, agent(text, name=name), home=home)
    assert r.event["event"] == "execution_result", r
    return r.event


def checkpoints(session, home=None):
    r = run_cli("session", "list", "--name", session, home=home)
    assert r.event["event"] == "session_checkpoints", r
    return {c["name"]: c for c in r.event["checkpoints"]}


def test_rollback_of_files_in_a_stopped_session(session, agent):
    assert run_cli("session", "open", "--name", session).returncode == 0
    run_in(session, agent, "#!/bin/sh\necho 1 > /var/blink/memory/before\nsync\n")
    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "step-1")
    assert r.event["event"] == "session_checkpoint", r
    assert r.event["name"] == "step-1" and r.event["memory"] is False
    assert r.event["size_bytes"] > 0 and r.event["created_at"] > 0
    run_in(session, agent, "#!/bin/sh\necho 2 > /var/blink/memory/after\n"
           "rm /var/blink/memory/before\nsync\n")
    assert run_cli("session", "checkpoint", "--name", session,
                   "--snapshot", "step-2").returncode == 0

    r = run_cli("session", "restore", "--name", session, "--snapshot", "step-1")
    assert r.event["event"] == "session_restored", r
    out = run_in(session, agent, "#!/bin/sh\nls /var/blink/memory\n")["stdout"]
    assert out == "before\n"
    assert set(checkpoints(session)) == {"step-1", "step-2"}  # other snapshots remain

    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "step-2", "--delete")
    assert r.event["event"] == "checkpoint_deleted"
    assert set(checkpoints(session)) == {"step-1"}
    r = run_cli("session", "restore", "--name", session, "--snapshot", "step-2")
    assert r.event["code"] == "not_found"


def test_memory_checkpoint_resumes_a_counting_process(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    run_in(session, agent, "#!/bin/sh\n"
           "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 0.2; done' "
           ">/dev/null 2>&1 &\nsleep 2\n")
    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "live")
    assert r.event["memory"] is True, r
    at_checkpoint = int(run_in(session, agent, "#!/bin/sh\ncat /run/count\n")["stdout"])
    time.sleep(3)
    later = int(run_in(session, agent, "#!/bin/sh\ncat /run/count\n")["stdout"])
    assert later > at_checkpoint + 5

    assert run_cli("session", "restore", "--name", session,
                   "--snapshot", "live").returncode == 0
    out = run_in(session, agent, "#!/bin/sh\ncat /run/count; sleep 1; cat /run/count\n")
    first, second = map(int, out["stdout"].split())
    assert first < later          # back in time: the count is the checkpoint's
    assert second > first         # and the process keeps counting
    # The guest clock was corrected: it is close to the host's.
    guest_time = float(run_in(session, agent, "#!/bin/sh\ndate +%s\n")["stdout"])
    assert abs(guest_time - time.time()) < 30


def test_memory_checkpoint_restored_into_a_stopped_warm_session(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    run_in(session, agent, "#!/bin/sh\nnohup sleep 10000 >/dev/null 2>&1 &\necho $! > /run/pid\n")
    pid = run_in(session, agent, "#!/bin/sh\ncat /run/pid\n")["stdout"]
    assert run_cli("session", "checkpoint", "--name", session,
                   "--snapshot", "mem").event["memory"] is True
    assert run_cli("session", "stop", "--name", session).returncode == 0
    r = run_cli("session", "restore", "--name", session, "--snapshot", "mem")
    assert r.event["state"] == "running", r
    out = run_in(session, agent, "#!/bin/sh\nkill -0 $(cat /run/pid) && cat /run/pid\n")
    assert out["stdout"] == pid  # the same process, resumed


def test_disk_checkpoint_restored_into_a_warm_session_reboots(session, agent):
    opened = run_cli("session", "open", "--name", session, "--warm").event
    run_in(session, agent, "#!/bin/sh\necho kept > /var/blink/memory/f\n")
    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "disk",
                "--disk-only")
    assert r.event["memory"] is False, r
    run_in(session, agent, "#!/bin/sh\necho changed > /var/blink/memory/f\n")
    assert run_cli("session", "restore", "--name", session,
                   "--snapshot", "disk").returncode == 0
    info = run_cli("session", "info", "--name", session).event["session"]
    assert info["state"] == "running" and info["boot_id"] != opened["boot_id"]
    assert run_in(session, agent, "#!/bin/sh\ncat /var/blink/memory/f\n")["stdout"] == "kept\n"


def test_memory_checkpoint_of_a_stopped_session_is_refused(session):
    assert run_cli("session", "open", "--name", session).returncode == 0
    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "mem-1", "--memory")
    assert r.event["code"] == "invalid", r
    assert checkpoints(session) == {}


@pytest.mark.parametrize("args, code", [
    (["session", "checkpoint", "--name", "no-such", "--snapshot", "abc"], "not_found"),
    (["session", "checkpoint", "--name", "abc"], "usage"),
    (["session", "checkpoint", "--name", "abc", "--snapshot", "a/b"], "invalid"),
    (["session", "restore", "--name", "abc", "--snapshot", "x"], "invalid"),
    (["session", "checkpoint", "--name", "abc", "--snapshot", "abc", "--memory", "--delete"],
     "usage"),
    (["session", "import"], "usage"),
    (["session", "import", "/no/such/archive.boxlite"], "not_found"),
    (["session", "export"], "usage"),
    (["session", "export", "--name", "no-such"], "not_found"),
])
def test_checkpoint_and_transfer_bad_input(args, code):
    r = run_cli(*args)
    assert r.returncode != 0 and r.event["code"] == code, r


def test_duplicate_checkpoint_name(session):
    assert run_cli("session", "open", "--name", session).returncode == 0
    assert run_cli("session", "checkpoint", "--name", session, "--snapshot", "snap-1").returncode == 0
    r = run_cli("session", "checkpoint", "--name", session, "--snapshot", "snap-1")
    assert r.event["code"] == "exists"


def test_export_import_into_an_empty_home(session, agent, tmp_path):
    assert run_cli("session", "open", "--name", session).returncode == 0
    run_in(session, agent, "#!/bin/sh\necho travelled > /var/blink/memory/note\n")
    assert run_cli("session", "checkpoint", "--name", session, "--snapshot", "snap-1").returncode == 0
    run_in(session, agent, "#!/bin/sh\necho later > /var/blink/memory/later\n")
    out = tmp_path / "x.boxlite"
    r = run_cli("session", "export", "--name", session, "--output", out)
    assert r.event["event"] == "session_exported" and r.event["path"] == str(out), r
    assert r.event["size_bytes"] == out.stat().st_size

    # manifest.json leads the archive
    listing = subprocess.run(f"zstd -dc {out} | tar -t", shell=True, capture_output=True,
                             text=True, check=True).stdout.split()
    assert listing == ["manifest.json", "disk.qcow2", "image/disk.qcow2"]

    # A home with only a kernel: the image comes with the archive.
    home = tmp_path / "elsewhere"
    (home / "kernels").mkdir(parents=True)
    (home / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
    r = run_cli("session", "import", out, home=home, env={"BLINK_ACCEL": "tcg"})
    assert r.event["event"] == "session_imported" and r.event["name"] == session, r
    ls = run_in(session, agent, "#!/bin/sh\nls /var/blink/memory\n", home=home)
    assert ls["stdout"] == "later\nnote\n"
    assert set(checkpoints(session, home=home)) == {"snap-1"}
    assert run_cli("session", "restore", "--name", session, "--snapshot", "snap-1",
                   home=home).returncode == 0
    assert run_in(session, agent, "#!/bin/sh\nls /var/blink/memory\n",
                  home=home)["stdout"] == "note\n"

    # A second import of the same name clashes unless renamed.
    assert run_cli("session", "import", out, home=home).event["code"] == "exists"
    r = run_cli("session", "import", out, "--name", "copy-2", home=home)
    assert r.event["name"] == "copy-2"
    run_cli("session", "remove", "--name", session, home=home)


def test_warm_export_while_the_agent_writes(session, agent, tmp_path):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    writer = agent("#!/bin/sh\ni=0\nwhile [ $i -lt 3000 ]; do i=$((i+1)); "
                   "echo line-$i >> /var/blink/memory/log; done\nsync\n", name="writer.sh")
    env = dict(os.environ, BLINK_HOME=str(HOME))
    proc = subprocess.Popen([str(CLI), "session", "run", "--name", session, str(writer)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    time.sleep(2)
    out = tmp_path / "warm.boxlite"
    r = run_cli("session", "export", "--name", session, "--output", out)
    assert r.event["event"] == "session_exported", r
    assert json.loads(proc.communicate(timeout=300)[0])["exit_code"] == 0
    assert run_cli("session", "info", "--name", session).event["session"]["state"] == "running"

    r = run_cli("session", "import", out, "--name", "warm-copy")
    try:
        assert r.event["event"] == "session_imported", r
        lines = run_in("warm-copy", agent, "#!/bin/sh\ncat /var/blink/memory/log 2>/dev/null\n",
                       name="c.sh")["stdout"].splitlines()
        # Whatever made it in is whole: consecutive lines, none torn.
        assert lines == [f"line-{i}" for i in range(1, len(lines) + 1)]
    finally:
        run_cli("session", "remove", "--name", "warm-copy", "--force")


# ---- hostile archives: each is refused and nothing is imported ----

def zstd_tar(path, members):
    """members: list of (TarInfo, bytes or None)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    subprocess.run(["zstd", "-q", "-1", "-o", str(path)], input=raw.getvalue(), check=True)


def file_info(name, size, **kw):
    info = tarfile.TarInfo(name)
    info.size = size
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def manifest(members, version=1, name="hostile"):
    return json.dumps({"format": "blink-session", "format_version": version, "name": name,
                       "image": "debian-12", "resources": {"memory_mib": 512, "cpus": 1,
                                                          "warm": False},
                       "checkpoints": [], "members": members}).encode()


def sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


def hostile_cases(tmp_path):
    disk = b"QFI\xfb" + b"\0" * 600
    image = b"QFI\xfb" + b"\0" * 600
    good = [{"path": "disk.qcow2", "size": len(disk), "sha256": sha(disk)},
            {"path": "image/disk.qcow2", "size": len(image), "sha256": sha(image)}]
    m = manifest(good)

    def plain(name, data):
        return (file_info(name, len(data)), data)

    cases = {
        "traversal": [plain("manifest.json", m), plain("../../evil", disk),
                      plain("image/disk.qcow2", image)],
        "absolute": [plain("manifest.json", m), plain("/tmp/evil", disk)],
        "symlink": [plain("manifest.json", m),
                    (file_info("disk.qcow2", 0, type=tarfile.SYMTYPE, linkname="/etc/passwd"),
                     None)],
        "bad-checksum": [plain("manifest.json", m), plain("disk.qcow2", disk[:-1] + b"x"),
                         plain("image/disk.qcow2", image)],
        "manifest-not-first": [plain("disk.qcow2", disk), plain("manifest.json", m)],
        "unknown-version": [plain("manifest.json", manifest(good, version=99))],
        "huge-claim": [plain("manifest.json", manifest(
            [{"path": "disk.qcow2", "size": 1 << 50, "sha256": "0" * 64}, good[1]]))],
        "size-mismatch": [plain("manifest.json", manifest(
            [{"path": "disk.qcow2", "size": 10, "sha256": sha(disk)}, good[1]])),
            plain("disk.qcow2", disk)],
        "device": [plain("manifest.json", m),
                   (file_info("disk.qcow2", 0, type=tarfile.CHRTYPE, devmajor=1, devminor=3),
                    None)],
        "missing-member": [plain("manifest.json", m), plain("disk.qcow2", disk)],
    }
    paths = {}
    for name, members in cases.items():
        path = tmp_path / f"{name}.boxlite"
        zstd_tar(path, members)
        paths[name] = path
    # Truncated: a real-looking archive cut in the middle of a member.
    whole = tmp_path / "whole.boxlite"
    zstd_tar(whole, cases["bad-checksum"][:1] + [plain("disk.qcow2", os.urandom(1 << 20)),
                                                 plain("image/disk.qcow2", image)])
    data = whole.read_bytes()
    (tmp_path / "truncated.boxlite").write_bytes(data[: len(data) // 2])
    paths["truncated"] = tmp_path / "truncated.boxlite"
    (tmp_path / "garbage.boxlite").write_bytes(os.urandom(4096))
    paths["garbage"] = tmp_path / "garbage.boxlite"
    return paths


def test_hostile_archives_are_refused_and_leave_nothing(tmp_path):
    before_sessions = {s["name"] for s in run_cli("session", "ls").event["sessions"]}
    before_images = set(os.listdir(HOME / "images"))
    for name, path in hostile_cases(tmp_path).items():
        r = run_cli("session", "import", path, "--name", "hostile-" + name[:20])
        assert r.returncode == 125 and r.event["event"] == "error", (name, r)
        assert r.event["code"] in ("invalid", "not_found"), (name, r)
    assert {s["name"] for s in run_cli("session", "ls").event["sessions"]} == before_sessions
    assert set(os.listdir(HOME / "images")) == before_images
    assert not any(p.name.startswith("import-") for p in (HOME / "tmp").iterdir())
    assert not (tmp_path / "evil").exists() and not os.path.exists("/tmp/evil")


def test_kill_9_during_export_and_import_leaves_prior_state(session, agent, tmp_path):
    assert run_cli("session", "open", "--name", session).returncode == 0
    run_in(session, agent, "#!/bin/sh\nhead -c 64000000 /dev/urandom > /var/blink/memory/big\n"
           "echo ok > /var/blink/memory/mark\nsync\n")
    env = dict(os.environ, BLINK_HOME=str(HOME))
    out = tmp_path / "k.boxlite"

    proc = subprocess.Popen([str(CLI), "session", "export", "--name", session, "--output",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The session is untouched and a new export works (and clears the debris).
    assert run_in(session, agent, "#!/bin/sh\ncat /var/blink/memory/mark\n")["stdout"] == "ok\n"
    assert run_cli("session", "export", "--name", session, "--output", out).returncode == 0
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []

    proc = subprocess.Popen([str(CLI), "session", "import", str(out), "--name", "killed-import"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = run_cli("session", "info", "--name", "killed-import")
    if r.event.get("event") == "session_info":
        # The kill came after the commit point: the import is whole.
        run_cli("session", "remove", "--name", "killed-import")
    else:
        assert r.event["code"] == "not_found"
    r = run_cli("session", "import", out, "--name", "after-kill")
    assert r.event["event"] == "session_imported", r
    assert not any(p.name.startswith("import-") for p in (HOME / "tmp").iterdir())
    run_cli("session", "remove", "--name", "after-kill")


def test_kill_9_during_a_checkpoint(session, agent):
    assert run_cli("session", "open", "--name", session, "--warm").returncode == 0
    env = dict(os.environ, BLINK_HOME=str(HOME))
    proc = subprocess.Popen([str(CLI), "session", "checkpoint", "--name", session,
                             "--snapshot", "interrupted"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Either the checkpoint was taken whole, or not at all; the session works.
    assert set(checkpoints(session)) <= {"interrupted"}
    assert run_in(session, agent, "#!/bin/sh\necho alive\n")["stdout"] == "alive\n"
    assert run_cli("session", "checkpoint", "--name", session,
                   "--snapshot", "after").returncode == 0
