"""Validates every manifest in deploy/k8s/ against its schema: built-in kinds
with kubernetes-validate (the Kubernetes OpenAPI schemas it ships, strict:
unknown fields fail), the KEDA ScaledObject with jsonschema against
deploy/k8s/schemas/keda-scaledobject.json. Also checks that each validator
refuses a broken copy, so a pass means something. Prints one JSON object:
kind/name -> the few facts tests/distributed.rs asserts on.

    validate_manifests.py DEPLOY_K8S_DIR      (also validates DEPLOY_K8S_DIR/ha/)
"""

import copy
import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.33.0"

root = sys.argv[1]
keda = json.load(open(os.path.join(root, "schemas", "keda-scaledobject.json")))
jsonschema.Draft202012Validator.check_schema(keda)


def validate(doc):
    if doc["kind"] == "ScaledObject":
        jsonschema.validate(doc, keda, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def refused(doc):
    try:
        validate(doc)
    except (jsonschema.ValidationError, kubernetes_validate.ValidationError):
        return True
    return False


out = {}
# deploy/k8s/*.yaml, and the Redis high-availability option in deploy/k8s/ha/.
for path in sorted(glob.glob(os.path.join(root, "*.yaml")) + glob.glob(os.path.join(root, "ha", "*.yaml"))):
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        validate(doc)
        name = doc["kind"] + "/" + doc["metadata"]["name"]
        broken = copy.deepcopy(doc)
        broken["spec" if "spec" in doc else "metadata"]["replicaz"] = 3
        assert refused(broken), f"{name}: an unknown field passed validation"
        facts = {"file": os.path.relpath(path, root)}
        spec = doc.get("spec", {})
        if doc["kind"] == "Deployment":
            c = spec["template"]["spec"]["containers"][0]
            facts.update({
                "replicas": spec.get("replicas"),
                "command": c.get("args", []),
                "ready": c.get("readinessProbe", {}).get("httpGet", {}).get("path"),
                "live": c.get("livenessProbe", {}).get("httpGet", {}).get("path"),
                "requests": sorted(c.get("resources", {}).get("requests", {})),
                "env": sorted(e["name"] for e in c.get("env", [])),
                "grace": spec["template"]["spec"].get("terminationGracePeriodSeconds"),
            })
        elif doc["kind"] == "StatefulSet":
            facts.update({"replicas": spec.get("replicas"), "service": spec["serviceName"],
                          "command": spec["template"]["spec"]["containers"][0].get("command", [])})
        elif doc["kind"] == "ConfigMap":
            facts.update({"keys": sorted(doc["data"])})
        elif doc["kind"] == "ScaledObject":
            t = spec["triggers"][0]
            facts.update({"target": spec["scaleTargetRef"]["name"], "trigger": t["type"], **t["metadata"]})
            broken = copy.deepcopy(doc)
            del broken["spec"]["triggers"][0]["metadata"]["lagCount"]
            assert refused(broken), "a redis-streams trigger without lagCount passed"
        elif doc["kind"] == "HorizontalPodAutoscaler":
            facts.update({"target": spec["scaleTargetRef"]["name"],
                          "metrics": [m["resource"]["name"] for m in spec["metrics"]]})
            broken = copy.deepcopy(doc)
            broken["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "high"
            assert refused(broken), "a non-numeric utilisation passed"
        out[name] = facts
print(json.dumps(out))
