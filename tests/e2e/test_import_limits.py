"""Import against archives that claim or unpack to more than they carry."""
import json
import os
import subprocess

from conftest import HOME, run_cli
from test_checkpoint import file_info, sha, zstd_tar


def manifest(members):
    return json.dumps({"format": "blink-session", "format_version": 1, "name": "bomb",
                       "image": "debian-12", "resources": {"memory_mib": 512, "cpus": 1,
                                                          "warm": False},
                       "checkpoints": [], "members": members}).encode()


def test_zeros_unpack_to_holes(fresh_home, tmp_path):
    # A valid overlay followed by 256 MiB of zeros: a few KiB compressed.
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str((HOME / "images/debian-12/disk.qcow2").resolve()), str(disk)],
                   check=True)
    data = disk.read_bytes() + bytes(256 << 20)
    image = (HOME / "images/debian-12/disk.qcow2").read_bytes()
    members = [("disk.qcow2", data), ("image/disk.qcow2", image)]
    m = manifest([{"path": p, "size": len(d), "sha256": sha(d)} for p, d in members])
    archive = tmp_path / "bomb.boxlite"
    zstd_tar(archive, [(file_info("manifest.json", len(m)), m)] +
             [(file_info(p, len(d)), d) for p, d in members])
    assert archive.stat().st_size < len(image)

    r = run_cli("session", "import", archive, home=fresh_home)
    assert r.event["event"] == "session_imported", r
    placed = fresh_home / "sessions/bomb/disk.qcow2"
    assert placed.stat().st_size == len(data)
    assert placed.stat().st_blocks * 512 < 16 << 20  # the zeros are holes, not blocks


def test_claims_beyond_free_space_are_refused_before_unpacking(fresh_home, tmp_path):
    fs = os.statvfs(fresh_home)
    free = fs.f_bavail * fs.f_frsize
    each = 256 << 30  # the most one member may claim
    count = free // each + 1  # layers enough to claim more than is free
    assert count <= 64, "more free space than an archive can claim"
    layers = [f"layers/{i:016x}.qcow2" for i in range(count)]
    members = ["disk.qcow2", "image/disk.qcow2"] + layers
    m = json.dumps({"format": "blink-session", "format_version": 2, "name": "claim",
                    "image": "debian-12", "resources": {}, "checkpoints": [],
                    "members": [{"path": p, "size": each, "sha256": "0" * 64} for p in members],
                    "layers": [{"path": p, "backing": "image/disk.qcow2"} for p in layers],
                    "disk_backing": layers[0]}).encode()
    archive = tmp_path / "claim.boxlite"
    zstd_tar(archive, [(file_info("manifest.json", len(m)), m)])
    r = run_cli("session", "import", archive, home=fresh_home)
    assert r.event["code"] == "invalid" and "MiB are free" in r.event["error"], r
    assert not (fresh_home / "sessions").exists() or not any((fresh_home / "sessions").iterdir())
    assert not any((fresh_home / "tmp").iterdir())
