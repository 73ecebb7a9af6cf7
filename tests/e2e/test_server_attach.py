"""blink-server: spawn and WebSocket attach, live run logs (SSE), import by
upload, checkpoint delete, the boot histogram, and a restart with queued
jobs and an attached execution. One warm session serves most tests."""
import http.client
import json
import signal
import socket
import time
import uuid

import pytest
import websocket

from test_server import Server, inline, make_home, wait_for_run

WARM = "attach-e2e"
HISTORY = 64 * 1024  # BLINK_EXEC_HISTORY given to the session's shim


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("attach") / "home")


@pytest.fixture(scope="module")
def server(home):
    srv = Server(home, workers=1, extra_env={"BLINK_EXEC_HISTORY": "64K",
                                             "BLINK_IMPORT_MAX": "512M"})
    yield srv
    srv.request("DELETE", f"/api/sessions/{WARM}?force=1")
    srv.request("DELETE", "/api/sessions/attach-imported?force=1")
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def warm(server):
    opened = server.json("POST", "/api/sessions", {"name": WARM, "warm": True}, expect=201)
    assert opened["state"] == "running"
    return WARM


def spawn(server, session, body, expect=201):
    return server.json("POST", f"/api/sessions/{session}/spawn", body, expect=expect)


def attach(server, url, after=None):
    full = f"ws://127.0.0.1:{server.port}{url}" + (f"?after={after}" if after is not None else "")
    ws = websocket.create_connection(full, timeout=120)
    hello = json.loads(ws.recv())
    assert hello["type"] == "attached"
    return ws, hello


def read_until_exit(ws):
    """Output frames as (stream, bytes), the exit frame, and the close code."""
    out, exit_frame = [], None
    while True:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_BINARY:
            out.append((frame.data[0], frame.data[1:]))
        elif frame.opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(frame.data)
            if message["type"] == "exit":
                exit_frame = message
        elif frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(frame.data[:2], "big")
            ws.close()
            return out, exit_frame, code


def read_output(ws, want):
    """Reads binary frames until `want` appeared in stdout; returns them."""
    got = b""
    frames = 0
    while want not in got:
        frame = ws.recv_frame()
        if frame.opcode == websocket.ABNF.OPCODE_BINARY:
            frames += 1
            if frame.data[0] == 1:
                got += frame.data[1:]
        assert frame.opcode != websocket.ABNF.OPCODE_CLOSE, got
    return got, frames


def test_spawn_errors(server, warm):
    assert server.request("POST", f"/api/sessions/{warm}/spawn", raw="{")[0] == 400
    assert server.request("POST", f"/api/sessions/{warm}/spawn", {"args": ["x"]})[0] == 400
    assert server.request("POST", f"/api/sessions/{warm}/spawn",
                          {"command": "sh", "working_dir": "relative"})[0] == 400
    assert server.request("POST", "/api/sessions/no-such-one/spawn", {"command": "sh"})[0] == 404
    server.json("POST", "/api/sessions", {"name": "attach-cold"}, expect=201)
    try:
        status, _, body = server.request("POST", "/api/sessions/attach-cold/spawn",
                                         {"command": "true"})
        assert status == 409 and "warm" in json.loads(body)["error"]
    finally:
        server.request("DELETE", "/api/sessions/attach-cold")
    # Unknown executions, bad names, and a request that is not a WebSocket.
    assert server.request("GET", f"/api/sessions/{warm}/executions/999999/attach")[0] == 404
    assert server.request("GET", f"/api/sessions/{warm}/executions/abc/attach")[0] == 404
    assert server.request("GET", "/api/sessions/x/executions/1/attach")[0] == 400
    spawned = spawn(server, warm, {"command": "true"})
    status, headers, _ = server.request("GET", spawned["attach_url"])
    assert status == 426 and headers["Upgrade"] == "websocket"


