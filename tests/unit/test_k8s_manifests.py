"""The Kubernetes manifests: generated parts up to date, kustomize builds, schemas validate, and the
built Deployment runs the official vLLM image with exactly the serving config's flags."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from unifiedreward.serving.config import ServeConfig, profile_path
from tests.helpers import vllm_parse
from tools import k8s_manifests as k8s

KUBERNETES_VERSION = "1.30.0"  # the oldest release the manifests support (autoscaling/v2, policy/v1 are older)
VARIANTS = {"base": ("shared",), "overlays/multi-gpu": ("shared", "data-parallel"), "overlays/tenants": ("shared",)}


def build(variant: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed for `kubectl kustomize` (`make setup` installs Debian's kubernetes-client)")
    done = subprocess.run([kubectl, "kustomize", str(k8s.K8S / variant)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=list(VARIANTS))
def built(request) -> tuple[str, list[dict]]:
    return request.param, build(request.param)


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_generated_files_are_up_to_date():
    assert k8s.main(["--check"]) == 0


def test_every_object_validates_against_the_kubernetes_schemas(built):
    import kubernetes_validate

    _, docs = built
    monitoring = [yaml.safe_load(p.read_text()) for p in (k8s.K8S / "monitoring").glob("*.yaml")]
    for doc in docs + monitoring:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
            "ConfigMap", "PersistentVolumeClaim", "Job"} <= kinds


def test_the_deployment_runs_the_official_image_with_the_serving_configs_flags(built):
    variant, docs = built
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("vllm/vllm-openai:") and container["command"] == ["vllm", "serve"]
    args = container["args"]
    config = ServeConfig.load(profiles=VARIANTS[variant])
    assert args == config.override(host="0.0.0.0", port=8000).serve_args()
    parsed = vllm_parse(["--model", *args])  # vLLM's own parser accepts them
    assert parsed.host == "0.0.0.0" and parsed.port == 8000
    assert parsed.middleware == ["unifiedreward.serving.guard.RequestGuard"] and parsed.enable_log_requests is False
    env = {e["name"]: e for e in container["env"]}
    for name, value in config.env.items():
        assert env[name]["value"] == value
    assert parsed.scheduling_policy == "priority"  # the tenants' priorities take effect (all 0 without them)
    if variant == "overlays/tenants":  # the tenants' keys from their Secret replace the single key
        assert "VLLM_API_KEY" not in env
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tenants")
        assert env["UNIFIEDREWARD_TENANTS_FILE"]["value"] == mount["mountPath"] + "/tenants.toml"
        volume = next(v for v in by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == "tenants")
        assert volume["secret"]["secretName"] == "unifiedreward-tenants"
    else:
        assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "unifiedreward-api-key"
    if "data-parallel" in VARIANTS[variant]:
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus == parsed.data_parallel_size * parsed.tensor_parallel_size
    else:
        gpus = 1
    # `vllm serve` in the image starts this many API servers: the GPUs' share, as the launcher computes it.
    assert parsed.api_server_count == config.api_servers_per_gpu * gpus


def test_probes_scraping_autoscaling_disruption_and_egress(built):
    _, docs = built
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"
    labels = pod["metadata"]["labels"]
    pdb, policy = by_kind(docs, "PodDisruptionBudget"), by_kind(docs, "NetworkPolicy")
    for selector in (pdb["spec"]["selector"]["matchLabels"], policy["spec"]["podSelector"]["matchLabels"],
                     by_kind(docs, "Service")["spec"]["selector"]):
        assert selector.items() <= labels.items()
    assert "Egress" in policy["spec"]["policyTypes"] and policy["spec"]["egress"] == []
    # The guard reaches the image as `unifiedreward.serving.guard` on PYTHONPATH.
    guard = by_kind(docs, "ConfigMap")
    assert guard["data"]["guard.py"] == k8s.GUARD.read_text()
    mount = next(m for m in container["volumeMounts"] if m["name"] == "guard")
    python_path = next(e["value"] for e in container["env"] if e["name"] == "PYTHONPATH")
    assert mount["mountPath"] == f"{python_path}/unifiedreward/serving"


def test_adapter_rule_exposes_the_metric_the_autoscaler_reads():
    rules = yaml.safe_load((k8s.K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    rule = yaml.safe_load(rules["data"]["config.yaml"])["rules"][0]
    assert rule["name"]["matches"] == "vllm:num_requests_waiting" and rule["name"]["as"] == "vllm_num_requests_waiting"


def test_data_parallel_profile_is_a_valid_vllm_setting():
    profile = tomllib.loads(profile_path("data-parallel").read_text())
    parsed = vllm_parse(ServeConfig.load(profiles=["shared", "data-parallel"]).vllm_args())
    assert parsed.data_parallel_size == profile["vllm"]["data_parallel_size"] > 1


def test_the_mounted_guard_loads_under_the_middleware_name_without_the_project(tmp_path):
    """The official image has none of the project but the ConfigMap's files at the mount path: vLLM's
    `--middleware` name must import from there alone (site-packages for Pillow, no editable finder, no checkout)."""
    import sysconfig

    docs = build("base")
    container = by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    python_path = next(e["value"] for e in container["env"] if e["name"] == "PYTHONPATH")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "guard")["mountPath"]
    root = tmp_path / python_path.lstrip("/")
    folder = tmp_path / mount.lstrip("/")
    folder.mkdir(parents=True)
    for name, text in by_kind(docs, "ConfigMap")["data"].items():
        (folder / name).write_text(text)
    (middleware,) = [a for a in container["args"] if a.endswith(".RequestGuard")]
    module, _, name = middleware.rpartition(".")
    code = f"import importlib, sys; m = importlib.import_module({module!r}); getattr(m, {name!r}); print(m.__file__)"
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": f"{root}:{sysconfig.get_paths()['purelib']}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(folder / "guard.py")
