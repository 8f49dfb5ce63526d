#!/usr/bin/env python3
"""Offline checks of the Kubernetes deployment in k8s/ (registered with ctest).

Renders every overlay, and the overlays with the components meant for them
(RENDERINGS), with `kubectl kustomize`, then checks what a cluster would only reveal
at run time (Kubernetes' own schemas are checked by tests/external/k8s_schema_test.py):

  - every YAML file parses, passes yamllint (k8s/.yamllint, strict) and is used by a
    kustomization;
  - selectors: each workload's selector matches its own pod template; each Service,
    PodDisruptionBudget and ServiceMonitor selects something, and the ports they name
    exist there (Service targetPort on the pods, ServiceMonitor port on the Service);
  - probes: every container has startup, readiness and liveness probes whose port is a
    declared container port (a number for gRPC probes: the kubelet takes no names);
  - every container has an image, CPU and memory requests and limits, a non-root,
    no-capability, read-only-root security context; every pod a RuntimeDefault seccomp;
  - ConfigMap, Secret and volume references resolve (cert-manager Certificates count as
    defining their Secret), and every $(VAR) in command/args is defined;
  - args: each --flag is one the binary accepts, read from the C++ sources
    (add_option/add_flag in BINARIES), so the check follows the code;
  - kvpool's own rules: the manager is a DaemonSet behind a Service with
    internalTrafficPolicy: Local that the workers' --manager names; manager and workers
    share the pool (shm: hostIPC or the host's /dev/shm; cuda: hostIPC + hostPID, the
    nvidia runtime, a GPU request on the workers and none on the manager, which sees all
    GPUs); they run as one uid (the shm segment is mode 0600) on the same nodes, with the
    same model; an shm pool fits in the manager's memory limit.

  scripts/check-manifests.py              run the checks (exit 1 on any error)
  scripts/check-manifests.py --self-test  break rendered manifests on purpose and assert
                                          that each break is reported

Without kubectl (it is not a Debian package) the file checks still run, the rendered
ones are skipped saying so, and the exit code is 77 (ctest: skipped).
"""

import argparse
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s_objects import (KUSTOMIZATION_FILES, Manifests, accepted_flags,  # noqa: E402
                         flags_in_source, kubectl_render, name_of, parse_bytes, parsed_args,
                         pod_spec)
from manifest_rules import Checker  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"

# (overlay, components): the overlays alone, and with each component they support.
# shm-hostpath replaces hostIPC, which CUDA IPC needs, so it goes with cpu only.
RENDERINGS = [
    ("overlays/cpu", []),
    ("overlays/gpu", []),
    ("overlays/cpu", ["components/shm-hostpath"]),
    ("overlays/cpu", ["components/tls"]),
    ("overlays/gpu", ["components/tls"]),
    ("overlays/cpu", ["components/kv-events"]),
    ("overlays/gpu", ["components/kv-events", "components/tls"]),
]


# ---- files, yamllint, kubectl ----

def kustomization_dirs():
    return sorted({p.parent for name in KUSTOMIZATION_FILES for p in K8S.rglob(name)})


def kustomization_of(directory):
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no kustomization.yaml")


SKIPPED = 77  # ctest's SKIP_RETURN_CODE for these tests


def kubectl_missing():
    if shutil.which("kubectl") is None:
        print("check-manifests: kubectl not found (it is not a Debian package; the CI "
              "machines have it): the rendered manifests were not checked")
        return True
    return False


def check_files():
    """Every YAML file parses and is used by some kustomization."""
    errors = []
    used = set()
    for d in kustomization_dirs():
        path = kustomization_of(d)
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        used.add(path.resolve())
        for entry in spec.get("resources") or []:
            used.add((d / entry).resolve())
        for patch in spec.get("patches") or []:
            if "path" in patch:
                used.add((d / patch["path"]).resolve())
    for path in sorted(K8S.rglob("*.y*ml")):
        try:
            list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as e:
            errors.append(f"{path.relative_to(ROOT)}: not valid YAML: {e}")
        if path.resolve() not in used:
            errors.append(f"{path.relative_to(ROOT)}: no kustomization uses this file")
    return errors


