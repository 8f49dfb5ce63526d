"""Kubernetes objects as scripts/check-manifests.py reads them: the rendering of an
overlay by `kubectl kustomize` (kubectl_render), an index of the rendered objects
(Manifests), the small helpers the checks share, and the flags each kvpool binary
accepts, read from its C++ sources (accepted_flags), so that the args check follows
the code. The checks themselves are manifest_rules.py's.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume", "RuntimeClass", "Node",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


def object_id(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")


def pod_spec(obj):
    """The pod spec of a workload (or a Pod), else None."""
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    if obj.get("kind") in WORKLOAD_KINDS:
        return ((obj.get("spec") or {}).get("template") or {}).get("spec")
    return None

# Where a binary's flags are defined: its main file, plus every file without a main()
# in these folders (flag helpers shared by the services live in proto/).
BINARIES = {
    "kvpool-manager": ("cache_service/main.cc",
                       ["cache_service", "proto", "common/observability"]),
    "kvpool-worker": ("worker/service/main.cc",
                      ["worker/service", "proto", "common/observability"]),
}
FLAG_RE = re.compile(r'add_(?:option|flag)(?:_function)?\s*(?:<[^;]*?>)?\s*\(\s*"([^"]+)"')
MAIN_RE = re.compile(r"\bint\s+main\s*\(")

# Headroom of the manager's memory limit over an shm pool: the pool's pages are
# charged to the manager (it posix_fallocates them), its own heap comes on top.
MANAGER_HEADROOM_BYTES = 128 << 20

PORT_NAME_RE = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


# ---- reading the sources ----

def flags_in_source(text):
    """The long flags that CLI11 calls in C++ text define ("-n,--name" gives --name)."""
    flags = set()
    for match in FLAG_RE.finditer(text):
        for name in match.group(1).split(","):
            name = name.strip()
            if name.startswith("--"):
                flags.add(name)
    return flags


def accepted_flags(root=ROOT):
    """{binary: set of flags} from the C++ sources under root."""
    result = {}
    for binary, (main_file, folders) in BINARIES.items():
        flags = {"--help"}
        main_path = root / main_file
        if not main_path.is_file():
            raise SystemExit(f"check-manifests: {main_path} not found (BINARIES is stale)")
        flags |= flags_in_source(main_path.read_text(encoding="utf-8", errors="replace"))
        for folder in folders:
            for path in sorted((root / folder).rglob("*")):
                if path.suffix not in (".cc", ".h", ".cpp", ".hpp") or path == main_path:
                    continue
                text = path.read_text(encoding="utf-8", errors="replace")
                if not MAIN_RE.search(text):
                    flags |= flags_in_source(text)
        result[binary] = flags
    return result


# ---- small helpers ----

def parse_bytes(quantity):
    """Bytes of a Kubernetes memory quantity ("1280Mi", "3Gi", "1G", "1048576")."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity))
    if not match or (match.group(2) and match.group(2) not in units):
        return None
    return int(float(match.group(1)) * units.get(match.group(2), 1))


def labels_match(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def template_labels(obj):
    return (((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def name_of(obj):
    return (obj.get("metadata") or {}).get("name")


def namespace_of(obj):
    return (obj.get("metadata") or {}).get("namespace")


def split_host_port(address):
    host, _, port = str(address).rpartition(":")
    return host.strip("[]"), (int(port) if port.isdigit() else None)


class Manifests:
    """The rendered objects of one rendering, indexed for the checks."""

    def __init__(self, objects):
        self.objects = objects
        self.workloads = [o for o in objects if o.get("kind") in WORKLOAD_KINDS]
        self.services = [o for o in objects if o.get("kind") == "Service"]
        self.config_maps = {(namespace_of(o), name_of(o)): o.get("data") or {}
                            for o in objects if o.get("kind") == "ConfigMap"}
        self.secrets = {}
        for o in objects:
            if o.get("kind") == "Secret":
                keys = set((o.get("data") or {})) | set((o.get("stringData") or {}))
                self.secrets[(namespace_of(o), name_of(o))] = keys
            elif o.get("kind") == "Certificate" and o.get("apiVersion", "").startswith("cert-manager.io/"):
                secret = (o.get("spec") or {}).get("secretName")
                self.secrets[(namespace_of(o), secret)] = {"tls.crt", "tls.key", "ca.crt"}

    def by_binary(self, binary):
        """Workloads whose first container runs `binary`."""
        found = []
        for w in self.workloads:
            containers = (pod_spec(w) or {}).get("containers") or []
            if containers and os.path.basename((containers[0].get("command") or [""])[0]) == binary:
                found.append(w)
        return found

    def container_env(self, namespace, container):
        """The container's environment as $(VAR) expansion sees it (envFrom, then env)."""
        env = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = self.config_maps.get((namespace, source["configMapRef"].get("name")), {})
                env.update({prefix + k: str(v) for k, v in data.items()})
            if "secretRef" in source:
                keys = self.secrets.get((namespace, source["secretRef"].get("name")), set())
                env.update({prefix + k: "<secret>" for k in keys})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            else:
                env[var["name"]] = f"<{var['name']} from valueFrom>"
        return env


def expand(text, env, undefined):
    def repl(match):
        if match.group(0) == "$$":
            return "$"
        if match.group(1) in env:
            return env[match.group(1)]
        undefined.append(match.group(1))
        return match.group(0)
    return VAR_RE.sub(repl, str(text))


def parsed_args(args):
    """[(flag, value or None)] of an argument list (--flag=value or --flag value)."""
    out = []
    i = 0
    while i < len(args):
        arg = str(args[i])
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            if not eq and i + 1 < len(args) and not str(args[i + 1]).startswith("-"):
                value = str(args[i + 1])
                i += 1
            out.append((flag, value if (eq or value) else None))
        i += 1
    return out


def kubectl_render(k8s_dir, overlay, components):
    """The objects `kubectl kustomize` renders for an overlay of k8s_dir with these
    components (through a kustomization of its own in a temporary folder). Raises
    RuntimeError with kubectl's message when it fails."""
    exe = shutil.which("kubectl")
    if exe is None:
        raise RuntimeError("kubectl is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(k8s_dir) / overlay
        if components:
            rel = os.path.relpath(k8s_dir, tmp)
            spec = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                    "resources": [f"{rel}/{overlay}"],
                    "components": [f"{rel}/{c}" for c in components]}
            Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump(spec))
            target = Path(tmp)
        proc = subprocess.run([exe, "kustomize", str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl kustomize failed: {proc.stderr.strip()}")
    return [o for o in yaml.safe_load_all(proc.stdout) if o]
