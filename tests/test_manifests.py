"""Offline validation of the Kubernetes manifests in ``cluster/kuberay/`` (and a sanity check of
the Ray cluster launcher config ``cluster/ray-cluster.yaml``).

Three layers, none of which needs a cluster:

1. **Schema.** The OpenAPI v3 schemas of the KubeRay v1.7.0 CRDs (RayCluster, RayJob, RayCronJob;
   ``spec.versions[].schema.openAPIV3Schema``) are converted to JSON Schema *strictly*, the way
   ``kubectl apply --validate=strict`` treats unknown fields: every object schema that lists
   ``properties`` gets ``additionalProperties: false`` unless it says
   ``x-kubernetes-preserve-unknown-fields`` or sets ``additionalProperties`` itself;
   ``x-kubernetes-int-or-string`` becomes "integer or string"; ``nullable`` adds ``null``; the other
   ``x-kubernetes-*`` keys (list types, map types, CEL rules) are dropped. A field that is
   ``required`` but has a ``default`` is not required here, because the API server applies
   defaults before it validates. The CRDs are looked up in ``$KUBERAY_CRD_DIR``, then in
   ``shared/kuberay-crds-v1.7.0`` inside and next to the checkout; without them the schema tests
   are skipped (the other two layers still run).
2. **The operator's own checks** that a schema cannot express, mirrored from
   ``ray-operator/controllers/ray/utils/validation.go`` at tag v1.7.0 of ray-project/kuberay
   (``ValidateRayClusterSpec``, ``ValidateRayJobMetadata``, ``ValidateRayJobSpec``,
   ``ValidateRayCronJobSpec``): name lengths, replica bounds, token auth needs Ray >= 2.52,
   backoffLimit rules, deadlines, cron schedule and time zone, feature-gated fields. The operator
   reports these only at reconcile time, as a ``ValidationFailed`` status or a Warning event.
3. **distrec's rules**: Ray token authentication everywhere, the token only from the Kubernetes
   Secret (never inline, never in runtimeEnvYAML or on the entrypoint), replicas inside their
   bounds (KubeRay clamps silently), nightly runs bounded below a day, the Kubernetes CronJob
   alternative with ``concurrencyPolicy: Forbid``.

Every check has a negative test that mutates a loaded manifest in memory and asserts the
validator rejects it.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
CRD_DIR_NAME = "kuberay-crds-v1.7.0"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
RAY_KINDS = frozenset(CRD_FILES)
CORE_KINDS = frozenset(
    {
        ("v1", "Secret"),
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
        ("batch/v1", "CronJob"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    }
)

# ray-operator/controllers/ray/utils/constant.go (v1.7.0)
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6  # 47: the RayJob's RayCluster is "<rayjob>-<5 random>"
MAX_RAYCRONJOB_NAME = MAX_RAYJOB_NAME - 11  # 36: its RayJobs are "<raycronjob>-<minutes since epoch>"
GENERATE_NAME_SUFFIX = 5  # the API server appends 5 random characters to metadata.generateName
MIN_TOKEN_AUTH_RAY = (2, 52, 0)
MIN_K8S_TOKEN_AUTH_RAY = (2, 55, 0)
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")

# distrec's rules
DAY_SECONDS = 86_400
TOKEN_SECRET = "distrec-ray-token"  # secret-example.yaml; KubeRay reads its key `auth_token`
NIGHTLY_ENTRYPOINT = "distrec nightly jobs/nightly.yaml"
SENSITIVE_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY", re.IGNORECASE)
KUBERAY_MANAGED_ENV = frozenset({"RAY_AUTH_TOKEN", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"})


# ---------------------------------------------------------------------------------------------
# Loading


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.load_all(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if doc]


def _manifest_files() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


@functools.cache
def _documents() -> tuple[tuple[str, int, dict[str, Any]], ...]:
    return tuple(
        (path.name, index, doc) for path in _manifest_files() for index, doc in enumerate(_load_yaml_docs(path))
    )


def _docs(kind: str | None = None) -> list[dict[str, Any]]:
    """Deep copies, so tests can mutate them."""
    return [copy.deepcopy(doc) for _, _, doc in _documents() if kind is None or doc.get("kind") == kind]


def _doc(file: str, kind: str) -> dict[str, Any]:
    found = [copy.deepcopy(d) for f, _, d in _documents() if f == file and d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in {file}, found {len(found)}"
    return found[0]


def _doc_id(entry: tuple[str, int, dict[str, Any]]) -> str:
    file, index, doc = entry
    meta = doc.get("metadata") or {}
    return f"{file}[{index}]:{doc.get('kind')}/{meta.get('name') or meta.get('generateName')}"


def _crd_dir() -> Path | None:
    explicit = os.environ.get("KUBERAY_CRD_DIR")
    if explicit:
        assert Path(explicit, CRD_FILES["RayJob"]).is_file(), f"KUBERAY_CRD_DIR={explicit} has no {CRD_FILES['RayJob']}"
        return Path(explicit)
    for candidate in (REPO / "shared" / CRD_DIR_NAME, REPO.parent / "shared" / CRD_DIR_NAME):
        if (candidate / CRD_FILES["RayJob"]).is_file():
            return candidate
    return None


needs_crds = pytest.mark.skipif(
    _crd_dir() is None,
    reason=f"KubeRay CRDs not found: set KUBERAY_CRD_DIR to a copy of ray-operator/config/crd/bases "
    f"(tag v1.7.0) or place them in shared/{CRD_DIR_NAME}",
)


# ---------------------------------------------------------------------------------------------
# Layer 1: OpenAPI v3 (Kubernetes structural schema) -> strict JSON Schema


def to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Convert one OpenAPI v3 schema node of a CRD into JSON Schema (draft 7), strictly."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_json_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        elif key == "required":
            # Defaulting runs before validation in the API server: a defaulted field is never missing.
            props = node.get("properties", {})
            out[key] = [name for name in value if "default" not in props.get(name, {})]
        elif key == "nullable" or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable"):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# The CRDs give the root `metadata` as a bare object (the API server validates ObjectMeta itself).
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "anyOf": [{"required": ["name"]}, {"required": ["generateName"]}],
}

FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _is_int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@FORMATS.checks("int64")
def _is_int64(value: object) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> converted root schema, for every served version of the three CRDs."""
    crd_dir = _crd_dir()
    assert crd_dir is not None
    schemas = {}
    for kind, filename in CRD_FILES.items():
        (crd,) = _load_yaml_docs(crd_dir / filename)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            root = to_json_schema(version["schema"]["openAPIV3Schema"])
            root["properties"]["metadata"] = OBJECT_META
            root["properties"].pop("status", None)  # written by the operator, never by a manifest
            root["required"] = sorted({*root.get("required", []), "apiVersion", "kind", "metadata", "spec"})
            schemas[(f"{crd['spec']['group']}/{version['name']}", kind)] = root
    return schemas


