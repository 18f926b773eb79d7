"""SkyPilot: a task YAML for the clouds SkyPilot reaches (GCP, Azure, Lambda, RunPod, ...), launched
with the `sky` command line as a single-node cluster that serves vLLM on its port 8000."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import VLLM_PORT, BurstAdapter, BurstRequest
from hpcrag.serve.registry import Endpoint, now
from hpcrag.slurm.command import run_command

# SkyPilot's accelerator names.
ACCELERATOR = {
    "b200": "B200",
    "h200": "H200",
    "h100": "H100",
    "a100": "A100-80GB",
    "l40s": "L40S",
    "rtx4090": "RTX4090",
}


class SkyPilotAdapter(BurstAdapter):
    kind = "skypilot"
    unsupported: ClassVar[dict[str, str]] = {
        "multi-node": "tasks are launched with num_nodes 1: tensor parallelism must fit one node"
    }

    def task(self, request: BurstRequest) -> dict[str, Any]:
        if not self.settings.cloud:
            raise HpcragError(
                f"provider {self.provider}: set burst.cloud (SkyPilot's cloud name) in clouds.yaml"
            )
        return {
            "name": request.name,
            "resources": {
                "cloud": self.settings.cloud,
                "accelerators": f"{ACCELERATOR[request.gpu_type]}:{request.gpus}",
                "ports": VLLM_PORT,
                "use_spot": self.settings.spot,
                "image_id": f"docker:{self.settings.image}",
            },
            "num_nodes": 1,
            "envs": {"NCCL_P2P_LEVEL": "NVL"},
            "run": request.server_command(),
        }

    def task_yaml(self, request: BurstRequest) -> str:
        return yaml.safe_dump(self.task(request), sort_keys=False)

    def launch(self, request: BurstRequest) -> Endpoint:
        self.require("launch")
        cluster = request.name
        with tempfile.TemporaryDirectory() as folder:
            task_file = Path(folder) / "task.yaml"
            task_file.write_text(self.task_yaml(request))
            run_command(
                ["sky", "launch", "--yes", "--detach-run", "-c", cluster, str(task_file)], timeout=3600
            )
        return Endpoint(
            provider=self.provider,
            site=self.settings.cloud or "",
            job_id=cluster,
            tier=request.tier,
            model=request.model,
            served_name=request.model,
            state="starting",
            gpu_type=request.gpu_type,
            gpus=request.gpus,
            usd_per_hour=request.usd_per_hour,
            submitted_at=now(),
            started_at=now(),
            details={"task": json.loads(json.dumps(self.task(request)))},
        )

    def terminate(self, endpoint: Endpoint) -> None:
        self.require("terminate")
        run_command(["sky", "down", "--yes", endpoint.job_id], timeout=1800)

    def refresh(self, endpoint: Endpoint) -> dict[str, object]:
        url = run_command(["sky", "status", "--endpoint", str(VLLM_PORT), endpoint.job_id]).stdout.strip()
        return {"url": url if url.startswith("http") else f"http://{url}"} if url else {}
