//! Kubernetes protobuf answers: a registry JSON object encoded as the message its
//! apiVersion/kind names, in the `k8s\0` + `runtime.Unknown` envelope; protobuf watch frames.
//!
//! The inverse of `protobuf::decode` over the same descriptor pool (decision 065): RFC 3339
//! times to `Time`/`MicroTime`, Go duration strings to `Duration`, `Quantity` and
//! `IntOrString` from their JSON forms, base64 to bytes, `RawExtension`/`FieldsV1` as the JSON
//! they hold, inline structs filled from their parent's keys. A key the declarations do not
//! have is dropped with a warning, as Go's JSON decoding drops it before upstream encodes.

use base64::Engine;
use bytes::Bytes;
use chrono::DateTime;
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{Map, Value};

use super::protobuf::{INLINE, MAGIC, META, POOL, message_for};
use crate::error::{Error, Result};

/// The message an answer of this apiVersion/kind is encoded as: an object, a list of a
/// declared kind, or `Status`.
pub(super) fn response_message(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    if kind == "Status" {
        return POOL.get_message_by_name(&format!("{META}.Status"));
    }
    if let Some(item) = kind.strip_suffix("List")
        && let Some(m) = message_for(api_version, item)
    {
        let list = format!("{}List", m.full_name());
        return POOL.get_message_by_name(&list);
    }
    message_for(api_version, kind)
}

/// Whether objects of this apiVersion/kind can be answered in protobuf.
pub fn encodable(api_version: &str, kind: &str) -> bool {
    response_message(api_version, kind).is_some()
}

/// `obj` as a protobuf answer body: `k8s\0` + runtime.Unknown{typeMeta, raw, "", ""}.
pub fn encode(obj: &Value) -> Result<Vec<u8>> {
    let text = |k: &str| obj[k].as_str().unwrap_or_default();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    let desc = response_message(api_version, kind).ok_or_else(|| {
        Error::internal(format!(
            "{kind} {api_version} has no protobuf declaration to answer with"
        ))
    })?;
    let Value::Object(fields) = obj else {
        return Err(Error::internal("a protobuf answer must be an object"));
    };
    let mut msg = DynamicMessage::new(desc);
    let rest = fill(&mut msg, fields, kind)?;
    let stray: Vec<&String> = rest
        .iter()
        .filter(|k| *k != "apiVersion" && *k != "kind")
        .collect();
    if !stray.is_empty() {
        tracing::warn!(%kind, fields = ?stray, "fields without a protobuf declaration are left out of the answer");
    }
    Ok(envelope(api_version, kind, msg.encode_to_vec()))
}