@functools.cache
def _pod_template_schema() -> dict[str, Any]:
    """The PodTemplateSpec schema embedded in the RayCluster CRD (the Kubernetes API KubeRay was
    built against), reused for the pod templates of core kinds such as the CronJob."""
    spec = _crd_schemas()[("ray.io/v1", "RayCluster")]["properties"]["spec"]
    return spec["properties"]["headGroupSpec"]["properties"]["template"]


def _schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema, format_checker=FORMATS)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def crd_schema_errors(doc: dict[str, Any]) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    schemas = _crd_schemas()
    if key not in schemas:
        return [f"no served CRD version for apiVersion={key[0]} kind={key[1]}"]
    return _schema_errors(schemas[key], doc)


# ---------------------------------------------------------------------------------------------
# Layer 2: the KubeRay operator's Go checks (validation.go, v1.7.0)


def _parse_ray_version(text: str) -> tuple[int, int, int] | None:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.].*)?", str(text).strip())
    return None if match is None else (int(match[1]), int(match[2]), int(match[3] or 0))


def _effective_name(meta: dict[str, Any]) -> str:
    if meta.get("name"):
        return meta["name"]
    return meta.get("generateName", "") + "x" * GENERATE_NAME_SUFFIX


def _name_errors(kind: str, meta: dict[str, Any], limit: int) -> list[str]:
    name = _effective_name(meta)
    errors = []
    if len(name) > limit:
        errors.append(f"{kind} name {name!r} has {len(name)} characters, more than {limit}")
    if len(name) > 63 or not DNS1035_LABEL.fullmatch(name):
        errors.append(f"{kind} name {name!r} is not a valid DNS-1035 label")
    return errors


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return ((group.get("template") or {}).get("spec") or {}).get("containers") or []


def _group_errors(where: str, group: dict[str, Any]) -> list[str]:
    errors = []
    params = group.get("rayStartParams") or {}
    if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
        errors.append(f"{where}: resources set in both rayStartParams and resources")
    if "labels" in params:
        errors.append(f"{where}: rayStartParams['labels'] is not supported, use the labels field")
    return errors


def _autoscaler_v2(spec: dict[str, Any]) -> bool:
    if (spec.get("autoscalerOptions") or {}).get("version") == "v2":
        return True
    head = _containers(spec.get("headGroupSpec") or {})
    env = {e.get("name"): e.get("value") for e in (head[0].get("env") or [])} if head else {}
    return env.get("RAY_enable_autoscaler_v2") in ("1", "true")


