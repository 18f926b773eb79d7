"""Kubernetes clouds (CoreWeave, Lambda's and others'): a Deployment and a Service per tier, as in the
PRD's deployment section, applied with the kubernetes client against the current kubeconfig."""

from __future__ import annotations

from typing import Any, ClassVar

from hpcrag.errors import HpcragError
from hpcrag.serve.burst.base import VLLM_PORT, BurstAdapter, BurstRequest
from hpcrag.serve.registry import Endpoint, now

# The node labels NVIDIA's GPU feature discovery sets (nvidia.com/gpu.product).
GPU_PRODUCT = {
    "b200": "NVIDIA-B200",
    "h200": "NVIDIA-H200",
    "h100": "NVIDIA-H100-80GB-HBM3",
    "a100": "NVIDIA-A100-SXM4-80GB",
    "l40s": "NVIDIA-L40S",
    "rtx4090": "NVIDIA-GeForce-RTX-4090",
}
MEMORY_PER_GPU_GI = 64


class KubernetesAdapter(BurstAdapter):
    kind = "kubernetes"
    unsupported: ClassVar[dict[str, str]] = {
        "spot": "preemptible capacity is a property of the cluster's node pools, not of a Deployment",
        "multi-node": "one pod per replica: tensor parallelism must fit one node's GPUs",
    }

    def manifests(self, request: BurstRequest) -> list[dict[str, Any]]:
        name = request.name
        namespace = self.settings.namespace
        labels = {"app": name, "model-tier": request.tier, "app.kubernetes.io/managed-by": "hpcrag"}
        args = [f"--model={request.hf_id}", f"--served-model-name={request.model}", *request.vllm_args]
        memory = f"{MEMORY_PER_GPU_GI * request.gpus}Gi"
        resources = {"nvidia.com/gpu": request.gpus, "memory": memory}
        container = {
            "name": "vllm",
            "image": self.settings.image,
            "args": [*args, "--host=0.0.0.0", f"--port={VLLM_PORT}"],
            "resources": {"limits": resources, "requests": resources},
            "ports": [{"containerPort": VLLM_PORT, "name": "http"}],
            "readinessProbe": {
                "httpGet": {"path": "/health", "port": VLLM_PORT},
                "initialDelaySeconds": 60,
                "periodSeconds": 10,
            },
            "env": [{"name": "NCCL_P2P_LEVEL", "value": "NVL"}] if request.gpus > 1 else [],
        }
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {"nvidia.com/gpu.product": GPU_PRODUCT[request.gpu_type]},
                        "containers": [container],
                    },
                },
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "http", "port": VLLM_PORT, "targetPort": VLLM_PORT}],
                "type": "ClusterIP",
            },
        }
        return [deployment, service]

    def _clients(self) -> tuple[Any, Any]:
        from kubernetes import client, config

        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise HpcragError(
                f"provider {self.provider}: no usable kubeconfig ({exc}); set KUBECONFIG to the cluster's"
            ) from None
        return client.AppsV1Api(), client.CoreV1Api()

    def launch(self, request: BurstRequest) -> Endpoint:
        self.require("launch")
        deployment, service = self.manifests(request)
        apps, core = self._clients()
        namespace = self.settings.namespace
        apps.create_namespaced_deployment(namespace=namespace, body=deployment)
        core.create_namespaced_service(namespace=namespace, body=service)
        return Endpoint(
            provider=self.provider,
            site=namespace,
            job_id=request.name,
            tier=request.tier,
            model=request.model,
            served_name=request.model,
            state="starting",
            gpu_type=request.gpu_type,
            gpus=request.gpus,
            url=f"http://{request.name}.{namespace}.svc:{VLLM_PORT}",
            usd_per_hour=request.usd_per_hour,
            submitted_at=now(),
            started_at=now(),
            details={"image": self.settings.image},
        )

    def terminate(self, endpoint: Endpoint) -> None:
        self.require("terminate")
        apps, core = self._clients()
        apps.delete_namespaced_deployment(name=endpoint.job_id, namespace=endpoint.site)
        core.delete_namespaced_service(name=endpoint.job_id, namespace=endpoint.site)
