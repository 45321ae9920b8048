"""The MCP Inspector CLI (what users poke servers with) lists our tools and calls them over stdio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid

import pytest

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"


def inspector(backend_env: dict[str, str], tenant: str, *method: str) -> dict:
    npx = shutil.which("npx")
    if npx is None:
        pytest.fail("npx (Node.js) is required for the MCP Inspector test: apt-get install -y nodejs npm")
    env_args = [arg for key in ("MSM_DATABASE_URL", "MSM_REDIS_URL") for arg in ("-e", f"{key}={backend_env[key]}")] + [
        "-e",
        f"MSM_TENANT={tenant}",
        "-e",
        "MSM_SCOPE=user:alice",
        "-e",
        "MSM_AGENT_ID=inspector",
    ]
    done = subprocess.run(
        [npx, "--yes", INSPECTOR, "--cli", *env_args, sys.executable, "-m", "mcp_shared_memory", "serve", *method],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_inspector_lists_tools_and_calls_write_and_recent(backend_env: dict[str, str]) -> None:
    tenant = f"insp{uuid.uuid4().hex[:8]}"

    listed = inspector(backend_env, tenant, "--method", "tools/list")
    written = inspector(
        backend_env, tenant, "--method", "tools/call", "--tool-name", "write_event",
        "--tool-arg", "content=hello from the inspector", "--tool-arg", "importance=0.9",
    )  # fmt: skip
    recent = inspector(
        backend_env, tenant, "--method", "tools/call", "--tool-name", "get_recent_shared", "--tool-arg", "limit=5"
    )

    names = {tool["name"] for tool in listed["tools"]}
    assert {"write_event", "get_recent_shared", "search_shared", "create_workspace", "store_fact"} <= names
    assert written["structuredContent"]["status"] == "written"
    events = recent["structuredContent"]["events"]
    assert [(e["agent_id"], e["content"]) for e in events] == [("inspector", "hello from the inspector")]
