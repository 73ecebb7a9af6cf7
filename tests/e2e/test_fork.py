"""session fork: copy-on-write copies of a session, end to end on real VMs.
Each test has a BLINK_HOME of its own, so that it sees every layer there."""
import json
import os
import subprocess

import pytest

from conftest import CLI, run_cli
from test_checkpoint import file_info, sha, zstd_tar

ALLOCATED_SLACK = 4 << 20  # an empty overlay and its metadata, far below the data


@pytest.fixture
def home(fresh_home):
    """fresh_home, whose sessions are removed (VMs stopped) even when a test fails."""
    yield fresh_home
    r = run_cli("session", "ls", home=fresh_home)
    for session in r.event.get("sessions", []):
        run_cli("session", "remove", "--name", session["name"], "--force", home=fresh_home)


def run_in(home, session, agent, text):
    r = run_cli("session", "run", "--name", session, agent(text, name="f.sh"), home=home)
    assert r.event["event"] == "execution_result" and r.event["exit_code"] == 0, r
    return r.event["stdout"]


def allocated(path):
    return path.stat().st_blocks * 512


def checkpoint_names(home, session):
    r = run_cli("session", "list", "--name", session, home=home)
    assert r.event["event"] == "session_checkpoints", r
    return {c["name"] for c in r.event["checkpoints"]}


def layers(home):
    folder = home / "layers"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_fork_is_copy_on_write_and_independent(home, agent, tmp_path):
    assert run_cli("session", "open", "--name", "origin", home=home).returncode == 0
    digest = run_in(home, "origin", agent,
                    "#!/bin/sh\nhead -c 30000000 /dev/urandom > /var/blink/memory/data\n"
                    "sync\nsha256sum < /var/blink/memory/data\n")
    assert run_cli("session", "checkpoint", "--name", "origin", "--snapshot", "before",
                   home=home).returncode == 0

    r = run_cli("session", "fork", "--name", "origin", "--to", "copy", home=home)
    assert r.event == {"event": "session_forked", "name": "copy", "source": "origin",
                       "snapshot": None, "image": "debian-12", "state": "stopped"}, r

    # No data was copied: both disks are empty overlays on one shared layer
    # that holds the 30 MB.
    (layer,) = layers(home)
    assert allocated(layer) > 30_000_000
    for name in ("origin", "copy"):
        assert allocated(home / "sessions" / name / "disk.qcow2") < ALLOCATED_SLACK

    # Both see the data; each writes without the other seeing it.
    check = "#!/bin/sh\nsha256sum < /var/blink/memory/data\nls /var/blink/memory\n"
    assert run_in(home, "copy", agent, check) == digest + "data\n"
    run_in(home, "copy", agent, "#!/bin/sh\necho c > /var/blink/memory/copy-only\n")
    run_in(home, "origin", agent, "#!/bin/sh\necho o > /var/blink/memory/origin-only\n"
           "rm /var/blink/memory/data\n")
    assert run_in(home, "copy", agent, check) == digest + "copy-only\ndata\n"
    assert run_in(home, "origin", agent, "#!/bin/sh\nls /var/blink/memory\n") == "origin-only\n"

    # Nor do they travel with the copy: its export carries the shared
    # layer's content, not the source's checkpoints inside it.
    out = tmp_path / "copy.boxlite"
    assert run_cli("session", "export", "--name", "copy", "--output", out,
                   home=home).returncode == 0
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(f"zstd -dc {out} | tar -C {unpacked} -xf -", shell=True, check=True)
    (shipped,) = (unpacked / "layers").iterdir()
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2",
                                      str(shipped)], capture_output=True, text=True,
                                     check=True).stdout)
    assert "snapshots" not in info or info["snapshots"] == []

    # The source's checkpoints stay its own and restorable: one taken
    # before the fork (in the shared layer), one after (in its overlay).
    assert checkpoint_names(home, "copy") == set()
    assert run_cli("session", "checkpoint", "--name", "origin", "--snapshot", "after",
                   home=home).returncode == 0
    assert checkpoint_names(home, "origin") == {"before", "after"}
    r = run_cli("session", "restore", "--name", "origin", "--snapshot", "before", home=home)
    assert r.event["event"] == "session_restored", r
    assert run_in(home, "origin", agent, check) == digest + "data\n"
    assert checkpoint_names(home, "origin") == {"before", "after"}
    assert run_cli("session", "restore", "--name", "origin", "--snapshot", "after",
                   home=home).returncode == 0
    assert run_in(home, "origin", agent, "#!/bin/sh\nls /var/blink/memory\n") == "origin-only\n"
    # The copy never noticed.
    assert run_in(home, "copy", agent, check) == digest + "copy-only\ndata\n"

    # The layer lives while anyone stands on it, and goes with the last.
    assert run_cli("session", "remove", "--name", "origin", home=home).returncode == 0
    assert layers(home) == [layer]
    assert run_in(home, "copy", agent, check) == digest + "copy-only\ndata\n"
    assert run_cli("session", "remove", "--name", "copy", home=home).returncode == 0
    assert layers(home) == []


