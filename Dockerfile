# The server in HTTP mode. Backends come from the environment (see docker-compose.yml).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mcp_shared_memory ./mcp_shared_memory
COPY sql ./sql
RUN pip install . && useradd --system --uid 10001 --no-create-home msm

USER msm
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=3)"]
CMD ["mcp-shared-memory", "serve", "--transport", "http", "--host", "0.0.0.0", "--port", "8765"]
