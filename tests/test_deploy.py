"""The production stack: docker-compose.yml and the Dockerfile name only what the code reads, and the
server runs here with exactly the environment compose gives it (pointed at local equivalents)."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import httpx2
import pytest
import yaml

from mcp_shared_memory.settings import Settings

from .server.mcp_clients import free_port, http_client, http_server, server_env

ROOT = Path(__file__).resolve().parent.parent
CLI_ENV = {"MSM_HOST", "MSM_PORT", "MSM_PUBLIC_URL", "MSM_LOG_LEVEL"}  # read by `serve` options
INTERPOLATION = re.compile(r"\$\{(\w+)(?::[?-]([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str, variables: dict[str, str]) -> str:
    return INTERPOLATION.sub(lambda m: variables.get(m.group(1), m.group(2) or ""), str(value))


def test_compose_defines_the_stack_with_health_checks_and_volumes() -> None:
    services = compose()["services"]

    assert set(services) == {"postgres", "redis", "qdrant", "server"}
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
    assert set(services["server"]["depends_on"]) == {"postgres", "redis", "qdrant"}
    assert all(dep["condition"] == "service_healthy" for dep in services["server"]["depends_on"].values())
    assert {"pgdata", "redisdata", "qdrantdata"} <= set(compose()["volumes"])
    assert "pgvector" in services["postgres"]["image"]


def test_every_variable_compose_gives_the_server_is_read_by_the_code() -> None:
    settings_env = {f"MSM_{name.upper()}" for name in Settings.model_fields}
    server_environment = compose()["services"]["server"]["environment"]

    unknown = set(server_environment) - settings_env - CLI_ENV
    assert not unknown, f"compose sets variables the server never reads: {unknown}"
    assert {"MSM_DATABASE_URL", "MSM_REDIS_URL", "MSM_QDRANT_URL"} <= set(server_environment)


def test_compose_command_matches_the_dockerfile_and_the_cli() -> None:
    command = compose()["services"]["server"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert f"CMD {str(command).replace(chr(39), chr(34))}" in dockerfile
    help_text = subprocess.run(
        [sys.executable, "-m", "mcp_shared_memory", *command[1:2], "--help"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    for flag in [arg for arg in command if arg.startswith("--")]:
        assert flag in help_text


@pytest.mark.anyio
async def test_server_runs_with_the_compose_environment(backend_env: dict[str, str]) -> None:
    """Everything compose sets is used as-is, except the hosts, which become the local test backends.
    There is no Qdrant server on this machine, so MSM_QDRANT_URL is the one variable left out."""
    service = compose()["services"]["server"]
    variables = {"MSM_POSTGRES_PASSWORD": "unused-locally", "MSM_PUBLIC_URL": "http://localhost:8765"}
    env = {key: interpolate(value, variables) for key, value in service["environment"].items()}
    env["MSM_DATABASE_URL"] = backend_env["MSM_DATABASE_URL"]
    env["MSM_DATABASE_OWNER_URL"] = backend_env["MSM_DATABASE_URL"]  # one login: served as msm_app (SET ROLE)
    env["MSM_REDIS_URL"] = backend_env["MSM_REDIS_URL"]
    del env["MSM_QDRANT_URL"], env["MSM_QDRANT_API_KEY"]
    port = free_port()
    command = [arg if arg != "8765" else str(port) for arg in service["command"]]
    command[command.index("--host") + 1] = "127.0.0.1"

    tenant = f"deploy{uuid.uuid4().hex[:8]}"
    created = await anyio.run_process(
        [sys.executable, "-m", "mcp_shared_memory", "token", "create", "--tenant", tenant, "--agent-id", "ops",
         "--scope", "user:alice"],
        env=server_env(backend_env),
    )  # fmt: skip
    token = created.stdout.decode().strip()

    with http_server(env, port, args=command[1:]) as url:
        async with httpx2.AsyncClient(timeout=5) as http:
            health = (await http.get(url.replace("/mcp", "/healthz"))).json()
        recent = await write_and_read(url, token)

    assert health == {"status": "ok", "postgres": "ok", "redis": "ok"}
    assert [e["content"] for e in recent] == ["deployed with the compose environment"]


async def write_and_read(url: str, token: str) -> list[dict]:
    async with http_client(url, token, "auto") as client:
        await client.call_tool("write_event", {"content": "deployed with the compose environment"})
        result = await client.call_tool("get_recent_shared", {"limit": 5})
        return result.structured_content["events"]


@pytest.mark.parametrize("variable", ["MSM_DATABASE_URL", "MSM_REDIS_URL"])
def test_compose_urls_point_at_the_compose_services(variable: str) -> None:
    value = compose()["services"]["server"]["environment"][variable]
    host = re.search(r"@?([a-z]+):\d+", value.split("@")[-1])
    assert host and host.group(1) in compose()["services"]