def test_fork_from_a_checkpoint_and_carry_it_away(home, agent, tmp_path):
    hub = tmp_path / "hub.sock"  # none listens: only where the setting goes matters here
    assert run_cli("session", "open", "--name", "source", "--vhub", hub,
                   home=home).returncode == 0
    run_in(home, "source", agent, "#!/bin/sh\necho one > /var/blink/memory/v\n")
    assert run_cli("session", "checkpoint", "--name", "source", "--snapshot", "v-one",
                   home=home).returncode == 0
    run_in(home, "source", agent, "#!/bin/sh\necho two > /var/blink/memory/v\n")

    r = run_cli("session", "fork", "--name", "source", "--to", "at-one", "--snapshot", "v-one",
                home=home)
    assert r.event["event"] == "session_forked" and r.event["snapshot"] == "v-one", r
    read = "#!/bin/sh\ncat /var/blink/memory/v\n"
    assert run_in(home, "at-one", agent, read) == "one\n"
    assert (home / "sessions/at-one/vhub").read_text() == f"{hub}\n"  # the source's hub
    assert run_in(home, "source", agent, read) == "two\n"

    # A forked session exports with its layers and imports into an empty
    # home, its checkpoints (held by a layer) included.
    out = tmp_path / "source.boxlite"
    r = run_cli("session", "export", "--name", "source", "--output", out, home=home)
    assert r.event["event"] == "session_exported", r
    names = subprocess.run(f"zstd -dc {out} | tar -t", shell=True, capture_output=True,
                           text=True, check=True).stdout.split()
    assert names[:3] == ["manifest.json", "disk.qcow2", "image/disk.qcow2"]
    assert len(names) == 4 and names[3].startswith("layers/")

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "kernels").mkdir(parents=True)
    (elsewhere / "kernels/current").symlink_to((home / "kernels/current").resolve())
    r = run_cli("session", "import", out, home=elsewhere, env={"BLINK_ACCEL": "tcg"})
    assert r.event["event"] == "session_imported", r
    assert run_in(elsewhere, "source", agent, read) == "two\n"
    assert checkpoint_names(elsewhere, "source") == {"v-one"}
    assert run_cli("session", "restore", "--name", "source", "--snapshot", "v-one",
                   home=elsewhere).returncode == 0
    assert run_in(elsewhere, "source", agent, read) == "one\n"


