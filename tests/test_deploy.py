"""The deploy files in cluster/deploy/, checked offline: no network, Docker or Kubernetes.

The manifests parse and carry the keys their deployments need; the `iamt` commands they run
(and the README's documented `ray job submit`) parse with the CLI's own parser and name a real
config that validates with their `--set`s; the RayJob's runtime env is one Ray accepts; the
image's Ray is the installed one; and the Dockerfile, the launcher and the README share one
install command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import ray
import yaml

from cluster.cli import build_parser
from cluster.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "cluster" / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
RAYJOB = DEPLOY / "rayjob.yaml"
LAUNCHER = DEPLOY / "cluster-aws.yaml"
README = ROOT / "README.md"
MANIFESTS = [RAYJOB, LAUNCHER]
GPU_INSTANCE = re.compile(r"^(g\d|p\d)[a-z0-9-]*\.\w+$")  # EC2's GPU families: g5.xlarge, p4d...
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d+)-(?P<gpu>gpu|cu\d+)$")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in lines
        if line and not line.startswith("#")
    ]


def _dockerfile(instruction: str) -> list[str]:
    return [args for name, args in _dockerfile_instructions() if name == instruction]


def _install_command() -> str:
    """The Dockerfile's one RUN line that pip installs the package (`.`)."""
    installs = [
        run for run in _dockerfile("RUN") if "pip install" in run and run.split()[-1] == "."
    ]
    assert len(installs) == 1, f"expected one RUN that pip installs the package: {installs}"
    return installs[0]


def _base_image() -> str:
    froms = _dockerfile("FROM")
    assert len(froms) == 1, froms
    return froms[0].split()[0]


def _workdir() -> PurePosixPath:
    workdirs = _dockerfile("WORKDIR")
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return PurePosixPath(workdirs[-1])


def _rayjob() -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all(RAYJOB.read_text()) if doc]
    jobs = [doc for doc in docs if doc.get("kind") == "RayJob"]
    assert len(jobs) == 1, f"expected one RayJob in {RAYJOB.name}"
    return jobs[0]


def _launcher() -> dict[str, Any]:
    config = yaml.safe_load(LAUNCHER.read_text())
    assert isinstance(config, dict)
    return config


def _pod_specs(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """'head' and each worker group's name -> its pod spec."""
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        specs[group["groupName"]] = group["template"]["spec"]
    return specs


def _gpu_groups(job: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        group
        for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        if any(
            int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) > 0
            for container in group["template"]["spec"]["containers"]
        )
    ]


def _ray_container(spec: dict[str, Any]) -> dict[str, Any]:
    """KubeRay's Ray container is the pod's first."""
    return spec["containers"][0]


