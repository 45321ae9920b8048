"""Two OS processes on the zero-config (embedded) backends share one memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp_shared_memory.embedded import remove_data_dir

from .zero_config_child import FACTS

CHILD = Path(__file__).with_name("zero_config_child.py")


def test_two_processes_see_each_others_events_by_recency_and_meaning() -> None:
    data_dir = tempfile.mkdtemp(prefix="msm-zero-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
    try:
        children = [
            subprocess.Popen(
                [sys.executable, str(CHILD), name, data_dir],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name in ("one", "two")
        ]
        outputs = {}
        for name, child in zip(("one", "two"), children, strict=True):
            out, err = child.communicate(timeout=180)
            assert child.returncode == 0, err[-3000:]
            outputs[name] = json.loads(out.strip().splitlines()[-1])
    finally:
        remove_data_dir(data_dir)

    for name, other in (("one", "two"), ("two", "one")):
        assert outputs[name]["recent"] == ["agent-one", "agent-two"]
        assert outputs[name]["search"] == [[f"agent-{other}", FACTS[other]]]