def test_two_clients_share_stdin_and_exit(server, warm):
    spawned = spawn(server, warm, {"command": "sh", "args": ["-c", "cat; exit 7"],
                                   "env": {"UNUSED": "1"}})
    assert spawned["event"] == "exec_spawned" and spawned["tty"] is False
    assert spawned["attach_url"] == (f"/api/sessions/{warm}/executions/"
                                     f"{spawned['execution_id']}/attach")
    first, hello = attach(server, spawned["attach_url"])
    second, _ = attach(server, spawned["attach_url"])
    assert hello["execution_id"] == spawned["execution_id"] and hello["next_seq"] == 1

    first.send_binary(b"from-first\n")
    assert read_output(first, b"from-first\n")[0] == b"from-first\n"
    assert read_output(second, b"from-first\n")[0] == b"from-first\n"
    second.send_binary(b"from-second\n")
    read_output(first, b"from-second\n")
    read_output(second, b"from-second\n")
    second.send(json.dumps({"type": "bogus"}))
    assert json.loads(second.recv())["type"] == "error"
    first.send(json.dumps({"type": "stdin_eof"}))
    for ws in (first, second):
        _, exit_frame, code = read_until_exit(ws)
        assert exit_frame == {"type": "exit", "exit_code": 7} and code == 1000


def test_tty_resize_and_signal(server, warm):
    spawned = spawn(server, warm, {"command": "sh", "tty": True, "rows": 30, "cols": 100})
    assert spawned["tty"] is True
    ws, _ = attach(server, spawned["attach_url"])
    ws.send_binary(b"stty size\n")
    read_output(ws, b"30 100")
    ws.send(json.dumps({"type": "resize", "rows": 40, "cols": 120}))
    ws.send_binary(b"stty size\n")
    read_output(ws, b"40 120")
    ws.send(json.dumps({"type": "signal", "signal": "SIGKILL"}))
    _, exit_frame, code = read_until_exit(ws)
    assert exit_frame["exit_code"] == -1 and exit_frame["signal"] == signal.SIGKILL
    assert code == 1000


def test_attach_after_exit_and_after_seq(server, warm):
    script = "for i in 1 2 3 4; do echo out$i; echo err$i >&2; done; exit 3"
    spawned = spawn(server, warm, {"command": "sh", "args": ["-c", script]})
    ws, _ = attach(server, spawned["attach_url"])
    frames, exit_frame, _ = read_until_exit(ws)
    assert exit_frame["exit_code"] == 3
    stdout = b"".join(data for stream, data in frames if stream == 1)
    stderr = b"".join(data for stream, data in frames if stream == 2)
    assert stdout == b"out1\nout2\nout3\nout4\n" and stderr == b"err1\nerr2\nerr3\nerr4\n"

    # After the exit: the whole kept output again, then the exit frame.
    again, hello = attach(server, spawned["attach_url"])
    replay, exit_again, _ = read_until_exit(again)
    assert replay == frames and exit_again == exit_frame and hello["dropped"] == 0
    # ?after=SEQ: only the frames numbered after it.
    later, hello = attach(server, spawned["attach_url"], after=len(frames) - 2)
    tail, exit_later, _ = read_until_exit(later)
    assert hello["next_seq"] == len(frames) - 1 and tail == frames[-2:]
    assert exit_later == exit_frame


def test_attach_after_the_vm_stopped_gets_the_recorded_exit(server):
    name = "attach-ended"
    server.json("POST", "/api/sessions", {"name": name, "warm": True}, expect=201)
    try:
        spawned = spawn(server, name, {"command": "sh", "args": ["-c", "echo bye; exit 7"]})
        ws, _ = attach(server, spawned["attach_url"])
        _, exit_frame, _ = read_until_exit(ws)
        assert exit_frame["exit_code"] == 7
        server.json("POST", f"/api/sessions/{name}/stop")

        # The VM and its kept output are gone; the catalog still knows the exit.
        late, hello = attach(server, spawned["attach_url"], after=5)
        frames, late_exit, code = read_until_exit(late)
        assert frames == [] and late_exit == {"type": "exit", "exit_code": 7} and code == 1000
        assert hello["next_seq"] == 6
        bogus = spawned["attach_url"].replace(f"/{spawned['execution_id']}/", "/999999/")
        assert server.request("GET", bogus, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})[0] == 404
    finally:
        server.request("DELETE", f"/api/sessions/{name}?force=1")


def test_bounded_history_says_what_was_dropped(server, warm):
    spawned = spawn(server, warm, {"command": "seq", "args": ["1", "200000"]})
    ws, _ = attach(server, spawned["attach_url"])
    read_until_exit(ws)  # until it ended, so all of its output went through the shim

    late, hello = attach(server, spawned["attach_url"], after=0)
    frames, exit_frame, _ = read_until_exit(late)
    data = b"".join(d for _, d in frames)
    assert exit_frame["exit_code"] == 0
    assert hello["dropped"] > 0 and hello["next_seq"] == hello["dropped"] + 1
    assert data.endswith(b"199999\n200000\n") and len(data) <= HISTORY + 64 * 1024
    assert not data.startswith(b"1\n2\n")