def raycluster_spec_errors(spec: dict[str, Any], where: str = "spec", *, in_rayjob: bool = False) -> list[str]:
    """ValidateRayClusterSpec."""
    errors = []
    head = spec.get("headGroupSpec") or {}
    if not _containers(head):
        errors.append(f"{where}.headGroupSpec: the pod template needs at least one container")
    errors += _group_errors(f"{where}.headGroupSpec", head)
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        at = f"{where}.workerGroupSpecs[{i}] ({group.get('groupName')})"
        if not _containers(group):
            errors.append(f"{at}: the pod template needs at least one container")
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        if not autoscaling and (low is None or high is None):
            errors.append(f"{at}: minReplicas and maxReplicas are required when autoscaling is disabled")
        if low is not None and low < 0:
            errors.append(f"{at}: negative minReplicas {low}")
        if high is not None and high < 0:
            errors.append(f"{at}: negative maxReplicas {high}")
        if low is not None and high is not None and low > high:
            errors.append(f"{at}: minReplicas {low} greater than maxReplicas {high}")
        errors += _group_errors(at, group)
        idle = group.get("idleTimeoutSeconds")
        if idle is not None and idle < 0:
            errors.append(f"{at}: negative idleTimeoutSeconds")
        elif idle is not None and not _autoscaler_v2(spec):
            errors.append(f"{at}: idleTimeoutSeconds needs autoscalerOptions.version v2")
        if group.get("suspend") and autoscaling:
            errors.append(f"{at}: a worker group cannot be suspended with the autoscaler enabled")
        if group.get("priority") and not _autoscaler_v2(spec):
            errors.append(f"{at}: priority needs autoscaler v2")
    idle = (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds")
    if idle is not None and idle < 0:
        errors.append(f"{where}.autoscalerOptions.idleTimeoutSeconds must be non-negative")

    auth = spec.get("authOptions") or {}
    k8s_auth = bool(auth.get("enableK8sTokenAuth"))
    if auth.get("mode") == "token":
        raw = spec.get("rayVersion")
        version = _parse_ray_version(raw) if raw else None
        if not raw:
            errors.append(f"{where}: authOptions.mode is 'token' but rayVersion is not set (needs >= 2.52.0)")
        elif version is None:
            errors.append(f"{where}: authOptions.mode is 'token' but rayVersion {raw!r} does not parse")
        elif version < MIN_TOKEN_AUTH_RAY:
            errors.append(f"{where}: authOptions.mode is 'token' but rayVersion {raw} is below 2.52.0")
        if k8s_auth:
            if version is not None and version < MIN_K8S_TOKEN_AUTH_RAY:
                errors.append(f"{where}: authOptions.enableK8sTokenAuth needs Ray >= 2.55.0")
            if auth.get("secretName"):
                errors.append(f"{where}: authOptions.enableK8sTokenAuth and secretName are exclusive")
    elif k8s_auth:
        errors.append(f"{where}: authOptions.enableK8sTokenAuth needs authOptions.mode 'token'")
    if in_rayjob and k8s_auth:
        errors.append(f"{where}: K8s token auth is not supported for RayJob")
    for field, gate in (
        ("networkPolicy", "RayClusterNetworkPolicy"),
        ("tlsOptions", "RayClusterMTLS"),
        ("historyServerOptions", "RayClusterHistoryServer"),
    ):
        if spec.get(field) is not None:
            errors.append(f"{where}.{field} needs the {gate} feature gate (off by default)")
    return errors


def _deletion_strategy_errors(spec: dict[str, Any], where: str) -> list[str]:
    """validateDeletionConfiguration (the RayJobDeletionPolicy gate is beta, on by default in 1.7)."""
    strategy = spec.get("deletionStrategy")
    if strategy is None:
        return []
    at = f"{where}.deletionStrategy"
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    autoscaling = bool((spec.get("rayClusterSpec") or {}).get("enableInTreeAutoscaling"))
    rules = strategy.get("deletionRules") or []
    legacy = {k: strategy[k] for k in ("onSuccess", "onFailure") if strategy.get(k) is not None}
    if rules and shutdown:
        return [f"{at}.deletionRules and shutdownAfterJobFinishes are mutually exclusive"]
    if rules and legacy:
        return [f"{at}: legacy onSuccess/onFailure and deletionRules cannot be combined"]
    if not rules and not legacy:
        return [f"{at} requires both onSuccess and onFailure, or deletionRules"]
    errors = []
    if legacy:
        if len(legacy) != 2:
            errors.append(f"{at}: onSuccess and onFailure must both be set")
        policies = [p.get("policy") for p in legacy.values()]
        if None in policies:
            errors.append(f"{at}: every legacy entry needs a policy")
        if "DeleteWorkers" in policies and autoscaling:
            errors.append(f"{at}: DeleteWorkers does not support autoscaling")
        if shutdown and "DeleteNone" in policies:
            errors.append(f"{at}: DeleteNone with shutdownAfterJobFinishes")
    for i, rule in enumerate(rules):
        condition = rule.get("condition") or {}
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            errors.append(f"{at}.deletionRules[{i}]: exactly one of jobStatus and jobDeploymentStatus")
        if condition.get("ttlSeconds", 0) < 0:
            errors.append(f"{at}.deletionRules[{i}]: negative ttlSeconds")
        if rule.get("policy") == "DeleteWorkers" and autoscaling:
            errors.append(f"{at}.deletionRules[{i}]: DeleteWorkers does not support autoscaling")
    return errors


def rayjob_spec_errors(spec: dict[str, Any], where: str = "spec") -> list[str]:
    """ValidateRayJobSpec (plus the Kubernetes Job rule for the submitter's backoffLimit)."""
    errors = []
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        errors.append(f"{where}: suspend needs shutdownAfterJobFinishes")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        errors.append(f"{where}.ttlSecondsAfterFinished must be non-negative")
    if ttl > 0 and not shutdown:
        errors.append(f"{where}: ttlSecondsAfterFinished without shutdownAfterJobFinishes")
    errors += _deletion_strategy_errors(spec, where)
    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        errors.append(f"{where}.submissionMode {mode!r} is not one of {SUBMISSION_MODES}")
    backoff = spec.get("backoffLimit")
    selector = spec.get("clusterSelector") or {}
    if spec.get("suspend") and selector:
        errors.append(f"{where}: clusterSelector mode cannot be suspended")
    if spec.get("rayClusterSpec") is None and not selector:
        errors.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            errors.append(f"{where}.clusterSelector needs a non-empty 'ray.io/cluster'")
        if mode == "SidecarMode":
            errors.append(f"{where}: clusterSelector is not supported in SidecarMode")
        if backoff is not None and backoff > 0:
            errors.append(f"{where}: backoffLimit > 0 is incompatible with clusterSelector")
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        errors.append(f"{where}: backoffLimit > 0 is incompatible with InteractiveMode")
    if mode == "SidecarMode" and (spec.get("submitterPodTemplate") or spec.get("submitterConfig")):
        errors.append(f"{where}: SidecarMode supports neither submitterPodTemplate nor submitterConfig")
    if spec.get("rayClusterSpec") is not None:
        errors += raycluster_spec_errors(spec["rayClusterSpec"], f"{where}.rayClusterSpec", in_rayjob=True)
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        if not isinstance(runtime_env, dict):
            errors.append(f"{where}.runtimeEnvYAML is not a YAML mapping")
    except yaml.YAMLError as exc:
        errors.append(f"{where}.runtimeEnvYAML is not valid YAML: {exc}")
    for field in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if spec.get(field) is not None and spec[field] <= 0:
            errors.append(f"{where}.{field} must be a positive integer")
    if backoff is not None and backoff < 0:
        errors.append(f"{where}.backoffLimit must be non-negative")
    submitter_backoff = (spec.get("submitterConfig") or {}).get("backoffLimit")
    if submitter_backoff is not None and submitter_backoff < 0:
        errors.append(f"{where}.submitterConfig.backoffLimit must be non-negative (Kubernetes Job rule)")
    return errors


_CRON_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))  # minute hour day-of-month month day-of-week
_CRON_NAMES = re.compile(r"JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT", re.I)
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def cron_schedule_errors(schedule: str) -> list[str]:
    """A standard 5-field cron line or descriptor (robfig/cron ParseStandard, as KubeRay uses)."""
    if "TZ" in schedule:
        return ["TZ / CRON_TZ in the schedule: use the timeZone field"]
    if schedule in _CRON_DESCRIPTORS or re.fullmatch(r"@every \d+[smh](\d+[smh])*", schedule):
        return []
    fields = schedule.split()
    if len(fields) != 5:
        return [f"cron schedule {schedule!r} has {len(fields)} fields, not 5"]
    for text, (low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            match = re.fullmatch(r"(\*|\?|\w+(?:-\w+)?)(?:/(\d+))?", part)
            if match is None:
                return [f"cron field {text!r} does not parse"]
            if match[1] in "*?":
                continue
            for bound in match[1].split("-"):
                if _CRON_NAMES.fullmatch(bound):
                    continue
                if not bound.isdigit() or not low <= int(bound) <= high:
                    return [f"cron field {text!r}: {bound!r} outside {low}-{high}"]
    return []


def raycronjob_errors(doc: dict[str, Any]) -> list[str]:
    """ValidateRayCronJobSpec."""
    spec = doc.get("spec") or {}
    errors = _name_errors("RayCronJob", doc.get("metadata") or {}, MAX_RAYCRONJOB_NAME)
    errors += cron_schedule_errors(spec.get("schedule", ""))
    if "timeZone" in spec:
        zone = spec["timeZone"]
        if not zone:
            errors.append("spec.timeZone must not be empty (omit it for the operator's zone)")
        else:
            try:
                zoneinfo.ZoneInfo(zone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                errors.append(f"spec.timeZone {zone!r} is not a known time zone")
    return errors + rayjob_spec_errors(spec.get("jobTemplate") or {}, "spec.jobTemplate")


def kuberay_errors(doc: dict[str, Any]) -> list[str]:
    """What the KubeRay v1.7.0 operator would reject at reconcile time."""
    kind, meta, spec = doc.get("kind"), doc.get("metadata") or {}, doc.get("spec") or {}
    if kind == "RayCluster":
        return _name_errors("RayCluster", meta, MAX_RAYCLUSTER_NAME) + raycluster_spec_errors(spec)
    if kind == "RayJob":
        return _name_errors("RayJob", meta, MAX_RAYJOB_NAME) + rayjob_spec_errors(spec)
    if kind == "RayCronJob":
        return raycronjob_errors(doc)
    raise AssertionError(f"not a KubeRay kind: {kind}")


# ---------------------------------------------------------------------------------------------
# Layer 3: distrec's rules


def _pod_spec_errors(pod_spec: dict[str, Any], where: str) -> list[str]:
    """No credential inline in a container's env; the token variables are KubeRay's to set."""
    errors = []
    for kind in ("initContainers", "containers"):
        for container in pod_spec.get(kind) or []:
            at = f"{where}.{kind}[{container.get('name')}]"
            image = str(container.get("image", ""))
            if not image or image.endswith(":latest"):
                errors.append(f"{at}: image {image!r} must be pinned (a tag other than latest, or a digest)")
            for env in container.get("env") or []:
                name = env.get("name", "")
                if name in KUBERAY_MANAGED_ENV:
                    errors.append(f"{at}: env {name} is set by KubeRay from authOptions; do not set it")
                elif SENSITIVE_ENV.search(name) and "value" in env:
                    errors.append(f"{at}: env {name} has an inline value; use valueFrom.secretKeyRef")
    return errors


def _template_errors(template: dict[str, Any] | None, where: str) -> list[str]:
    return _pod_spec_errors((template or {}).get("spec") or {}, where)


def distrec_cluster_errors(spec: dict[str, Any], where: str = "spec") -> list[str]:
    errors = []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        errors.append(f"{where}.authOptions.mode must be 'token' (Ray token authentication)")
    if auth.get("secretName") != TOKEN_SECRET:
        errors.append(f"{where}.authOptions.secretName must be {TOKEN_SECRET!r} (the token comes from that Secret)")
    head = spec.get("headGroupSpec") or {}
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        errors.append(f"{where}.headGroupSpec.serviceType must stay ClusterIP (the token travels in plain HTTP)")
    errors += _template_errors(head.get("template"), f"{where}.headGroupSpec")
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        at = f"{where}.workerGroupSpecs[{i}] ({group.get('groupName')})"
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        replicas = group.get("replicas", 0)
        if not low <= replicas <= high:
            errors.append(f"{at}: replicas {replicas} outside [minReplicas {low}, maxReplicas {high}] (KubeRay clamps)")
        errors += _template_errors(group.get("template"), at)
    return errors


def distrec_rayjob_errors(spec: dict[str, Any], where: str = "spec", *, nightly: bool) -> list[str]:
    errors = []
    if spec.get("rayClusterSpec") is not None:
        errors += distrec_cluster_errors(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    errors += _template_errors(spec.get("submitterPodTemplate"), f"{where}.submitterPodTemplate")
    runtime_env_text = spec.get("runtimeEnvYAML") or ""
    if re.search(r"RAY_AUTH|auth_token", runtime_env_text, re.IGNORECASE):
        errors.append(f"{where}.runtimeEnvYAML mentions the auth token; the dashboard shows the runtime env")
    try:
        env_vars = (yaml.safe_load(runtime_env_text) or {}).get("env_vars") or {}
    except (yaml.YAMLError, AttributeError):
        env_vars = {}
    errors += [
        f"{where}.runtimeEnvYAML env_vars.{k}: no credentials in a runtime env"
        for k in env_vars
        if SENSITIVE_ENV.search(k)
    ]
    if re.search(r"RAY_AUTH_TOKEN|auth_token", spec.get("entrypoint", ""), re.IGNORECASE):
        errors.append(f"{where}.entrypoint mentions the auth token (visible in the job list and `ps`)")
    if nightly:
        deadline, retries = spec.get("activeDeadlineSeconds"), spec.get("backoffLimit", 0)
        if deadline is None or deadline >= DAY_SECONDS:
            errors.append(f"{where}.activeDeadlineSeconds must be set and below {DAY_SECONDS} for a nightly job")
        elif (retries + 1) * deadline >= DAY_SECONDS:
            # Each retry starts on a new RayCluster with a fresh StartTime, so its own deadline.
            errors.append(f"{where}: (backoffLimit + 1) x activeDeadlineSeconds must stay below a day")
        if not spec.get("shutdownAfterJobFinishes"):
            errors.append(f"{where}.shutdownAfterJobFinishes must be true: the GPU cluster goes away after the run")
        if not str(spec.get("entrypoint", "")).startswith("distrec nightly "):
            errors.append(f"{where}.entrypoint must run `distrec nightly`")
    return errors


def _is_nightly(doc: dict[str, Any]) -> bool:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    return doc.get("kind") == "RayCronJob" or labels.get("app.kubernetes.io/component") == "nightly"


def distrec_errors(doc: dict[str, Any]) -> list[str]:
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "RayCluster":
        return distrec_cluster_errors(spec)
    if kind == "RayJob":
        return distrec_rayjob_errors(spec, nightly=_is_nightly(doc))
    if kind == "RayCronJob":
        return distrec_rayjob_errors(spec.get("jobTemplate") or {}, "spec.jobTemplate", nightly=True)
    raise AssertionError(f"not a KubeRay kind: {kind}")


# Kubernetes batch/v1 fields (k8s.io/api/batch/v1 CronJobSpec / JobSpec), for a strict key check.
CRONJOB_SPEC_KEYS = frozenset(
    {
        "schedule",
        "timeZone",
        "startingDeadlineSeconds",
        "concurrencyPolicy",
        "suspend",
        "jobTemplate",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    }
)
JOB_SPEC_KEYS = frozenset(
    {
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "podFailurePolicy",
        "successPolicy",
        "backoffLimit",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
        "selector",
        "manualSelector",
        "template",
        "ttlSecondsAfterFinished",
        "completionMode",
        "suspend",
        "podReplacementPolicy",
        "managedBy",
    }
)


def core_errors(doc: dict[str, Any]) -> list[str]:
    """Structure of the core kinds, and distrec's rules for them."""
    errors = []
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in CORE_KINDS:
        return [f"unexpected apiVersion/kind {key}: add it to CORE_KINDS with its checks"]
    meta = doc.get("metadata") or {}
    if not meta.get("name"):
        errors.append("metadata.name is required")
    kind = doc["kind"]
    if kind == "Secret":
        values = {**(doc.get("data") or {}), **(doc.get("stringData") or {})}
        errors += [f"Secret key {k!r} carries a value: never commit a credential" for k, v in values.items() if v]
    elif kind == "CronJob":
        spec = doc.get("spec") or {}
        errors += [f"spec.{k}: unknown CronJob field" for k in spec.keys() - CRONJOB_SPEC_KEYS]
        errors += cron_schedule_errors(str(spec.get("schedule", "")))
        if spec.get("concurrencyPolicy") != "Forbid":
            errors.append("spec.concurrencyPolicy must be Forbid: never two nightlies at once")
        job = (spec.get("jobTemplate") or {}).get("spec")
        if not isinstance(job, dict):
            errors.append("spec.jobTemplate.spec is required")
            return errors
        errors += [f"spec.jobTemplate.spec.{k}: unknown Job field" for k in job.keys() - JOB_SPEC_KEYS]
        pod = (job.get("template") or {}).get("spec") or {}
        if not pod.get("containers"):
            errors.append("spec.jobTemplate.spec.template.spec.containers is required")
        if pod.get("restartPolicy") not in ("Never", "OnFailure"):
            errors.append("a Job's pod restartPolicy must be Never or OnFailure")
        if job.get("backoffLimit") != 0:
            errors.append("spec.jobTemplate.spec.backoffLimit must be 0: a retried pod would start a second RayJob")
        deadline = job.get("activeDeadlineSeconds")
        if deadline is None or deadline >= DAY_SECONDS:
            errors.append(f"spec.jobTemplate.spec.activeDeadlineSeconds must be set and below {DAY_SECONDS}")
        errors += _pod_spec_errors(pod, "spec.jobTemplate.spec.template.spec")
    elif kind == "Role":
        for rule in doc.get("rules") or []:
            if rule.get("apiGroups") != ["ray.io"] or rule.get("resources") != ["rayjobs"]:
                errors.append(f"Role rule {rule} reaches beyond ray.io/rayjobs")
            if not set(rule.get("verbs") or []) <= {"create", "get", "list", "watch"}:
                errors.append(f"Role rule {rule} grants more than create/get/list/watch")
    elif kind == "RoleBinding" and ((doc.get("roleRef") or {}).get("kind") != "Role" or not doc.get("subjects")):
        errors.append("RoleBinding needs a roleRef to a Role and subjects")
    return errors


# ---------------------------------------------------------------------------------------------
# The manifests as they are


ALL_DOCS = _documents()
RAY_DOCS = [entry for entry in ALL_DOCS if entry[2].get("kind") in RAY_KINDS]
CORE_DOCS = [entry for entry in ALL_DOCS if entry[2].get("kind") not in RAY_KINDS]


def test_manifests_found() -> None:
    files = {entry[0] for entry in ALL_DOCS}
    assert {
        "raycluster.yaml",
        "rayjob-nightly.yaml",
        "raycronjob-nightly.yaml",
        "cronjob-nightly.yaml",
        "secret-example.yaml",
    } <= files
    assert {doc.get("kind") for _, _, doc in RAY_DOCS} == RAY_KINDS


@pytest.mark.parametrize("entry", ALL_DOCS, ids=_doc_id)
def test_basic_structure(entry: tuple[str, int, dict[str, Any]]) -> None:
    _, _, doc = entry
    assert isinstance(doc.get("apiVersion"), str) and isinstance(doc.get("kind"), str)
    meta = doc.get("metadata")
    assert isinstance(meta, dict) and (meta.get("name") or meta.get("generateName"))


@needs_crds
def test_converted_schemas_are_valid_json_schema() -> None:
    schemas = _crd_schemas()
    assert {("ray.io/v1", kind) for kind in RAY_KINDS} <= schemas.keys()
    for schema in schemas.values():
        jsonschema.Draft7Validator.check_schema(schema)


@needs_crds
@pytest.mark.parametrize("entry", RAY_DOCS, ids=_doc_id)
def test_ray_manifest_matches_crd_schema(entry: tuple[str, int, dict[str, Any]]) -> None:
    assert crd_schema_errors(entry[2]) == []


@pytest.mark.parametrize("entry", RAY_DOCS, ids=_doc_id)
def test_ray_manifest_passes_operator_checks(entry: tuple[str, int, dict[str, Any]]) -> None:
    assert kuberay_errors(entry[2]) == []


@pytest.mark.parametrize("entry", RAY_DOCS, ids=_doc_id)
def test_ray_manifest_follows_distrec_rules(entry: tuple[str, int, dict[str, Any]]) -> None:
    assert distrec_errors(entry[2]) == []


@pytest.mark.parametrize("entry", CORE_DOCS, ids=_doc_id)
def test_core_manifest(entry: tuple[str, int, dict[str, Any]]) -> None:
    assert core_errors(entry[2]) == []


@needs_crds
def test_cronjob_pod_template_matches_kubernetes_schema() -> None:
    cron = _doc("cronjob-nightly.yaml", "CronJob")
    assert _schema_errors(_pod_template_schema(), cron["spec"]["jobTemplate"]["spec"]["template"]) == []


def test_nightly_runs_the_nightly_command() -> None:
    rayjob = _doc("rayjob-nightly.yaml", "RayJob")
    assert rayjob["spec"]["entrypoint"] == NIGHTLY_ENTRYPOINT
    # No fixed Ray submission id: KubeRay derives one per RayJob; the *run* identity is the
    # nightly's own (UTC date + config hash), the same for a retry on the same day.
    assert "jobId" not in rayjob["spec"]
    # The relative config path resolves against the head container's working directory.
    (head,) = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert head.get("workingDir") == "/home/ray/distrec"


def test_raycronjob_template_is_the_nightly_rayjob() -> None:
    """The two scheduling options run the same thing: keep the template a copy of the RayJob's spec."""
    assert (
        _doc("raycronjob-nightly.yaml", "RayCronJob")["spec"]["jobTemplate"]
        == _doc("rayjob-nightly.yaml", "RayJob")["spec"]
    )


def test_nightly_cluster_matches_the_long_lived_one() -> None:
    """rayjob-nightly.yaml says "same shape as raycluster.yaml": the parts that must not drift."""
    nightly = _doc("rayjob-nightly.yaml", "RayJob")["spec"]["rayClusterSpec"]
    cluster = _doc("raycluster.yaml", "RayCluster")["spec"]
    for key in ("rayVersion", "authOptions", "enableInTreeAutoscaling"):
        assert nightly[key] == cluster[key], key
    assert nightly["headGroupSpec"]["rayStartParams"] == cluster["headGroupSpec"]["rayStartParams"]

    def images_and_resources(spec: dict[str, Any]) -> list[tuple[str, Any]]:
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [(c["image"], c["resources"]) for g in groups for c in _containers(g)]

    assert images_and_resources(nightly) == images_and_resources(cluster)


def test_raycronjob_retries_stay_on_the_tick_day() -> None:
    """The nightly's run id has the UTC date in it: the last retry must start on the tick's date."""
    cron = _doc("raycronjob-nightly.yaml", "RayCronJob")["spec"]
    minute, hour, *rest = cron["schedule"].split()
    assert cron.get("timeZone") in ("Etc/UTC", "UTC") and rest == ["*", "*", "*"]
    template = cron["jobTemplate"]
    last_retry_starts = (
        int(hour) * 3600 + int(minute) * 60 + template["backoffLimit"] * template["activeDeadlineSeconds"]
    )
    assert last_retry_starts < DAY_SECONDS


def test_cronjob_alternative_is_wired_up() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _docs() if (d.get("metadata") or {}).get("name")}
    cron = _doc("cronjob-nightly.yaml", "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert ("ServiceAccount", account) in docs
    (binding,) = [d for (k, _), d in docs.items() if k == "RoleBinding"]
    assert ("Role", binding["roleRef"]["name"]) in docs
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]
    ]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == "distrec-nightly-rayjob"
    script = " ".join(pod["containers"][0]["command"] + pod["containers"][0].get("args", []))
    assert "kubectl create -f /etc/distrec/rayjob-nightly.yaml" in script
    # The "still running?" guard selects the nightly RayJob by its labels.
    labels = _doc("rayjob-nightly.yaml", "RayJob")["metadata"]["labels"]
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/component"):
        assert f"{key}={labels[key]}" in script
    # The pod waits for the RayJob, so it must outlive every attempt of it.
    rayjob = _doc("rayjob-nightly.yaml", "RayJob")["spec"]
    attempts = (rayjob["backoffLimit"] + 1) * rayjob["activeDeadlineSeconds"]
    assert attempts < cron["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] < DAY_SECONDS


def test_every_cluster_reads_the_token_secret() -> None:
    (secret,) = _docs("Secret")
    assert secret["metadata"]["name"] == TOKEN_SECRET
    assert set(secret.get("stringData", {})) == {"auth_token"}  # the key KubeRay reads
    # Not even in the comments: an assignment of a literal token (a command substitution is fine).
    for path in _manifest_files():
        assert not re.search(r"RAY_AUTH_TOKEN\s*[:=]\s*(?!\$\()\S", path.read_text()), path.name


def _ray_schema() -> dict[str, Any] | None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "autoscaler", "ray-schema.json")
    return json.loads(path.read_text()) if path.is_file() else None


def launcher_errors(config: dict[str, Any]) -> list[str]:
    """cluster/ray-cluster.yaml is the Ray autoscaler's format, not a CRD: Ray's own schema
    (ray/autoscaler/ray-schema.json, when Ray is installed) plus distrec's rules."""
    errors = [f"missing {k}" for k in ("cluster_name", "max_workers", "provider", "auth", "docker") if k not in config]
    schema = _ray_schema()
    if schema is not None:
        errors += _schema_errors(schema, config)
    types = config.get("available_node_types") or {}
    if config.get("head_node_type") not in types:
        errors.append("head_node_type is not one of available_node_types")
    for name, node_type in types.items():
        if node_type.get("min_workers", 0) > node_type.get("max_workers", config.get("max_workers", 0)):
            errors.append(f"{name}: min_workers above max_workers")
    if sum(t.get("min_workers", 0) for t in types.values()) > config.get("max_workers", 0):
        errors.append("the node types' min_workers add up to more than max_workers")
    starts = config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", [])
    errors += [
        f"{c!r} starts Ray without RAY_AUTH_MODE=token"
        for c in starts
        if "ray start" in c and "RAY_AUTH_MODE=token ray start" not in c
    ]
    if "--env RAY_AUTH_MODE=token" not in (config.get("docker") or {}).get("run_options", []):
        errors.append("docker.run_options must set RAY_AUTH_MODE=token")
    if config.get("file_mounts") != {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}:
        errors.append("the token must reach the nodes as the file ~/.ray/auth_token, nothing else mounted")
    return errors


def test_ray_cluster_launcher_config() -> None:
    (config,) = _load_yaml_docs(CLUSTER / "ray-cluster.yaml")
    assert launcher_errors(config) == []
    assert "RAY_AUTH_TOKEN=" not in (CLUSTER / "ray-cluster.yaml").read_text()


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.update(max_worker=4), "'max_worker' was unexpected"),
        (lambda c: c["available_node_types"]["worker.gpu"].update(min_workers=5), "min_workers above max_workers"),
        (lambda c: c.update(head_node_type="head"), "head_node_type"),
        (lambda c: c["worker_start_ray_commands"].append("ray start --address=$RAY_HEAD_IP:6379"), "without RAY_AUTH"),
        (lambda c: c.update(file_mounts={"/home/ray/.ray/auth_token": "./token"}), "~/.ray/auth_token"),
    ],
)
def test_launcher_checks_reject(mutate, needle: str) -> None:
    (config,) = _load_yaml_docs(CLUSTER / "ray-cluster.yaml")
    if needle.startswith("'") and _ray_schema() is None:
        pytest.skip("Ray is not installed: no ray-schema.json")
    mutate(config)
    errors = launcher_errors(config)
    assert any(needle in e for e in errors), errors


