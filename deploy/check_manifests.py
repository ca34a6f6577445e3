#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests (no cluster, no network).

Parses every YAML file under deploy/kubernetes, checks the fields a schema
validator would (apiVersion/kind/metadata.name, selectors matching template
labels, volumes that exist) and the operating rules of this project
(single replica with Recreate, probes on /healthz and /readyz, non-root,
read-only root filesystem, all capabilities dropped, resource requests and
limits, state on a volume). Kustomizations must name files that exist and
TOML configs must parse. Exits non-zero with one line per problem.
"""
import pathlib
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent / "kubernetes"
problems = []


def need(cond, where, what):
    if not cond:
        problems.append(f"{where}: {what}")


def check_pod(spec, where, tailer):
    sc = spec.get("securityContext", {})
    need(sc.get("runAsNonRoot") is True, where, "pod securityContext.runAsNonRoot must be true")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    containers = spec.get("containers", [])
    need(containers, where, "no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        need("image" in c, cw, "no image")
        if c.get("image") != "auditrelay":
            continue
        csc = c.get("securityContext", {})
        need(csc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
        need(csc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        need(csc.get("capabilities", {}).get("drop") == ["ALL"], cw, "capabilities must drop ALL")
        need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", cw, "liveness probe on /healthz")
        need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", cw, "readiness probe on /readyz")
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            need({"cpu", "memory"} <= set(res.get(k, {})), cw, f"resources.{k} needs cpu and memory")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        for m in c.get("volumeMounts", []):
            need(m["name"] in volumes, cw, f"volumeMount {m['name']} names no volume")
        need("/var/lib/auditrelay" in mounts, cw, "state_dir /var/lib/auditrelay must be a volume")
        if tailer:
            state = next((v for v in spec.get("volumes", []) if v["name"] == mounts.get("/var/lib/auditrelay")), {})
            need("persistentVolumeClaim" in state, cw, "state must be on a PersistentVolumeClaim")


def config_has_cluster(directory):
    path = directory / "auditrelay.toml"
    try:
        return "cluster" in tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def check_doc(doc, where):
    for key in ("apiVersion", "kind"):
        need(key in doc, where, f"missing {key}")
    kind = doc.get("kind")
    if kind == "Kustomization":
        base = pathlib.Path(where).parent
        for r in doc.get("resources", []):
            need((base / r).exists(), where, f"resource {r} does not exist")
        for gen in doc.get("configMapGenerator", []):
            for f in gen.get("files", []):
                path = base / f.split("=")[-1]
                need(path.exists(), where, f"configMapGenerator file {f} does not exist")
                if path.suffix == ".toml" and path.exists():
                    try:
                        tomllib.loads(path.read_text())
                    except tomllib.TOMLDecodeError as e:
                        problems.append(f"{path}: {e}")
        return
    need(doc.get("metadata", {}).get("name"), where, "missing metadata.name")
    if kind == "Deployment":
        spec = doc.get("spec", {})
        clustered = pathlib.Path(where).parent.name == "cluster"
        if clustered:
            # Ownership through [cluster] decides who tails a source.
            need(spec.get("replicas", 1) >= 2, where, "a clustered Deployment needs at least 2 replicas")
            need(config_has_cluster(pathlib.Path(where).parent), where, "auditrelay.toml next to it must have [cluster]")
        else:
            need(spec.get("replicas") == 1, where, "replicas must be 1 (one tailer per source)")
            need(spec.get("strategy", {}).get("type") == "Recreate", where, "strategy must be Recreate")
        sel = spec.get("selector", {}).get("matchLabels", {})
        labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
        need(sel and all(labels.get(k) == v for k, v in sel.items()), where, "selector must match template labels")
        tailer = "sidecar" not in where and not clustered
        check_pod(spec.get("template", {}).get("spec", {}), where, tailer)


for path in sorted(ROOT.rglob("*.yaml")):
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as e:
        problems.append(f"{path}: not YAML: {e}")
        continue
    for doc in docs:
        check_doc(doc, str(path))

for p in problems:
    print(p)
print(f"{len(list(ROOT.rglob('*.yaml')))} manifests checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
