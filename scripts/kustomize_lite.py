"""A small kustomize, enough to render k8s/ offline with PyYAML alone.

scripts/check-manifests.py renders every overlay with it, so that the checks run on a
machine without kubectl (where kubectl is present, the checker also compares this
rendering with `kubectl kustomize`). It implements the subset of kustomize that k8s/
uses and fails with RenderError on anything else rather than render it wrong:

  Kustomization / Component fields: resources (files and directories), components,
    patches (strategic merge or JSON 6902; from `path` or inline `patch`; optional
    `target` by kind/name/namespace/group/version), images, namespace, labels (pairs,
    includeTemplates; includeSelectors must be false).
  Strategic merge: maps merge, `null` deletes a key, lists named in MERGE_KEYS merge by
    their key (new items first, as kustomize puts them), other lists are replaced;
    `$patch` and the other `$` directives are refused.
  JSON 6902: add, remove, replace, test (paths with `-` to append).
  Transformer order within one kustomization, as kustomize's: patches, namespace,
    labels, images.
"""

import copy
import re
from pathlib import Path

import yaml


class RenderError(Exception):
    pass


KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "components", "patches", "images",
                    "namespace", "labels"}

# List fields merged by key in a strategic merge patch (the patchMergeKey of the
# Kubernetes API types that k8s/ patches). Every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "env": "name",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
}

CLUSTER_SCOPED_KINDS = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "PersistentVolume", "RuntimeClass", "Node",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
}

WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