def run_yamllint():
    exe = shutil.which("yamllint")
    if exe is None:
        return ["yamllint is not installed (scripts/install-deps.sh installs it)"]
    proc = subprocess.run([exe, "--strict", "-f", "parsable", "-c", str(K8S / ".yamllint"), str(K8S)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return ["yamllint: " + line for line in (proc.stdout + proc.stderr).strip().splitlines()]
    return []


def render(overlay, components):
    return kubectl_render(K8S, overlay, components)


def rendering_name(overlay, components):
    return "+".join([overlay] + components)


def check_all():
    errors = check_files() + run_yamllint()
    if kubectl_missing():
        for e in errors:
            print(f"check-manifests: {e}")
        return 1 if errors else SKIPPED
    flags = accepted_flags()
    for overlay, components in RENDERINGS:
        name = rendering_name(overlay, components)
        try:
            objects = render(overlay, components)
        except RuntimeError as e:
            errors.append(f"{name}: {e}")
            continue
        errors += Checker(Manifests(objects), flags, name).run()
    used = {c for _, components in RENDERINGS for c in components}
    for d in sorted((K8S / "components").iterdir()):
        if d.is_dir() and str(d.relative_to(K8S)) not in used:
            errors.append(f"k8s/{d.relative_to(K8S)}: not in RENDERINGS, so never checked")
    for e in errors:
        print(f"check-manifests: {e}")
    print(f"check-manifests: {len(RENDERINGS)} renderings by kubectl kustomize, "
          f"{len(errors)} error(s)")
    return 1 if errors else 0


# ---- self-test ----

def self_test():
    """Breaks rendered manifests in known ways and asserts each break is reported."""
    failures = []

    def expect(condition, what):
        if not condition:
            failures.append(what)

    # The flag reader on the shapes CLI11 calls take.
    source = '''app.add_option("--listen", x, "d");
      app.add_flag("-v,--verbose", v);
      app.add_option(
          "--tls-cert", cert)->check(CLI::ExistingFile);
      sub->add_option_function<int>("--port", [](int) {});
    '''
    expect(flags_in_source(source) == {"--listen", "--verbose", "--tls-cert", "--port"},
           f"flags_in_source: {flags_in_source(source)}")
    expect(parsed_args(["--a=1", "--b", "2", "--c", "--d=x=y"]) ==
           [("--a", "1"), ("--b", "2"), ("--c", None), ("--d", "x=y")], "parsed_args")
    expect(parse_bytes("1280Mi") == 1280 << 20 and parse_bytes("1G") == 10**9, "parse_bytes")
    if kubectl_missing():
        return SKIPPED

    renders = {(o, tuple(c)): render(o, c) for o, c in RENDERINGS}
    # Accept exactly the flags the manifests use, so this test does not depend on which
    # flags the sources have today.
    used = {}
    for objects in renders.values():
        m = Manifests(objects)
        for w in m.workloads:
            for c in (pod_spec(w) or {}).get("containers") or []:
                binary = os.path.basename((c.get("command") or [""])[0])
                used.setdefault(binary, {"--help"}).update(
                    f for f, _ in parsed_args((c.get("command") or [])[1:] + (c.get("args") or [])))

    def errors_of(objects, flags=None):
        return Checker(Manifests(objects), flags or used, "self-test").run()

    for key, objects in renders.items():
        errs = errors_of(objects)
        expect(not errs, f"{rendering_name(key[0], list(key[1]))} should be clean: {errs}")

    def find(objects, kind, name):
        return next(o for o in objects if o.get("kind") == kind and name_of(o) == name)

    def container(objects, kind, name):
        return pod_spec(find(objects, kind, name))["containers"][0]

    def mutation(overlay, expected, mutate, flags=None):
        objects = copy.deepcopy(renders[(overlay, ())])
        mutate(objects)
        errs = errors_of(objects, flags)
        if not any(expected in e for e in errs):
            failures.append(f"a mutation should report {expected!r}; got {errs}")

    cpu, gpu = "overlays/cpu", "overlays/gpu"

    def events_mutation(expected, mutate):
        objects = copy.deepcopy(renders[(cpu, ("components/kv-events",))])
        mutate(objects)
        errs = errors_of(objects)
        if not any(expected in e for e in errs):
            failures.append(f"a kv-events mutation should report {expected!r}; got {errs}")

    def replace_arg(objects, old, new):
        args = container(objects, "DaemonSet", "kvpool-manager")["args"]
        args[args.index(old)] = new

    events_mutation("no NetworkPolicy selects these pods", lambda o: o.remove(
        find(o, "NetworkPolicy", "kvpool-manager-kv-events")))
    events_mutation("lets every pod reach", lambda o: find(
        o, "NetworkPolicy", "kvpool-manager-kv-events")["spec"]["ingress"][0].pop("from"))
    events_mutation("port 6000 is not a declared container port", lambda o: replace_arg(
        o, "--kv-events-endpoint=tcp://$(POD_IP):5557", "--kv-events-endpoint=tcp://$(POD_IP):6000"))
    events_mutation("binds loopback", lambda o: replace_arg(
        o, "--kv-events-endpoint=tcp://$(POD_IP):5557", "--kv-events-endpoint=tcp://127.0.0.1:5557"))
    mutation(cpu, "probe port 50999 is not a declared container port", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["readinessProbe"]["grpc"].update(port=50999))
    mutation(cpu, "grpc.port must be a number", lambda o: container(
        o, "Deployment", "kvpool-worker")["startupProbe"]["grpc"].update(port="grpc"))
    mutation(cpu, "probe port 'metrics' is not a declared", lambda o: container(
        o, "Deployment", "kvpool-worker")["livenessProbe"]["tcpSocket"].update(port="metrics"))
    mutation(cpu, "no livenessProbe", lambda o: container(
        o, "DaemonSet", "kvpool-manager").pop("livenessProbe"))
    mutation(cpu, "selects no pods", lambda o: find(o, "Service", "kvpool-worker")["spec"][
        "selector"].update({"app.kubernetes.io/component": "wroker"}))
    mutation(cpu, "selects no pods", lambda o: find(o, "PodDisruptionBudget", "kvpool-worker")[
        "spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "other"}))
    mutation(cpu, "does not match its pod template labels", lambda o: find(
        o, "Deployment", "kvpool-worker")["spec"]["selector"]["matchLabels"].update(extra="x"))
    mutation(cpu, "targetPort 'grpcs' is not a port", lambda o: find(
        o, "Service", "kvpool-manager")["spec"]["ports"][0].update(targetPort="grpcs"))
    mutation(cpu, "has no port of that name", lambda o: find(
        o, "ServiceMonitor", "kvpool")["spec"]["endpoints"][0].update(port="metrics"))
    mutation(cpu, "matches no Service", lambda o: find(
        o, "ServiceMonitor", "kvpool")["spec"]["selector"]["matchLabels"].update(x="y"))
    mutation(cpu, "resources.limits.memory is not set", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["resources"]["limits"].pop("memory"))
    mutation(cpu, "no image", lambda o: container(o, "Deployment", "kvpool-worker").pop("image"))
    mutation(cpu, "no securityContext", lambda o: container(
        o, "Deployment", "kvpool-worker").pop("securityContext"))
    mutation(cpu, "seccompProfile.type must be RuntimeDefault", lambda o: pod_spec(find(
        o, "DaemonSet", "kvpool-manager"))["securityContext"].pop("seccompProfile"))
    mutation(cpu, "internalTrafficPolicy: Local", lambda o: find(
        o, "Service", "kvpool-manager")["spec"].update(internalTrafficPolicy="Cluster"))
    mutation(cpu, "ConfigMap kvpool-cfg is not defined", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["envFrom"][0]["configMapRef"].update(name="kvpool-cfg"))
    mutation(cpu, "has no key token", lambda o: pod_spec(find(
        o, "Deployment", "kvpool-worker"))["volumes"][0]["secret"]["items"][0].update(key="token"))
    mutation(cpu, "$(KVPOOL_MODLE) in command/args is not defined", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["args"].append("--model=$(KVPOOL_MODLE)"))
    mutation(cpu, "kvpool-manager does not accept --pool-size", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["args"].append("--pool-size=1"))
    mutation(cpu, "listens on loopback only", lambda o: container(
        o, "Deployment", "kvpool-worker")["args"].__setitem__(1, "--listen=127.0.0.1:50052"))
    mutation(cpu, "must see the same /dev/shm", lambda o: pod_spec(find(
        o, "Deployment", "kvpool-worker")).update(hostIPC=False))
    mutation(cpu, "cannot hold the shm pool", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["resources"]["limits"].update(memory="512Mi"))
    mutation(cpu, "differs from the manager's 10001", lambda o: pod_spec(find(
        o, "Deployment", "kvpool-worker"))["securityContext"].update(runAsUser=1000))
    mutation(cpu, "must be a Service of namespace", lambda o: container(
        o, "Deployment", "kvpool-worker")["args"].__setitem__(0, "--manager=10.0.0.1:50051"))
    mutation(cpu, "the manager must be a DaemonSet", lambda o: find(
        o, "DaemonSet", "kvpool-manager").update(kind="Deployment"))
    mutation(cpu, "has no namespace", lambda o: find(o, "ConfigMap", "kvpool-config")[
        "metadata"].pop("namespace"))
    mutation(gpu, "must not request nvidia.com/gpu", lambda o: container(
        o, "DaemonSet", "kvpool-manager")["resources"]["limits"].update({"nvidia.com/gpu": 1}))
    mutation(gpu, "each worker must request nvidia.com/gpu", lambda o: [container(
        o, "Deployment", "kvpool-worker")["resources"][p].pop("nvidia.com/gpu")
        for p in ("requests", "limits")])
    mutation(gpu, "needs hostIPC and hostPID", lambda o: pod_spec(find(
        o, "Deployment", "kvpool-worker")).pop("hostPID"))
    mutation(gpu, "NVIDIA_VISIBLE_DEVICES=all", lambda o: container(
        o, "DaemonSet", "kvpool-manager").pop("env"))
    mutation(gpu, "lets workers onto nodes without a manager", lambda o: pod_spec(find(
        o, "DaemonSet", "kvpool-manager")).pop("tolerations"))

    for f in failures:
        print(f"check-manifests --self-test: FAILED: {f}")
    print(f"check-manifests --self-test: {'ok' if not failures else f'{len(failures)} failure(s)'}")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true",
                        help="assert that broken manifests are reported")
    args = parser.parse_args()
    sys.exit(self_test() if args.self_test else check_all())


if __name__ == "__main__":
    main()
