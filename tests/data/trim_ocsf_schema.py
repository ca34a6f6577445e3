#!/usr/bin/env python3
"""Trims the compiled OCSF schema (python -m ocsf.compile, ocsf-lib) to what
the schema-validation test reads: the classes the mappings produce, every
object they reach, the types; descriptions dropped. Writes gzipped JSON.

Object constraints are taken from the schema source when it defines them:
the compiled ones of `endpoint`/`network_endpoint` are `_entity`'s
(name or uid) where the source says ip, uid, name, hostname… (an ocsf-lib
compile quirk).

usage: trim_ocsf_schema.py ocsf-schema.compiled.json ocsf-schema/ ocsf-schema.trimmed.json.gz
"""
import gzip
import json
import os
import sys

CLASSES = ["base_event", "account_change", "authentication", "entity_management",
           "api_activity", "detection_finding"]
KEEP_ATTR = ["type", "requirement", "is_array", "enum", "profile", "object_type"]
KEEP_TYPE = ["type", "regex", "range", "max_len", "values"]

src, source_dir, dst = sys.argv[1], sys.argv[2], sys.argv[3]
full = json.load(open(src))


def attrs(table):
    out = {}
    for name, a in table.items():
        b = {k: a.get(k) for k in KEEP_ATTR if a.get(k) is not None}
        if "enum" in b:
            b["enum"] = sorted(b["enum"].keys(), key=lambda k: int(k) if k.lstrip("-").isdigit() else 0)
        out[name] = b
    return out


classes = {}
todo = []
for c in CLASSES:
    cl = full["classes"][c]
    classes[c] = {"uid": cl["uid"], "caption": cl["caption"], "constraints": cl.get("constraints"),
                  "attributes": attrs(cl["attributes"])}
    todo += [a["type"] for a in cl["attributes"].values()]
objects = {}
while todo:
    t = todo.pop()
    if t in objects or t not in full["objects"]:
        continue
    o = full["objects"][t]
    constraints = o.get("constraints")
    source_file = os.path.join(source_dir, "objects", t + ".json")
    if os.path.exists(source_file):
        constraints = json.load(open(source_file)).get("constraints", constraints)
    objects[t] = {"constraints": constraints, "attributes": attrs(o["attributes"])}
    todo += [a["type"] for a in o["attributes"].values()]
types = {k: {f: v.get(f) for f in KEEP_TYPE if v.get(f) is not None} for k, v in full["types"].items()}
out = {"version": full["version"], "classes": classes, "objects": objects, "types": types}
with gzip.open(dst, "wt", compresslevel=9) as f:
    json.dump(out, f, sort_keys=True, separators=(",", ":"))
