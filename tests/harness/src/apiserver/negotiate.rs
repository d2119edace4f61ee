//! Content negotiation of answers as kube-apiserver does it: the Accept header's media ranges
//! in q order, and the first one this endpoint can serve decides JSON, Table or protobuf.
//!
//! Upstream (k8s.io/apiserver `handlers/negotiation`, goautoneg): clauses sorted by q (the
//! more specific first at equal q), each tried against JSON, YAML and protobuf in that order;
//! `as=Table` is served in JSON/YAML only, `stream=watch` by a type with a stream framing
//! (not YAML); an empty header means JSON; nothing acceptable is a 406. Custom resources
//! (and here any kind without protobuf declarations) leave protobuf out.

use crate::error::{Error, Result};

/// How an answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

/// What negotiation chose for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    /// The client asked for `as=Table` in the chosen media range.
    pub table: bool,
}

impl Negotiated {
    pub const JSON: Negotiated = Negotiated {
        format: Format::Json,
        table: false,
    };
}

pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// One media range of an Accept header.
#[derive(Debug)]
struct Clause {
    kind: String,
    sub: String,
    q: f64,
    params: Vec<(String, String)>,
}

impl Clause {
    fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// The clauses of an Accept header, best first (goautoneg's `ParseAccept`).
fn parse(header: &str) -> Vec<Clause> {
    let mut out: Vec<Clause> = Vec::new();
    for part in header.split(',') {
        let mut pieces = part.trim().split(';');
        let range = pieces.next().unwrap_or_default();
        let (kind, sub) = match range.split_once('/') {
            Some((t, s)) if !s.contains('/') => (t.trim(), s.trim()),
            None if range.trim() == "*" => ("*", "*"),
            _ => continue,
        };
        let mut c = Clause {
            kind: kind.to_string(),
            sub: sub.to_string(),
            q: 1.0,
            params: Vec::new(),
        };
        for p in pieces {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let k = k.trim();
            if k == "q" {
                c.q = v.trim().parse().unwrap_or(0.0);
            } else {
                c.params.push((k.to_string(), v.trim().to_string()));
            }
        }
        out.push(c);
    }
    // Stable: at equal q and specificity the client's order stands.
    let specificity = |c: &Clause| u8::from(c.kind != "*") + u8::from(c.sub != "*");
    out.sort_by(|a, b| {
        b.q.partial_cmp(&a.q)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(specificity(b).cmp(&specificity(a)))
    });
    out
}

/// The media types upstream serves, in its order: (subtype, has a stream framing).
const OFFERED: [(&str, bool); 3] = [
    ("json", true),
    ("yaml", false),
    ("vnd.kubernetes.protobuf", true),
];

/// Chooses the answer's format for `accept`. `protobuf`: the kind has protobuf declarations
/// (built-in); `watch`: the answer is a watch stream.
pub fn negotiate(accept: &str, protobuf: bool, watch: bool) -> Result<Negotiated> {
    if accept.trim().is_empty() {
        return Ok(Negotiated::JSON);
    }
    for c in parse(accept) {
        for (sub, streams) in OFFERED {
            let is_pb = sub == "vnd.kubernetes.protobuf";
            let matches = (c.kind == "application" && (c.sub == sub || c.sub == "*"))
                || (c.kind == "*" && c.sub == "*");
            if !matches || (is_pb && !protobuf) {
                continue;
            }
            if c.param("stream")
                .is_some_and(|s| !s.is_empty() && (!streams || s != "watch"))
            {
                continue;
            }
            // A conversion (`as=Table`, `as=PartialObjectMetadata`) is served in JSON only:
            // upstream has no protobuf Table, and the harness converts to nothing else.
            let table = match c.param("as") {
                None => false,
                Some(_) if is_pb => continue,
                Some(kind) => kind == "Table",
            };
            if watch && !streams {
                continue;
            }
            let format = if is_pb {
                Format::Protobuf
            } else {
                Format::Json
            };
            return Ok(Negotiated { format, table });
        }
    }
    Err(not_acceptable(watch))
}

/// Upstream's 406: every media type the server has, stream variants for a watch.
pub fn not_acceptable(watch: bool) -> Error {
    Error::NotAcceptable(if watch {
        format!("application/json;stream=watch, {PROTOBUF};stream=watch")
    } else {
        format!("application/json, application/yaml, {PROTOBUF}")
    })
}

/// The format an error's `Status` is written in: the request's negotiation without its
/// endpoint's restrictions (upstream's `ErrorNegotiated`), JSON when that fails.
pub fn for_error(accept: &str) -> Format {
    negotiate(accept, true, false)
        .ok()
        .filter(|n| !n.table)
        .map_or(Format::Json, |n| n.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &str, pb: bool) -> Result<Negotiated> {
        negotiate(accept, pb, false)
    }

    const PB: Negotiated = Negotiated {
        format: Format::Protobuf,
        table: false,
    };

    #[test]
    fn protobuf_only_first_or_preferred_by_q() {
        assert_eq!(pick(PROTOBUF, true).unwrap(), PB);
        // client-go's default: protobuf first, JSON as the fallback.
        assert_eq!(
            pick(&format!("{PROTOBUF},application/json"), true).unwrap(),
            PB
        );
        assert_eq!(
            pick(&format!("application/json;q=0.5, {PROTOBUF}"), true).unwrap(),
            PB
        );
        assert_eq!(
            pick(&format!("{PROTOBUF};q=0.5, application/json"), true).unwrap(),
            Negotiated::JSON
        );
        assert_eq!(pick("", true).unwrap(), Negotiated::JSON);
        assert_eq!(pick("*/*", true).unwrap(), Negotiated::JSON);
        assert_eq!(pick("application/*", true).unwrap(), Negotiated::JSON);
    }

    #[test]
    fn kinds_without_protobuf_fall_back_or_406() {
        assert_eq!(
            pick(&format!("{PROTOBUF},application/json"), false).unwrap(),
            Negotiated::JSON
        );
        let e = pick(PROTOBUF, false).unwrap_err();
        assert_eq!(e.code(), 406);
        assert_eq!(
            e.to_string(),
            "only the following media types are accepted: application/json, application/yaml, application/vnd.kubernetes.protobuf"
        );
        assert_eq!(pick("text/html", true).unwrap_err().code(), 406);
    }

    #[test]
    fn tables_are_json_only() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        assert!(pick(kubectl, true).unwrap().table);
        let pb_table = format!("{PROTOBUF};as=Table;v=v1;g=meta.k8s.io, application/json");
        assert_eq!(pick(&pb_table, true).unwrap(), Negotiated::JSON);
        let only = format!("{PROTOBUF};as=Table;v=v1;g=meta.k8s.io");
        assert_eq!(pick(&only, true).unwrap_err().code(), 406);
        assert_eq!(for_error(&only), Format::Json);
        assert_eq!(for_error(PROTOBUF), Format::Protobuf);
    }

    #[test]
    fn watch_streams() {
        let w = format!("{PROTOBUF};stream=watch");
        assert_eq!(negotiate(&w, true, true).unwrap(), PB);
        assert_eq!(
            negotiate("application/yaml", true, true)
                .unwrap_err()
                .to_string(),
            "only the following media types are accepted: application/json;stream=watch, application/vnd.kubernetes.protobuf;stream=watch"
        );
        assert_eq!(
            negotiate(
                "application/yaml;stream=watch, application/json",
                true,
                true
            )
            .unwrap(),
            Negotiated::JSON
        );
    }
}
