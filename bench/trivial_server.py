"""The SDK floor: a tiny MCPServer with one constant tool (as in the SDK reference benchmark).

Run as ``python bench/trivial_server.py stdio`` or ``python bench/trivial_server.py http PORT``.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bench-trivial", log_level="WARNING")


@mcp.tool()
async def const() -> str:
    return "ok"


def main() -> None:
    if sys.argv[1] == "stdio":
        mcp.run("stdio")
        return
    import uvicorn

    app = mcp.streamable_http_app()
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