/// One protobuf watch frame: a 4-byte big-endian length, then a raw (unenveloped)
/// `WatchEvent{type, object: RawExtension{raw: the object's envelope}}`, as upstream's
/// `RawSerializer` and `LengthDelimitedFramer` write it.
pub fn watch_frame(event_type: &str, obj: &Value) -> Result<Bytes> {
    let desc = POOL
        .get_message_by_name(&format!("{META}.WatchEvent"))
        .expect("WatchEvent is declared");
    let raw_desc = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.RawExtension")
        .expect("RawExtension is declared");
    let mut raw = DynamicMessage::new(raw_desc);
    raw.set_field_by_number(1, Pb::Bytes(encode(obj)?.into()));
    let mut ev = DynamicMessage::new(desc);
    ev.set_field_by_number(1, Pb::String(event_type.to_string()));
    ev.set_field_by_number(2, Pb::Message(raw));
    let body = ev.encode_to_vec();
    let len = u32::try_from(body.len()).map_err(Error::internal)?;
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// A protobuf answer (object, list or Status) back as JSON, as a client decodes it.
pub fn decode_answer(body: &[u8]) -> Result<Value> {
    super::protobuf::decode_as(body, response_message)
}

/// A protobuf watch stream's events: (type, object) per length-prefixed frame.
pub fn decode_watch_stream(mut stream: &[u8]) -> Result<Vec<(String, Value)>> {
    let desc = POOL
        .get_message_by_name(&format!("{META}.WatchEvent"))
        .expect("WatchEvent is declared");
    let bad = |what: &str| Error::BadRequest(format!("watch stream: {what}"));
    let mut out = Vec::new();
    while !stream.is_empty() {
        let (len, rest) = stream
            .split_at_checked(4)
            .ok_or_else(|| bad("cut length"))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (frame, rest) = rest.split_at_checked(len).ok_or_else(|| bad("cut frame"))?;
        let ev = DynamicMessage::decode(desc.clone(), frame).map_err(|e| bad(&e.to_string()))?;
        let kind = ev
            .get_field_by_number(1)
            .and_then(|v| v.as_str().map(String::from));
        let raw = ev
            .get_field_by_number(2)
            .and_then(|v| v.as_message()?.get_field_by_number(1)?.as_bytes().cloned())
            .ok_or_else(|| bad("event without an object"))?;
        out.push((kind.unwrap_or_default(), decode_answer(&raw)?));
        stream = rest;
    }
    Ok(out)
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .expect("runtime.Unknown is declared");
    let type_meta = POOL
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.TypeMeta")
        .expect("runtime.TypeMeta is declared");
    let mut tm = DynamicMessage::new(type_meta);
    tm.set_field_by_number(1, Pb::String(api_version.to_string()));
    tm.set_field_by_number(2, Pb::String(kind.to_string()));
    let mut env = DynamicMessage::new(unknown);
    env.set_field_by_number(1, Pb::Message(tm));
    env.set_field_by_number(2, Pb::Bytes(raw.into()));
    // Go writes both (non-pointer proto2 strings), empty: no encoding, the type is implied.
    env.set_field_by_number(3, Pb::String(String::new()));
    env.set_field_by_number(4, Pb::String(String::new()));
    [MAGIC, &env.encode_to_vec()[..]].concat()
}

/// Sets `msg`'s fields from `obj`, inline structs included; returns the keys left over.
fn fill(msg: &mut DynamicMessage, obj: &Map<String, Value>, path: &str) -> Result<Vec<String>> {
    let desc = msg.descriptor();
    let mut rest = Vec::new();
    for (k, v) in obj {
        match desc
            .fields()
            .find(|f| f.json_name() == k && f.json_name() != INLINE)
        {
            Some(f) => {
                let at = format!("{path}.{k}");
                if let Some(pb) = field_value(&f, v, &at)? {
                    msg.try_set_field(&f, pb)
                        .map_err(|e| Error::internal(format!("{at}: {e}")))?;
                }
            }
            None => rest.push(k.clone()),
        }
    }
    for f in desc.fields().filter(|f| f.json_name() == INLINE) {
        let Kind::Message(inner) = f.kind() else {
            continue;
        };
        let left: Map<String, Value> = rest.iter().map(|k| (k.clone(), obj[k].clone())).collect();
        let mut sub = DynamicMessage::new(inner);
        let unused = fill(&mut sub, &left, path)?;
        if unused.len() < rest.len() {
            msg.set_field(&f, Pb::Message(sub));
            rest = unused;
        }
    }
    Ok(rest)
}

/// A JSON value as the value of field `f` (a list, a map or a single value); `None` for null.
fn field_value(f: &FieldDescriptor, v: &Value, path: &str) -> Result<Option<Pb>> {
    if v.is_null() {
        return Ok(None);
    }
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return Err(mismatch(path, "a map"));
        };
        let Value::Object(o) = v else {
            return Err(mismatch(path, "an object"));
        };
        let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let mut out = std::collections::HashMap::new();
        for (k, item) in o {
            let at = format!("{path}[{k}]");
            let key = match kf.kind() {
                Kind::String => MapKey::String(k.clone()),
                Kind::Int32 => MapKey::I32(k.parse().map_err(|_| mismatch(&at, "an int32 key"))?),
                Kind::Int64 => MapKey::I64(k.parse().map_err(|_| mismatch(&at, "an int64 key"))?),
                Kind::Bool => MapKey::Bool(k == "true"),
                _ => return Err(mismatch(&at, "a string key")),
            };
            if let Some(pb) = single(&vf.kind(), item, &at)? {
                out.insert(key, pb);
            }
        }
        return Ok(Some(Pb::Map(out)));
    }
    if f.is_list() {
        let Value::Array(items) = v else {
            return Err(mismatch(path, "an array"));
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            out.push(single(&f.kind(), item, &at)?.unwrap_or_else(|| Pb::default_value(&f.kind())));
        }
        return Ok(Some(Pb::List(out)));
    }
    single(&f.kind(), v, path)
}

fn mismatch(path: &str, want: &str) -> Error {
    Error::internal(format!("{path}: expected {want} to encode as protobuf"))
}

fn int(v: &Value, path: &str) -> Result<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().and_then(|u| i64::try_from(u).ok()))
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        .ok_or_else(|| mismatch(path, "an integer"))
}

