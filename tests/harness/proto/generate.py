#!/usr/bin/env python3
"""Regenerates tests/harness/proto/k8s/*.proto: the proto3 declarations of the Kubernetes
messages the harness API server decodes from protobuf request bodies (decision 058) and
encodes in protobuf answers (decision 065).

Facts only are taken from upstream: each message's field names, numbers and types from the
generated.proto of k8s.io/api and k8s.io/apimachinery, and from the Go types beside them
whether a field is a pointer, omitempty or inline. Those become proto3 field presence:
a Go pointer (or a field without omitempty) is `optional`, so a zero it carries is still
emitted as JSON, while a non-pointer omitempty zero is absent as in Go's JSON; an inline
struct gets json_name "$inline" so the decoder merges its fields into the parent.

Usage: generate.py API_CHECKOUT APIMACHINERY_CHECKOUT OUT_DIR   (checkouts at a release tag)
"""
import os
import re
import sys
from collections import OrderedDict, deque

API, MACH, OUT = sys.argv[1], sys.argv[2], sys.argv[3]

# package -> directory holding generated.proto and the Go types
PACKAGES = {
    "k8s.io.api.core.v1": f"{API}/core/v1",
    "k8s.io.api.apps.v1": f"{API}/apps/v1",
    "k8s.io.api.batch.v1": f"{API}/batch/v1",
    "k8s.io.api.rbac.v1": f"{API}/rbac/v1",
    "k8s.io.api.storage.v1": f"{API}/storage/v1",
    "k8s.io.api.events.v1": f"{API}/events/v1",
    "k8s.io.api.coordination.v1": f"{API}/coordination/v1",
    "k8s.io.api.policy.v1": f"{API}/policy/v1",
    "k8s.io.api.authentication.v1": f"{API}/authentication/v1",
    "k8s.io.api.autoscaling.v1": f"{API}/autoscaling/v1",
    "k8s.io.apimachinery.pkg.apis.meta.v1": f"{MACH}/pkg/apis/meta/v1",
    "k8s.io.apimachinery.pkg.api.resource": f"{MACH}/pkg/api/resource",
    "k8s.io.apimachinery.pkg.util.intstr": f"{MACH}/pkg/util/intstr",
    "k8s.io.apimachinery.pkg.runtime": f"{MACH}/pkg/runtime",
}

# The request bodies the decoder accepts: the harness's built-in kinds, and what kubectl
# and client-go send beside them.
ROOTS = [
    "k8s.io.api.core.v1." + k
    for k in "Namespace Node Pod PersistentVolumeClaim PersistentVolume Event ConfigMap "
    "Secret ServiceAccount Service Binding".split()
] + [
    "k8s.io.api.apps.v1.StatefulSet", "k8s.io.api.apps.v1.DaemonSet",
    "k8s.io.api.apps.v1.Deployment", "k8s.io.api.apps.v1.ReplicaSet",
    "k8s.io.api.batch.v1.Job", "k8s.io.api.batch.v1.CronJob",
    "k8s.io.api.rbac.v1.ClusterRole", "k8s.io.api.rbac.v1.ClusterRoleBinding",
    "k8s.io.api.rbac.v1.Role", "k8s.io.api.rbac.v1.RoleBinding",
    "k8s.io.api.storage.v1.StorageClass", "k8s.io.api.storage.v1.CSIDriver",
    "k8s.io.api.storage.v1.CSINode", "k8s.io.api.storage.v1.CSIStorageCapacity",
    "k8s.io.api.storage.v1.VolumeAttachment", "k8s.io.api.events.v1.Event",
    "k8s.io.api.coordination.v1.Lease", "k8s.io.api.policy.v1.Eviction",
    "k8s.io.api.authentication.v1.TokenRequest", "k8s.io.api.autoscaling.v1.Scale",
    "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "k8s.io.apimachinery.pkg.runtime.Unknown",
] + [
    # What the server answers in protobuf (decision 065): the lists of the kinds above that
    # are served, Status, and the WatchEvent each watch frame holds.
    f"k8s.io.api.{k}List"
    for k in "core.v1.Namespace core.v1.Node core.v1.Pod core.v1.PersistentVolumeClaim "
    "core.v1.PersistentVolume core.v1.Event core.v1.ConfigMap core.v1.Secret "
    "core.v1.ServiceAccount core.v1.Service apps.v1.StatefulSet apps.v1.DaemonSet "
    "apps.v1.Deployment apps.v1.ReplicaSet batch.v1.Job batch.v1.CronJob "
    "rbac.v1.ClusterRole rbac.v1.ClusterRoleBinding rbac.v1.Role rbac.v1.RoleBinding "
    "storage.v1.StorageClass storage.v1.CSIDriver storage.v1.CSINode "
    "storage.v1.CSIStorageCapacity storage.v1.VolumeAttachment events.v1.Event "
    "coordination.v1.Lease".split()
] + [
    "k8s.io.apimachinery.pkg.apis.meta.v1.Status",
    "k8s.io.apimachinery.pkg.apis.meta.v1.WatchEvent",
    # Not in any kind above yet; declared so the decoder's JSON rules for them are tested.
    "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
    "k8s.io.apimachinery.pkg.runtime.RawExtension",
]

