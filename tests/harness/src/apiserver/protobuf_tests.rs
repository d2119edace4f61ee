//! Unit tests of the protobuf body decoder on hand-built wire bytes: each Kubernetes JSON
//! rule, presence as Go's JSON has it, unknown fields, and the errors for bad bodies.

use prost_reflect::{DynamicMessage, Value as Pb};
use serde_json::json;

use super::*;

/// A varint field.
fn int(n: u32, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(n << 3), &mut out);
    varint(v, &mut out);
    out
}

/// A length-delimited field: a string, bytes or a nested message.
fn bytes(n: u32, b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(u64::from(n << 3 | 2), &mut out);
    varint(b.len() as u64, &mut out);
    out.extend_from_slice(b);
    out
}

/// One entry of a map field: key 1, value 2 (already encoded as field 2).
fn entry(n: u32, key: &str, value: Vec<u8>) -> Vec<u8> {
    bytes(n, &[bytes(1, key.as_bytes()), value].concat())
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `k8s\0` + runtime.Unknown{typeMeta{apiVersion, kind}, raw}.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let tm = [bytes(1, api_version.as_bytes()), bytes(2, kind.as_bytes())].concat();
    [MAGIC.to_vec(), bytes(1, &tm), bytes(2, raw)].concat()
}

/// ObjectMeta{name, namespace}.
fn meta(name: &str, ns: &str) -> Vec<u8> {
    bytes(
        1,
        &[bytes(1, name.as_bytes()), bytes(3, ns.as_bytes())].concat(),
    )
}

#[test]
fn namespace_with_time_labels_and_repeated_strings() {
    let om = [
        bytes(1, b"foo"),
        bytes(2, b""), // generateName "" as Go sends it: left out
        int(7, 3),     // generation, an int64: a JSON number
        bytes(8, &[int(1, 1_765_000_000), int(2, 5)].concat()), // creationTimestamp
        bytes(9, b""), // deletionTimestamp zero: left out
        entry(11, "team", bytes(2, b"storage")),
        entry(11, "tier", bytes(2, b"")),
    ]
    .concat();
    let spec = [bytes(1, b"kubernetes"), bytes(1, b"cairn.io/x")].concat();
    let body = envelope(
        "v1",
        "Namespace",
        &[bytes(1, &om), bytes(2, &spec)].concat(),
    );
    let got = decode(&body).unwrap();
    assert_eq!(
        got,
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "foo", "generation": 3,
                "creationTimestamp": "2025-12-06T05:46:40Z",
                "labels": {"team": "storage", "tier": ""}},
            "spec": {"finalizers": ["kubernetes", "cairn.io/x"]}
        })
    );
}

#[test]
fn secret_bytes_survive_as_base64() {
    let raw = [
        meta("s", "default"),
        entry(2, "bin", bytes(2, &[0, 0xff, 0x80, b'\n'])),
        entry(2, "empty", bytes(2, b"")),
        bytes(3, b"Opaque"),
    ]
    .concat();
    let got = decode(&envelope("v1", "Secret", &raw)).unwrap();
    assert_eq!(got["data"], json!({"bin": "AP+ACg==", "empty": ""}));
    assert_eq!(got["type"], "Opaque");
    assert_eq!(
        got["metadata"],
        json!({"name": "s", "namespace": "default"})
    );
}

#[test]
fn quantities_and_pointer_strings() {
    let q = |s: &str| bytes(2, &bytes(1, s.as_bytes()));
    let resources = bytes(2, &entry(2, "storage", q("10Gi")));
    // storageClassName is a *string: "" is kept (it turns dynamic provisioning off).
    let spec = [resources, bytes(5, b"")].concat();
    let raw = [meta("data", "ns"), bytes(2, &spec)].concat();
    let got = decode(&envelope("v1", "PersistentVolumeClaim", &raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"resources": {"requests": {"storage": "10Gi"}}, "storageClassName": ""})
    );
}

#[test]
fn int_or_string_both_ways() {
    let port = |name: &str, target: Vec<u8>| {
        bytes(
            1,
            &[bytes(1, name.as_bytes()), int(3, 80), bytes(4, &target)].concat(),
        )
    };
    let spec = [
        port("a", [int(1, 0), int(2, 8080)].concat()),
        port("b", [int(1, 1), bytes(3, b"http")].concat()),
        bytes(4, b"ClusterIP"),
    ]
    .concat();
    let raw = [meta("svc", "ns"), bytes(2, &spec)].concat();
    let got = decode(&envelope("v1", "Service", &raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"type": "ClusterIP", "ports": [
            {"name": "a", "port": 80, "targetPort": 8080},
            {"name": "b", "port": 80, "targetPort": "http"}]})
    );
}

#[test]
fn nested_repeated_inline_and_presence() {
    let container = [
        bytes(1, b"app"),
        bytes(2, b"busybox"),
        bytes(6, &int(3, 8080)),
        bytes(8, b""), // resources: a struct Go always sends, JSON `{}`
    ]
    .concat();
    let volume = [bytes(1, b"scratch"), bytes(2, &bytes(2, b""))].concat();
    let pod = [bytes(1, &volume), bytes(2, &container)].concat();
    let template = [bytes(1, &entry(11, "app", bytes(2, b"d"))), bytes(2, &pod)];
    let spec = [
        int(1, 0), // replicas is a *int32: an explicit 0 is kept
        bytes(3, &template.concat()),
        int(5, 0), // minReadySeconds is int32 omitempty: 0 is left out
    ]
    .concat();
    let raw = [meta("d", "ns"), bytes(2, &spec)].concat();
    let got = decode(&envelope("apps/v1", "Deployment", &raw)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"replicas": 0, "template": {
            "metadata": {"labels": {"app": "d"}},
            "spec": {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [{"name": "app", "image": "busybox",
                    "ports": [{"containerPort": 8080}], "resources": {}}]}}})
    );
    assert_eq!(got["apiVersion"], "apps/v1");
}

