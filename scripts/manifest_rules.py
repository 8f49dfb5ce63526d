"""The checks of scripts/check-manifests.py over one rendering of k8s/.

Checker.run() returns every error it finds: generic Kubernetes mistakes (selectors,
ports, probes, resources, security contexts, ConfigMap/Secret references, $(VAR) in
args) and kvpool's node-local rules (see check-manifests.py's docstring). The objects
and helpers it reads are k8s_objects.py's.
"""

import os
import re

from k8s_objects import (CLUSTER_SCOPED_KINDS, MANAGER_HEADROOM_BYTES,
                         PORT_NAME_RE, expand, labels_match, name_of, namespace_of,
                         object_id, parse_bytes, parsed_args, pod_spec, split_host_port,
                         template_labels)


# ---- the checks ----

class Checker:
    def __init__(self, manifests, flags, name):
        self.m = manifests
        self.flags = flags
        self.name = name
        self.errors = []

    def error(self, obj, message):
        where = object_id(obj) if isinstance(obj, dict) else obj
        self.errors.append(f"{self.name}: {where}: {message}")

    def run(self):
        for obj in self.m.objects:
            if not obj.get("apiVersion") or not obj.get("kind") or not name_of(obj):
                self.error(obj, "needs apiVersion, kind and metadata.name")
            if obj.get("kind") not in CLUSTER_SCOPED_KINDS and not namespace_of(obj):
                self.error(obj, "has no namespace: kubectl apply would put it in the "
                                "context's namespace, away from the rest")
        for w in self.m.workloads:
            self.check_workload(w)
        for s in self.m.services:
            self.check_service(s)
        for o in self.m.objects:
            if o.get("kind") == "PodDisruptionBudget":
                self.check_selects_pods(o, ((o.get("spec") or {}).get("selector") or {}).get("matchLabels"))
            if o.get("kind") == "ServiceMonitor":
                self.check_service_monitor(o)
        self.check_kvpool()
        return self.errors

    # -- generic Kubernetes --

    def check_workload(self, w):
        spec = w.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        if not labels_match(selector, template_labels(w)):
            self.error(w, f"selector {selector} does not match its pod template labels "
                          f"{template_labels(w)}")
        pod = pod_spec(w) or {}
        pod_sc = pod.get("securityContext") or {}
        if (pod_sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            self.error(w, "pod securityContext.seccompProfile.type must be RuntimeDefault")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for v in volumes.values():
            self.check_volume_source(w, v)
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            self.check_container(w, pod, c, volumes)

    def check_volume_source(self, w, volume):
        ns = namespace_of(w)
        if "configMap" in volume:
            ref = volume["configMap"]
            if (ns, ref.get("name")) not in self.m.config_maps and not ref.get("optional"):
                self.error(w, f"volume {volume['name']}: ConfigMap {ref.get('name')} is not defined")
            else:
                for item in ref.get("items") or []:
                    if item.get("key") not in self.m.config_maps.get((ns, ref.get("name")), {}):
                        self.error(w, f"volume {volume['name']}: ConfigMap {ref.get('name')} "
                                      f"has no key {item.get('key')}")
        if "secret" in volume:
            ref = volume["secret"]
            keys = self.m.secrets.get((ns, ref.get("secretName")))
            if keys is None and not ref.get("optional"):
                self.error(w, f"volume {volume['name']}: Secret {ref.get('secretName')} is not defined")
            for item in (ref.get("items") or []) if keys is not None else []:
                if item.get("key") not in keys:
                    self.error(w, f"volume {volume['name']}: Secret {ref.get('secretName')} "
                                  f"has no key {item.get('key')}")

    def check_container(self, w, pod, c, volumes):
        where = f"container {c.get('name')}"
        ns = namespace_of(w)
        if not c.get("image"):
            self.error(w, f"{where}: no image")
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (resources.get(part) or {}):
                    self.error(w, f"{where}: resources.{part}.{resource} is not set")
        sc = c.get("securityContext")
        pod_sc = pod.get("securityContext") or {}
        if not sc:
            self.error(w, f"{where}: no securityContext")
        else:
            if sc.get("allowPrivilegeEscalation") is not False:
                self.error(w, f"{where}: securityContext.allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                self.error(w, f"{where}: securityContext.capabilities.drop must hold ALL")
            if sc.get("readOnlyRootFilesystem") is not True:
                self.error(w, f"{where}: securityContext.readOnlyRootFilesystem must be true")
            if sc.get("privileged"):
                self.error(w, f"{where}: must not be privileged")
        if not sc or sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            self.error(w, f"{where}: runAsNonRoot must be true")

        ports = c.get("ports") or []
        numbers = {p.get("containerPort") for p in ports}
        names = [p.get("name") for p in ports if p.get("name")]
        if len(numbers) != len(ports) or len(set(names)) != len(names):
            self.error(w, f"{where}: container ports or their names repeat")
        for n in names:
            if len(n) > 15 or not PORT_NAME_RE.match(n):
                self.error(w, f"{where}: port name {n!r} is not an IANA service name (<= 15 chars)")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if not probe:
                self.error(w, f"{where}: no {kind}")
                continue
            self.check_probe(w, where, kind, probe, ports)

        for source in c.get("envFrom") or []:
            for ref_kind, table, field in (("configMapRef", self.m.config_maps, "ConfigMap"),
                                           ("secretRef", self.m.secrets, "Secret")):
                ref = source.get(ref_kind)
                if ref and (ns, ref.get("name")) not in table and not ref.get("optional"):
                    self.error(w, f"{where}: envFrom {field} {ref.get('name')} is not defined")
        for var in c.get("env") or []:
            value_from = var.get("valueFrom") or {}
            for ref_kind, table, field in (("configMapKeyRef", self.m.config_maps, "ConfigMap"),
                                           ("secretKeyRef", self.m.secrets, "Secret")):
                ref = value_from.get(ref_kind)
                if not ref or ref.get("optional"):
                    continue
                if (ns, ref.get("name")) not in table:
                    self.error(w, f"{where}: env {var.get('name')}: {field} {ref.get('name')} "
                                  "is not defined")
                elif ref.get("key") not in table[(ns, ref.get("name"))]:
                    self.error(w, f"{where}: env {var.get('name')}: {field} {ref.get('name')} "
                                  f"has no key {ref.get('key')}")
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                self.error(w, f"{where}: volumeMount {mount.get('mountPath')} names no volume "
                              f"({mount.get('name')})")

        env = self.m.container_env(ns, c)
        undefined = []
        command = [expand(a, env, undefined) for a in c.get("command") or []]
        args = [expand(a, env, undefined) for a in c.get("args") or []]
        for var in sorted(set(undefined)):
            self.error(w, f"{where}: $({var}) in command/args is not defined in env or envFrom "
                          "(Kubernetes would pass it through literally)")
        if not command:
            self.error(w, f"{where}: no command (the image holds several binaries)")
            return
        binary = os.path.basename(command[0])
        if binary not in self.flags:
            self.error(w, f"{where}: unknown binary {binary!r} (BINARIES in this script)")
            return
        for flag, value in parsed_args(command[1:] + args):
            if flag not in self.flags[binary]:
                self.error(w, f"{where}: {binary} does not accept {flag} (its flags in the "
                              f"sources: {' '.join(sorted(self.flags[binary]))})")
            if flag in ("--listen", "--http") and value is not None:
                host, port = split_host_port(value)
                if port not in numbers:
                    self.error(w, f"{where}: {flag}={value}: port {port} is not a declared "
                                  "container port")
                if host in ("127.0.0.1", "localhost", "::1"):
                    self.error(w, f"{where}: {flag}={value} listens on loopback only: the "
                                  "kubelet and Services cannot reach it")
            if flag in ("--kv-events-endpoint", "--kv-events-replay-endpoint") and value:
                self.check_kv_events_socket(w, pod, c, where, flag, value, numbers)

    def check_kv_events_socket(self, w, pod, c, where, flag, value, numbers):
        """A KV-event socket (it carries prompts' token ids) must be a declared port,
        reachable from other pods, and fenced by a NetworkPolicy that lets only chosen
        pods reach it."""
        match = re.fullmatch(r"tcp://(.+):(\d+)", value)
        if not match:
            self.error(w, f"{where}: {flag}={value}: expected tcp://HOST:PORT")
            return
        host, port = match.group(1), int(match.group(2))
        if port not in numbers:
            self.error(w, f"{where}: {flag}={value}: port {port} is not a declared container port")
        if host in ("127.0.0.1", "localhost", "::1"):
            self.error(w, f"{where}: {flag}={value} binds loopback: no router pod can subscribe")
            return
        names = {p.get("name") for p in c.get("ports") or [] if p.get("containerPort") == port}
        labels = template_labels(w)
        fenced = False
        for policy in self.m.objects:
            if policy.get("kind") != "NetworkPolicy" or namespace_of(policy) != namespace_of(w):
                continue
            spec = policy.get("spec") or {}
            if not labels_match((spec.get("podSelector") or {}).get("matchLabels"), labels):
                continue
            if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
                continue
            open_to_all = False
            for rule in spec.get("ingress") or []:
                rule_ports = rule.get("ports")
                covers = rule_ports is None or any(
                    p.get("port") in names | {port} for p in rule_ports)
                if covers and not rule.get("from"):
                    open_to_all = True
            fenced = fenced or not open_to_all
            if open_to_all:
                self.error(policy, f"lets every pod reach {flag}'s port {port}: the events carry "
                                   "token ids (give that rule a `from`)")
        if not fenced:
            self.error(w, f"{where}: {flag}={value}: no NetworkPolicy selects these pods to "
                          "fence the event port (the events carry token ids)")

    def check_probe(self, w, where, kind, probe, ports):
        handlers = [h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in probe]
        if len(handlers) != 1:
            self.error(w, f"{where}: {kind} needs exactly one handler, has {handlers}")
            return
        handler = handlers[0]
        if handler == "exec":
            return
        port = probe[handler].get("port")
        if handler == "grpc" and not isinstance(port, int):
            self.error(w, f"{where}: {kind} grpc.port must be a number (the kubelet's gRPC "
                          f"probe takes no port names), got {port!r}")
            return
        declared = {p.get("containerPort") for p in ports} if isinstance(port, int) \
            else {p.get("name") for p in ports}
        if port not in declared:
            self.error(w, f"{where}: {kind} probe port {port!r} is not a declared container port")

    def selected_workloads(self, obj, selector):
        return [w for w in self.m.workloads
                if namespace_of(w) == namespace_of(obj) and labels_match(selector, template_labels(w))]

    def check_selects_pods(self, obj, selector):
        found = self.selected_workloads(obj, selector)
        if not found:
            self.error(obj, f"selector {selector} selects no pods of any workload")
        return found

    def check_service(self, s):
        spec = s.get("spec") or {}
        workloads = self.check_selects_pods(s, spec.get("selector"))
        ports = spec.get("ports") or []
        names = [p.get("name") for p in ports]
        if len(ports) > 1 and (None in names or len(set(names)) != len(names)):
            self.error(s, "ports of a multi-port Service need distinct names")
        for p in ports:
            target = p.get("targetPort", p.get("port"))
            for w in workloads:
                container_ports = [cp for c in (pod_spec(w) or {}).get("containers") or []
                                   for cp in c.get("ports") or []]
                key = "containerPort" if isinstance(target, int) else "name"
                if not any(cp.get(key) == target for cp in container_ports):
                    self.error(s, f"port {p.get('name')}: targetPort {target!r} is not a port of "
                                  f"{object_id(w)}")

    def check_service_monitor(self, sm):
        spec = sm.get("spec") or {}
        selector = (spec.get("selector") or {}).get("matchLabels")
        services = [s for s in self.m.services if namespace_of(s) == namespace_of(sm)
                    and labels_match(selector, (s.get("metadata") or {}).get("labels"))]
        if not services:
            self.error(sm, f"selector {selector} matches no Service")
        for endpoint in spec.get("endpoints") or []:
            for s in services:
                if endpoint.get("port") not in {p.get("name") for p in (s.get("spec") or {}).get("ports") or []}:
                    self.error(sm, f"endpoint port {endpoint.get('port')!r}: {object_id(s)} has "
                                   "no port of that name")

    # -- kvpool's own rules --

    def role(self, binary):
        found = self.m.by_binary(binary)
        if len(found) != 1:
            self.error(self.name, f"expected one workload running {binary}, found {len(found)}")
            return None
        w = found[0]
        c = ((pod_spec(w) or {}).get("containers") or [])[0]
        undefined = []
        args = dict(parsed_args([expand(a, self.m.container_env(namespace_of(w), c), undefined)
                                 for a in (c.get("command") or [])[1:] + (c.get("args") or [])]))
        return w, pod_spec(w) or {}, c, args

    def check_kvpool(self):
        manager = self.role("kvpool-manager")
        worker = self.role("kvpool-worker")
        if manager is None or worker is None:
            return
        mw, mpod, mc, margs = manager
        ww, wpod, wc, wargs = worker
        if mw.get("kind") != "DaemonSet":
            self.error(mw, "the manager must be a DaemonSet: one pool per node")

        # The workers' --manager must name a node-local Service in front of the manager.
        host, port = split_host_port(wargs.get("--manager") or "")
        service_name = host.split(".")[0]
        ns = namespace_of(ww)
        if host not in (service_name, f"{service_name}.{ns}", f"{service_name}.{ns}.svc",
                        f"{service_name}.{ns}.svc.cluster.local"):
            self.error(ww, f"--manager={wargs.get('--manager')} must be a Service of namespace {ns}")
        services = [s for s in self.m.services if name_of(s) == service_name and namespace_of(s) == ns]
        if not services:
            self.error(ww, f"--manager names Service {service_name!r}, which is not defined")
        for s in services:
            spec = s.get("spec") or {}
            if not labels_match(spec.get("selector"), template_labels(mw)):
                self.error(s, "the workers' --manager Service does not select the manager pods")
            if spec.get("internalTrafficPolicy") != "Local":
                self.error(s, "the manager Service needs internalTrafficPolicy: Local (a worker "
                              "must reach its own node's manager: only that pool is mappable)")
            if port not in {p.get("port") for p in spec.get("ports") or []}:
                self.error(s, f"has no port {port} (the workers' --manager)")
            _, listen_port = split_host_port(margs.get("--listen") or "")
            for p in spec.get("ports") or []:
                if p.get("port") == port:
                    target = p.get("targetPort", port)
                    numbers = {cp.get("containerPort") for cp in mc.get("ports") or []
                               if target in (cp.get("name"), cp.get("containerPort"))}
                    if listen_port not in numbers:
                        self.error(s, f"port {port} does not lead to the manager's --listen port "
                                      f"{listen_port}")

        backend = margs.get("--backend", "shm")
        if backend not in ("shm", "cuda"):
            self.error(mw, f"--backend={backend}: expected shm or cuda")
        both = ((mw, mpod, mc), (ww, wpod, wc))
        if backend == "shm":
            def shares_dev_shm(pod, c):
                host_paths = {v["name"] for v in pod.get("volumes") or []
                              if (v.get("hostPath") or {}).get("path") == "/dev/shm"}
                mounted = any(m.get("mountPath") == "/dev/shm" and m.get("name") in host_paths
                              for m in c.get("volumeMounts") or [])
                return "hostIPC" if pod.get("hostIPC") else ("hostPath" if mounted else None)
            ways = {shares_dev_shm(pod, c) for _, pod, c in both}
            if None in ways or len(ways) != 1:
                self.error(ww, "manager and workers must see the same /dev/shm: both hostIPC, or "
                               "both the host's /dev/shm as a hostPath volume")
            limit = parse_bytes(((mc.get("resources") or {}).get("limits") or {}).get("memory", ""))
            pool = margs.get("--pool-bytes")
            if pool and pool.isdigit() and (limit is None or limit < int(pool) + MANAGER_HEADROOM_BYTES):
                self.error(mw, f"memory limit {limit} bytes cannot hold the shm pool "
                               f"(--pool-bytes={pool}) plus {MANAGER_HEADROOM_BYTES >> 20} MiB: "
                               "the pool's pages are charged to the manager")
        else:
            for w, pod, c in both:
                if not (pod.get("hostIPC") and pod.get("hostPID")):
                    self.error(w, "--backend cuda: CUDA IPC needs hostIPC and hostPID on the "
                                  "manager and the workers")
                if pod.get("runtimeClassName") != "nvidia":
                    self.error(w, "--backend cuda: runtimeClassName must be nvidia")

            def gpus(c):
                res = c.get("resources") or {}
                return max(int((res.get(p) or {}).get("nvidia.com/gpu", 0)) for p in ("requests", "limits"))
            if gpus(mc):
                self.error(mw, "the manager must not request nvidia.com/gpu (the device plugin "
                               "would take that GPU from the workers)")
            if {e.get("name"): e.get("value") for e in mc.get("env") or []}.get("NVIDIA_VISIBLE_DEVICES") != "all":
                self.error(mw, "--backend cuda: the manager needs NVIDIA_VISIBLE_DEVICES=all")
            if not gpus(wc):
                self.error(ww, "--backend cuda: each worker must request nvidia.com/gpu")

        muid = (mpod.get("securityContext") or {}).get("runAsUser")
        wuid = (wpod.get("securityContext") or {}).get("runAsUser")
        if muid is None or muid != wuid:
            self.error(ww, f"runAsUser {wuid} differs from the manager's {muid}: the pool "
                           "segment is mode 0600, owned by the manager's uid")
        if margs.get("--model") != wargs.get("--model"):
            self.error(ww, f"--model={wargs.get('--model')} differs from the manager's "
                           f"--model={margs.get('--model')} (the pool geometry)")
        # Every node a worker can land on must run a manager.
        m_selector = mpod.get("nodeSelector") or {}
        w_selector = wpod.get("nodeSelector") or {}
        if any(w_selector.get(k) != v for k, v in m_selector.items()):
            self.error(ww, f"nodeSelector {w_selector} admits nodes that the manager's "
                           f"{m_selector} does not")
        m_tolerations = mpod.get("tolerations") or []
        for t in wpod.get("tolerations") or []:
            if t not in m_tolerations:
                self.error(ww, f"toleration {t} lets workers onto nodes without a manager")
