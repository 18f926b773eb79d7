"""Burst adapters: manifests and task files that the real validators accept, user data, capabilities."""

from __future__ import annotations

import pytest

from hpcrag.config import load_config
from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import CAPABILITIES, CapabilityError
from hpcrag.serve.burst.policy import burst_request
from hpcrag.serve.burst.registry import adapter_for, adapters
from tests.conftest import CONFIG_DIR


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG_DIR, "production")


def test_requests_pick_a_fitting_gpu_and_price(config) -> None:
    small = burst_request(config, "aws", "s")
    assert small is not None
    assert (small.gpu_type, small.instance_type, small.gpus, small.usd_per_hour) == (
        "l40s",
        "g6.xlarge",
        1,
        1.50,
    )
    assert small.hf_id == "Qwen/Qwen2.5-3B-Instruct"
    large = burst_request(config, "coreweave", "l")
    assert large is not None and large.gpu_type == "b200" and "--quantization=fp8" in large.vllm_args
    # Serverless XL: the PRD rules out H100 and below there; RunPod offers nothing better than H200.
    xl = burst_request(config, "runpod", "xl")
    assert xl is not None and xl.gpu_type == "h200"


def test_kubernetes_manifests_validate(config) -> None:
    import kubernetes_validate

    adapter = adapter_for(config, "coreweave")
    request = burst_request(config, "coreweave", "l")
    deployment, service = adapter.manifests(request)
    for manifest in (deployment, service):
        kubernetes_validate.validate(manifest, desired_version="1.30", strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == request.gpus
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-B200"}
    assert f"--served-model-name={request.model}" in container["args"]
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, desired_version="1.30", strict=True)


def test_skypilot_task_validates(config) -> None:
    import sky

    adapter = adapter_for(config, "runpod")
    request = burst_request(config, "runpod", "s")
    task = sky.Task.from_yaml_config(adapter.task(request))
    (resources,) = task.resources
    assert resources.accelerators == {"L40S": 1}
    assert "vllm.entrypoints.openai.api_server" in task.run and "--port 8000" in task.run


def test_aws_user_data_starts_vllm_and_reports(config) -> None:
    adapter = adapter_for(config, "aws")
    script = adapter.user_data(burst_request(config, "aws", "m"))
    assert script.startswith("#!/bin/bash")
    assert "docker run -d --name vllm" in script and "vllm/vllm-openai:v0.6.4" in script
    assert "--model meta-llama/Llama-3.1-8B-Instruct" in script
    assert "Key=hpcrag:health,Value=healthy" in script


def test_capabilities_are_declared_not_discovered(config) -> None:
    assert set(adapters()) == {"aws", "kubernetes", "skypilot"}
    for kind, cls in adapters().items():
        assert cls.kind == kind and "multi-node" in cls.unsupported
        assert set(cls.unsupported) <= set(CAPABILITIES)
    with pytest.raises(CapabilityError, match=r"kubernetes \(coreweave\) cannot spot: preemptible capacity"):
        adapter_for(config, "coreweave").require("spot")
    with pytest.raises(Exception, match="provider modal has no burst adapter"):
        adapter_for(config, "modal")
    with pytest.raises(Exception, match="unknown provider 'ibm'"):
        adapter_for(config, "ibm")


def test_unreachable_clouds_are_one_clear_error(
    config_copy, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    clouds = config_copy / "clouds.yaml"
    clouds.write_text(
        clouds.read_text().replace(
            "burst: {adapter: aws, region: us-east-1}",
            "burst: {adapter: aws, region: us-east-1, machine_image: ami-12345678}",
        )
    )
    config = load_config(config_copy, "production")
    for key, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_MAX_ATTEMPTS": "1",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(HpcragError, match="provider aws: EC2 refused the request: Could not connect"):
        adapter_for(config, "aws").launch(burst_request(config, "aws", "s"))
    with pytest.raises(HpcragError, match="provider coreweave: no usable kubeconfig"):
        adapter_for(config, "coreweave").launch(burst_request(config, "coreweave", "s"))
    with pytest.raises(HpcragError, match="set burst\\.machine_image"):
        adapter_for(load_config(CONFIG_DIR, "production"), "aws").launch(burst_request(config, "aws", "s"))