#[test]
fn an_unknown_field_is_dropped_and_the_rest_kept() {
    let om = [bytes(1, b"x"), bytes(99, b"from a newer API"), int(98, 7)].concat();
    let raw = [bytes(1, &om), entry(2, "a", bytes(2, b"b"))].concat();
    let got = decode(&envelope("v1", "ConfigMap", &raw)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x"}, "data": {"a": "b"}})
    );
}

#[test]
fn micro_time_int64_and_delete_options() {
    let lease = [
        meta("l", "ns"),
        bytes(
            2,
            &bytes(4, &[int(1, 1_700_000_000), int(2, 123_456_000)].concat()),
        ),
    ];
    let got = decode(&envelope(
        "coordination.k8s.io/v1",
        "Lease",
        &lease.concat(),
    ))
    .unwrap();
    assert_eq!(got["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z");

    let tr = [
        meta("sa", "ns"),
        bytes(2, &[bytes(1, b"api"), int(4, 3600)].concat()),
    ];
    let got = decode(&envelope(
        "authentication.k8s.io/v1",
        "TokenRequest",
        &tr.concat(),
    ))
    .unwrap();
    assert_eq!(
        got["spec"],
        json!({"audiences": ["api"], "expirationSeconds": 3600})
    );

    let del = [int(1, 0), bytes(4, b"Foreground"), bytes(5, b"All")].concat();
    let got = decode(&envelope("v1", "DeleteOptions", &del)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "propagationPolicy": "Foreground", "dryRun": ["All"]})
    );
}

/// A message of `name` from the pool with fields set by number.
fn built(name: &str, set: &[(u32, Pb)]) -> DynamicMessage {
    let mut m = DynamicMessage::new(POOL.get_message_by_name(name).unwrap());
    for (n, v) in set {
        m.set_field_by_number(*n, v.clone());
    }
    m
}

#[test]
fn duration_and_raw_extension() {
    let d = |ns: i64| {
        let m = built(
            "k8s.io.apimachinery.pkg.apis.meta.v1.Duration",
            &[(1, Pb::I64(ns))],
        );
        message(&m, "d").unwrap().unwrap()
    };
    assert_eq!(d(3_600_000_000_000), json!("1h0m0s"));
    assert_eq!(d(90_500_000_000), json!("1m30.5s"));
    assert_eq!(d(1_500_000), json!("1.5ms"));
    assert_eq!(d(-2_000), json!("-2µs"));
    assert_eq!(d(0), json!("0s"));

    let raw = |b: &[u8]| {
        let m = built(
            "k8s.io.apimachinery.pkg.runtime.RawExtension",
            &[(1, Pb::Bytes(b.to_vec().into()))],
        );
        message(&m, "r")
    };
    assert_eq!(raw(br#"{"a":[1]}"#).unwrap(), Some(json!({"a": [1]})));
    assert_eq!(raw(b"").unwrap(), None);
    let nested = envelope("v1", "ConfigMap", &meta("c", "ns"));
    assert_eq!(raw(&nested).unwrap().unwrap()["metadata"]["name"], "c");
    assert_eq!(raw(b"\x01\x02").unwrap_err().code(), 400);
}

#[test]
fn bad_magic_is_a_400_naming_it() {
    let e = decode(b"{\"kind\":\"Namespace\"}").unwrap_err();
    assert_eq!(e.code(), 400);
    assert!(e.to_string().contains("magic number"), "{e}");
}

#[test]
fn truncated_bytes_are_a_400() {
    let raw = [meta("s", "default"), entry(2, "k", bytes(2, b"value"))].concat();
    let body = envelope("v1", "Secret", &raw);
    // The envelope cut short, then only the object inside cut short.
    let e = decode(&body[..body.len() - 3]).unwrap_err();
    assert_eq!(e.code(), 400, "{e}");
    let inner = envelope("v1", "Secret", &raw[..raw.len() - 3]);
    let e = decode(&inner).unwrap_err();
    assert_eq!(e.code(), 400);
    assert!(
        e.to_string().contains("malformed protobuf Secret v1"),
        "{e}"
    );
}

#[test]
fn a_kind_not_covered_is_a_415_naming_it() {
    for (av, kind) in [
        ("example.com/v1", "Widget"),
        ("v1", "PodSpec"), // a message, but not an object
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ] {
        let e = decode(&envelope(av, kind, &meta("w", "ns"))).unwrap_err();
        assert_eq!(e.code(), 415, "{kind}: {e}");
        assert!(e.to_string().contains(&format!("{kind} {av}")), "{e}");
    }
}

#[test]
fn a_content_encoding_or_missing_kind_is_refused() {
    let gz = [envelope("v1", "Secret", b""), bytes(3, b"gzip")].concat();
    assert_eq!(decode(&gz).unwrap_err().code(), 415);
    let no_kind = [MAGIC.to_vec(), bytes(2, &meta("a", "b"))].concat();
    assert_eq!(decode(&no_kind).unwrap_err().code(), 400);
}
