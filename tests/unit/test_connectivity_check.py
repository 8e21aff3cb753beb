"""The `helm test` pod's checks (vlmprobe.connectivity): DNS, a connection to Gemini, a write to the output."""

from __future__ import annotations

import socket

from vlmprobe.connectivity import main


def _listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_it_passes_when_the_endpoint_answers_and_the_output_takes_a_write(tmp_path, capsys):
    with _listening() as server:
        port = server.getsockname()[1]
        code = main(["--gemini-url", f"http://localhost:{port}", "--output-uri", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ok   resolve localhost: " in out and f"ok   reach localhost:{port}: connected to 127.0.0.1" in out
    assert out.splitlines()[-1] == "connectivity check passed"
    assert list((tmp_path / "out").iterdir()) == []  # the marker is gone again


def test_each_failure_is_one_line_and_the_check_fails(tmp_path, capsys):
    with _listening() as server:
        port = server.getsockname()[1]
    (tmp_path / "out").write_text("a file where the output folder should be")
    code = main(["--gemini-url", f"http://127.0.0.1:{port}", "--output-uri", str(tmp_path / "out"),
                 "--timeout-s", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("ok   resolve 127.0.0.1")
    assert lines[1].startswith(f"FAIL reach 127.0.0.1:{port}: ConnectionRefusedError")
    assert lines[2].startswith(f"FAIL write to {tmp_path / 'out'}: ")
    assert lines[-1] == "connectivity check FAILED"


def test_a_name_that_does_not_resolve_skips_the_connection(tmp_path, capsys):
    code = main(["--gemini-url", "https://no-such-host.invalid", "--output-uri", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].startswith("FAIL resolve no-such-host.invalid: gaierror")
    assert lines[1] == "skip reach no-such-host.invalid:443: the name did not resolve"
    assert lines[2] == f"ok   write to {tmp_path}: a marker was written and deleted"