def read_sse(resp):
    """Yields (event, id, data) of a text/event-stream response."""
    event, ident, data = None, None, None
    for raw in resp:
        line = raw.decode().rstrip("\n")
        if line == "":
            if event:
                yield event, ident, json.loads(data)
            event, ident, data = None, None, None
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("data: "):
            data = line[6:]


def test_live_run_logs(server, warm):
    flag = f"/tmp/go-{uuid.uuid4().hex}"
    agent = f"#!/bin/sh\necho started\nwhile [ ! -e {flag} ]; do sleep 0.2; done\necho done >&2\n"
    queued = server.json("POST", "/api/runs", {"script_inline": inline(agent),
                                               "session_name": warm}, expect=202)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request("GET", f"/api/runs/{queued['id']}/logs")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    events = read_sse(resp)
    first = next(events)
    assert first[0] == "stdout" and first[2]["text"] == "started\n" and first[1] == 1
    # The run is still going: the log is live, not a replay of a result.
    assert server.json("GET", f"/api/runs/{queued['id']}")["status"] == "running"
    spawn(server, warm, {"command": "touch", "args": [flag]})
    rest = list(events)
    conn.close()
    assert ("stderr", 2, {"text": "done\n"}) in rest
    assert rest[-1][0] == "end" and rest[-1][2]["status"] == "succeeded"
    assert rest[-1][2]["exit_code"] == 0

    # A reader that comes after the end gets the stored output and the end.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/api/runs/{queued['id']}/logs")
    late = list(read_sse(conn.getresponse()))
    conn.close()
    assert late[0][0] == "stdout" and late[0][2]["text"] == "started\n"
    assert late[-1][0] == "end" and late[-1][2]["status"] == "succeeded"
    assert server.request("GET", "/api/runs/987654/logs")[0] == 404


def test_checkpoint_delete(server, warm):
    server.json("POST", f"/api/sessions/{warm}/checkpoints", {"name": "gone-soon"}, expect=201)
    deleted = server.json("DELETE", f"/api/sessions/{warm}/checkpoints/gone-soon")
    assert deleted == {"event": "checkpoint_deleted", "session": warm, "name": "gone-soon"}
    listed = server.json("GET", f"/api/sessions/{warm}/checkpoints")
    assert "gone-soon" not in [c["name"] for c in listed["checkpoints"]]
    assert server.request("DELETE", f"/api/sessions/{warm}/checkpoints/gone-soon")[0] == 404
    assert server.request("DELETE", f"/api/sessions/{warm}/checkpoints/x")[0] == 400


def multipart(fields):
    boundary = uuid.uuid4().hex
    body = b""
    for name, (filename, data) in fields.items():
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_import_an_exported_archive(server, warm):
    exported = server.json("POST", f"/api/sessions/{warm}/export")
    status, _, archive = server.request("GET", exported["download_url"])
    assert status == 200 and len(archive) == exported["size_bytes"]

    body, headers = multipart({"archive": ("a.boxlite", archive),
                               "name": (None, b"attach-imported")})
    status, _, payload = server.request("POST", "/api/import", raw=body, headers=headers)
    assert status == 201, payload
    imported = json.loads(payload)
    assert imported["event"] == "session_imported" and imported["name"] == "attach-imported"
    assert server.json("GET", "/api/sessions/attach-imported")["session"]["state"] == "stopped"
    # The same again: the name is taken now.
    assert server.request("POST", "/api/import", raw=body, headers=headers)[0] == 409
    assert not [p for p in (server.home / "tmp").iterdir() if p.name.startswith("upload-")]
    (server.home / "exports" / exported["download_url"].rsplit("/", 1)[1]).unlink()


def test_import_refusals(server):
    # Over BLINK_IMPORT_MAX by its announced length: refused before the body.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/api/import")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(600 << 20))
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    body, headers = multipart({"name": (None, b"no-archive")})
    assert server.request("POST", "/api/import", raw=body, headers=headers)[0] == 400
    assert server.request("POST", "/api/import", raw=b"x",
                          headers={"Content-Type": "text/plain"})[0] == 400
    body, headers = multipart({"archive": ("a.boxlite", b"not an archive")})
    assert server.request("POST", "/api/import", raw=body, headers=headers)[0] == 400


