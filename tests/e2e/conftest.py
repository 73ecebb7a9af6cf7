"""Shared fixtures for the end-to-end tests: they drive the real blink-cli,
which boots real QEMU VMs from the BLINK_HOME that scripts/setup.sh filled."""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("BLINK_BUILD_DIR", REPO / "build"))
CLI = BUILD / "src" / "cli" / "blink-cli"
SERVER = BUILD / "src" / "server" / "blink-server"
AGENTS = pathlib.Path(__file__).resolve().parent / "agents"


def default_home():
    if os.environ.get("BLINK_HOME"):
        return pathlib.Path(os.environ["BLINK_HOME"])
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return pathlib.Path(xdg) / "blink"


HOME = default_home()


class CliResult:
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
        self.event = json.loads(lines[0])

    def __repr__(self):
        return f"CliResult(rc={self.returncode}, event={self.event}, stderr={self.stderr!r})"


def run_cli(*args, env=None, timeout=600, home=None):
    """Runs blink-cli and parses its one JSON line."""
    full_env = dict(os.environ)
    full_env["BLINK_HOME"] = str(home or HOME)
    full_env.setdefault("BLINK_ACCEL", "auto")
    if env:
        full_env.update(env)
    proc = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, stdin=subprocess.DEVNULL)
    return CliResult(proc)


@pytest.fixture(scope="session", autouse=True)
def setup_present():
    missing = [p for p in (CLI, HOME / "kernels/current/vmlinuz",
                           HOME / "kernels/current/initramfs.cpio",
                           HOME / "images/debian-12/disk.qcow2") if not p.exists()]
    if missing:
        pytest.fail(f"not set up (run scripts/setup.sh): missing {missing}", pytrace=False)


@pytest.fixture
def agent(tmp_path):
    """Writes an agent file with the given text and returns its path."""
    def make(text, name="agent", mode=0o755):
        path = tmp_path / name
        path.write_text(text)
        path.chmod(mode)
        return path
    return make


@pytest.fixture
def fresh_home(tmp_path):
    """An empty BLINK_HOME that shares the set-up kernel and image."""
    home = tmp_path / "home"
    (home / "kernels").mkdir(parents=True)
    (home / "images").mkdir()
    (home / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
    (home / "images/debian-12").symlink_to((HOME / "images/debian-12").resolve())
    cache = HOME / "cache"
    if cache.exists():
        shutil.copytree(cache, home / "cache")
    return home


def live_pids(pattern):
    """Our processes matching `pattern`, without zombies: an exited process
    waits there until its parent (init, for the detached shim) reaps it."""
    out = subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", pattern],
                         capture_output=True, text=True).stdout
    pids = set()
    for pid in map(int, out.split()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            pids.add(pid)
    return pids


# Where this run's VMs get their kernel: the set-up home and pytest's temp
# root (fresh homes). VMs of anyone else on the machine are not ours.
OUR_ROOTS = [os.path.realpath(HOME)]


@pytest.fixture(scope="session", autouse=True)
def our_roots(tmp_path_factory):
    OUR_ROOTS.append(os.path.realpath(tmp_path_factory.getbasetemp()))


def our_pids(pattern, option):
    """Live processes matching `pattern` whose `option` argument (a path)
    lies in one of this run's homes."""
    pids = set()
    for pid in live_pids(pattern):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        value = argv[argv.index(option) + 1].decode() if option in argv else ""
        if any(value == root or value.startswith(root + "/") for root in OUR_ROOTS):
            pids.add(pid)
    return pids


def qemu_pids():
    """Live QEMUs started by this test run (by where their kernel is)."""
    return our_pids("qemu-system-x86_64", b"-kernel")
