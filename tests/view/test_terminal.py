"""`archer view` as a real terminal program: started in tmux, driven by keys, read off the screen.

This is the path users take over SSH, so it catches what a headless Pilot cannot: the console
script, terminal setup and teardown, and key decoding by a real terminal.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed: cannot run archer view in a terminal"
)


def _tmux(sock: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([TMUX, "-L", sock, *args], capture_output=True, text=True, timeout=30, check=check)


def _screen(sock: str, session: str) -> str:
    return _tmux(sock, "capture-pane", "-p", "-t", session).stdout


def _wait_for(sock: str, session: str, *words: str, timeout: float = 90.0) -> str:
    """Poll the screen until every word is on it (the app starts in a few seconds)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _screen(sock, session)
        if all(w in text for w in words):
            return text
        time.sleep(0.3)
    raise AssertionError(f"{words} not on screen after {timeout}s; screen:\n{text}")


def _wait_gone(sock: str, session: str, words: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while words in _screen(sock, session):
        if time.monotonic() > deadline:
            raise AssertionError(f"{words!r} still on screen after {timeout}s")
        time.sleep(0.2)


def test_archer_view_in_tmux(run_dir, tmp_path):
    sock = f"archer-test-{uuid.uuid4().hex[:8]}"  # a private tmux server: nobody else's sessions
    session = "view"
    env = f"TERM=xterm-256color PATH={os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}"
    # COLUMNS/LINES inherited from the test runner would override the 160x48 window
    cmd = (
        f"cd {tmp_path} && env -u COLUMNS -u LINES {env} {sys.executable} -m archer view {run_dir} --step 2; "
        "echo EXITED=$?; sleep 30"
    )
    _tmux(sock, "new-session", "-d", "-x", "160", "-y", "48", "-s", session, cmd)
    try:
        text = _wait_for(sock, session, "8 of 8 responses", "step 2", "tokenizer")
        assert "steps" in text and "1.509" in text  # the step list from the manifest
        _tmux(sock, "send-keys", "-t", session, "2")
        text = _wait_for(sock, session, "token 1/2", "prompt 12+7=")
        assert "entropy" in text and "influence" in text
        _tmux(sock, "send-keys", "-t", session, "Right")
        _wait_for(sock, session, "token 2/2")
        _tmux(sock, "send-keys", "-t", session, "?")
        _wait_for(sock, session, "archer view: keys")
        _tmux(sock, "send-keys", "-t", session, "Escape")
        _wait_gone(sock, session, "archer view: keys")  # (escape then q at once would read as alt+q)
        _tmux(sock, "send-keys", "-t", session, "q")
        text = _wait_for(sock, session, "EXITED=0")
        assert "Traceback" not in text
    finally:
        _tmux(sock, "kill-server", check=False)