# ---------------------------------------------------------------------------------------------
# The converter itself


def test_converter_is_strict_where_kubernetes_is() -> None:
    schema = to_json_schema(
        {
            "type": "object",
            "required": ["a", "defaulted"],
            "properties": {
                "a": {"type": "string"},
                "defaulted": {"type": "integer", "default": 0},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"x": {}}},
                "map": {"type": "object", "additionalProperties": {"type": "string"}},
                "qty": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "when": {"type": "string", "nullable": True},
                "list": {"type": "array", "x-kubernetes-list-type": "map", "items": {"type": "string"}},
            },
            "x-kubernetes-validations": [{"rule": "self.a != ''"}],
        }
    )
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["a"]
    assert "x-kubernetes-validations" not in schema and "x-kubernetes-list-type" not in schema["properties"]["list"]
    assert "additionalProperties" not in schema["properties"]["free"]
    ok = {"a": "1", "free": {"x": 1, "y": 2}, "map": {"k": "v"}, "qty": 4, "when": None}
    assert _schema_errors(schema, ok) == []
    assert _schema_errors(schema, {**ok, "qty": "4Gi"}) == []
    for bad in ({**ok, "extra": 1}, {**ok, "qty": [4]}, {**ok, "map": {"k": 1}}, {"free": {}}):
        assert _schema_errors(schema, bad), bad


