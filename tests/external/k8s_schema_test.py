#!/usr/bin/env python3
"""Every object of every rendering of k8s/ (the overlays, and with the components meant
for them: scripts/check-manifests.py's RENDERINGS), rendered by the real `kubectl
kustomize` and validated against Kubernetes' own OpenAPI schemas by
kubernetes-validate (pinned in tests/external/requirements.txt), strictly (unknown
fields are errors), for the Kubernetes version below. Custom resources have no
schema there: ServiceMonitor (Prometheus Operator) and cert-manager's Issuer and
Certificate are skipped by name; any other kind without a schema fails.

Usage: k8s_schema_test.py --build-dir BUILD. Exit 77 (skipped) without kubectl (it is
not a Debian package) or where PyPI cannot be reached.
"""
import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))
import pyvenv  # noqa: E402

KUBERNETES_VERSION = "1.32.0"
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}


def renderings():
    """check-manifests.py's RENDERINGS, read from its source (it is a script)."""
    import ast
    tree = ast.parse((ROOT / "scripts" / "check-manifests.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RENDERINGS":
            return ast.literal_eval(node.value)
    raise RuntimeError("RENDERINGS not found in scripts/check-manifests.py")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build-dir", required=True)
    args = parser.parse_args()
    if shutil.which("kubectl") is None:
        print("kubectl is not installed (not a Debian package): skipping", file=sys.stderr)
        return 77
    pyvenv.ensure(args.build_dir)
    import kubernetes_validate
    from k8s_objects import kubectl_render

    errors, checked, skipped = [], 0, 0
    for overlay, components in renderings():
        name = "+".join([overlay] + components)
        for obj in kubectl_render(ROOT / "k8s", overlay, components):
            kind = (obj.get("apiVersion"), obj.get("kind"))
            where = f"{name}: {kind[1]}/{obj.get('metadata', {}).get('name')}"
            if kind in CUSTOM_KINDS:
                skipped += 1
                continue
            try:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{where}: {e.message} at {'/'.join(map(str, e.path))}")
            except Exception as e:  # no schema for the kind, or an unknown version
                errors.append(f"{where}: {type(e).__name__}: {e}")
    for e in errors:
        print(f"k8s schema: {e}", file=sys.stderr)
    version = getattr(kubernetes_validate, "__version__", "?")
    print(f"k8s schema: {checked} objects valid against Kubernetes {KUBERNETES_VERSION} "
          f"(kubernetes-validate {version}), {skipped} custom resources skipped, "
          f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
