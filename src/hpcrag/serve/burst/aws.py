"""AWS: one EC2 GPU instance per replica, started with a user-data script that runs vLLM in Docker.

The instance type comes from clouds.yaml (`providers.aws.gpus.<type>.instance`). The user data starts
the vllm-openai image, waits for /health, and reports readiness by tagging its own instance
`hpcrag:health=healthy` (through IMDSv2 and the AWS CLI); `refresh()` reads that tag and the private
IP back. boto3 honours AWS_ENDPOINT_URL, which is how the tests point it at moto's server.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import VLLM_PORT, BurstAdapter, BurstRequest
from hpcrag.serve.registry import Endpoint, now

HEALTH_TAG = "hpcrag:health"


class AwsAdapter(BurstAdapter):
    kind = "aws"
    unsupported: ClassVar[dict[str, str]] = {
        "multi-node": "one instance per replica: tensor parallelism must fit the GPUs of one instance type",
    }

    @contextmanager
    def _ec2(self) -> Iterator[Any]:
        """An EC2 client whose errors become one clear line instead of a traceback."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield boto3.client("ec2", region_name=self.settings.region)
        except (BotoCoreError, ClientError) as exc:
            raise HpcragError(f"provider {self.provider}: EC2 refused the request: {exc}") from None

    def user_data(self, request: BurstRequest) -> str:
        region = shlex.quote(self.settings.region or "")
        image = shlex.quote(self.settings.image)
        return "\n".join(
            [
                "#!/bin/bash",
                "# hpcrag burst: start vLLM, wait until it answers, then tag this instance healthy.",
                "set -euo pipefail",
                "docker run -d --name vllm --restart on-failure --gpus all --ipc=host \\",
                f"  -p {VLLM_PORT}:{VLLM_PORT} -e NCCL_P2P_LEVEL=NVL --entrypoint bash {image} \\",
                f"  -c {shlex.quote(request.server_command())}",
                f"until curl -sf http://127.0.0.1:{VLLM_PORT}/health >/dev/null; do sleep 5; done",
                "imds=http://169.254.169.254/latest",
                'token=$(curl -sX PUT "$imds/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 300")',
                'instance=$(curl -s -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/instance-id")',
                f'aws ec2 create-tags --region {region} --resources "$instance" \\',
                f"  --tags Key={HEALTH_TAG},Value=healthy",
                "",
            ]
        )

    def launch(self, request: BurstRequest) -> Endpoint:
        self.require("launch")
        if not self.settings.machine_image:
            raise HpcragError(
                f"provider {self.provider}: set burst.machine_image in clouds.yaml to an AMI with Docker "
                "and the NVIDIA container toolkit"
            )
        extra: dict[str, Any] = {}
        if self.settings.spot:
            extra["InstanceMarketOptions"] = {"MarketType": "spot"}
        tags = [
            {"Key": "Name", "Value": request.name},
            {"Key": "hpcrag:tier", "Value": request.tier},
            {"Key": "hpcrag:model", "Value": request.model},
        ]
        with self._ec2() as ec2:
            answer = ec2.run_instances(
                ImageId=self.settings.machine_image,
                InstanceType=request.instance_type,
                MinCount=1,
                MaxCount=1,
                UserData=self.user_data(request),
                TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
                **extra,
            )
        instance = answer["Instances"][0]
        address = instance.get("PrivateIpAddress")
        return Endpoint(
            provider=self.provider,
            site=self.settings.region or "",
            job_id=instance["InstanceId"],
            tier=request.tier,
            model=request.model,
            served_name=request.model,
            state="starting",
            gpu_type=request.gpu_type,
            gpus=request.gpus,
            url=f"http://{address}:{VLLM_PORT}" if address else None,
            usd_per_hour=request.usd_per_hour,
            submitted_at=now(),
            started_at=now(),
            details={"instance_type": request.instance_type, "image": self.settings.image},
        )

    def terminate(self, endpoint: Endpoint) -> None:
        self.require("terminate")
        with self._ec2() as ec2:
            ec2.terminate_instances(InstanceIds=[endpoint.job_id])

    def refresh(self, endpoint: Endpoint) -> dict[str, object]:
        with self._ec2() as ec2:
            answer = ec2.describe_instances(InstanceIds=[endpoint.job_id])
        instance = answer["Reservations"][0]["Instances"][0]
        state = instance["State"]["Name"]
        if state in ("shutting-down", "terminated", "stopped", "stopping"):
            return {"state": "stopped", "message": f"instance {state}", "url": None}
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        changes: dict[str, object] = {}
        if instance.get("PrivateIpAddress"):
            changes["url"] = f"http://{instance['PrivateIpAddress']}:{VLLM_PORT}"
        if tags.get(HEALTH_TAG) == "healthy" and endpoint.state != "healthy":
            changes.update(state="healthy", healthy_at=now())
        return changes