# ---------------------------------------------------------------------------------------------
# Negative cases: every check can fail


def _rayjob() -> dict[str, Any]:
    return _doc("rayjob-nightly.yaml", "RayJob")


def _raycluster() -> dict[str, Any]:
    return _doc("raycluster.yaml", "RayCluster")


def _raycronjob() -> dict[str, Any]:
    return _doc("raycronjob-nightly.yaml", "RayCronJob")


@needs_crds
@pytest.mark.parametrize(
    ("make", "mutate", "needle"),
    [
        (_rayjob, lambda d: d["spec"].update(concurrencyPolicy="Forbid"), "'concurrencyPolicy' was unexpected"),
        (_raycluster, lambda d: d["spec"]["authOptions"].update(tokenSecret="x"), "'tokenSecret' was unexpected"),
        (
            _raycluster,
            lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagePulPolicy="Always"),
            "'imagePulPolicy' was unexpected",
        ),
        (_raycluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="4"), "is not of type 'integer'"),
        (_raycluster, lambda d: d["spec"]["authOptions"].update(mode="Token"), "is not one of"),
        (
            _raycluster,
            lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
                "limits"
            ].update(cpu=[44]),
            "limits.cpu",
        ),
        (_raycluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas=2**31), "is not a 'int32'"),
        (_raycluster, lambda d: d["metadata"].update(owner="me"), "'owner' was unexpected"),
        (_raycluster, lambda d: d.update(status={"state": "ready"}), "'status' was unexpected"),
        # The old notes' shapes: KubeRay 1.7 has neither concurrencyPolicy nor jobTemplate.spec.
        (_raycronjob, lambda d: d["spec"].update(concurrencyPolicy="Forbid"), "'concurrencyPolicy' was unexpected"),
        (
            _raycronjob,
            lambda d: d["spec"].update(jobTemplate={"spec": d["spec"]["jobTemplate"]}),
            "'spec' was unexpected",
        ),
        (_raycronjob, lambda d: d["spec"].pop("schedule"), "'schedule' is a required property"),
    ],
)
def test_schema_rejects(make, mutate, needle: str) -> None:
    doc = make()
    assert crd_schema_errors(doc) == []
    mutate(doc)
    errors = crd_schema_errors(doc)
    assert any(needle in e for e in errors), errors


