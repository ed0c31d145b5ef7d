#!/usr/bin/env python3
"""Offline checks for the deployment files, used by scripts/check-deploy.sh.

  check-deploy.py render DIR          kustomize build for the subset of kustomize
                                      this repository's base uses (resources,
                                      images, namespace); for machines without
                                      kubectl or kustomize
  check-deploy.py compose FILE        the output of `docker-compose config`:
                                      one image for init and orderflow, stop grace
  check-deploy.py kubernetes FILE     rendered manifests: the ServiceMonitor (a CRD
                                      kubernetes-validate has no schema for) and the
                                      references between the documents
  check-deploy.py env-names FILE...   every variable set in FILE... is one of
                                      README's configuration table

Prints one line per check; exits 1 on the first failure.
"""
import os
import re
import sys

import yaml

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")


def fail(msg):
    print(f"FAIL {msg}")
    sys.exit(1)


def ok(msg):
    print(f"  ok {msg}")


def seconds(value):
    """'40s', '1m30s', 40 -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, rest = 0.0, str(value)
    for num, unit in re.findall(r"([\d.]+)(h|ms|m|s|us)", rest):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


# ---------------------------------------------------------------- render


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PersistentVolume", "StorageClass"}


def set_images(node, images):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    name = c.get("image", "")
                    base = re.split(r"[:@]", name, maxsplit=1)[0]
                    for img in images:
                        if img["name"] == base:
                            new = img.get("newName", base)
                            if "digest" in img:
                                new += "@" + img["digest"]
                            elif "newTag" in img:
                                new += ":" + str(img["newTag"])
                            elif name != base:
                                new += name[len(base):]
                            c["image"] = new
            else:
                set_images(value, images)
    elif isinstance(node, list):
        for item in node:
            set_images(item, images)


def render(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    supported = {"apiVersion", "kind", "resources", "images", "namespace"}
    extra = set(k) - supported
    if extra:
        raise SystemExit(f"render: {directory}: unsupported kustomization fields "
                         f"{sorted(extra)} (install kubectl or kustomize)")
    docs = []
    for res in k.get("resources", []):
        path = os.path.join(directory, res)
        if os.path.isdir(path):
            docs.extend(render(path))
        else:
            with open(path) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    if k.get("images"):
        for d in docs:
            set_images(d, k["images"])
    if k.get("namespace"):
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d.setdefault("metadata", {})["namespace"] = k["namespace"]
    return docs


# ---------------------------------------------------------------- compose


def check_compose(path):
    with open(path) as f:
        c = yaml.safe_load(f)
    s = c["services"]
    of, init = s["orderflow"], s["init"]
    if of.get("image") != init.get("image") or not of.get("image"):
        fail(f"compose: init and orderflow must name one image ({init.get('image')} / {of.get('image')})")
    if "build" not in of or "build" in init:
        fail("compose: orderflow builds the image, init only uses it")
    if init.get("pull_policy") not in ("never", "build"):
        fail("compose: init must not pull orderflow's image (pull_policy never)")
    ok(f"compose: init and orderflow share image {of['image']}, built once by orderflow, init never pulls")
    timeout = float(of["environment"].get("SHUTDOWN_TIMEOUT_SECS", 30))
    grace = seconds(of.get("stop_grace_period", "10s"))
    if grace <= timeout:
        fail(f"compose: stop_grace_period {grace}s must exceed SHUTDOWN_TIMEOUT_SECS {timeout}s")
    ok(f"compose: stop_grace_period {grace:g}s > SHUTDOWN_TIMEOUT_SECS {timeout:g}s")
    kafka = s["kafka"]
    env = kafka["environment"]
    vols = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in kafka.get("volumes", [])]
    log_dirs = env.get("KAFKA_LOG_DIRS", "")
    if not any(v.split(":")[1] == log_dirs for v in vols if ":" in v):
        fail(f"compose: KAFKA_LOG_DIRS {log_dirs!r} is not a mounted volume ({vols})")
    ok(f"compose: Kafka logs in volume at {log_dirs}")
    names = {l.split(":")[0] for l in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    for var in ("KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS"):
        for listener in env[var].split(","):
            name = listener.split("://")[0]
            if name not in names:
                fail(f"compose: listener {name} of {var} missing from the security protocol map")
    published = {str(p.get("published") if isinstance(p, dict) else p.split(":")[0]) for p in kafka.get("ports", [])}
    if "29092" not in published or "localhost:29092" not in env["KAFKA_ADVERTISED_LISTENERS"]:
        fail("compose: host listener localhost:29092 not advertised or not published")
    ok("compose: listeners in the security map; host listener localhost:29092 published")
    if "alertmanager" not in s:
        fail("compose: no alertmanager service")
    ok("compose: alertmanager service present")


# ---------------------------------------------------------------- kubernetes


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_kubernetes(path, external_secrets):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        for key in ("apiVersion", "kind"):
            if key not in d:
                fail(f"kubernetes: a document without {key}")
        if not d.get("metadata", {}).get("name"):
            fail(f"kubernetes: a {d['kind']} without metadata.name")
        by_kind.setdefault(d["kind"], []).append(d)
    ok(f"kubernetes: {len(docs)} documents: " + ", ".join(f"{k} {len(v)}" for k, v in sorted(by_kind.items())))

    configmaps = {d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])} | set(external_secrets)
    sas = {d["metadata"]["name"] for d in by_kind.get("ServiceAccount", [])}

    workloads = []
    for d in by_kind.get("Deployment", []):
        workloads.append((d, d["spec"]["template"]))
        if not matches(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]):
            fail(f"kubernetes: Deployment {d['metadata']['name']}: selector does not match its pod labels")
    for d in by_kind.get("Job", []):
        workloads.append((d, d["spec"]["template"]))

    for d, tpl in workloads:
        name = f"{d['kind']} {d['metadata']['name']}"
        spec = tpl["spec"]
        if spec.get("serviceAccountName") not in sas:
            fail(f"kubernetes: {name}: service account {spec.get('serviceAccountName')} not defined")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"kubernetes: {name}: automountServiceAccountToken must be false")
        psc = spec.get("securityContext", {})
        for c in spec["containers"]:
            sc = {**psc, **c.get("securityContext", {})}
            want = {"runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False}
            for key, value in want.items():
                if sc.get(key) != value:
                    fail(f"kubernetes: {name}/{c['name']}: securityContext.{key} must be {value}")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(f"kubernetes: {name}/{c['name']}: capabilities must drop ALL")
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    fail(f"kubernetes: {name}: ConfigMap {ref} not defined")
                ref = ef.get("secretRef", {}).get("name")
                if ref and ref not in secrets:
                    fail(f"kubernetes: {name}: Secret {ref} not defined")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                if ref and ref not in secrets:
                    fail(f"kubernetes: {name}: Secret {ref} not defined")
                ref = e.get("valueFrom", {}).get("configMapKeyRef", {}).get("name")
                if ref and ref not in configmaps:
                    fail(f"kubernetes: {name}: ConfigMap {ref} not defined")
        ok(f"kubernetes: {name}: non-root 10001, read-only root, no privilege escalation, "
           f"no capabilities, no token; ConfigMap/Secret references resolve")

    for d in by_kind.get("Deployment", []):
        name = f"Deployment {d['metadata']['name']}"
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        timeout = float(env.get("SHUTDOWN_TIMEOUT_SECS") or 30)
        pre = c.get("lifecycle", {}).get("preStop", {})
        sleep = float(pre["exec"]["command"][-1]) if "exec" in pre else float(pre.get("sleep", {}).get("seconds", 0))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= timeout + sleep:
            fail(f"kubernetes: {name}: terminationGracePeriodSeconds {grace} <= "
                 f"preStop {sleep:g} + SHUTDOWN_TIMEOUT_SECS {timeout:g}")
        ok(f"kubernetes: {name}: terminationGracePeriodSeconds {grace} > preStop {sleep:g} s "
           f"+ SHUTDOWN_TIMEOUT_SECS {timeout:g} s")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
        want = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
        for k, p in probes.items():
            if p.get("path") != want[k] or p.get("port") not in ports:
                fail(f"kubernetes: {name}: {k} must GET {want[k]} on a named container port")
        if env.get("HTTP_ADDR", "").rsplit(":", 1)[-1] != str(ports.get("http")):
            fail(f"kubernetes: {name}: HTTP_ADDR {env.get('HTTP_ADDR')} is not the http port {ports.get('http')}")
        ok(f"kubernetes: {name}: probes /healthz, /readyz, /healthz on port http = HTTP_ADDR's port")
        labels = d["spec"]["template"]["metadata"]["labels"]
        for svc in by_kind.get("Service", []):
            if matches(svc["spec"]["selector"], labels):
                for p in svc["spec"]["ports"]:
                    if p.get("targetPort") not in ports and p.get("targetPort") not in ports.values():
                        fail(f"kubernetes: Service {svc['metadata']['name']}: targetPort {p.get('targetPort')} not a container port")
                ok(f"kubernetes: Service {svc['metadata']['name']} selects {name}, targetPorts exist")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            if not matches(pdb["spec"]["selector"]["matchLabels"], labels):
                fail(f"kubernetes: PodDisruptionBudget {pdb['metadata']['name']} does not select {name}")
            ok(f"kubernetes: PodDisruptionBudget {pdb['metadata']['name']} selects {name}")

    # ServiceMonitor: kubernetes-validate has no schema for this CRD; checked
    # here against the fields of monitoring.coreos.com/v1 it uses.
    for sm in by_kind.get("ServiceMonitor", []):
        name = f"ServiceMonitor {sm['metadata']['name']}"
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            fail(f"kubernetes: {name}: apiVersion {sm['apiVersion']}")
        spec = sm.get("spec", {})
        known = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                 "podTargetLabels", "sampleLimit", "targetLimit", "labelLimit",
                 "attachMetadata", "scrapeProtocols", "fallbackScrapeProtocol"}
        if set(spec) - known:
            fail(f"kubernetes: {name}: unknown spec fields {sorted(set(spec) - known)}")
        sel = spec.get("selector", {}).get("matchLabels")
        svcs = [s for s in by_kind.get("Service", []) if matches(sel, s["metadata"].get("labels", {}))]
        if not sel or not svcs:
            fail(f"kubernetes: {name}: selector {sel} matches no Service's labels")
        svc_ports = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
        endpoint_keys = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout",
                         "honorLabels", "honorTimestamps", "relabelings", "metricRelabelings",
                         "tlsConfig", "bearerTokenSecret", "authorization", "basicAuth", "params",
                         "followRedirects", "enableHttp2", "proxyUrl", "oauth2", "filterRunning"}
        if not spec.get("endpoints"):
            fail(f"kubernetes: {name}: no endpoints")
        for ep in spec["endpoints"]:
            if set(ep) - endpoint_keys:
                fail(f"kubernetes: {name}: unknown endpoint fields {sorted(set(ep) - endpoint_keys)}")
            if ep.get("port") not in svc_ports:
                fail(f"kubernetes: {name}: port {ep.get('port')} is not a port name of {[s['metadata']['name'] for s in svcs]}")
            if ep.get("path", "/metrics") != "/metrics":
                fail(f"kubernetes: {name}: path {ep.get('path')}")
            if "interval" in ep and not re.fullmatch(r"(\d+(ms|s|m|h))+", ep["interval"]):
                fail(f"kubernetes: {name}: interval {ep['interval']}")
        ok(f"kubernetes: {name}: monitoring.coreos.com/v1, known fields only, selects Service "
           f"{', '.join(s['metadata']['name'] for s in svcs)}, port http, path /metrics")


# ---------------------------------------------------------------- env names


def readme_variables():
    names = set()
    with open(README) as f:
        text = f.read()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def check_env_names(paths):
    known = readme_variables()
    if not known:
        fail("env-names: no variables found in README's configuration table")
    for path in paths:
        used = set()
        if path.endswith(".example") or path.endswith(".env"):
            with open(path) as f:
                used = {l.split("=", 1)[0].strip() for l in f if "=" in l and not l.lstrip().startswith("#")}
        else:
            with open(path) as f:
                for d in yaml.safe_load_all(f):
                    if not d:
                        continue
                    if d.get("kind") == "ConfigMap" and d["metadata"]["name"].startswith("orderflow"):
                        used |= set(d.get("data", {}))
                    if d.get("kind") in ("Deployment", "Job"):
                        for c in d["spec"]["template"]["spec"]["containers"]:
                            used |= {e["name"] for e in c.get("env", [])}
                    if "services" in d:
                        for svc in ("init", "orderflow"):
                            used |= set(d["services"][svc].get("environment", {}))
        unknown = used - known
        if unknown:
            fail(f"env-names: {path}: not in README's configuration table: {sorted(unknown)}")
        ok(f"env-names: {path}: {len(used)} variables, all in README's configuration table")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "render":
        yaml.safe_dump_all(render(args[0]), sys.stdout, sort_keys=False)
    elif cmd == "compose":
        check_compose(args[0])
    elif cmd == "kubernetes":
        check_kubernetes(args[0], args[1:])
    elif cmd == "env-names":
        check_env_names(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
