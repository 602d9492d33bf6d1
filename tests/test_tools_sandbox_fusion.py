"""The python tool on a SandboxFusion server (`agent.tools.python.backend=sandbox_fusion`), against
an in-process fake of SandboxFusion's `/run_code` (a thread HTTP server that runs the posted program
with this interpreter, as the real server does inside its container): the request is verl's client's
JSON body with archer's limits, what the model sees is what the local sandbox shows (last expression
printed, last traceback line, output cap, statuses), and a server that cannot be reached or fails is
a clear `SandboxUnavailable` naming the URL, at start and from the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

pytest.importorskip("verl", reason="the sandbox_fusion backend uses verl's client: pip install -e '.[verl]'")

from archer.core.tools import SandboxLimits, ToolBox  # noqa: E402
from archer.core.tools.python_sandbox import SandboxUnavailable  # noqa: E402
from archer.core.tools.sandbox_fusion import SandboxFusionPython, wrapped  # noqa: E402
from archer.errors import ConfigError  # noqa: E402


class FakeSandboxFusion:
    """`POST /run_code` as SandboxFusion answers it. `mode` "run" executes the program (run_timeout
    → TimeLimitExceeded); "sandbox_error" answers SandboxError; every request body is kept."""

    def __init__(self, mode: str = "run"):
        self.mode = mode
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, **body})
                answer = fake.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/run_code"

    def answer(self, body: dict) -> dict:
        if self.mode == "sandbox_error":
            return {"status": "SandboxError", "message": "no executor available", "run_result": None}
        try:
            p = subprocess.run(
                [sys.executable, "-I", "-c", body["code"]],
                capture_output=True,
                text=True,
                timeout=float(body["run_timeout"]),
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            run = {"status": "TimeLimitExceeded", "return_code": None, "stdout": out, "stderr": ""}
            return {"status": "Failed", "message": "", "compile_result": None, "run_result": run}
        run = {"status": "Finished", "return_code": p.returncode, "stdout": p.stdout, "stderr": p.stderr}
        status = "Success" if p.returncode == 0 else "Failed"
        return {"status": status, "message": "", "compile_result": None, "run_result": run, "files": {}}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def closed_port_url() -> str:
    """A local URL nothing listens on (the port was just free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/run_code"


LIMITS = SandboxLimits(timeout_s=3.0, memory_mb=256, max_output_chars=60)


def test_the_request_is_verls_run_code_body_with_archers_limits_and_the_answer_reads_like_the_local_tool():
    with FakeSandboxFusion() as fake:
        tool = SandboxFusionPython(fake.url, LIMITS)
        r = tool.run("x = 6\nx * 7")
        assert (r.text, r.status) == ("42", "ok")  # a bare last expression is printed
        req = fake.requests[-1]
        assert req["path"] == "/run_code" and req["language"] == "python"
        assert (
            req["run_timeout"] == 3.0
            and req["memory_limit_MB"] == 256
            and req["code"] == wrapped("x = 6\nx * 7")
        )
        assert r.isolation == {
            "isolation": "sandbox_fusion",
            "mechanisms": ["sandbox_fusion"],
            "url": fake.url,
        }

        r = tool.run("print('before')\n1/0")
        assert r.status == "error" and r.text == "before\nZeroDivisionError: division by zero"
        r = tool.run("print(1")
        assert r.status == "error" and r.text.startswith("SyntaxError")
        r = tool.run("print('y' * 500)")
        assert r.status == "ok" and r.truncated
        assert r.text == "y" * 60 + "\n[output truncated to 60 characters]"
        r = tool.run("import sys\nsys.exit(3)")
        assert r.status == "error" and r.text == "(no output)"


def test_a_call_over_the_run_timeout_is_a_timeout_result():
    with FakeSandboxFusion() as fake:
        tool = SandboxFusionPython(fake.url, SandboxLimits(timeout_s=0.5))
        r = tool.run("print('started', flush=True)\nwhile True: pass")
        assert r.status == "timeout" and "TimeoutError: stopped after 0.5s" in r.text


def test_the_toolbox_runs_it_counts_it_and_serves_identical_code_from_the_cache():
    with FakeSandboxFusion() as fake:
        box = ToolBox(SandboxFusionPython(fake.url, LIMITS, cache_size=8))
        try:
            first = box.submit("python", "2 + 3").result()
            second = box.submit("python", "2 + 3").result()
            assert (first.text, first.status, first.cached) == ("5", "ok", False)
            assert second.cached and second.text == "5" and len(fake.requests) == 1
            assert box.take_counts() == {"python/calls": 2.0, "python/cached": 1.0}
        finally:
            box.close()


def test_an_unreachable_or_failing_server_is_a_clear_refusal_never_a_tool_result():
    url = closed_port_url()
    tool = SandboxFusionPython(url, LIMITS)
    with pytest.raises(SandboxUnavailable) as e:
        tool.probe()
    assert url in str(e.value) and "did not answer" in str(e.value)
    assert "agent.tools.python.sandbox_fusion_url" in e.value.hint and "backend=local" in e.value.hint
    with FakeSandboxFusion(mode="sandbox_error") as fake, pytest.raises(SandboxUnavailable) as e:
        SandboxFusionPython(fake.url, LIMITS).run("1")
    assert "no executor available" in str(e.value) and fake.url in str(e.value)


def test_config_needs_the_url_with_the_backend_and_the_backend_with_the_url():
    from archer.core.agent.engine import build_tools, check_config
    from archer.core.config import compose

    with pytest.raises(ConfigError) as e:
        check_config(compose("arpo-quickstart", ["agent.tools.python.backend=sandbox_fusion"]).cfg)
    assert "sandbox_fusion_url" in e.value.hint
    with pytest.raises(ConfigError) as e:
        check_config(
            compose("arpo-quickstart", ["agent.tools.python.sandbox_fusion_url=http://h:8080/run_code"]).cfg
        )
    assert "backend=sandbox_fusion" in e.value.hint
    with FakeSandboxFusion() as fake:
        c = compose(
            "arpo-quickstart",
            [
                "agent.tools.python.backend=sandbox_fusion",
                f"agent.tools.python.sandbox_fusion_url={fake.url}",
            ],
        ).cfg
        check_config(c)
        box, _, probe = build_tools(c.agent, ".", ".")
        try:
            assert probe["isolation"] == "sandbox_fusion" and fake.requests  # probed at start
            assert box.submit("python", "'ok'").result().text == "ok"
        finally:
            box.close()


def test_train_with_an_unreachable_server_stops_at_start_with_one_red_line(tmp_path):
    from archer.cli.main import app

    url = closed_port_url()
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--preset",
            "arpo-quickstart",
            "--out",
            str(tmp_path / "run"),
            "agent.tools.python.backend=sandbox_fusion",
            f"agent.tools.python.sandbox_fusion_url={url}",
            "agent.tools.search.enable=false",
            "data.synth.task=tool_arithmetic",
            "warmup.enable=false",
            "trainer.total_steps=1",
            "trainer.num_threads=1",
            f"trainer.cache_dir={tmp_path / 'cache'}",
        ],
    )
    assert r.exit_code == 1, r.output
    assert "did not answer" in r.stderr and url in r.stderr and "backend=local" in r.stderr, r.stderr