/// One non-repeated value of `kind`; `None` for what the decoder reads as absent.
fn single(kind: &Kind, v: &Value, path: &str) -> Result<Option<Pb>> {
    if v.is_null() {
        return Ok(None);
    }
    let narrow = |n: i64| i32::try_from(n).map_err(|_| mismatch(path, "an int32"));
    Ok(Some(match kind {
        Kind::Message(m) => return message(m, v, path).map(|o| o.map(Pb::Message)),
        Kind::String => Pb::String(
            v.as_str()
                .ok_or_else(|| mismatch(path, "a string"))?
                .to_string(),
        ),
        Kind::Bool => Pb::Bool(v.as_bool().ok_or_else(|| mismatch(path, "a bool"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Pb::I32(narrow(int(v, path)?)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Pb::I64(int(v, path)?),
        Kind::Uint32 | Kind::Fixed32 => {
            Pb::U32(u32::try_from(int(v, path)?).map_err(|_| mismatch(path, "a uint32"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Pb::U64(u64::try_from(int(v, path)?).map_err(|_| mismatch(path, "a uint64"))?)
        }
        Kind::Double => Pb::F64(v.as_f64().ok_or_else(|| mismatch(path, "a number"))?),
        Kind::Float => Pb::F32(v.as_f64().ok_or_else(|| mismatch(path, "a number"))? as f32),
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| mismatch(path, "base64"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| mismatch(path, "base64"))?;
            Pb::Bytes(b.into())
        }
        Kind::Enum(_) => Pb::EnumNumber(narrow(int(v, path)?)?),
    }))
}

/// A message from its JSON form, with the Kubernetes special types.
fn message(d: &MessageDescriptor, v: &Value, path: &str) -> Result<Option<DynamicMessage>> {
    let mut m = DynamicMessage::new(d.clone());
    match d.full_name().strip_prefix("k8s.io.apimachinery.pkg.") {
        Some("apis.meta.v1.Time") | Some("apis.meta.v1.MicroTime") => {
            let s = v
                .as_str()
                .ok_or_else(|| mismatch(path, "an RFC 3339 time"))?;
            let t =
                DateTime::parse_from_rfc3339(s).map_err(|_| mismatch(path, "an RFC 3339 time"))?;
            m.set_field_by_number(1, Pb::I64(t.timestamp()));
            let nanos = i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0);
            m.set_field_by_number(2, Pb::I32(nanos));
        }
        Some("apis.meta.v1.Duration") => {
            let s = v.as_str().ok_or_else(|| mismatch(path, "a duration"))?;
            let ns = parse_go_duration(s).ok_or_else(|| mismatch(path, "a Go duration"))?;
            m.set_field_by_number(1, Pb::I64(ns));
        }
        Some("api.resource.Quantity") => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(mismatch(path, "a quantity")),
            };
            m.set_field_by_number(1, Pb::String(s));
        }
        Some("util.intstr.IntOrString") => match v {
            Value::String(s) => {
                m.set_field_by_number(1, Pb::I64(1));
                m.set_field_by_number(3, Pb::String(s.clone()));
            }
            n => {
                m.set_field_by_number(1, Pb::I64(0));
                m.set_field_by_number(
                    2,
                    Pb::I32(i32::try_from(int(n, path)?).map_err(|_| mismatch(path, "an int32"))?),
                );
            }
        },
        Some("runtime.RawExtension") | Some("apis.meta.v1.FieldsV1") => {
            let raw = serde_json::to_vec(v).map_err(Error::internal)?;
            m.set_field_by_number(1, Pb::Bytes(raw.into()));
        }
        _ => {
            let Value::Object(o) = v else {
                return Err(mismatch(path, "an object"));
            };
            // apiVersion/kind of a list's items: Go's protobuf messages carry no TypeMeta.
            let rest: Vec<String> = fill(&mut m, o, path)?
                .into_iter()
                .filter(|k| k != "apiVersion" && k != "kind")
                .collect();
            if !rest.is_empty() {
                tracing::warn!(%path, fields = ?rest, "fields without a protobuf declaration are left out of the answer");
            }
        }
    }
    Ok(Some(m))
}

/// A Go `time.Duration` string ("1h0m0s", "1.5s", "-2µs") in nanoseconds, exactly.
fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (whole, frac) = rest[..n].split_once('.').unwrap_or((&rest[..n], ""));
        let unit_end = rest[n..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .map_or(rest.len(), |i| n + i);
        let scale: i128 = match &rest[n..unit_end] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let frac_part = if frac.is_empty() {
            0
        } else {
            let digits = u32::try_from(frac.len()).ok().filter(|d| *d <= 30)?;
            frac.parse::<i128>().ok()? * scale / 10i128.pow(digits)
        };
        total += whole * scale + frac_part;
        rest = &rest[unit_end..];
    }
    i64::try_from(if neg { -total } else { total }).ok()
}

#[cfg(test)]
#[path = "protobuf_encode_tests.rs"]
mod tests;
