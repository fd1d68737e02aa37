"""`ftlaunch render`: every target's manifest validates against the target's published schema
(KubeRay's CRDs, Ray's cluster-launcher validation, SkyPilot's task schema), a broken one does
not, and the node shape follows the job. Schemas: tests/data/*/README.md."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from launcher.commands.render import cluster_warnings, write_new
from launcher.errors import UserError
from launcher.render import TARGETS, RenderOptions, ShapeFlags, render
from launcher.render.common import DEFAULT_IMAGE
from trainer.config import JobConfig

DATA = Path(__file__).resolve().parents[2] / "data"
KUBERAY_SCHEMAS = DATA / "kuberay" / "crds-v1.7.0.schema.json"
SKYPILOT_SCHEMAS = DATA / "skypilot" / "schemas-0.14.1.json"


def make_job(**cluster: Any) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": "Llama_8B full",
            "model": {"path": "meta-llama/Llama-3.1-8B"},
            "data": {"train": "hf://org/d", "validation": "hf://org/d:v", "test": "hf://org/d:t"},
            "output": {"dir": "runs/llama"},
            "cluster": {"num_workers": 16, "gpus_per_worker": 1, "cpus_per_worker": 8}
            | {"secret_env": ["HF_TOKEN"]}
            | cluster,
        }
    )


OPTIONS = RenderOptions(gpu_type="H100", project_id="my-project", output_pvc="results")


# ---- KubeRay: the CRDs' openAPIV3Schema ----------------------------------------------------


def strict(schema: Any) -> Any:
    """Kubernetes rejects unknown fields (kubectl's default strict field validation) where the
    CRD does not preserve them; JSON Schema allows them unless told, so say it."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def kuberay_validators() -> dict[str, jsonschema.Draft7Validator]:
    schemas = json.loads(KUBERAY_SCHEMAS.read_text())
    rayjob = copy.deepcopy(schemas["RayJob"])
    # Vendored once: the RayJob CRD's rayClusterSpec is RayCluster's spec, byte for byte.
    rayjob["properties"]["spec"]["properties"]["rayClusterSpec"] = schemas["RayCluster"][
        "properties"
    ]["spec"]
    return {
        kind: jsonschema.Draft7Validator(strict(schema))
        for kind, schema in (("RayCluster", schemas["RayCluster"]), ("RayJob", rayjob))
    }


def validate_kuberay(validators: dict[str, jsonschema.Draft7Validator], doc: dict) -> None:
    if doc["kind"] == "ConfigMap":  # core/v1: only string data, a DNS-1123 name
        assert doc["apiVersion"] == "v1"
        assert all(isinstance(v, str) for v in doc["data"].values())
    else:
        assert doc["apiVersion"] == "ray.io/v1"
        validators[doc["kind"]].validate(doc)
    name = doc["metadata"]["name"]
    assert len(name) <= 63 and name == name.lower() and name.replace("-", "").isalnum()


def test_rayjob_validates_and_runs_the_job(kuberay_validators: dict) -> None:
    job = make_job()
    config_map, rayjob = render("kuberay-rayjob", job, OPTIONS)
    for doc in (config_map, rayjob):
        validate_kuberay(kuberay_validators, doc)
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["entrypoint"] == "ftlaunch run /ftlaunch/job/job.yaml --address auto"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "ftlaunch"}
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2  # 16 / 8 GPUs
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert worker["resources"]["limits"]["cpu"] == "64"
    assert worker["image"] == DEFAULT_IMAGE
    head = cluster["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "ftlaunch",
        "key": "auth_token",
    }
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "HF_TOKEN"
    assert {v["name"] for v in head["volumes"]} == {"job", "output"}
    # The job file in the ConfigMap is this job, joining the cluster, writing to the volume.
    shipped = JobConfig.model_validate(yaml.safe_load(config_map["data"]["job.yaml"]))
    assert shipped.cluster.address == "auto"
    assert shipped.output.dir == "/ftlaunch/output/ftl-llama-8b-full"
    assert shipped.model == job.model and shipped.cluster.num_workers == 16


def test_raycluster_validates_and_scales_from_zero(kuberay_validators: dict) -> None:
    (cluster,) = render("kuberay-raycluster", make_job(), OPTIONS)
    validate_kuberay(kuberay_validators, cluster)
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (0, 0, 2)
    selector = group["template"]["spec"]["nodeSelector"]
    assert selector == {"nvidia.com/gpu.product": "H100"}


@pytest.mark.parametrize(
    ("target", "breakage"),
    [
        ("kuberay-rayjob", lambda d: d["spec"].update(shutdownAfterJobFinishes="yes")),
        ("kuberay-rayjob", lambda d: d["spec"]["rayClusterSpec"].update(workerGroupSpec=[])),
        ("kuberay-raycluster", lambda d: d["spec"]["workerGroupSpecs"][0].pop("groupName")),
        (
            "kuberay-raycluster",
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][
                0
            ].update(containerPort="6379"),
        ),
    ],
)
def test_a_broken_kuberay_manifest_fails_the_schema(
    kuberay_validators: dict, target: str, breakage: Any
) -> None:
    doc = render(target, make_job(), OPTIONS)[-1]
    validate_kuberay(kuberay_validators, doc)  # valid as rendered
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_kuberay(kuberay_validators, doc)