def test_fork_of_a_running_warm_session(home, agent):
    assert run_cli("session", "open", "--name", "live", "--warm", home=home).returncode == 0
    run_in(home, "live", agent, "#!/bin/sh\necho kept > /var/blink/memory/kept\n"
           "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/count; sleep 0.2; done' "
           ">/dev/null 2>&1 &\nsleep 1\n")
    boot = run_cli("session", "info", "--name", "live", home=home).event["session"]["boot_id"]

    r = run_cli("session", "fork", "--name", "live", "--to", "branch", home=home)
    assert r.event["event"] == "session_forked", r

    # The source VM went on where it was: same boot, its process still counting.
    info = run_cli("session", "info", "--name", "live", home=home).event["session"]
    assert info["state"] == "running" and info["boot_id"] == boot
    count = "#!/bin/sh\ncat /run/count; sleep 1; cat /run/count\n"
    first, second = map(int, run_in(home, "live", agent, count).split())
    assert second > first

    # It reads the disk under its new overlay (from the disk, not its cache).
    uncached = "#!/bin/sh\necho 3 > /proc/sys/vm/drop_caches\ncat /var/blink/memory/*\n"
    assert run_in(home, "live", agent, uncached) == "kept\n"

    # The running VM writes to its new overlay: the branch does not see it.
    run_in(home, "live", agent, "#!/bin/sh\necho late > /var/blink/memory/late\nsync\n")
    assert run_in(home, "branch", agent, "#!/bin/sh\nls /var/blink/memory\n") == "kept\n"

    # A second fork of the same running VM stacks one more layer.
    assert run_cli("session", "fork", "--name", "live", "--to", "branch-2",
                   home=home).returncode == 0
    assert run_in(home, "live", agent, uncached) == "kept\nlate\n"
    assert run_in(home, "branch-2", agent, "#!/bin/sh\ncat /var/blink/memory/*\n") == \
        "kept\nlate\n"

    # Checkpoints of the moved VM still work, memory ones included.
    assert run_cli("session", "checkpoint", "--name", "live", "--snapshot", "mem-1",
                   home=home).event["memory"] is True
    run_in(home, "live", agent, "#!/bin/sh\nrm /var/blink/memory/late\n")
    assert run_cli("session", "restore", "--name", "live", "--snapshot", "mem-1",
                   home=home).returncode == 0
    assert run_in(home, "live", agent, "#!/bin/sh\nls /var/blink/memory\n") == "kept\nlate\n"
    r = run_cli("session", "checkpoint", "--name", "live", "--snapshot", "disk-1", "--disk-only",
                home=home)
    assert r.event["event"] == "session_checkpoint" and r.event["memory"] is False, r
    assert run_cli("session", "checkpoint", "--name", "live", "--snapshot", "disk-1", "--delete",
                   home=home).event["event"] == "checkpoint_deleted"
    assert checkpoint_names(home, "live") == {"mem-1"}
    # After a reboot the disk chain holds everything.
    assert run_cli("session", "stop", "--name", "live", home=home).returncode == 0
    assert run_in(home, "live", agent, uncached) == "kept\nlate\n"
    for name in ("live", "branch", "branch-2"):
        assert run_cli("session", "remove", "--name", name, "--force", home=home).returncode == 0
    assert layers(home) == []


@pytest.mark.parametrize("args, code", [
    (["--name", "nobody", "--to", "new-one"], "not_found"),
    (["--name", "bad/name", "--to", "new-one"], "invalid"),
    (["--name", "sourcex", "--to", "x"], "invalid"),
    (["--name", "sourcex", "--to", "sourcex"], "invalid"),
    (["--name", "sourcex", "--to", "other-1"], "exists"),
    (["--name", "sourcex", "--to", "new-one", "--snapshot", "no-such"], "not_found"),
    (["--name", "sourcex"], "usage"),
    (["--name", "sourcex", "--to", "new-one", "extra"], "usage"),
])
def test_fork_bad_input_changes_nothing(home, args, code):
    assert run_cli("session", "open", "--name", "sourcex", home=home).returncode == 0
    assert run_cli("session", "open", "--name", "other-1", home=home).returncode == 0
    r = run_cli("session", "fork", *args, home=home)
    assert r.returncode != 0 and r.event["event"] == "error", r
    assert r.event["code"] == code, r
    assert layers(home) == []
    assert sorted(p.name for p in (home / "sessions").iterdir()) == ["other-1", "sourcex"]


def layered_manifest(members, layers, disk_backing):
    return json.dumps({"format": "blink-session", "format_version": 2, "name": "hostile",
                       "image": "debian-12", "resources": {"memory_mib": 512, "cpus": 1,
                                                          "warm": False},
                       "checkpoints": [], "members": members, "layers": layers,
                       "disk_backing": disk_backing}).encode()


