"""MSM_LOG_FORMAT=json: every line on stderr is one JSON object, with secrets redacted from messages and
tracebacks, and nothing on stdout (it belongs to the stdio transport). Run in a child process, as the CLI
configures logging once per process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcp_shared_memory.settings import Settings

CHILD = """
import logging
from mcp_shared_memory.cli import start
start()
log = logging.getLogger("mcp_shared_memory.stores.postgres")
log.info("connected to postgresql://app:hunter2@db.internal:5432/msm")
log.warning("two lines\\nof text with token sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD")
try:
    raise ConnectionError("redis://:hunter2@cache:6379/0 refused")
except ConnectionError:
    log.exception("Redis failed")
logging.getLogger("uvicorn.error").warning("from a library's logger")
"""


def run_child(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_json_logs_are_one_object_per_line_without_secrets() -> None:
    done = run_child(MSM_LOG_FORMAT="json", MSM_LOG_LEVEL="INFO")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["level"], e["logger"]) for e in entries] == [
        ("INFO", "mcp_shared_memory.stores.postgres"),
        ("WARNING", "mcp_shared_memory.stores.postgres"),
        ("ERROR", "mcp_shared_memory.stores.postgres"),
        ("WARNING", "uvicorn.error"),
    ]
    assert entries[1]["message"].startswith("two lines\nof text with token ")
    assert entries[2]["exc_type"] == "ConnectionError" and "Traceback" in entries[2]["exception"]
    assert all(e["ts"].endswith("+00:00") for e in entries)
    assert "hunter2" not in done.stderr and "sk-abcdefghij" not in done.stderr


def test_text_logs_stay_the_default() -> None:
    done = run_child(MSM_LOG_LEVEL="WARNING")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].split(" ", 3)[2:] == ["WARNING", "mcp_shared_memory.stores.postgres: two lines"]


def test_an_unknown_log_format_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")  # type: ignore[arg-type]
    assert Settings(log_format="JSON").log_format == "json"  # type: ignore[arg-type]
