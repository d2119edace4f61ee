//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`): the `k8s\0`
//! envelope, the message its apiVersion/kind names, and the JSON object the registry takes.
//!
//! Schema-driven (decision 058): build.rs compiles `proto/k8s/*.proto` (generated from the
//! upstream field numbers and Go types by `proto/generate.py`) into a descriptor set; a
//! body is decoded as a `prost_reflect::DynamicMessage` and walked into JSON with the
//! Kubernetes rules: int64 as numbers, `Time`/`MicroTime` as RFC 3339, `Duration` as Go
//! prints it, `Quantity` and `IntOrString` as their JSON forms, bytes as base64, inline
//! structs merged into their parent. Field presence follows the Go types: a pointer field
//! is kept even when zero, a non-pointer `omitempty` zero is left out, as Go's JSON does.

use std::sync::LazyLock;

use base64::Engine;
use chrono::{DateTime, SecondsFormat};
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// The 4 bytes before every Kubernetes protobuf object.
pub const MAGIC: &[u8] = b"k8s\0";

pub(super) const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
/// The json_name generate.py gives a Go struct embedded with `json:",inline"`.
pub(super) const INLINE: &str = "$inline";

pub(super) static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s_descriptors.bin"))[..])
        .expect("build.rs writes a valid descriptor set")
});

/// The proto package of each API group whose kinds are decoded.
fn package(group: &str) -> Option<&'static str> {
    Some(match group {
        "" => "core",
        "apps" => "apps",
        "batch" => "batch",
        "policy" => "policy",
        "autoscaling" => "autoscaling",
        "rbac.authorization.k8s.io" => "rbac",
        "storage.k8s.io" => "storage",
        "events.k8s.io" => "events",
        "coordination.k8s.io" => "coordination",
        "authentication.k8s.io" => "authentication",
        _ => return None,
    })
}

/// The message for a top-level object: a kind with `metadata`, or DeleteOptions.
pub(super) fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if kind == "DeleteOptions" && (group == "meta.k8s.io" || package(group).is_some()) {
        return POOL.get_message_by_name(&format!("{META}.DeleteOptions"));
    }
    let m =
        POOL.get_message_by_name(&format!("k8s.io.api.{}.{version}.{kind}", package(group)?))?;
    m.get_field_by_name("metadata")
        .is_some_and(|f| {
            f.kind()
                .as_message()
                .is_some_and(|t| t.full_name() == format!("{META}.ObjectMeta"))
        })
        .then_some(m)
}

/// Decodes a protobuf request body into the JSON object a JSON client would have sent.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_as(body, message_for)
}

/// Decodes an envelope whose message `find` names (requests: `message_for`).
pub(super) fn decode_as(
    body: &[u8],
    find: impl Fn(&str, &str) -> Option<MessageDescriptor>,
) -> Result<Value> {
    let rest = body.strip_prefix(MAGIC).ok_or_else(|| {
        Error::BadRequest(format!(
            "protobuf body does not start with the Kubernetes magic number k8s\\0 (first bytes {:02x?})",
            &body[..body.len().min(4)]
        ))
    })?;
    let unknown = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown is in the descriptor set");
    let env = DynamicMessage::decode(unknown, rest).map_err(|e| {
        Error::BadRequest(format!(
            "malformed protobuf envelope (runtime.Unknown): {e}"
        ))
    })?;
    let text = |m: &DynamicMessage, n: &str| {
        m.get_field_by_name(n)
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let type_meta = env
        .get_field_by_name("typeMeta")
        .and_then(|v| v.as_message().cloned())
        .unwrap_or_else(|| DynamicMessage::new(env.descriptor()));
    let (api_version, kind) = (text(&type_meta, "apiVersion"), text(&type_meta, "kind"));
    let encoding = text(&env, "contentEncoding");
    if !encoding.is_empty() {
        return Err(Error::UnsupportedMediaType(format!(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf without a content encoding (got {encoding:?})"
        )));
    }
    if kind.is_empty() || api_version.is_empty() {
        return Err(Error::BadRequest(
            "protobuf body has no apiVersion/kind in its runtime.Unknown typeMeta".into(),
        ));
    }
    let desc = find(&api_version, &kind).ok_or_else(|| {
        Error::UnsupportedMediaType(format!(
            "application/json, application/yaml (application/vnd.kubernetes.protobuf is decoded for built-in kinds only, not {kind} {api_version})"
        ))
    })?;
    let raw = env
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let msg = DynamicMessage::decode(desc, raw)
        .map_err(|e| Error::BadRequest(format!("malformed protobuf {kind} {api_version}: {e}")))?;
    let mut obj = match message(&msg, &kind)? {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    };
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    Ok(Value::Object(obj))
}

/// A message as JSON; `None` for what Go's JSON leaves out (a zero `Time`, an empty raw).
fn message(m: &DynamicMessage, path: &str) -> Result<Option<Value>> {
    let d = m.descriptor();
    let num = |n: u32| m.get_field_by_number(n);
    let int = |n: u32| num(n).and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)));
    let out = match d.full_name().strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("apis.meta.v1.Time") | Some("apis.meta.v1.MicroTime") => {
            let (secs, nanos) = (int(1).unwrap_or(0), int(2).unwrap_or(0));
            if secs == 0 && nanos == 0 {
                return Ok(None);
            }
            let t = DateTime::from_timestamp(secs, u32::try_from(nanos).unwrap_or(0))
                .ok_or_else(|| Error::BadRequest(format!("{path}: time out of range")))?;
            let fmt = if d.name() == "Time" {
                SecondsFormat::Secs
            } else {
                SecondsFormat::Micros
            };
            json!(t.to_rfc3339_opts(fmt, true))
        }
        Some("apis.meta.v1.Duration") => json!(go_duration(int(1).unwrap_or(0))),
        Some("api.resource.Quantity") => {
            json!(
                num(1)
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            )
        }
        Some("util.intstr.IntOrString") => match int(1).unwrap_or(0) {
            0 => json!(int(2).unwrap_or(0)),
            _ => json!(
                num(3)
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        },
        Some("runtime.RawExtension") | Some("apis.meta.v1.FieldsV1") => {
            let raw = num(1)
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            if raw.is_empty() {
                return Ok(None);
            }
            if raw.starts_with(MAGIC) {
                decode(&raw)?
            } else {
                serde_json::from_slice(&raw).map_err(|e| {
                    Error::BadRequest(format!(
                        "{path}: raw object is neither JSON nor protobuf: {e}"
                    ))
                })?
            }
        }
        _ => Value::Object(fields(m, path)?),
    };
    Ok(Some(out))
}

