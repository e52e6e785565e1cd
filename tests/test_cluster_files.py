"""Static checks of the deploy files in cluster/: they parse, name what the code expects, and agree."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from nasplat.runtime.resources import DRIVER_RESOURCE
from pipelines.jobs import DEFAULT_DASHBOARD_PORT

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LAUNCHER = CLUSTER / "ray-cluster.aws.yaml"
KUBERAY = (CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml")


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _dockerfile_image() -> str:
    """The tag the Dockerfile's build command gives the image."""
    match = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", (CLUSTER / "Dockerfile").read_text())
    assert match, "cluster/Dockerfile: no `docker build ... -t IMAGE .` line"
    return match.group(1)


def _ray_cluster_specs() -> list[dict]:
    specs = []
    for path in KUBERAY:
        for doc in _docs(path):
            if doc["kind"] == "RayCluster":
                specs.append(doc["spec"])
            elif doc["kind"] == "RayJob":
                specs.append(doc["spec"]["rayClusterSpec"])
    return specs


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_launcher_config_is_valid_for_ray_cluster_launcher():
    """Ray's own schema and validation (the ones `ray up` runs) accept the file."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    gpu = [t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(0 <= t["min_workers"] <= t["max_workers"] for t in gpu)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get(DRIVER_RESOURCE, 0) >= 1
    head_start = " ".join(config["head_start_ray_commands"])
    assert f"--dashboard-port={DEFAULT_DASHBOARD_PORT}" in head_start
    assert f'"{DRIVER_RESOURCE}"' in head_start
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(config[commands]), commands
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "nasplat" in c for c in config["setup_commands"])
    assert config["docker"]["image"] == _dockerfile_image()


def test_kuberay_manifests_have_head_gpu_workers_token_storage_and_mlflow():
    specs = _ray_cluster_specs()
    assert len(specs) == 2
    for spec in specs:
        assert spec["rayVersion"] == ray.__version__
        assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
        head = spec["headGroupSpec"]
        custom = json.loads(json.loads(head["rayStartParams"]["resources"]))  # KubeRay's quoted-JSON form
        assert custom[DRIVER_RESOURCE] >= 1
        ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert DEFAULT_DASHBOARD_PORT in ports
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
        assert gpu_groups and all(g["minReplicas"] <= g["maxReplicas"] for g in gpu_groups)
        for container in _containers(spec):
            assert container["image"] == _dockerfile_image()
            assert {"configMapRef": {"name": "nasplat-mlflow"}} in container["envFrom"]
            assert any(m["mountPath"] == "/mnt/nasplat" for m in container["volumeMounts"])
    claims = [d for d in _docs(KUBERAY[0]) if d["kind"] == "PersistentVolumeClaim"]
    assert claims and claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _docs(KUBERAY[1])[0]
    assert job["spec"]["entrypoint"].startswith("nasplat search") and "/mnt/nasplat" in job["spec"]["entrypoint"]


def test_dockerfile_pins_the_ray_version_of_the_client():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"ARG RAY_IMAGE=rayproject/ray:(\S+)", text)
    assert base and base.group(1).startswith(ray.__version__ + "-")
    assert f"ray[default,train,tune,data]=={ray.__version__}" in text


def _ui_port() -> int:
    """The default port of `nasplat ui` (the MLflow UI)."""
    from pipelines.cli import build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    return subcommands["ui"].parse_args([]).port


def test_local_script_parses_and_uses_the_default_ports():
    assert subprocess.run(["bash", "-n", str(CLUSTER / "local.sh")]).returncode == 0
    text = (CLUSTER / "local.sh").read_text()
    assert f"DASHBOARD_PORT=${{NASPLAT_DASHBOARD_PORT:-{DEFAULT_DASHBOARD_PORT}}}" in text
    assert f"MLFLOW_PORT=${{NASPLAT_MLFLOW_PORT:-{_ui_port()}}}" in text
    assert DRIVER_RESOURCE in text and "ray stop" not in text.replace("never `ray stop`", "")


@pytest.mark.parametrize("path", [LAUNCHER, *KUBERAY], ids=lambda p: p.name)
def test_yaml_images_and_versions_agree(path):
    text = path.read_text()
    images = set(re.findall(r"image: (\S+)", text))
    assert images == {_dockerfile_image()}