def test_hostile_layered_archives_are_refused(home, tmp_path):
    blob = b"QFI\xfb" + b"\0" * 600
    a, b = "layers/00000000000000aa.qcow2", "layers/00000000000000bb.qcow2"

    def entry(path):
        return {"path": path, "size": len(blob), "sha256": sha(blob)}

    def archive(name, members, layers, disk_backing, files=None):
        m = layered_manifest([entry(p) for p in members], layers, disk_backing)
        path = tmp_path / f"{name}.boxlite"
        zstd_tar(path, [(file_info("manifest.json", len(m)), m)] +
                 [(file_info(p, len(blob)), blob) for p in (files or members)])
        return path

    base = ["disk.qcow2", "image/disk.qcow2"]
    cases = {
        "loop": archive("loop", base + [a, b], [{"path": a, "backing": b},
                                                {"path": b, "backing": a}], a),
        "self": archive("self", base + [a], [{"path": a, "backing": a}], a),
        "bad-name": archive("bad-name", base + ["layers/../../x.qcow2"],
                            [{"path": "layers/../../x.qcow2", "backing": "image/disk.qcow2"}],
                            "layers/../../x.qcow2"),
        "unlisted-layer": archive("unlisted", base + [a], [], "image/disk.qcow2"),
        "no-disk-backing": archive("no-backing", base + [a],
                                   [{"path": a, "backing": "image/disk.qcow2"}], "nowhere"),
        "stray-file": archive("stray", base + [a], [{"path": a, "backing": "image/disk.qcow2"}],
                              a, files=base + [a, b]),
        # Well formed, but the layer is no qcow2 disk of ours.
        "not-qcow2": archive("not-qcow2", base + [a], [{"path": a, "backing": "image/disk.qcow2"}],
                             a),
    }
    for name, path in cases.items():
        r = run_cli("session", "import", path, home=home)
        assert r.returncode == 125 and r.event["code"] == "invalid", (name, r)
        assert run_cli("session", "ls", home=home).event["sessions"] == [], name
        assert layers(home) == [], name
        assert [p.name for p in (home / "images").iterdir()] == ["debian-12"], name


def backing_of(path):
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                          capture_output=True, text=True, check=True).stdout
    return json.loads(info).get("backing-filename")


def test_forks_of_an_unchanged_source_share_one_layer(home):
    assert run_cli("session", "open", "--name", "base", home=home).returncode == 0
    for i in range(4):
        r = run_cli("session", "fork", "--name", "base", "--to", f"child-{i}", home=home)
        assert r.event["event"] == "session_forked", r
    # The first fork froze the disk; the source wrote nothing since, so the
    # others stand on the same layer instead of stacking new ones.
    (layer,) = layers(home)
    for name in ["base"] + [f"child-{i}" for i in range(4)]:
        assert backing_of(home / "sessions" / name / "disk.qcow2") == str(layer)


def test_a_relative_blink_home_gives_absolute_layer_paths(home):
    env = dict(os.environ, BLINK_HOME=home.name)
    cli = [str(CLI)]
    for args in (["session", "open", "--name", "rel-src"],
                 ["session", "fork", "--name", "rel-src", "--to", "rel-dst"]):
        proc = subprocess.run(cli + args, cwd=home.parent, env=env, capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
    (layer,) = layers(home)
    for name in ("rel-src", "rel-dst"):
        backing = backing_of(home / "sessions" / name / "disk.qcow2")
        assert backing.startswith("/") and os.path.samefile(backing, layer)


def test_remove_clears_the_folder_of_an_interrupted_fork(home):
    debris = home / "sessions" / "ghost-1"
    debris.mkdir(parents=True)
    (debris / "disk.qcow2.tmp").write_bytes(b"half a disk")
    r = run_cli("session", "remove", "--name", "ghost-1", home=home)
    assert r.event["code"] == "not_found", r  # there was no session
    assert not debris.exists()                # but its debris is gone