def _mount_of(spec: dict[str, Any], path: PurePosixPath) -> tuple[str, str | None] | None:
    """(volume name, claim name) of the Ray container's mount that holds `path`, if any."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    for mount in _ray_container(spec).get("volumeMounts", []):
        if path.is_relative_to(PurePosixPath(mount["mountPath"])):
            claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
            return mount["mountPath"], claim
    return None


def _iamt_args(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "iamt", f"not an iamt command: {command!r}"
    return words[1:]


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _readme_job_commands() -> list[str]:
    """The `iamt ...` commands that the Deploying section submits with `ray job submit`."""
    section = _readme_section("Deploying").replace("\\\n", " ")
    return [
        line.split(" -- ", 1)[1].strip()
        for line in section.splitlines()
        if "ray job submit" in line and " -- " in line
    ]


def _check_iamt_command(command: str) -> None:
    """Parses with `iamt`'s own parser, names a config of this repository that validates with
    its `--set`s, and writes to an absolute --out (a relative one lands in a temporary copy)."""
    args = build_parser().parse_args(_iamt_args(command))
    assert args.command == "run"
    config = PurePosixPath(str(args.config))
    if config.is_absolute():
        assert config.is_relative_to(_workdir()), f"{config} is not in the image's WORKDIR"
        config = config.relative_to(_workdir())
    assert (ROOT / config).is_file(), f"{config} is not a file of this repository"
    load_config(ROOT / config, args.overrides)
    assert args.out is not None and args.out.is_absolute(), f"--out must be absolute: {command}"


# --- every manifest ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs)


@pytest.mark.parametrize("path", [*MANIFESTS, DOCKERFILE], ids=lambda p: p.name)
def test_token_authentication_is_never_disabled(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"RAY_AUTH_MODE\W{0,4}disabled", text), path.name


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_runs_the_image_or_its_base(path: Path) -> None:
    """Each deployment runs the Dockerfile's image (a registry placeholder) or its base."""
    if path == RAYJOB:
        images = {_ray_container(spec)["image"] for spec in _pod_specs(_rayjob()).values()}
        assert len(images) == 1, f"head and workers run different images: {images}"
        (image,) = images
        assert image.rsplit(":", 1)[0].endswith("/iamt-robust"), image
        # ... the very tag the README builds and pushes
        assert f"docker build -f cluster/deploy/Dockerfile -t {image} ." in README.read_text()
    else:
        assert _launcher()["docker"]["image"] == _base_image()


# --- the Dockerfile ---------------------------------------------------------------------------


def test_base_image_is_rays_gpu_image_of_the_installed_ray() -> None:
    match = RAY_IMAGE.match(_base_image())
    assert match, f"not a rayproject/ray GPU image: {_base_image()}"
    assert match["ray"] == ray.__version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    minimum = re.search(r'requires-python = ">=3\.(\d+)"', pyproject)
    assert minimum and int(match["py"][1:]) >= int(minimum[1]), match["py"]


def test_torch_comes_from_a_cuda_index() -> None:
    install = _install_command()
    assert re.search(r"--(extra-)?index-url https://download\.pytorch\.org/whl/cu12\d\b", install)
    cuda = re.search(r"-(cu\d+)$", _base_image())
    if cuda:  # the image's CUDA and the wheel's agree
        assert install.split("/whl/", 1)[1].split()[0] == cuda[1]


def test_install_command_is_the_readmes() -> None:
    install = _install_command()
    assert install in _readme_section("Deploying")


def test_image_runs_as_ray_in_its_workdir() -> None:
    users = _dockerfile("USER")
    assert users and users[-1] == "ray"
    assert str(_workdir()).startswith("/home/ray/")
    copies = " ".join(_dockerfile("COPY"))
    for needed in ("pyproject.toml", "README.md", "iamt/", "robustness/", "cluster/", "configs/"):
        assert needed in copies, f"the image misses {needed}"


# --- the RayJob -------------------------------------------------------------------------------


