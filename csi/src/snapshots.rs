//! CSI snapshots and volume content sources on storaged's snapshot API: a snapshot id is
//! a storaged snapshot name; `ready_to_use` turns true once storaged has copied it.

use cairn_proto::cairn::v1 as pb;
use cairn_proto::csi::v1 as csi;
use tonic::Code;

use crate::controller::{ControllerService, decode_token, encode_token};
use crate::error::{CsiError, Result};
use crate::params::volume_name;
use crate::rpc::require;

fn snapshot(s: &pb::Snapshot) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: s.size_bytes as i64,
        snapshot_id: s.name.clone(),
        source_volume_id: s.source_volume.clone(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_unix,
            nanos: 0,
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
    }
}

/// The storaged content-source fields `(source_snapshot, source_volume)` of a request.
pub fn source_fields(src: Option<&csi::VolumeContentSource>) -> Result<(String, String)> {
    use csi::volume_content_source::Type;
    match src.and_then(|s| s.r#type.as_ref()) {
        None if src.is_some() => Err(CsiError::InvalidArgument(
            "volume_content_source has neither a snapshot nor a volume".into(),
        )),
        None => Ok((String::new(), String::new())),
        Some(Type::Snapshot(s)) => {
            require(&s.snapshot_id, "volume_content_source.snapshot.snapshot_id")?;
            Ok((s.snapshot_id.clone(), String::new()))
        }
        Some(Type::Volume(v)) => {
            require(&v.volume_id, "volume_content_source.volume.volume_id")?;
            Ok((String::new(), v.volume_id.clone()))
        }
    }
}

/// The content source a volume was made from, as CSI reports it.
pub fn content_source(v: &pb::Volume) -> Option<csi::VolumeContentSource> {
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
    let t = match v.source.split_once(':')? {
        ("snapshot", id) => Type::Snapshot(SnapshotSource {
            snapshot_id: id.to_string(),
        }),
        ("volume", id) => Type::Volume(VolumeSource {
            volume_id: id.to_string(),
        }),
        _ => return None,
    };
    Some(csi::VolumeContentSource { r#type: Some(t) })
}

impl ControllerService {
    pub(crate) async fn create_snapshot_impl(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse> {
        require(&req.name, "name")?;
        require(&req.source_volume_id, "source_volume_id")?;
        let name = volume_name(&req.name);
        let _guard = self.limiter.try_acquire(&format!("snapshot/{name}"))?;
        let s = self
            .backend
            .create_snapshot(name.as_str(), &req.source_volume_id)
            .await
            .map_err(|s| CsiError::storaged(format!("create snapshot {name}"), s))?;
        Ok(csi::CreateSnapshotResponse {
            snapshot: Some(snapshot(&s)),
        })
    }

    pub(crate) async fn delete_snapshot_impl(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse> {
        require(&req.snapshot_id, "snapshot_id")?;
        let _guard = self
            .limiter
            .try_acquire(&format!("snapshot/{}", req.snapshot_id))?;
        match self.backend.delete_snapshot(&req.snapshot_id).await {
            // Not there (never made, or already deleted): done, as the spec asks.
            Err(s) if matches!(s.code(), Code::NotFound | Code::InvalidArgument) => {
                Ok(csi::DeleteSnapshotResponse {})
            }
            Err(s) => Err(CsiError::storaged(
                format!("delete snapshot {}", req.snapshot_id),
                s,
            )),
            Ok(()) => Ok(csi::DeleteSnapshotResponse {}),
        }
    }

    /// With `max_entries` 0 every remaining snapshot is returned.
    pub(crate) async fn list_snapshots_impl(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse> {
        if req.max_entries < 0 {
            return Err(CsiError::InvalidArgument(
                "max_entries must not be negative".into(),
            ));
        }
        let mut token = decode_token(&req.starting_token)?;
        let mut entries = Vec::new();
        loop {
            let want = if req.max_entries > 0 {
                req.max_entries as u32 - entries.len() as u32
            } else {
                1000
            };
            let page = self
                .backend
                .list_snapshots(pb::ListSnapshotsRequest {
                    page_size: want,
                    page_token: token,
                    name: req.snapshot_id.clone(),
                    source_volume: req.source_volume_id.clone(),
                })
                .await
                .map_err(|s| match s.code() {
                    Code::InvalidArgument => CsiError::Aborted(format!(
                        "starting_token is no longer valid: {}",
                        s.message()
                    )),
                    _ => CsiError::storaged("list snapshots", s),
                })?;
            entries.extend(
                page.snapshots
                    .iter()
                    .map(|s| csi::list_snapshots_response::Entry {
                        snapshot: Some(snapshot(s)),
                    }),
            );
            token = page.next_page_token;
            let full = req.max_entries > 0 && entries.len() >= req.max_entries as usize;
            if token.is_empty() || full {
                break;
            }
        }
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token: encode_token(&token),
        })
    }

    pub(crate) async fn get_snapshot_impl(
        &self,
        req: csi::GetSnapshotRequest,
    ) -> Result<csi::GetSnapshotResponse> {
        require(&req.snapshot_id, "snapshot_id")?;
        let page = self
            .backend
            .list_snapshots(pb::ListSnapshotsRequest {
                page_size: 1,
                page_token: String::new(),
                name: req.snapshot_id.clone(),
                source_volume: String::new(),
            })
            .await
            .map_err(|s| CsiError::storaged("get snapshot", s))?;
        match page.snapshots.first() {
            Some(s) => Ok(csi::GetSnapshotResponse {
                snapshot: Some(snapshot(s)),
            }),
            None => Err(CsiError::NotFound(format!(
                "snapshot {} not found",
                req.snapshot_id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};

    #[test]
    fn content_sources_round_trip_through_storaged_fields() {
        let snap = csi::VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: "s1".into(),
            })),
        };
        assert_eq!(
            source_fields(Some(&snap)).unwrap(),
            ("s1".to_string(), String::new())
        );
        let v = pb::Volume {
            source: "snapshot:s1".into(),
            ..Default::default()
        };
        assert_eq!(content_source(&v), Some(snap));
        let vol = csi::VolumeContentSource {
            r#type: Some(Type::Volume(VolumeSource {
                volume_id: "v1".into(),
            })),
        };
        assert_eq!(
            source_fields(Some(&vol)).unwrap(),
            (String::new(), "v1".to_string())
        );
        assert_eq!(
            content_source(&pb::Volume {
                source: "volume:v1".into(),
                ..Default::default()
            }),
            Some(vol)
        );
        assert_eq!(content_source(&pb::Volume::default()), None);
        let empty = csi::VolumeContentSource { r#type: None };
        assert!(matches!(
            source_fields(Some(&empty)),
            Err(CsiError::InvalidArgument(_))
        ));
        assert_eq!(source_fields(None).unwrap(), (String::new(), String::new()));
    }
}