# ---- Ray's cluster launcher: Ray's own validation, as `ray up` runs it --------------------


def ray_up_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("target", ["ray-aws", "ray-gcp"])
def test_cluster_launcher_config_passes_rays_validation(target: str, tmp_path: Path) -> None:
    (config,) = render(
        target, make_job(), RenderOptions(gpu_type="H100", project_id="p", spot=True)
    )
    prepared = ray_up_validate(config)
    workers = prepared["available_node_types"]["ray.worker.gpu"]
    assert (workers["min_workers"], workers["max_workers"], prepared["max_workers"]) == (0, 2, 2)
    assert workers["resources"]["GPU"] == 8
    assert prepared["head_node_type"] == "ray.head.cpu"
    node = workers["node_config"]
    if target == "ray-aws":
        assert node["InstanceType"] == "p5.48xlarge"
        assert node["InstanceMarketOptions"] == {"MarketType": "spot"}
    else:
        assert node["machineType"] == "a3-highgpu-8g"
        assert node["scheduling"]["preemptible"] is True
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    (write_job,) = config["head_setup_commands"]
    home = tmp_path / target
    completed = subprocess.run(
        ["bash", "-c", write_job], env={"HOME": str(home), "PATH": os.environ["PATH"]}
    )
    assert completed.returncode == 0
    shipped = JobConfig.model_validate(yaml.safe_load((home / "ftlaunch/job.yaml").read_text()))
    assert shipped.cluster.address == "auto" and shipped.model == make_job().model


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_workers="zero"),
        lambda c: c.update(head_node_type="ray.head.missing"),
        lambda c: c.update(max_worker=4),  # a typo: unknown top-level key
    ],
)
@pytest.mark.parametrize("target", ["ray-aws", "ray-gcp"])
def test_a_broken_cluster_launcher_config_fails_rays_validation(target: str, breakage: Any) -> None:
    (config,) = render(target, make_job(), OPTIONS)
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_up_validate(config)


# ---- SkyPilot: its task and resources schemas ---------------------------------------------


@pytest.fixture(scope="module")
def skypilot_validators() -> tuple[Any, Any]:
    schemas = json.loads(SKYPILOT_SCHEMAS.read_text())
    return tuple(  # type: ignore[return-value]
        jsonschema.validators.validator_for(schema)(schema)
        for schema in (schemas["task"], schemas["resources"])
    )


def validate_skypilot(validators: tuple, task: dict) -> None:
    task_schema, resources_schema = validators
    task_schema.validate(task)
    resources_schema.validate(task["resources"])  # sky.Resources.from_yaml_config does this


def test_skypilot_task_validates(skypilot_validators: tuple, tmp_path: Path) -> None:
    (task,) = render("skypilot", make_job(), RenderOptions(gpu_type="H100", spot=True))
    validate_skypilot(skypilot_validators, task)
    assert task["num_nodes"] == 2
    resources = task["resources"]
    assert resources["accelerators"] == "H100:8" and resources["use_spot"] is True
    assert resources["job_recovery"]["recover_on_exit_codes"] == [3]
    assert task["secrets"] == {"RAY_AUTH_TOKEN": None, "HF_TOKEN": None}
    assert "ftlaunch run ~/ftlaunch/job.yaml --address auto" in task["run"]
    assert "wait auto 2 --timeout" in task["run"]
    completed = subprocess.run(  # the setup writes this job's file
        ["bash", "-c", task["setup"]], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    )
    assert completed.returncode == 0
    shipped = yaml.safe_load((tmp_path / "ftlaunch" / "job.yaml").read_text())
    assert JobConfig.model_validate(shipped).model == make_job().model


@pytest.mark.parametrize(
    "breakage",
    [
        lambda t: t.update(num_nodes="two"),
        lambda t: t["resources"].update(use_spots=True),
        lambda t: t.update(envs=["RAY_AUTH_MODE=token"]),
    ],
)
def test_a_broken_skypilot_task_fails_the_schema(skypilot_validators: tuple, breakage: Any) -> None:
    (task,) = render("skypilot", make_job(), OPTIONS)
    validate_skypilot(skypilot_validators, task)
    breakage(task)
    with pytest.raises(jsonschema.ValidationError):
        validate_skypilot(skypilot_validators, task)


# ---- the node shape, and bad input --------------------------------------------------------