@needs_crds
def test_schema_accepts_quantities_as_integers() -> None:
    doc = _raycluster()
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 44
    assert crd_schema_errors(doc) == []


@needs_crds
def test_cronjob_pod_template_schema_rejects_unknown_fields() -> None:
    template = _doc("cronjob-nightly.yaml", "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    template["spec"]["containers"][0]["commands"] = ["sh"]
    assert any("'commands' was unexpected" in e for e in _schema_errors(_pod_template_schema(), template))


def _set_name(name: str):
    def mutate(doc: dict[str, Any]) -> None:
        doc["metadata"].pop("generateName", None)
        doc["metadata"]["name"] = name

    return mutate


def _worker(**fields: Any):
    return lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(fields)


def _cluster(**fields: Any):
    return lambda d: d["spec"]["rayClusterSpec"].update(fields)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (_set_name("n" * 48), "more than 47"),
        (lambda d: d["metadata"].update(generateName="n" * 43 + "-"), "more than 47"),
        (_set_name("Nightly_1"), "DNS-1035"),
        (_worker(minReplicas=5, maxReplicas=4), "minReplicas 5 greater than maxReplicas 4"),
        (_worker(minReplicas=-1), "negative minReplicas"),
        (_worker(idleTimeoutSeconds=60), "needs autoscalerOptions.version v2"),
        (_worker(rayStartParams={"num-gpus": "4"}, resources={"GPU": "4"}), "both rayStartParams and resources"),
        (_cluster(rayVersion="2.51.0"), "below 2.52.0"),
        (_cluster(rayVersion="latest"), "does not parse"),
        (lambda d: d["spec"]["rayClusterSpec"].pop("rayVersion"), "rayVersion is not set"),
        (
            lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(enableK8sTokenAuth=True),
            "not supported for RayJob",
        ),
        (lambda d: d["spec"].update(backoffLimit=-1), "backoffLimit must be non-negative"),
        (lambda d: d["spec"].update(submissionMode="InteractiveMode"), "incompatible with InteractiveMode"),
        (lambda d: d["spec"].update(submissionMode="K8sMode"), "is not one of"),
        (
            lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "distrec"}),
            "incompatible with clusterSelector",
        ),
        (lambda d: d["spec"].update(submitterConfig={"backoffLimit": -1}), "submitterConfig.backoffLimit"),
        (lambda d: d["spec"].update(activeDeadlineSeconds=0), "activeDeadlineSeconds must be a positive"),
        (lambda d: d["spec"].update(shutdownAfterJobFinishes=False), "without shutdownAfterJobFinishes"),
        (lambda d: d["spec"].update(runtimeEnvYAML="pip: [a"), "not valid YAML"),
        (lambda d: d["spec"].update(deletionStrategy={"deletionRules": []}), "requires both onSuccess"),
        (
            lambda d: d["spec"].update(
                deletionStrategy={"deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "FAILED"}}]}
            ),
            "mutually exclusive",
        ),
        (_worker(suspend=True), "cannot be suspended with the autoscaler"),
        (lambda d: d["spec"].pop("rayClusterSpec"), "one of rayClusterSpec or clusterSelector"),
    ],
)
def test_operator_checks_reject_rayjob(mutate, needle: str) -> None:
    doc = _rayjob()
    assert kuberay_errors(doc) == []
    mutate(doc)
    errors = kuberay_errors(doc)
    assert any(needle in e for e in errors), errors