/// The set fields of a message, inline structs merged in.
fn fields(m: &DynamicMessage, path: &str) -> Result<Map<String, Value>> {
    let unknown: Vec<u32> = m.unknown_fields().map(|f| f.number()).collect();
    if !unknown.is_empty() {
        tracing::warn!(message = m.descriptor().full_name(), fields = ?unknown, %path,
            "protobuf body has fields the harness does not declare; they are dropped");
    }
    let mut out = Map::new();
    for (f, v) in m.fields() {
        let name = f.json_name();
        let at = format!("{path}.{name}");
        if name == INLINE {
            if let Some(Value::Object(inner)) = v
                .as_message()
                .map(|m| message(m, path))
                .transpose()?
                .flatten()
            {
                out.extend(inner);
            }
            continue;
        }
        if let Some(j) = value(v, &at)? {
            out.insert(name.to_string(), j);
        }
    }
    Ok(out)
}

fn value(v: &Pb, path: &str) -> Result<Option<Value>> {
    Ok(Some(match v {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => json!(n),
        Pb::F64(n) => json!(n),
        Pb::String(s) => json!(s),
        Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::EnumNumber(n) => json!(n),
        Pb::Message(m) => return message(m, path),
        Pb::List(items) => Value::Array(
            items
                .iter()
                .map(|i| value(i, path).map(|j| j.unwrap_or(Value::Null)))
                .collect::<Result<_>>()?,
        ),
        Pb::Map(entries) => {
            let mut o = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                let j = value(v, &format!("{path}[{key}]"))?.unwrap_or(Value::Null);
                o.insert(key, j);
            }
            Value::Object(o)
        }
    }))
}

/// A duration in nanoseconds as Go's `time.Duration.String` prints it: "1h0m0s", "1.5s", "20ms".
pub(super) fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", decimal(u, 1_000))
    } else if u < 1_000_000_000 {
        format!("{}ms", decimal(u, 1_000_000))
    } else {
        let (h, m) = (u / 3_600_000_000_000, (u / 60_000_000_000) % 60);
        let s = format!("{}s", decimal(u % 60_000_000_000, 1_000_000_000));
        match (h, m) {
            (0, 0) => s,
            (0, m) => format!("{m}m{s}"),
            (h, m) => format!("{h}h{m}m{s}"),
        }
    };
    format!("{sign}{body}")
}

/// `v / unit` with its fraction, trailing zeros trimmed.
fn decimal(v: u64, unit: u64) -> String {
    let (whole, frac) = (v / unit, v % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = unit.ilog10() as usize;
    let f = format!("{frac:0digits$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
#[path = "protobuf_tests.rs"]
mod tests;