def test_boot_histogram(server, warm):
    text = server.request("GET", "/metrics")[2].decode()
    count = [line for line in text.splitlines() if line.startswith("blink_vm_boot_seconds_count")]
    assert count and int(count[0].split()[-1]) >= 1, text  # the warm open booted a VM
    assert 'blink_vm_boot_seconds_bucket{le="+Inf"}' in text


def test_restart_with_queued_jobs_and_an_attached_execution(tmp_path):
    home = make_home(tmp_path / "home")
    first = Server(home, workers=0)
    name = "restart-e2e"
    second = None
    try:
        first.json("POST", "/api/sessions", {"name": name, "warm": True}, expect=201)
        script = "i=0; while read line; do i=$((i+1)); echo \"$i:$line\"; done; echo bye"
        spawned = spawn(first, name, {"command": "sh", "args": ["-c", script]})
        ws, _ = attach(first, spawned["attach_url"])
        ws.send_binary(b"a\nb\n")
        _, frames = read_output(ws, b"2:b\n")
        job = first.json("POST", "/api/runs", {"script_inline": inline("echo queued-ran\n"),
                                               "session_name": name}, expect=202)

        # The stop closes the attached client with 1001 and leaves the job queued.
        first.proc.send_signal(signal.SIGTERM)
        _, exit_frame, code = read_until_exit(ws)
        assert exit_frame is None and code == 1001
        assert first.proc.wait(timeout=300) == 0
        first.log.close()

        second = Server(home, port=first.port, workers=1)
        done = wait_for_run(second, job["id"])
        assert done["status"] == "succeeded" and done["result"]["stdout"] == "queued-ran\n"

        # The shim kept the execution: reattach after what was seen.
        ws, hello = attach(second, spawned["attach_url"], after=frames)
        assert hello["next_seq"] == frames + 1 and hello["dropped"] == 0
        ws.send_binary(b"c\n")
        got, _ = read_output(ws, b"3:c\n")
        assert got == b"3:c\n"
        ws.send(json.dumps({"type": "stdin_eof"}))
        out, exit_frame, _ = read_until_exit(ws)
        assert exit_frame["exit_code"] == 0 and b"bye\n" in b"".join(d for _, d in out)

        # A job running when the server dies is failed, with the reason.
        slow = second.json("POST", "/api/runs", {"script_inline": inline("sleep 600\n"),
                                                 "session_name": name}, expect=202)
        while second.json("GET", f"/api/runs/{slow['id']}")["status"] != "running":
            time.sleep(0.2)
        second.proc.kill()
        second.proc.wait(timeout=60)
        second.log.close()
        second = Server(home, port=first.port, workers=1)
        failed = second.json("GET", f"/api/runs/{slow['id']}")
        assert failed["status"] == "failed" and failed["error"].startswith("interrupted")
    finally:
        for srv in (first, second):
            if srv and srv.proc.poll() is None:
                srv.request("DELETE", f"/api/sessions/{name}?force=1")
                srv.stop()


def test_stop_does_not_wait_for_a_trickling_upload(tmp_path):
    srv = Server(make_home(tmp_path / "home"), workers=0)
    body, headers = multipart({"archive": ("a.boxlite", b"x" * (1 << 20))})
    sock = socket.create_connection(("127.0.0.1", srv.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /api/import HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                 f"{head}\r\n".encode() + body[:1000])
    # Only once the server is receiving it (its upload file exists).
    deadline = time.monotonic() + 60
    while not [p for p in (srv.home / "tmp").iterdir() if p.name.startswith("upload-")]:
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)
    srv.proc.send_signal(signal.SIGTERM)
    # The client keeps trickling; the server abandons the upload and exits.
    sent = 1000
    while srv.proc.poll() is None and sent < len(body):
        try:
            sock.sendall(body[sent:sent + 10])
        except OSError:
            break
        sent += 10
        time.sleep(0.2)
    assert srv.proc.wait(timeout=120) == 0, srv.log_text()
    assert sent < len(body)  # it ended before the upload did
    assert "upload abandoned" in srv.log_text()
    assert not [p for p in (srv.home / "tmp").iterdir() if p.name.startswith("upload-")]
    sock.close()