def test_operator_checks_bounds_are_inclusive() -> None:
    doc = _rayjob()
    _set_name("n" * 47)(doc)
    _cluster(rayVersion="2.52.0")(doc)
    _worker(minReplicas=4, maxReplicas=4, replicas=4)(doc)
    assert kuberay_errors(doc) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["spec"].update(rayVersion="2.51.0"), "below 2.52.0"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(minReplicas=5), "greater than maxReplicas"),
        (lambda d: d["spec"].update(enableInTreeAutoscaling=False), None),  # still fine: both bounds set
        (
            lambda d: (
                d["spec"].update(enableInTreeAutoscaling=False),
                d["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),
            ),
            "required when autoscaling is disabled",
        ),
        (lambda d: d["spec"]["autoscalerOptions"].update(idleTimeoutSeconds=-1), "must be non-negative"),
        (_set_name("c" * 54), "more than 53"),
        (lambda d: d["spec"].update(networkPolicy={}), "RayClusterNetworkPolicy"),
        (
            lambda d: d["spec"]["authOptions"].update(enableK8sTokenAuth=True),
            "enableK8sTokenAuth and secretName are exclusive",
        ),
    ],
)
def test_operator_checks_reject_raycluster(mutate, needle: str | None) -> None:
    doc = _raycluster()
    assert kuberay_errors(doc) == []
    mutate(doc)
    errors = kuberay_errors(doc)
    assert (errors == []) if needle is None else any(needle in e for e in errors), errors


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (_set_name("n" * 37), "more than 36"),
        (lambda d: d["spec"].update(schedule="0 2 * *"), "has 4 fields"),
        (lambda d: d["spec"].update(schedule="0 25 * * *"), "outside 0-23"),
        (lambda d: d["spec"].update(schedule="CRON_TZ=UTC 0 2 * * *"), "use the timeZone field"),
        (lambda d: d["spec"].update(timeZone="Mars/Olympus_Mons"), "not a known time zone"),
        (lambda d: d["spec"].update(timeZone=""), "must not be empty"),
        (lambda d: d["spec"]["jobTemplate"].update(backoffLimit=-1), "backoffLimit must be non-negative"),
        (lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"].update(rayVersion="2.51"), "below 2.52.0"),
    ],
)
def test_operator_checks_reject_raycronjob(mutate, needle: str) -> None:
    doc = _raycronjob()
    assert kuberay_errors(doc) == []
    mutate(doc)
    errors = kuberay_errors(doc)
    assert any(needle in e for e in errors), errors