def test_rayjob_has_the_required_keys() -> None:
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster.get("authOptions", {}).get("mode") == "token"
    assert _ray_container(cluster["headGroupSpec"]["template"]["spec"])["image"]
    assert _gpu_groups(job), "no worker group's container limits nvidia.com/gpu"
    for group in _gpu_groups(job):  # Kubernetes: an extended resource's request is its limit
        resources = _ray_container(group["template"]["spec"])["resources"]
        gpus = resources["limits"]["nvidia.com/gpu"]
        assert resources.get("requests", {}).get("nvidia.com/gpu", gpus) == gpus, resources
    for spec_ in _pod_specs(job).values():
        resources = _ray_container(spec_)["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (kind, resources)


def test_rayjob_workers_match_the_training_workers() -> None:
    """Ray Train asks for num_workers GPUs: the GPU groups must hold that many."""
    job = _rayjob()
    args = build_parser().parse_args(_iamt_args(job["spec"]["entrypoint"]))
    config_path = PurePosixPath(str(args.config)).relative_to(_workdir())
    config = load_config(ROOT / config_path, args.overrides)
    assert config.cluster.train.use_gpu
    gpus = sum(
        group["replicas"]
        * int(_ray_container(group["template"]["spec"])["resources"]["limits"]["nvidia.com/gpu"])
        for group in _gpu_groups(job)
    )
    assert gpus >= config.cluster.train.num_workers * config.cluster.train.gpus_per_worker


def test_rayjob_entrypoint_parses_with_the_cli() -> None:
    _check_iamt_command(_rayjob()["spec"]["entrypoint"])


def test_rayjob_run_directory_is_on_the_shared_claim_in_every_pod() -> None:
    docs = [doc for doc in yaml.safe_load_all(RAYJOB.read_text()) if doc]
    job = _rayjob()
    args = build_parser().parse_args(_iamt_args(job["spec"]["entrypoint"]))
    out = PurePosixPath(str(args.out))
    mounts = {name: _mount_of(spec, out) for name, spec in _pod_specs(job).items()}
    assert all(mounts.values()), f"--out {out} is not on a mounted volume in: {mounts}"
    assert len(set(mounts.values())) == 1, f"head and workers mount it differently: {mounts}"
    ((mount_path, claim),) = set(mounts.values())
    assert out.parent == PurePosixPath(mount_path), (out, mount_path)
    claims = {
        doc["metadata"]["name"]: doc for doc in docs if doc.get("kind") == "PersistentVolumeClaim"
    }
    assert claim in claims, f"the claim {claim} is not in {RAYJOB.name}"
    assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_runtime_env_is_accepted_by_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env
    assert set(runtime_env) <= RuntimeEnv.known_fields, set(runtime_env) - RuntimeEnv.known_fields
    RuntimeEnv(**runtime_env)
    assert "working_dir" not in runtime_env, "the image has the package: upload nothing"


# --- the cluster launcher ---------------------------------------------------------------------


def test_launcher_config_is_valid_for_ray_up() -> None:
    """The schema and defaults `ray up` applies before it starts anything."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_launcher()))


def test_launcher_has_a_gpu_worker_type() -> None:
    config = _launcher()
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in types
    gpu_workers = [
        node
        for name, node in types.items()
        if name != head
        and (
            GPU_INSTANCE.match(node["node_config"].get("InstanceType", ""))
            or node.get("resources", {}).get("GPU", 0) > 0
        )
    ]
    assert gpu_workers, "no worker node type has a GPU"
    assert all(0 < node["min_workers"] <= node["max_workers"] for node in gpu_workers)
    assert config["max_workers"] >= sum(node["min_workers"] for node in gpu_workers)


def test_launcher_installs_the_package_with_the_readmes_command() -> None:
    setup = _launcher()["setup_commands"]
    assert setup, "setup_commands is empty"
    assert any(command.endswith(_install_command()) for command in setup), setup


def test_launcher_starts_every_node_with_token_auth() -> None:
    config = _launcher()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if "ray start" in command]
        assert starts and all("RAY_AUTH_MODE=token" in command for command in starts), key
    token_mounts = [remote for remote in config["file_mounts"] if remote.endswith("auth_token")]
    assert token_mounts, "the token file is not copied to the nodes"


def test_launcher_shares_the_run_directory_and_the_checkout() -> None:
    config = _launcher()
    run_options = " ".join(config["docker"]["run_options"])
    assert re.search(r"-v \S+:/mnt/runs\b", run_options), run_options
    assert config["file_mounts"].get(str(_workdir())) == ".", (
        "the checkout is not where the image has it"
    )


def test_readme_documents_the_launcher_job_and_it_parses() -> None:
    commands = _readme_job_commands()
    assert commands, "the Deploying section submits no iamt command"
    for command in commands:
        _check_iamt_command(command)
        out = PurePosixPath(str(build_parser().parse_args(_iamt_args(command)).out))
        assert out.is_relative_to(PurePosixPath("/mnt/runs")), out
