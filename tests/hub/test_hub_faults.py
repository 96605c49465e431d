"""Faults that need a hub in its own process: killed in the middle of an upload, then restarted."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

from envhub.identity.artifact import pack_bytes


def test_server_killed_mid_upload_leaves_no_half_written_version(tmp_path, isolated_home, env_folder, hub_process):
    data_dir = tmp_path / "hub-data"
    made = subprocess.run(
        [sys.executable, "-c", "from envhub.cli import main; main()", "hub", "adduser", "alice", "--data", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("ehub_")

    hub = hub_process(data_dir)
    hub.start()
    try:
        # Send the headers and a third of a 3 MB body, then kill the server while it waits for the rest.
        body = pack_bytes(env_folder(namespace="alice", name="half", extra="x" * (3 << 20)))
        with socket.create_connection(("127.0.0.1", hub.port)) as sock:
            head = (
                f"PUT /api/v1/envs/alice/half/1.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 3])
            time.sleep(0.5)
            hub.kill()
        hub.start()
        headers = {"Authorization": f"Bearer {token}"}
        missing = httpx.get(f"{hub.url}/api/v1/envs/alice/half", headers=headers)
        assert missing.status_code == 404, missing.text
        assert "alice/half" not in httpx.get(f"{hub.url}/registry.json").json()["environments"]
        # The same publish now goes through, complete.
        done = httpx.put(f"{hub.url}/api/v1/envs/alice/half/1.0.0", content=body, headers=headers, timeout=60)
        assert done.status_code == 201, done.text
        got = httpx.get(f"{hub.url}/api/v1/envs/alice/half/1.0.0/artifact", headers=headers, timeout=60)
        assert got.content == body
    finally:
        hub.kill()