@pytest.mark.parametrize(
    ("cluster", "flags", "expected"),
    [
        ({}, ShapeFlags(), (2, 8, 64)),  # 16 x 1 GPU on 8-GPU machines
        ({}, ShapeFlags(gpus_per_node=4), (4, 4, 32)),
        ({"num_workers": 4, "placement": "strict_spread"}, ShapeFlags(), (4, 1, 8)),
        ({"num_workers": 3, "gpus_per_worker": 0}, ShapeFlags(), (1, 0, 24)),
        ({}, ShapeFlags(nodes=4, cpus_per_node=48), (4, 4, 48)),
    ],
)
def test_node_shape_follows_the_job_and_flags(
    cluster: dict, flags: ShapeFlags, expected: tuple
) -> None:
    (config,) = render("skypilot", make_job(**cluster), RenderOptions(shape=flags, gpu_type="A100"))
    gpus = int(config["resources"].get("accelerators", "A100:0").split(":")[1])
    assert (config["num_nodes"], gpus, int(config["resources"]["cpus"].rstrip("+"))) == expected


@pytest.mark.parametrize(
    ("target", "cluster", "options", "message"),
    [
        (
            "kuberay-rayjob",
            {},
            RenderOptions(shape=ShapeFlags(nodes=1, gpus_per_node=8)),
            "cluster.num_workers: needs 16 workers x 8 CPU + 1 GPU",
        ),
        (
            "skypilot",
            {},
            RenderOptions(gpu_type="H100", shape=ShapeFlags(cpus_per_node=4)),
            "cluster.num_workers: needs 16 workers x 8 CPU + 1 GPU",
        ),
        (
            "skypilot",
            {"num_nodes": 2, "placement": "spread"},
            RenderOptions(gpu_type="H100", shape=ShapeFlags(nodes=4)),
            "cluster.num_nodes: needs 16 workers",
        ),
        ("ray-aws", {}, RenderOptions(shape=ShapeFlags(gpus_per_node=3)), "--gpu-type: ray-aws"),
        (
            "ray-aws",
            {},
            RenderOptions(gpu_type="H100", shape=ShapeFlags(gpus_per_node=4)),
            "--gpus-per-node: ray-aws knows no machine with 4 x H100",
        ),
        ("ray-gcp", {}, RenderOptions(gpu_type="H100"), "--project-id: ray-gcp needs"),
        ("kuberay-raycluster", {}, RenderOptions(spot=True), "--spot: on Kubernetes"),
        ("skypilot", {}, RenderOptions(), "--gpu-type: skypilot needs"),
        ("skypilot", {}, RenderOptions(shape=ShapeFlags(nodes=0)), "--nodes: must be >= 1"),
        ("helm", {}, OPTIONS, "TARGET: unknown target 'helm'; known: kuberay-rayjob, "),
    ],
)
def test_bad_input_is_one_line_naming_the_field(
    target: str, cluster: dict, options: RenderOptions, message: str
) -> None:
    with pytest.raises(UserError) as caught:
        render(target, make_job(**cluster), options)
    assert len(caught.value.messages) == 1 and caught.value.messages[0].startswith(message), (
        caught.value.messages
    )


def test_every_target_renders_the_example_jobs_shape() -> None:
    for target in TARGETS:
        documents = render(target, make_job(num_nodes=2, placement="spread"), OPTIONS)
        assert documents and all(isinstance(d, dict) for d in documents)


def test_local_inputs_and_a_rayjob_without_a_volume_are_warned_about(tmp_path: Path) -> None:
    local = tmp_path / "train.jsonl"
    local.write_text("{}\n")
    job = make_job().model_copy(
        update={"data": make_job().data.model_copy(update={"train": str(local)})}
    )
    lines = cluster_warnings("kuberay-rayjob", job, RenderOptions())
    assert [line.split(":")[0] for line in lines] == ["data.train", "--output-pvc"]
    assert cluster_warnings("skypilot", make_job(), RenderOptions()) == []


def test_out_never_replaces_a_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "job.yaml"
    write_new(out, "first\n", force=False)
    with pytest.raises(UserError, match="exists; pass --force"):
        write_new(out, "second\n", force=False)
    assert out.read_text() == "first\n"
    write_new(out, "second\n", force=True)
    assert out.read_text() == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]  # no temporary left


def test_custom_resources_are_declared_on_the_worker_nodes(kuberay_validators: dict) -> None:
    # An autoscaler launches a node type only for requests it declares: accelerator_type:H100.
    job = make_job(custom_resources={"accelerator_type:H100": 0.01})
    (aws,) = render("ray-aws", job, OPTIONS)
    assert ray_up_validate(aws)["available_node_types"]["ray.worker.gpu"]["resources"] == {
        "CPU": 192,
        "GPU": 8,
        "accelerator_type:H100": 1,
    }
    assert """--resources='{"accelerator_type:H100": 1}'""" in aws["worker_start_ray_commands"][1]
    (cluster,) = render("kuberay-raycluster", job, OPTIONS)
    validate_kuberay(kuberay_validators, cluster)
    params = cluster["spec"]["workerGroupSpecs"][0]["rayStartParams"]
    assert json.loads(json.loads(params["resources"])) == {"accelerator_type:H100": 1}
    (task,) = render("skypilot", job, OPTIONS)
    assert task["run"].count("""--resources='{"accelerator_type:H100": 1}'""") == 2
