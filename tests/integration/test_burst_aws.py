"""Cloud burst against moto's EC2 server, with both sites' tier-S partitions really held busy."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrag.config import load_config
from hpcrag.serve.burst.policy import BurstPolicy
from hpcrag.serve.registry import Registry
from hpcrag.slurm.target import SlurmTarget
from tests.integration.helpers import eventually, sbatch_wrap

pytestmark = pytest.mark.integration


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")

    def answers() -> bool:
        try:
            ec2.describe_regions()
            return True
        except Exception:
            return False

    eventually(answers, 30, "moto server answering")
    yield ec2
    server.terminate()
    server.wait(10)


def _burst_config(config_copy: Path, ami: str):
    clouds = config_copy / "clouds.yaml"
    clouds.write_text(
        clouds.read_text().replace(
            "burst: {adapter: aws, region: us-east-1}",
            f"burst: {{adapter: aws, region: us-east-1, machine_image: {ami}}}",
        )
    )
    serving = config_copy / "serving.yaml"
    serving.write_text(
        serving.read_text()
        .replace("idle_s: 600", "idle_s: 0")
        .replace("providers: [coreweave, aws, runpod]", "providers: [aws]")
    )
    return load_config(config_copy, "dev")


def test_saturated_sites_burst_to_aws_and_idle_capacity_goes_back(
    moto, config_copy: Path, tmp_path: Path, nyc: SlurmTarget, sf: SlurmTarget
) -> None:
    ami = moto.describe_images()["Images"][0]["ImageId"]
    config = _burst_config(config_copy, ami)
    registry = Registry(tmp_path / "serving.sqlite")
    policy = BurstPolicy(config, registry)

    (calm,) = policy.evaluate("s", 5.0)
    assert calm.action == "hold" and "waits 5.0 s <= 30 s" in calm.reason
    (free,) = policy.evaluate("s", 60.0)
    assert free.action == "hold" and "a site can start tier s now" in free.reason

    # Hold every L40S of both tier-s partitions (2 nodes x 8 GPUs per site), plus one job waiting.
    fillers = {
        target: [
            sbatch_wrap(target, "-p", "tier-s", "--gres=gpu:l40s:8", "--wrap", "sleep 600") for _ in range(3)
        ]
        for target in (nyc, sf)
    }
    try:
        for target, jobs in fillers.items():
            eventually(
                lambda t=target, j=jobs: (
                    t.squeue("-h", "-o", "%T", f"--jobs={','.join(j)}").split().count("RUNNING") == 2
                ),
                60,
                f"{target.site} tier-s full",
            )
        (burst,) = policy.evaluate("s", 60.0)
        assert burst.action == "burst", burst.reason
        assert "no site can start it" in burst.reason and "1 job(s) pending" in burst.reason
        assert "nyc/tier-s: most free GPUs on a node l40s: 0; a replica needs l40s: 1" in burst.reason
        endpoint = burst.endpoint
        assert endpoint is not None
        assert (endpoint.provider, endpoint.site, endpoint.gpu_type, endpoint.usd_per_hour) == (
            "aws",
            "us-east-1",
            "l40s",
            1.50,
        )
        assert registry.find(provider="aws")[0].job_id == endpoint.job_id
        instance = moto.describe_instances(InstanceIds=[endpoint.job_id])["Reservations"][0]["Instances"][0]
        assert instance["InstanceType"] == "g6.xlarge" and instance["ImageId"] == ami
        assert {"Key": "hpcrag:tier", "Value": "s"} in instance["Tags"]
        user_data = moto.describe_instance_attribute(InstanceId=endpoint.job_id, Attribute="userData")
        script = base64.b64decode(user_data["UserData"]["Value"]).decode()
        assert "--model Qwen/Qwen2.5-3B-Instruct" in script and "Key=hpcrag:health,Value=healthy" in script
        assert endpoint.url == f"http://{instance['PrivateIpAddress']}:8000"

        (waiting,) = policy.evaluate("s", 60.0)
        assert waiting.action == "hold" and "still starting" in waiting.reason
    finally:
        for target, jobs in fillers.items():
            target.scancel(*jobs)

    # The instance reports itself healthy the way its user data does; then it idles and goes back.
    moto.create_tags(Resources=[endpoint.job_id], Tags=[{"Key": "hpcrag:health", "Value": "healthy"}])
    (down,) = policy.evaluate("s", 2.0)
    assert down.action == "scale-down" and down.endpoint is not None
    assert registry.find(provider="aws")[0].state == "stopped"
    state = moto.describe_instances(InstanceIds=[endpoint.job_id])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] in ("shutting-down", "terminated")
