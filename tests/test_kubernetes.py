"""docker/kubernetes/: the KubeRay manifests, checked without a cluster.

Every built-in Kubernetes object is validated against Kubernetes' own schemas (kubernetes-validate, strict: no
unknown field), and every RayCluster and RayJob against the fields of the KubeRay release the manifests target
(tests/kuberay_v1_fields.json, written from its Go types), with their pod templates validated as Kubernetes pod
templates. Then the policies (no trial on the head, GPU limits, memory-backed /dev/shm, autoscaling, no secret in
plain text, every Secret the manifests read is one docs/kubernetes.md creates) and the agreement with the rest of
the repository (the image, docker/node.env.example's settings, compose's MLflow command, the sweep the RayJob
runs). Each check is a function of the manifests that returns what it found wrong, so that modified copies can be
fed to it and be seen caught.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "docker" / "kubernetes"
DOC = ROOT / "docs" / "kubernetes.md"
# KubeRay v1.7.0 (ray-operator/go.mod) is built against k8s.io/api v0.36.0: Kubernetes 1.36's schemas.
K8S_VERSION = "1.36.0"
# The KubeRay release the manifests and docs/kubernetes.md target, and its fields (its Go types, by hand).
KUBERAY = "v1.7.0"
FIELDS = json.loads((ROOT / "tests" / "kuberay_v1_fields.json").read_text())
RAY_KINDS = ("RayCluster", "RayJob")
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|KEY|CREDENTIAL", re.I)
# docker/node.env.example's settings that a KubeRay node does without.
NOT_ON_KUBERAY = {"RAY_HEAD": "KubeRay starts each worker with the head Service's address itself"}


def load() -> dict[str, list[dict]]:
    """{file name: its objects} for docker/kubernetes/*.yaml."""
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBE.glob("*.yaml"))}


def objects(manifests: dict[str, list[dict]]) -> list[dict]:
    return [obj for docs in manifests.values() for obj in docs]


def of_kind(manifests, kind: str) -> list[dict]:
    return [o for o in objects(manifests) if o.get("kind") == kind]


def cluster_specs(manifests) -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of every RayCluster and of every RayJob that brings its own cluster."""
    specs = [(f"RayCluster {o['metadata']['name']}", o["spec"]) for o in of_kind(manifests, "RayCluster")]
    specs += [(f"RayJob {o['metadata']['name']}", o["spec"]["rayClusterSpec"])
              for o in of_kind(manifests, "RayJob") if "rayClusterSpec" in o["spec"]]
    return specs


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    """("head" or the worker group's name, group spec)."""
    return [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec.get("workerGroupSpecs", []))]


def pod_templates(manifests) -> list[tuple[str, dict]]:
    """(where, PodTemplateSpec) of every pod the manifests make: Ray groups, submitters and built-in workloads."""
    found = []
    for where, spec in cluster_specs(manifests):
        found += [(f"{where} {name}", g["template"]) for name, g in ray_groups(spec)]
    for job in of_kind(manifests, "RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            found.append((f"RayJob {job['metadata']['name']} submitter", job["spec"]["submitterPodTemplate"]))
    for o in objects(manifests):
        if o.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            found.append((f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]))
    return found


def containers(template: dict) -> list[dict]:
    spec = template.get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def env_names(template: dict, configmaps: dict[str, dict]) -> set[str]:
    """The variables a pod template's main container gets: its env and the ConfigMaps of its envFrom."""
    main = template["spec"]["containers"][0]
    names = {e["name"] for e in main.get("env", [])}
    for source in main.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(configmaps.get(source["configMapRef"]["name"], {}).get("data", {}))
    return names


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def quantity(text: str) -> float:
    """A Kubernetes quantity (8Gi, 500m, 48) or a compose size (8gb), in bytes or units."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "gb": 2**30, "mb": 2**20, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * units[unit]


# ---- the checks: each returns what is wrong ----


def k8s_errors(obj: dict, where: str = "") -> list[str]:
    """A built-in object (or a PodTemplate made of a Ray group's template) against Kubernetes' strict schema."""
    where = where or f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {e.message} at /{'/'.join(map(str, e.absolute_path))}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: {e.message}"]
    return []


def as_pod_template(template: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


def ray_spec_k8s_errors(where: str, spec: dict) -> list[str]:
    """The Kubernetes types inside a RayClusterSpec: pod templates, the head Service, the autoscaler container."""
    errors = []
    for name, group in ray_groups(spec):
        errors += k8s_errors(as_pod_template(group["template"], "ray"), f"{where} {name} template")
    if "headService" in spec["headGroupSpec"]:
        errors += k8s_errors({"apiVersion": "v1", "kind": "Service", **spec["headGroupSpec"]["headService"]},
                             f"{where} headService")
    options = spec.get("autoscalerOptions", {})
    container = {k: options[k] for k in ("resources", "securityContext", "env", "envFrom", "volumeMounts", "command",
                                         "args", "imagePullPolicy") if k in options}
    if container:  # what KubeRay copies onto its autoscaler container, checked as a container's fields
        template = {"spec": {"containers": [{"name": "autoscaler", "image": "autoscaler", **container}]}}
        errors += k8s_errors(as_pod_template(template, "autoscaler"), f"{where} autoscalerOptions")
    return errors


def kuberay_errors(obj: dict) -> list[str]:
    """A RayCluster or RayJob against KubeRay's fields (no unknown field, the Go types' value types), and the
    Kubernetes objects inside it against Kubernetes' schemas."""
    kind = obj.get("kind")
    if kind not in RAY_KINDS:
        return [f"{kind}: not a KubeRay kind this test knows"]
    where = f"{kind} {obj.get('metadata', {}).get('name')}"
    validator = jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": FIELDS["$defs"]})
    errors = [f"{where}: {e.message} at /{'/'.join(map(str, e.absolute_path))}" for e in validator.iter_errors(obj)]
    if errors:
        return errors
    spec = obj["spec"]
    if kind == "RayCluster":
        errors += ray_spec_k8s_errors(where, spec)
    else:
        if "rayClusterSpec" in spec:
            errors += ray_spec_k8s_errors(where, spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            errors += k8s_errors(as_pod_template(spec["submitterPodTemplate"], "submitter"), f"{where} submitter")
    return errors


def head_errors(manifests) -> list[str]:
    """The head runs drivers, never a trial: num-cpus and num-gpus "0", no GPU asked."""
    errors = []
    for where, spec in cluster_specs(manifests):
        params = spec["headGroupSpec"].get("rayStartParams", {})
        if params.get("num-cpus") != "0" or params.get("num-gpus") != "0":
            errors.append(f"{where}: the head's rayStartParams need num-cpus \"0\" and num-gpus \"0\", not {params}")
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        if "nvidia.com/gpu" in head.get("resources", {}).get("limits", {}):
            errors.append(f"{where}: the head asks for GPUs")
    return errors


def resource_errors(manifests) -> list[str]:
    """Every worker group: nvidia.com/gpu limits (and equal requests), CPU and memory requests and limits. Every
    container: requests and limits."""
    errors = []
    for where, spec in cluster_specs(manifests):
        for group in spec.get("workerGroupSpecs", []):
            res = group["template"]["spec"]["containers"][0].get("resources", {})
            limits, requests = res.get("limits", {}), res.get("requests", {})
            gpus = limits.get("nvidia.com/gpu")
            if not gpus or int(gpus) < 1:
                errors.append(f"{where} {group['groupName']}: no nvidia.com/gpu limit")
            elif requests.get("nvidia.com/gpu", gpus) != gpus:
                errors.append(f"{where} {group['groupName']}: nvidia.com/gpu requests differ from its limits")
    for where, template in pod_templates(manifests):
        for c in containers(template):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                if missing:
                    errors.append(f"{where} {c['name']}: no {kind} for {sorted(missing)}")
    return errors


def shm_errors(manifests) -> list[str]:
    """Every Ray container mounts /dev/shm from a memory-backed emptyDir with a sizeLimit."""
    errors = []
    for where, spec in cluster_specs(manifests):
        for name, group in ray_groups(spec):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mounts = [m for m in pod["containers"][0].get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            empty = volumes.get(mounts[0]["name"], {}).get("emptyDir") if mounts else None
            if not empty or empty.get("medium") != "Memory" or not empty.get("sizeLimit"):
                errors.append(f"{where} {name}: /dev/shm is not a memory-backed emptyDir with a sizeLimit")
    return errors


def autoscaling_errors(manifests) -> list[str]:
    """KubeRay's in-tree autoscaler on, with an idle timeout; 0 <= minReplicas <= replicas <= maxReplicas; Ray pods
    left to KubeRay's restart policy (Never under the autoscaler v2: a failed pod is replaced)."""
    errors = []
    for where, spec in cluster_specs(manifests):
        if spec.get("enableInTreeAutoscaling") is not True:
            errors.append(f"{where}: enableInTreeAutoscaling is not true")
        if not spec.get("autoscalerOptions", {}).get("idleTimeoutSeconds"):
            errors.append(f"{where}: autoscalerOptions has no idleTimeoutSeconds")
        for group in spec.get("workerGroupSpecs", []):
            low, high = group.get("minReplicas"), group.get("maxReplicas")
            replicas = group.get("replicas", low)
            if None in (low, high) or not 0 <= low <= replicas <= high:
                errors.append(f"{where} {group['groupName']}: replicas {low} <= {replicas} <= {high} does not hold")
        for name, group in ray_groups(spec):
            if group["template"]["spec"].get("restartPolicy", "Never") != "Never":
                errors.append(f"{where} {name}: restartPolicy other than Never")
    return errors


def plain_secret_errors(manifests) -> list[str]:
    """No literal value for a secret-looking name (a path to a mounted file excepted), no password in a URL, no
    Secret object with data, the Ray token from a Secret (authOptions)."""
    errors = []
    pairs = []  # (where, name, literal value)
    for where, template in pod_templates(manifests):
        for c in containers(template):
            pairs += [(f"{where} {c['name']}", e["name"], e["value"]) for e in c.get("env", []) if "value" in e]
    for where, spec in cluster_specs(manifests):
        pairs += [(f"{where} autoscaler", e["name"], e["value"])
                  for e in spec.get("autoscalerOptions", {}).get("env", []) if "value" in e]
        auth = spec.get("authOptions", {})
        if auth.get("mode") != "token" or not auth.get("secretName"):
            errors.append(f"{where}: the Ray token is not from a Secret (authOptions mode token, secretName)")
    for cm in of_kind(manifests, "ConfigMap"):
        pairs += [(f"ConfigMap {cm['metadata']['name']}", k, v) for k, v in cm.get("data", {}).items()]
    for job in of_kind(manifests, "RayJob"):
        for name, value in (yaml.safe_load(job["spec"].get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {}).items():
            pairs.append((f"RayJob {job['metadata']['name']} runtimeEnvYAML", name, value))
    for where, name, value in pairs:
        a_file = name.endswith(("_FILE", "_PATH")) and str(value).startswith("/")
        if SECRET_NAME.search(name) and not a_file:
            errors.append(f"{where}: {name} has a literal value; take it from a Secret")
        if re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)):
            errors.append(f"{where}: {name} holds a URL with a password")
    for secret in of_kind(manifests, "Secret"):
        if secret.get("data") or secret.get("stringData"):
            errors.append(f"Secret {secret['metadata']['name']}: shipped with its data")
    return errors


def secret_refs(manifests) -> list[tuple[str, str, str | None]]:
    """(where, Secret name, key or None) of every Secret the manifests read."""
    refs = []
    for where, template in pod_templates(manifests):
        for c in containers(template):
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    refs.append((where, ref["name"], ref["key"]))
            refs += [(where, s["secretRef"]["name"], None) for s in c.get("envFrom", []) if "secretRef" in s]
        for v in template["spec"].get("volumes", []):
            sources = [v["secret"] | {"name": v["secret"].get("secretName")}] if "secret" in v else []
            sources += [s["secret"] for s in v.get("projected", {}).get("sources", []) if "secret" in s]
            for s in sources:
                keys = [i["key"] for i in s.get("items", [])] or [None]
                refs += [(where, s["name"], k) for k in keys]
    for where, spec in cluster_specs(manifests):
        if spec.get("authOptions", {}).get("secretName"):
            refs.append((where, spec["authOptions"]["secretName"], "auth_token"))  # KubeRay's key for the token
    return refs


def created_secrets(doc: str) -> dict[str, set[str]]:
    """{name: keys} of the `kubectl create secret generic NAME --from-file=[KEY=]PATH` lines of a page."""
    made = {}
    for line in doc.replace("\\\n", " ").splitlines():
        m = re.search(r"kubectl create secret generic ([\w.-]+)(.*)", line)
        if m:
            keys = set()
            for source in re.findall(r"--from-file=(\S+)", m.group(2)):
                keys.add(source.split("=", 1)[0] if "=" in source else Path(source).name)
            made[m.group(1)] = keys
    return made


def doc_secret_errors(manifests, doc: str) -> list[str]:
    """Every Secret (and key) the manifests read is one the page tells the user to create; the token's Secret is
    made without the file's line break (KubeRay's operator sends its bytes as an HTTP header)."""
    made = created_secrets(doc)
    errors = [f"{where}: Secret {name} (key {key}) is not created in docs/kubernetes.md"
              for where, name, key in secret_refs(manifests) if name not in made or (key and key not in made[name])]
    for _, spec in cluster_specs(manifests):
        name = spec.get("authOptions", {}).get("secretName")
        line = next((x for x in doc.splitlines() if f"kubectl create secret generic {name} " in x), "")
        if name and "tr -d '\\n'" not in line:
            errors.append(f"Secret {name}: the token is not stored without its line break")
    return errors


def rayjob_errors(manifests) -> list[str]:
    """A RayJob that selects the RayCluster: by KubeRay's key, naming a cluster that is shipped, with no retry
    (KubeRay refuses backoffLimit > 0 there), no deadline (KubeRay would mark it failed and leave the sweep running)
    and no cluster deletion."""
    errors = []
    clusters = {o["metadata"]["name"] for o in of_kind(manifests, "RayCluster")}
    for job in of_kind(manifests, "RayJob"):
        spec, where = job["spec"], f"RayJob {job['metadata']['name']}"
        selector = spec.get("clusterSelector")
        if not selector and "rayClusterSpec" not in spec:
            errors.append(f"{where}: neither clusterSelector nor rayClusterSpec")
        if not selector:
            continue
        if selector.get("ray.io/cluster") not in clusters:
            errors.append(f"{where}: clusterSelector {selector} names no RayCluster of docker/kubernetes/")
        if spec.get("backoffLimit", 0) != 0:
            errors.append(f"{where}: backoffLimit > 0 is refused with a clusterSelector; resume with a new RayJob")
        if spec.get("submissionMode") == "SidecarMode":
            errors.append(f"{where}: SidecarMode is refused with a clusterSelector")
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            if key in spec:
                errors.append(f"{where}: {key} marks the RayJob failed but leaves the sweep running on the cluster")
        if spec.get("shutdownAfterJobFinishes") or "deletionStrategy" in spec:
            errors.append(f"{where}: the selected cluster is shared: nothing deletes it")
    return errors


def dockerfile() -> tuple[str, str]:
    """(the image tag docker/Dockerfile documents, its WORKDIR)."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    tag = re.search(r"^#\s+docker build -f docker/Dockerfile -t (\S+) \.$", text, re.M).group(1)
    return tag, re.search(r"^WORKDIR (\S+)$", text, re.M).group(1)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def image_errors(manifests) -> list[str]:
    """Every container runs the image of docker/Dockerfile's tag (compose's default), in its WORKDIR."""
    tag, workdir = dockerfile()
    errors = []
    if compose()["x-imm-image"]["image"] != f"${{IMM_IMAGE:-{tag}}}":
        errors.append(f"compose's image is not {tag}")
    for where, template in pod_templates(manifests):
        for c in containers(template):
            if c.get("image") != tag:
                errors.append(f"{where} {c['name']}: image {c.get('image')}, not {tag}")
    for where, spec in cluster_specs(manifests):
        if "image" in spec.get("autoscalerOptions", {}):
            errors.append(f"{where}: the autoscaler's image differs from the head's")
        for name, group in ray_groups(spec):
            if group["template"]["spec"]["containers"][0].get("workingDir") != workdir:
                errors.append(f"{where} {name}: workingDir is not the image's {workdir}")
    return errors


def settings_errors(manifests) -> list[str]:
    """The Ray pods get docker/node.env.example's settings, by name (and by value where none names an address);
    the /run/secrets/ files they name are the ones each pod copies from its Secrets."""
    node = env_file(ROOT / "docker" / "node.env.example")
    configmaps = {c["metadata"]["name"]: c for c in of_kind(manifests, "ConfigMap")}
    errors = []
    for where, spec in cluster_specs(manifests):
        for name, group in ray_groups(spec):
            got, want = env_names(group["template"], configmaps), set(node) - set(NOT_ON_KUBERAY)
            if got != want:
                errors.append(f"{where} {name}: settings {sorted(got - want)} not in node.env.example, "
                              f"{sorted(want - got)} missing")
    for cm in configmaps.values():
        errors += [f"ConfigMap {cm['metadata']['name']}: {k}={v}, node.env.example {node[k]}"
                   for k, v in cm["data"].items() if k in node and "10.0.0.1" not in node[k] and v != node[k]]
    for where, template in pod_templates(manifests):
        main, pod = template["spec"]["containers"][0], template["spec"]
        values = [e.get("value", "") for e in main.get("env", [])]
        for source in main.get("envFrom", []):
            values += configmaps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {}).values()
        named = {Path(v).name for v in values if str(v).startswith("/run/secrets/")}
        copied = {Path(a).name for c in pod.get("initContainers", []) if c["name"] == "secret-files"
                  for a in c["command"][3:-1]}
        projected = {i["path"] for v in pod.get("volumes", []) for s in v.get("projected", {}).get("sources", [])
                     for i in s.get("secret", {}).get("items", [])}
        if not named <= copied <= projected:
            errors.append(f"{where}: files named {sorted(named)}, copied {sorted(copied)}, mounted {sorted(projected)}")
    return errors


def mlflow_errors(manifests) -> list[str]:
    """The MLflow Deployment runs compose's mlflow command, with compose's variables, probed on /health."""
    service = compose()["services"]["mlflow"]
    errors = []
    deployments = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] == "mlflow"]
    if len(deployments) != 1:
        return ["no Deployment mlflow"]
    c = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    if c.get("command") != service["entrypoint"] or c.get("args") != [a.replace("$$", "$") for a in service["command"]]:
        errors.append(f"mlflow: {c.get('command')} {c.get('args')} is not compose's mlflow command")
    env = {e["name"]: e for e in c.get("env", [])}
    if set(env) != set(service["environment"]):
        errors.append(f"mlflow: variables {sorted(env)}, compose's {sorted(service['environment'])}")
    for name in ("PGPASSFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        if env.get(name, {}).get("value") != service["environment"][name]:
            errors.append(f"mlflow: {name} is not compose's {service['environment'][name]}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if c.get(probe, {}).get("httpGet", {}).get("path") != "/health":
            errors.append(f"mlflow: no {probe} on /health")
    return errors


def shm_size_errors(manifests) -> list[str]:
    """/dev/shm as large as compose's shm_size: the head's for the head, the workers' for each worker group."""
    services, errors = compose()["services"], []
    for where, spec in cluster_specs(manifests):
        for name, group in ray_groups(spec):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            mount = next((m for m in pod["containers"][0].get("volumeMounts", []) if m["mountPath"] == "/dev/shm"), {})
            size = volumes.get(mount.get("name"), {}).get("emptyDir", {}).get("sizeLimit", "0")
            want = services["ray-head" if name == "head" else "ray-worker"]["shm_size"]
            if quantity(size) != quantity(want):
                errors.append(f"{where} {name}: /dev/shm {size}, compose's {want}")
    return errors


@functools.cache
def sweep_needs(path: Path, overrides: tuple[str, ...]) -> tuple[str, dict[str, float]]:
    """(name, one trial's Ray resources) of a sweep file, loaded by the project's own loader."""
    from orchestrator.sweep.spec import load_sweep
    from orchestrator.sweep.trials import trial_resources

    sweep = load_sweep(path, base_overrides=list(overrides))
    return sweep.name, trial_resources(sweep)


def sweep_job_errors(manifests) -> list[str]:
    """The RayJobs run `imm-orch sweep` on a sweep file of the image that loads, as `imm-orch submit` runs it; the
    resume job is the same job with --resume; the cluster holds one trial with its minimum of GPU pods."""
    from orchestrator.cli import parse_args
    from orchestrator.infra import submit

    errors, jobs = [], {}
    clusters = {o["metadata"]["name"]: o["spec"] for o in of_kind(manifests, "RayCluster")}
    for job in of_kind(manifests, "RayJob"):
        spec, where = job["spec"], f"RayJob {job['metadata']['name']}"
        argv = shlex.split(spec.get("entrypoint", ""))
        if argv[:4] != ["python", "-m", "orchestrator.cli", "sweep"]:
            errors.append(f"{where}: entrypoint {argv[:4]} is not `python -m orchestrator.cli sweep`")
            continue
        try:
            args = parse_args(argv[3:])
        except SystemExit:
            errors.append(f"{where}: `{spec['entrypoint']}` does not parse")
            continue
        if args.address != "auto":
            errors.append(f"{where}: the driver does not join the cluster (--address auto)")
        path = ROOT / args.sweep  # the head's workingDir is the image's WORKDIR, a copy of the repository's root
        if not path.is_file():
            errors.append(f"{where}: {args.sweep} is not in the image")
            continue
        name, need = sweep_needs(path, tuple(args.overrides))
        env = (yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {})
        if env.get("RAY_JOB_STOP_WAIT_TIME_S") != str(submit.STOP_GRACE_S):
            errors.append(f"{where}: RAY_JOB_STOP_WAIT_TIME_S is not imm-orch submit's {submit.STOP_GRACE_S}")
        if spec.get("metadata", {}).get("imm.name") != name:
            errors.append(f"{where}: metadata imm.name is not the sweep's name {name}")
        cluster = clusters.get(spec.get("clusterSelector", {}).get("ray.io/cluster"))
        if cluster:
            have = {"GPU": 0.0, "CPU": 0.0}
            for g in cluster.get("workerGroupSpecs", []):
                limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
                have["GPU"] += g["minReplicas"] * int(limits.get("nvidia.com/gpu", 0))
                have["CPU"] += g["minReplicas"] * quantity(limits["cpu"])
            if any(have.get(k, 0.0) < v for k, v in need.items()):
                errors.append(f"{where}: one trial needs {need}, the GPU pods at minReplicas hold {have}")
        jobs[job["metadata"]["name"]] = (args.resume, job)
    fresh = {n: j for n, (resume, j) in jobs.items() if not resume}
    for name, (resume, job) in jobs.items():
        if not resume:
            continue
        twin = next((j for j in fresh.values() if f"{j['spec']['entrypoint']} --resume" == job["spec"]["entrypoint"]),
                    None)
        if twin is None or {**twin["spec"], "entrypoint": ""} != {**job["spec"], "entrypoint": ""}:
            errors.append(f"RayJob {name}: not the same job as a first run's, with --resume")
    if not fresh or len(jobs) != 2 * len(fresh):
        errors.append(f"each sweep RayJob needs its --resume twin: {sorted(jobs)}")
    return errors


def version_errors(manifests) -> list[str]:
    """rayVersion is the image's Ray (requirements.lock); the page installs the targeted KubeRay's chart."""
    ray = re.search(r"^ray==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    errors = [f"{where}: rayVersion {spec.get('rayVersion')}, the image's Ray {ray}"
              for where, spec in cluster_specs(manifests) if spec.get("rayVersion") != ray]
    if f"--version {KUBERAY.lstrip('v')}" not in DOC.read_text():
        errors.append(f"docs/kubernetes.md does not install the kuberay-operator chart {KUBERAY.lstrip('v')}")
    return errors


POLICIES = [head_errors, resource_errors, shm_errors, autoscaling_errors, plain_secret_errors, rayjob_errors]
AGREEMENT = [image_errors, settings_errors, mlflow_errors, shm_size_errors, sweep_job_errors, version_errors]


# ---- the manifests as they are ----


def test_the_manifests_are_the_ones_the_page_lists():
    manifests = load()
    assert set(manifests) == {"configmap.yaml", "mlflow.yaml", "raycluster.yaml", "rayjob-sweep.yaml",
                              "rayjob-sweep-resume.yaml"}
    doc = DOC.read_text()
    assert all(f"`{name}`" in doc for name in manifests)
    kinds = sorted(o["kind"] for o in objects(manifests))
    assert kinds == ["ConfigMap", "Deployment", "RayCluster", "RayJob", "RayJob", "Service", "Service"]
    assert all(o["apiVersion"] == "ray.io/v1" for o in objects(manifests) if o["kind"] in RAY_KINDS)


def test_builtin_objects_pass_kubernetes_schemas():
    manifests = load()
    builtin = [o for o in objects(manifests) if o["kind"] not in RAY_KINDS]
    assert len(builtin) == 4
    assert [e for o in builtin for e in k8s_errors(o)] == []


def test_ray_resources_have_kuberay_fields_and_valid_pod_templates():
    manifests = load()
    ray = [o for o in objects(manifests) if o["kind"] in RAY_KINDS]
    assert len(ray) == 3 and FIELDS["kuberay"] == KUBERAY
    assert [e for o in ray for e in kuberay_errors(o)] == []


@pytest.mark.parametrize("check", POLICIES, ids=lambda c: c.__name__)
def test_policies(check):
    assert check(load()) == []


def test_every_secret_read_is_one_the_page_creates():
    manifests, doc = load(), DOC.read_text()
    made = created_secrets(doc)
    assert made == {"imm-ray-token": {"auth_token"}, "imm-pgpass": {"pgpass"},
                    "imm-aws-credentials": {"aws_credentials"}}
    assert {name for _, name, _ in secret_refs(manifests)} == set(made)
    assert doc_secret_errors(manifests, doc) == []


@pytest.mark.parametrize("check", AGREEMENT, ids=lambda c: c.__name__)
def test_agreement_with_the_repository(check):
    assert check(load()) == []


def test_the_page_is_linked_and_names_what_it_installs():
    assert "kubernetes.md" in (ROOT / "docs" / "cluster.md").read_text()
    assert "docs/kubernetes.md" in (ROOT / "docker" / "README.md").read_text()
    doc = DOC.read_text()
    assert "kubectl port-forward svc/imm-head-svc 8265:8265" in doc  # KubeRay's head Service: <cluster>-head-svc
    assert f"KubeRay operator {KUBERAY}" in doc and f"Kubernetes {K8S_VERSION.rsplit('.', 1)[0]}" in doc


# ---- each mistake is caught by the same checks ----


def worker(m):
    return m["raycluster.yaml"][0]["spec"]["workerGroupSpecs"][0]


def head_container(m):
    return m["raycluster.yaml"][0]["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def without_gpu_limits(m):
    for kind in ("limits", "requests"):
        del worker(m)["template"]["spec"]["containers"][0]["resources"][kind]["nvidia.com/gpu"]


def token_in_plain_text(m):
    head_container(m)["env"] = [{"name": "RAY_AUTH_TOKEN", "value": "0f3a9c41d2e8b7a6c5d4e3f2a1b0c9d8"}]


def unknown_field_in_the_spec(m):
    m["raycluster.yaml"][0]["spec"]["enableInTreeAutoscalling"] = True  # sic: a typo KubeRay would drop


def trials_on_the_head(m):
    del m["raycluster.yaml"][0]["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"]


def shm_on_disk(m):
    volumes = worker(m)["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "shm")["emptyDir"] = {}


def more_replicas_than_max(m):
    worker(m)["replicas"] = worker(m)["maxReplicas"] + 1


def autoscaler_off(m):
    m["raycluster.yaml"][0]["spec"]["enableInTreeAutoscaling"] = False


def an_integer_for_a_ray_start_param(m):
    m["raycluster.yaml"][0]["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # a map[string]string


def a_typo_in_a_pod_template(m):
    c = head_container(m)
    c["resource"] = c.pop("resources")


def unknown_field_in_a_configmap(m):
    m["configmap.yaml"][0]["metadata"]["label"] = {"a": "b"}


def a_secret_with_data(m):
    m["configmap.yaml"].append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "imm-pgpass"},
                                "data": {"pgpass": "KjoqOio6aW1tOnNlY3JldAo="}})


def a_password_in_a_url(m):
    m["configmap.yaml"][0]["data"]["IMM_OPTUNA_STORAGE"] = "postgresql://imm:hunter2@postgres:5432/optuna"


def a_secret_the_page_never_creates(m):
    head_container(m)["env"] = [{"name": "MLFLOW_TRACKING_TOKEN",
                                 "valueFrom": {"secretKeyRef": {"name": "imm-mlflow-token", "key": "token"}}}]


def the_token_secret_named_elsewhere(m):
    m["raycluster.yaml"][0]["spec"]["authOptions"]["secretName"] = "imm-token"


def retries_on_a_selected_cluster(m):
    m["rayjob-sweep.yaml"][0]["spec"]["backoffLimit"] = 3


def a_deadline_on_a_selected_cluster(m):
    m["rayjob-sweep.yaml"][0]["spec"]["activeDeadlineSeconds"] = 86400


def another_image(m):
    head_container(m)["image"] = "rayproject/ray:2.60.0-gpu"


def a_setting_node_env_lacks(m):
    m["configmap.yaml"][0]["data"]["IMM_OPTUNA_STORAGE_URL"] = "postgresql://imm@postgres:5432/optuna"


def a_setting_missing(m):
    del m["configmap.yaml"][0]["data"]["RAY_grpc_client_keepalive_time_ms"]


def another_mlflow_command(m):
    c = m["mlflow.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [c["args"][0].replace("postgres:5432/mlflow", "db.example.com:5432/mlflow")]


def a_smaller_shm_than_compose(m):
    volumes = worker(m)["template"]["spec"]["volumes"]
    next(v for v in volumes if v["name"] == "shm")["emptyDir"]["sizeLimit"] = "1Gi"


def a_sweep_not_in_the_image(m):
    spec = m["rayjob-sweep.yaml"][0]["spec"]
    spec["entrypoint"] = spec["entrypoint"].replace("cifar10_imm_ablation", "cifar10_imm_ablation_v2")


def a_resume_job_that_differs(m):
    m["rayjob-sweep-resume.yaml"][0]["spec"]["clusterSelector"] = {"ray.io/cluster": "other"}


def too_few_gpu_pods_for_a_trial(m):
    worker(m)["minReplicas"] = worker(m)["replicas"] = 0


MISTAKES = [
    (without_gpu_limits, resource_errors, "no nvidia.com/gpu limit"),
    (token_in_plain_text, plain_secret_errors, "RAY_AUTH_TOKEN has a literal value"),
    (unknown_field_in_the_spec, kuberay_errors, "'enableInTreeAutoscalling' was unexpected"),
    (trials_on_the_head, head_errors, "num-cpus"),
    (shm_on_disk, shm_errors, "/dev/shm"),
    (more_replicas_than_max, autoscaling_errors, "does not hold"),
    (autoscaler_off, autoscaling_errors, "enableInTreeAutoscaling"),
    (an_integer_for_a_ray_start_param, kuberay_errors, "is not of type 'string'"),
    (a_typo_in_a_pod_template, kuberay_errors, "'resource' was unexpected"),
    (unknown_field_in_a_configmap, k8s_errors, "'label' was unexpected"),
    (a_secret_with_data, plain_secret_errors, "shipped with its data"),
    (a_password_in_a_url, plain_secret_errors, "a URL with a password"),
    (a_secret_the_page_never_creates, doc_secret_errors, "imm-mlflow-token"),
    (the_token_secret_named_elsewhere, doc_secret_errors, "imm-token"),
    (retries_on_a_selected_cluster, rayjob_errors, "backoffLimit"),
    (a_deadline_on_a_selected_cluster, rayjob_errors, "activeDeadlineSeconds"),
    (another_image, image_errors, "rayproject/ray"),
    (a_setting_node_env_lacks, settings_errors, "IMM_OPTUNA_STORAGE_URL"),
    (a_setting_missing, settings_errors, "RAY_grpc_client_keepalive_time_ms"),
    (another_mlflow_command, mlflow_errors, "compose's mlflow command"),
    (a_smaller_shm_than_compose, shm_size_errors, "/dev/shm 1Gi"),
    (a_sweep_not_in_the_image, sweep_job_errors, "cifar10_imm_ablation_v2.yaml is not in the image"),
    (a_resume_job_that_differs, sweep_job_errors, "with --resume"),
    (too_few_gpu_pods_for_a_trial, sweep_job_errors, "one trial needs"),
]


def run_check(check, manifests) -> list[str]:
    if check is kuberay_errors:
        return [e for o in objects(manifests) if o["kind"] in RAY_KINDS for e in kuberay_errors(o)]
    if check is k8s_errors:
        return [e for o in objects(manifests) if o["kind"] not in RAY_KINDS for e in k8s_errors(o)]
    if check is doc_secret_errors:
        return doc_secret_errors(manifests, DOC.read_text())
    return check(manifests)


@pytest.mark.parametrize(("mistake", "check", "said"), MISTAKES, ids=[m.__name__ for m, _, _ in MISTAKES])
def test_a_mistake_is_caught(mistake, check, said):
    manifests = copy.deepcopy(load())
    assert run_check(check, manifests) == []  # the shipped manifests pass this check
    mistake(manifests)
    found = run_check(check, manifests)
    assert any(said in e for e in found), found
