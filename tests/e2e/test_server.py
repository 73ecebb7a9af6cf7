"""blink-server: the REST API, driven over HTTP on a loopback port against a
BLINK_HOME of its own (sharing the set-up kernel and image)."""
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import HOME, REPO, SERVER

SESSION = "srv-e2e"
TINY_AGENT = "#!/bin/sh\necho \"hello $GREETING\"\necho to-stderr >&2\n"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_home(path):
    (path / "kernels").mkdir(parents=True)
    (path / "images").mkdir()
    (path / "kernels/current").symlink_to((HOME / "kernels/current").resolve())
    (path / "images/debian-12").symlink_to((HOME / "images/debian-12").resolve())
    if (HOME / "cache").exists():
        shutil.copytree(HOME / "cache", path / "cache")
    return path


class Server:
    def __init__(self, home, port=None, workers=2, extra_env=None):
        self.home = home
        self.port = port or free_port()
        self.log = open(home / f"server-{self.port}.log", "ab")
        env = dict(os.environ, BLINK_HOME=str(home), BLINK_ACCEL="auto",
                   BLINK_STATIC_DIR=str(REPO / "share" / "blink"), **(extra_env or {}))
        env.pop("BLINK_PORT", None)
        env.pop("BLINK_BIND", None)
        self.proc = subprocess.Popen([str(SERVER), "--port", str(self.port), "--workers",
                                      str(workers)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_text()
            try:
                if self.request("GET", "/api/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer /api/health"
            time.sleep(0.1)

    def log_text(self):
        return (self.home / f"server-{self.port}.log").read_text(errors="replace")

    def request(self, method, path, body=None, headers=None, raw=None, timeout=600):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body) if body is not None else None)
            conn.request(method, path, body=data, headers=headers or {})
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.headers, payload
        finally:
            conn.close()

    def json(self, method, path, body=None, expect=200, **kw):
        status, headers, payload = self.request(method, path, body, **kw)
        assert status == expect, (status, payload)
        return json.loads(payload)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=300)
        self.log.close()
        assert rc == 0, self.log_text()


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("server") / "home")


@pytest.fixture(scope="module")
def server(home):
    srv = Server(home)
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def session(server):
    """One cold session shared by the session tests, removed at the end."""
    opened = server.json("POST", "/api/sessions", {"name": SESSION}, expect=201)
    assert opened["event"] == "session_opened" and opened["created"] is True
    yield SESSION
    server.request("DELETE", f"/api/sessions/{SESSION}?force=1")


def inline(text):
    return base64.b64encode(text.encode()).decode()


def test_health_and_product(server):
    assert server.json("GET", "/api/health") == {"status": "ok", "version": "0.1.0"}
    product = server.json("GET", "/api/product")
    tiers = {t["name"]: t["features"] for t in product["tiers"]}
    assert tiers["free"] == ["ephemeral_runs"]
    assert {"sessions", "checkpoints", "export", "warm"} <= set(tiers["paid"])
    assert product["features"]["sessions"] is True


def test_request_errors(server):
    status, _, body = server.request("POST", "/api/runs", raw="{not json")
    assert status == 400 and "error" in json.loads(body)
    assert server.request("GET", "/api/runs/424242")[0] == 404
    assert server.request("GET", "/api/runs/abc")[0] == 404
    assert server.request("GET", "/api/nothing-here")[0] == 404
    assert server.request("GET", "/api/sessions/x")[0] == 400  # too short a name
    assert server.request("GET", "/api/sessions/bad%20name")[0] == 400
    status, _, body = server.request("POST", "/api/sessions", {"name": "../etc"})
    assert status == 400 and "invalid session name" in json.loads(body)["error"]
    assert server.request("POST", "/api/sessions", {"warm": True})[0] == 400  # no name
    assert server.request("GET", "/api/sessions/no-such-session")[0] == 404
    status, headers, _ = server.request("PUT", "/api/sessions")
    assert status == 405 and "POST" in headers["Allow"]
    assert server.request("DELETE", "/api/health")[0] == 405
    both = {"script": "/x", "script_inline": "eA=="}
    assert server.request("POST", "/api/runs", both)[0] == 400
    assert server.request("POST", "/api/runs", {"script_inline": "%%%"})[0] == 400


def test_oversize_body(server):
    # The length alone is refused: the client need not send the body.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/runs")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "error" in json.loads(resp.read())
    conn.close()


@pytest.mark.parametrize("name", ["..%2F..%2Fblink.db", "..%2Fx.boxlite", ".hidden.boxlite",
                                  "x.txt", "a%2Fb.boxlite", "a/b.boxlite", "%2Fetc%2Fpasswd",
                                  "a%00.boxlite", "a%20b.boxlite"])
def test_export_names_refused(server, name):
    status, _, body = server.request("GET", f"/api/exports/{name}")
    assert status == 400, (name, status, body)


def test_missing_export(server):
    assert server.request("GET", "/api/exports/none-here.boxlite")[0] == 404