def test_cron_schedules_accepted() -> None:
    for schedule in ("0 2 * * *", "*/15 1-5 * * MON-FRI", "30 2 1,15 * *", "@daily", "@every 1h30m"):
        assert cron_schedule_errors(schedule) == [], schedule


def _head_env(doc: dict[str, Any], env: list[dict[str, Any]]) -> None:
    doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = env


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="disabled"), "must be 'token'"),
        (lambda d: d["spec"]["rayClusterSpec"].pop("authOptions"), "must be 'token'"),
        (lambda d: d["spec"]["rayClusterSpec"]["authOptions"].pop("secretName"), "secretName must be"),
        (lambda d: _head_env(d, [{"name": "RAY_AUTH_TOKEN", "value": "s3cr3t"}]), "set by KubeRay"),
        (lambda d: _head_env(d, [{"name": "WANDB_API_KEY", "value": "s3cr3t"}]), "inline value"),
        (
            lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  RAY_AUTH_TOKEN: s3cr3t\n"),
            "runtimeEnvYAML mentions the auth token",
        ),
        (
            lambda d: d["spec"].update(runtimeEnvYAML="env_vars:\n  HF_TOKEN: x\n"),
            "no credentials in a runtime env",
        ),
        (
            lambda d: d["spec"].update(entrypoint="RAY_AUTH_TOKEN=x distrec nightly jobs/nightly.yaml"),
            "entrypoint mentions the auth token",
        ),
        (_worker(replicas=5), "outside [minReplicas 0, maxReplicas 4]"),
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(serviceType="LoadBalancer"), "ClusterIP"),
        (lambda d: d["spec"].update(activeDeadlineSeconds=DAY_SECONDS), "below 86400"),
        (lambda d: d["spec"].pop("activeDeadlineSeconds"), "must be set"),
        (lambda d: d["spec"].update(backoffLimit=2, activeDeadlineSeconds=30_000), "(backoffLimit + 1) x"),
        (lambda d: d["spec"].update(entrypoint="distrec run jobs/cluster.yaml"), "must run `distrec nightly`"),
        (
            lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
                image="rayproject/ray:latest"
            ),
            "must be pinned",
        ),
    ],
)
def test_distrec_rules_reject_rayjob(mutate, needle: str) -> None:
    doc = _rayjob()
    assert distrec_errors(doc) == []
    mutate(doc)
    errors = distrec_errors(doc)
    assert any(needle in e for e in errors), errors


def test_distrec_rules_reject_raycronjob_over_a_day() -> None:
    doc = _raycronjob()
    doc["spec"]["jobTemplate"]["activeDeadlineSeconds"] = 90_000
    assert any("below 86400" in e for e in distrec_errors(doc))


def _cron_job_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["jobTemplate"]["spec"]


@pytest.mark.parametrize(
    ("make", "mutate", "needle"),
    [
        ("CronJob", lambda d: d["spec"].update(concurrencyPolicy="Allow"), "must be Forbid"),
        ("CronJob", lambda d: d["spec"].pop("concurrencyPolicy"), "must be Forbid"),
        ("CronJob", lambda d: d["spec"]["jobTemplate"].pop("spec"), "jobTemplate.spec is required"),
        ("CronJob", lambda d: d["spec"].update(concurrency="Forbid"), "unknown CronJob field"),
        ("CronJob", lambda d: _cron_job_spec(d).update(retries=1), "unknown Job field"),
        ("CronJob", lambda d: _cron_job_spec(d).update(backoffLimit=3), "second RayJob"),
        ("CronJob", lambda d: _cron_job_spec(d).update(activeDeadlineSeconds=DAY_SECONDS), "below 86400"),
        (
            "CronJob",
            lambda d: _cron_job_spec(d)["template"]["spec"].update(restartPolicy="Always"),
            "Never or OnFailure",
        ),
        ("CronJob", lambda d: d["spec"].update(schedule="every night"), "fields"),
        ("Secret", lambda d: d["stringData"].update(auth_token="s3cr3t"), "never commit a credential"),
        ("Role", lambda d: d["rules"][0]["verbs"].append("delete"), "grants more than"),
        (
            "Role",
            lambda d: d["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
            "beyond",
        ),
        ("Secret", lambda d: d.update(apiVersion="v2"), "unexpected apiVersion/kind"),
        ("RoleBinding", lambda d: d.update(subjects=[]), "roleRef to a Role and subjects"),
        ("ServiceAccount", lambda d: d["metadata"].pop("name"), "metadata.name is required"),
    ],
)
def test_core_checks_reject(make: str, mutate, needle: str) -> None:
    (doc,) = _docs(make)
    assert core_errors(doc) == []
    mutate(doc)
    errors = core_errors(doc)
    assert any(needle in e for e in errors), errors