def load_yaml_documents(path):
    """Every non-empty document of a YAML file, as dicts."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{path}: not valid YAML: {e}") from e
    for d in docs:
        if not isinstance(d, dict):
            raise RenderError(f"{path}: a document is not a mapping")
    return docs


def kustomization_file(directory):
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise RenderError(f"{directory}: no kustomization.yaml")


def object_id(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" (namespace {ns})" if ns else "")


def render(directory):
    """The objects `kubectl kustomize DIRECTORY` would print, in resource order."""
    return _build(Path(directory), inherited=None)


def render_virtual(resources, components, base_dir):
    """Renders an in-memory Kustomization {resources, components} rooted at base_dir:
    an overlay plus components without a directory of its own."""
    spec = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": list(resources), "components": list(components)}
    return _build_from(Path(base_dir), spec, f"{base_dir} (virtual)", inherited=None)


def _build(directory, inherited):
    path = kustomization_file(directory)
    docs = load_yaml_documents(path)
    if len(docs) != 1:
        raise RenderError(f"{path}: expected one document")
    return _build_from(directory, docs[0], path, inherited)


def _build_from(directory, spec, where, inherited):
    kind = spec.get("kind", "Kustomization")
    is_component = kind == "Component"
    if kind not in ("Kustomization", "Component"):
        raise RenderError(f"{where}: kind {kind} is neither Kustomization nor Component")
    if is_component != (inherited is not None):
        raise RenderError(f"{where}: a {kind} used as "
                          f"{'a component' if inherited is not None else 'a resource'}")
    unsupported = set(spec) - SUPPORTED_FIELDS
    if unsupported:
        raise RenderError(f"{where}: fields {sorted(unsupported)} are not supported by "
                          "scripts/kustomize_lite.py (supported: "
                          f"{sorted(SUPPORTED_FIELDS)}); extend it or keep to these")

    objects = list(inherited or [])
    for entry in spec.get("resources") or []:
        target = directory / entry
        if target.is_dir():
            objects += _build(target, inherited=None)
        elif target.is_file():
            objects += load_yaml_documents(target)
        else:
            raise RenderError(f"{where}: resource {entry} not found")
    for entry in spec.get("components") or []:
        target = directory / entry
        if not target.is_dir():
            raise RenderError(f"{where}: component {entry} is not a directory")
        objects = _build(target, inherited=objects)

    for patch in spec.get("patches") or []:
        _apply_patch_entry(directory, where, patch, objects)
    if "namespace" in spec:
        _set_namespace(spec["namespace"], objects, where)
    for labels in spec.get("labels") or []:
        _add_labels(labels, objects, where)
    for image in spec.get("images") or []:
        _set_image(image, objects, where)
    _check_unique(objects, where)
    return objects


def _check_unique(objects, where):
    seen = set()
    for obj in objects:
        oid = (obj.get("apiVersion"), object_id(obj))
        if oid in seen:
            raise RenderError(f"{where}: {object_id(obj)} is defined twice")
        seen.add(oid)


# ---- patches ----

def _apply_patch_entry(directory, where, entry, objects):
    unknown = set(entry) - {"path", "patch", "target"}
    if unknown:
        raise RenderError(f"{where}: patch fields {sorted(unknown)} are not supported")
    if ("path" in entry) == ("patch" in entry):
        raise RenderError(f"{where}: a patch needs exactly one of path, patch")
    if "path" in entry:
        source = f"{where}: patch {entry['path']}"
        try:
            text = (directory / entry["path"]).read_text(encoding="utf-8")
        except OSError as e:
            raise RenderError(f"{source}: {e}") from e
    else:
        source = f"{where}: inline patch"
        text = entry["patch"]
    try:
        # A strategic merge patch is a mapping, a JSON 6902 patch a list.
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{source}: not valid YAML: {e}") from e
    target = entry.get("target")
    for doc in docs:
        if isinstance(doc, list):
            if target is None:
                raise RenderError(f"{source}: a JSON 6902 patch needs a target")
            for obj in _select(objects, target, source):
                _apply_json6902(obj, doc, source)
        elif isinstance(doc, dict):
            selector = target or {"kind": doc.get("kind"),
                                  "name": (doc.get("metadata") or {}).get("name")}
            for obj in _select(objects, selector, source):
                _strategic_merge(obj, doc, source, path="")
        else:
            raise RenderError(f"{source}: a patch must be a mapping or a list")


def _select(objects, target, source):
    unknown = set(target) - {"kind", "name", "namespace", "group", "version"}
    if unknown:
        raise RenderError(f"{source}: target fields {sorted(unknown)} are not supported")
    name = target.get("name")
    if name is not None and re.search(r"[\\^$.|?*+()\[\]{}]", name):
        raise RenderError(f"{source}: target name {name!r} is a regular expression; "
                          "only exact names are supported")
    matched = []
    for obj in objects:
        meta = obj.get("metadata") or {}
        group, _, version = (obj.get("apiVersion") or "").rpartition("/")
        if target.get("kind") not in (None, obj.get("kind")):
            continue
        if name not in (None, meta.get("name")):
            continue
        if target.get("namespace") not in (None, meta.get("namespace")):
            continue
        if target.get("group") not in (None, group) or target.get("version") not in (None, version):
            continue
        matched.append(obj)
    if not matched:
        raise RenderError(f"{source}: no object matches {target}")
    return matched


def _strategic_merge(base, patch, source, path):
    for key, value in patch.items():
        if isinstance(key, str) and key.startswith("$"):
            raise RenderError(f"{source}: directive {key} at {path or '/'} is not supported")
        where = f"{path}/{key}"
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(base.get(key), dict):
                base[key] = {}
            _strategic_merge(base[key], value, source, where)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(base.get(key), list):
            base[key] = _merge_list(base[key], value, MERGE_KEYS[key], source, where)
        else:
            _refuse_directives(value, source, where)
            base[key] = copy.deepcopy(value)


def _merge_list(base_items, patch_items, merge_key, source, path):
    merged = list(base_items)
    new_items = []
    for item in patch_items:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"{source}: items of {path} need their merge key {merge_key}")
        for existing in merged:
            if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                _strategic_merge(existing, item, source, f"{path}[{item[merge_key]}]")
                break
        else:
            fresh = {}
            _strategic_merge(fresh, item, source, f"{path}[{item[merge_key]}]")
            new_items.append(fresh)
    return new_items + merged


def _refuse_directives(value, source, path):
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str) and key.startswith("$"):
                raise RenderError(f"{source}: directive {key} at {path} is not supported")
            _refuse_directives(inner, source, f"{path}/{key}")
    elif isinstance(value, list):
        for inner in value:
            _refuse_directives(inner, source, path)


def _apply_json6902(obj, ops, source):
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise RenderError(f"{source}: a JSON 6902 operation needs op and path")
        kind = op["op"]
        if kind not in ("add", "remove", "replace", "test"):
            raise RenderError(f"{source}: JSON 6902 op {kind!r} is not supported")
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        if not tokens:
            raise RenderError(f"{source}: JSON 6902 path {op['path']!r} names the whole object")
        parent = obj
        for token in tokens[:-1]:
            parent = _json_pointer_step(parent, token, op["path"], source)
        last = tokens[-1]
        if kind == "test":
            if _json_pointer_step(parent, last, op["path"], source) != op.get("value"):
                raise RenderError(f"{source}: test failed at {op['path']}")
        elif isinstance(parent, list):
            if kind == "add" and last == "-":
                parent.append(copy.deepcopy(op["value"]))
                continue
            index = _list_index(parent, last, op["path"], source, allow_end=kind == "add")
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            else:
                parent[index] = copy.deepcopy(op["value"])
        elif isinstance(parent, dict):
            if kind in ("remove", "replace") and last not in parent:
                raise RenderError(f"{source}: {kind} of missing {op['path']}")
            if kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise RenderError(f"{source}: {op['path']} does not point into a map or a list")


def _json_pointer_step(node, token, path, source):
    if isinstance(node, list):
        return node[_list_index(node, token, path, source, allow_end=False)]
    if isinstance(node, dict) and token in node:
        return node[token]
    raise RenderError(f"{source}: {path}: {token!r} not found")


def _list_index(items, token, path, source, allow_end):
    if not token.isdigit() or int(token) > len(items) or (int(token) == len(items) and not allow_end):
        raise RenderError(f"{source}: {path}: index {token!r} out of range")
    return int(token)


# ---- transformers ----

def _set_namespace(namespace, objects, where):
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if obj.get("kind") == "Namespace":
            if meta.get("name") != namespace:
                raise RenderError(f"{where}: Namespace {meta.get('name')} differs from "
                                  f"namespace: {namespace} (kustomize would rename it)")
        elif obj.get("kind") not in CLUSTER_SCOPED_KINDS:
            meta["namespace"] = namespace


def _add_labels(entry, objects, where):
    unknown = set(entry) - {"pairs", "includeTemplates", "includeSelectors"}
    if unknown or entry.get("includeSelectors"):
        raise RenderError(f"{where}: labels supports pairs and includeTemplates only "
                          "(includeSelectors would change selectors)")
    pairs = {str(k): str(v) for k, v in (entry.get("pairs") or {}).items()}
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if entry.get("includeTemplates") and obj.get("kind") in WORKLOAD_KINDS:
            template = obj.setdefault("spec", {}).setdefault("template", {})
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def split_image(image):
    """(name, tag, digest) of an image reference; a registry port is part of the name."""
    name, _, digest = image.partition("@")
    tag = ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _set_image(entry, objects, where):
    unknown = set(entry) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in entry:
        raise RenderError(f"{where}: images entries take name, newName, newTag, digest")
    for obj in objects:
        for container in pod_containers(obj):
            if "image" not in container:
                continue
            name, tag, digest = split_image(container["image"])
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            if "newTag" in entry:
                tag, digest = str(entry["newTag"]), ""
            if "digest" in entry:
                tag, digest = "", entry["digest"]
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def pod_spec(obj):
    """The pod spec of a workload (or a Pod), else None."""
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    if obj.get("kind") in WORKLOAD_KINDS:
        return ((obj.get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_containers(obj):
    spec = pod_spec(obj) or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