def test_address_in_use(server, tmp_path):
    env = dict(os.environ, BLINK_HOME=str(make_home(tmp_path / "other")))
    proc = subprocess.run([str(SERVER), "--port", str(server.port)], env=env,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "Address already in use" in proc.stderr, proc.stderr


def test_one_server_per_home(server, home):
    env = dict(os.environ, BLINK_HOME=str(home))
    proc = subprocess.run([str(SERVER), "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "another blink-server serves BLINK_HOME" in proc.stderr, proc.stderr
    assert server.request("GET", "/api/health")[0] == 200  # the first one is unharmed


def wait_for_run(server, run_id, limit=300):
    deadline = time.monotonic() + limit
    while True:
        job = server.json("GET", f"/api/runs/{run_id}?wait=30")
        if job["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return job


def test_queued_ephemeral_run(server):
    queued = server.json("POST", "/api/runs", {"script_inline": inline(TINY_AGENT),
                                               "tier": "free", "timeout": 120,
                                               "env": {"GREETING": "queue"}}, expect=202)
    assert queued["status"] == "queued" and isinstance(queued["id"], int)
    job = wait_for_run(server, queued["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["event"] == "execution_result"
    assert job["result"]["stdout"] == "hello queue\n"
    assert job["result"]["stderr"] == "to-stderr\n"
    assert job["result"]["exit_code"] == 0
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["error"] is None
    # The inline agent was removed after the run.
    assert not any(p.name.startswith("server-") for p in (server.home / "tmp").iterdir())


def test_free_tier_refuses_sessions(server):
    status, _, _ = server.request("POST", "/api/runs", {"script_inline": inline(TINY_AGENT),
                                                        "tier": "free",
                                                        "session_name": SESSION})
    assert status == 400


def test_session_routes(server, session):
    again = server.json("POST", "/api/sessions", {"name": session})
    assert again["created"] is False and again["name"] == session
    listed = server.json("GET", "/api/sessions")
    assert listed["event"] == "session_list"
    assert session in [s["name"] for s in listed["sessions"]]
    one = server.json("GET", f"/api/sessions/{session}")
    assert one["session"]["name"] == session and one["session"]["state"] == "stopped"
    # An encoded NUL does not cut a name short onto another session.
    for method in ("GET", "DELETE"):
        assert server.request(method, f"/api/sessions/{session}%00-other")[0] == 400
    assert server.json("GET", f"/api/sessions/{session}")["session"]["name"] == session


def test_session_run(server, session):
    agent = "#!/bin/sh\necho kept > /root/marker\ncat /root/marker\n"
    result = server.json("POST", f"/api/sessions/{session}/runs",
                         {"script_inline": inline(agent), "timeout": 120})
    assert result["event"] == "execution_result" and result["session"] == session
    assert result["stdout"] == "kept\n" and result["exit_code"] == 0


def test_session_run_script_path(server, session, tmp_path):
    path = tmp_path / "agent.sh"
    path.write_text("#!/bin/sh\ncat /root/marker\necho \"$GREETING\"\n")
    path.chmod(0o755)
    result = server.json("POST", f"/api/sessions/{session}/runs",
                         {"script": str(path), "env": {"GREETING": "hi"}})
    assert result["stdout"] == "kept\nhi\n"
    assert server.request("POST", f"/api/sessions/{session}/runs",
                          {"script": str(tmp_path / "missing")})[0] == 400


def test_checkpoints(server, session):
    made = server.json("POST", f"/api/sessions/{session}/checkpoints", {"name": "snap-1"},
                       expect=201)
    assert made["event"] == "session_checkpoint" and made["name"] == "snap-1"
    assert server.request("POST", f"/api/sessions/{session}/checkpoints",
                          {"name": "snap-1"})[0] == 409
    assert server.request("POST", f"/api/sessions/{session}/checkpoints",
                          {"name": "x"})[0] == 400
    listed = server.json("GET", f"/api/sessions/{session}/checkpoints")
    assert listed["event"] == "checkpoint_list"
    assert [c["name"] for c in listed["checkpoints"]] == ["snap-1"]

    # Change the disk, then roll it back.
    server.json("POST", f"/api/sessions/{session}/runs",
                {"script_inline": inline("#!/bin/sh\necho changed > /root/marker\n")})
    restored = server.json("POST", f"/api/sessions/{session}/checkpoints/snap-1/restore")
    assert restored["event"] == "session_restored" and restored["snapshot"] == "snap-1"
    result = server.json("POST", f"/api/sessions/{session}/runs",
                         {"script_inline": inline("#!/bin/sh\ncat /root/marker\n")})
    assert result["stdout"] == "kept\n"
    assert server.request("POST",
                          f"/api/sessions/{session}/checkpoints/no-such/restore")[0] == 404


def test_fork_over_http(server, session):
    forked = server.json("POST", f"/api/sessions/{session}/fork", {"to": "srv-fork"},
                         expect=201)
    assert forked == {"event": "session_forked", "name": "srv-fork", "source": session,
                      "snapshot": None, "image": "debian-12", "state": "stopped"}
    result = server.json("POST", "/api/sessions/srv-fork/runs",
                         {"script_inline": inline("#!/bin/sh\ncat /root/marker\n")})
    assert result["stdout"] == "kept\n"
    assert server.request("POST", f"/api/sessions/{session}/fork", {"to": "x"})[0] == 400
    assert server.request("POST", f"/api/sessions/{session}/fork", {})[0] == 400
    assert server.request("POST", f"/api/sessions/{session}/fork",
                          {"to": "srv-fork"})[0] == 409
    assert server.request("POST", "/api/sessions/no-such/fork", {"to": "srv-fork-2"})[0] == 404
    assert server.request("POST", f"/api/sessions/{session}/fork",
                          {"to": "srv-fork-2", "snapshot": "no-such"})[0] == 404
    assert server.request("DELETE", "/api/sessions/srv-fork")[0] == 200


def test_queued_session_run(server, session):
    queued = server.json("POST", "/api/runs", {"script_inline": inline("cat /root/marker\n"),
                                               "session_name": session}, expect=202)
    job = wait_for_run(server, queued["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["stdout"] == "kept\n" and job["result"]["session"] == session


def test_export_and_download(server, session):
    exported = server.json("POST", f"/api/sessions/{session}/export")
    assert exported["event"] == "session_exported" and exported["size_bytes"] > 0
    url = exported["download_url"]
    name = url.rsplit("/", 1)[1]
    assert url == f"/api/exports/{name}" and name.endswith(".boxlite")
    data = (server.home / "exports" / name).read_bytes()

    status, headers, body = server.request("GET", url, headers={"Range": "bytes=100-1123"})
    assert status == 206
    assert body == data[100:1124]
    assert headers["Content-Range"] == f"bytes 100-1123/{len(data)}"
    status, _, body = server.request("GET", url, headers={"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, headers, _ = server.request("GET", url,
                                        headers={"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    status, headers, body = server.request("GET", url)
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    os.unlink(server.home / "exports" / name)


def test_stop_and_remove(server, session):
    stopped = server.json("POST", f"/api/sessions/{session}/stop")
    assert stopped == {"event": "session_stopped", "name": session}
    removed = server.json("DELETE", f"/api/sessions/{session}")
    assert removed == {"event": "session_removed", "name": session}
    assert server.request("GET", f"/api/sessions/{session}")[0] == 404
    assert server.request("DELETE", f"/api/sessions/{session}")[0] == 404


def test_request_log(server):
    server.request("GET", "/api/health")
    assert "GET /api/health 200" in server.log_text()


def test_queued_job_survives_restart(tmp_path):
    home = make_home(tmp_path / "home")
    first = Server(home, workers=0)
    queued = first.json("POST", "/api/runs", {"script_inline": inline(TINY_AGENT),
                                              "env": {"GREETING": "again"}}, expect=202)
    assert first.json("GET", f"/api/runs/{queued['id']}?wait=1")["status"] == "queued"
    first.stop()

    second = Server(home, port=first.port, workers=1)
    try:
        job = wait_for_run(second, queued["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["stdout"] == "hello again\n"
    finally:
        second.stop()


def test_runs_list_and_metrics(server):
    job = server.json("POST", "/api/runs",
                      {"script_inline": base64.b64encode(b"#!/bin/sh\necho m\n").decode()},
                      expect=202)
    done = server.json("GET", f"/api/runs/{job['id']}?wait=60")
    assert done["status"] == "succeeded", done
    runs = server.json("GET", "/api/runs")
    assert runs["event"] == "run_list"
    assert any(r["id"] == job["id"] and r["duration_ms"] is not None for r in runs["runs"])

    status, headers, payload = server.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = payload.decode()
    for needle in ('blink_runs{status="succeeded"}', "blink_run_queue_depth ",
                   "blink_running_vms ", 'blink_run_duration_seconds_bucket{le="+Inf"}',
                   "blink_run_duration_seconds_count "):
        assert needle in text, text
    succeeded = [line for line in text.splitlines()
                 if line.startswith('blink_runs{status="succeeded"}')]
    assert int(succeeded[0].split()[-1]) >= 1
    assert server.request("POST", "/metrics")[0] == 405


def test_status_page_in_a_browser(server):
    status, headers, payload = server.request("GET", "/")
    assert status == 200 and b"<title>Blink status</title>" in payload
    server.json("POST", "/api/sessions", {"name": "seen-in-browser"}, expect=201)
    try:
        chromium = shutil.which("chromium")
        assert chromium, "chromium is not installed (scripts/setup.sh installs it)"
        with tempfile.TemporaryDirectory() as user_data:
            proc = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={user_data}",
                 "--virtual-time-budget=10000", "--dump-dom",
                 f"http://127.0.0.1:{server.port}/"],
                capture_output=True, text=True, timeout=180)
        dom = proc.stdout
        assert 'data-session="seen-in-browser"' in dom, (dom[-2000:], proc.stderr[-2000:])
        assert "healthy" in dom
    finally:
        server.request("DELETE", "/api/sessions/seen-in-browser")