FIELD = re.compile(r"^\s*(optional|repeated)?\s*(map<\s*\w+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
SCALARS = {"string", "bytes", "bool", "int32", "int64", "uint32", "uint64", "double", "float",
           "sint32", "sint64", "fixed32", "fixed64"}


def read_proto(pkg):
    """message name -> [(label, type, name, number)] in upstream order."""
    text = open(os.path.join(PACKAGES[pkg], "generated.proto")).read()
    text = re.sub(r"//[^\n]*", "", text)
    msgs = OrderedDict()
    for m in re.finditer(r"\bmessage\s+(\w+)\s*\{(.*?)\n\}", text, re.S):
        fields = []
        for line in m.group(2).split(";"):
            f = FIELD.match(line + ";")
            if f:
                t = f.group(2).replace(" ", "").replace(",.", ",").lstrip(".")
                fields.append((f.group(1) or "", t, f.group(3), int(f.group(4))))
        msgs[m.group(1)] = fields
    return msgs


def read_go(pkg):
    """struct name -> {field number: (pointer, omitempty, inline, json name)}."""
    structs = {}
    d = PACKAGES[pkg]
    for fn in sorted(os.listdir(d)):
        if not fn.endswith(".go") or fn.endswith("_test.go"):
            continue
        text = open(os.path.join(d, fn)).read()
        for s in re.finditer(r"^type (\w+) struct \{(.*?)^\}", text, re.S | re.M):
            fields = {}
            for line in s.group(2).split("\n"):
                line = line.strip()
                if line.startswith("//") or not re.search(r'protobuf:"[a-z0-9]+,\d+,', line):
                    continue
                tag = re.search(r'protobuf:"[a-z0-9]+,(\d+),', line)
                js = re.search(r'json:"([^"]*)"', line)
                gotype = line.split("`")[0].split()
                gotype = gotype[-1] if gotype else ""
                jname = js.group(1).split(",") if js else ["-"]
                fields[int(tag.group(1))] = (
                    gotype.startswith("*"),
                    "omitempty" in jname[1:] or "omitzero" in jname[1:],
                    "inline" in jname[1:],
                    jname[0],
                )
            structs[s.group(1)] = fields
    return structs


protos = {p: read_proto(p) for p in PACKAGES}
gos = {p: read_go(p) for p in PACKAGES}


def resolve(pkg, t):
    """A field type's full name, or None for scalars and maps."""
    if t in SCALARS or t.startswith("map<"):
        return None
    if "." in t:
        return t
    return f"{pkg}.{t}"


def split(full):
    pkg, _, name = full.rpartition(".")
    return pkg, name


# The closure of the roots over message-typed fields (map values included).
needed, queue = set(), deque(ROOTS)
while queue:
    full = queue.popleft()
    if full in needed:
        continue
    pkg, name = split(full)
    if name not in protos[pkg]:
        sys.exit(f"{full}: not in {pkg}'s generated.proto")
    needed.add(full)
    for _, t, _, _ in protos[pkg][name]:
        if t.startswith("map<"):
            t = t[4:-1].split(",")[1]
        r = resolve(pkg, t)
        if r:
            queue.append(r)

os.makedirs(OUT, exist_ok=True)
for pkg in PACKAGES:
    names = [n for n in protos[pkg] if f"{pkg}.{n}" in needed]
    if not names:
        continue
    imports, body = set(), []
    for name in names:
        body.append(f"message {name} {{")
        go = gos[pkg].get(name, {})
        for label, t, fname, num in protos[pkg][name]:
            deps = [t[4:-1].split(",")[1]] if t.startswith("map<") else [t]
            for dep in deps:
                r = resolve(pkg, dep)
                if r and split(r)[0] != pkg:
                    imports.add(split(r)[0])
            ptr, omitempty, inline, jname = go.get(num, (True, False, False, fname))
            opts = ""
            if inline:
                opts = ' [json_name = "$inline"]'
            elif jname not in ("", "-", fname):
                opts = f' [json_name = "{jname}"]'
            if label == "repeated":
                lab = "repeated "
            elif t in SCALARS and (ptr or not omitempty):
                lab = "optional "
            else:
                lab = ""
            body.append(f"  {lab}{t} {fname} = {num}{opts};")
        body.append("}")
        body.append("")
    out = [
        "// Generated by ../generate.py from the upstream generated.proto and Go types",
        "// (field names, numbers and types; Go pointers as proto3 presence). Do not edit.",
        'syntax = "proto3";',
        "",
        f"package {pkg};",
        "",
    ]
    out += [f'import "{i}.proto";' for i in sorted(imports)]
    out += [""] + body
    with open(os.path.join(OUT, f"{pkg}.proto"), "w") as f:
        f.write("\n".join(out).rstrip() + "\n")
    print(f"{pkg}: {len(names)} messages")
