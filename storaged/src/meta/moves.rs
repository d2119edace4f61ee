//! Replica moves in the catalogue: start, finish and abort a member replacement, and a
//! node's cordon and drain flags (kept in reserved labels, so older catalogues load).

use super::catalog::{Catalog, CommandError, MetaReply, NodeRecord, Repair, not_found};
use super::placement::OVERCOMMIT_LABEL;

/// On a node: present while no new replicas may be placed there.
const CORDONED_LABEL: &str = "cairn.dev/cordoned";
/// On a node: present while its replicas are being moved off.
const DRAINING_LABEL: &str = "cairn.dev/draining";

impl NodeRecord {
    pub fn cordoned(&self) -> bool {
        self.labels.contains_key(CORDONED_LABEL)
    }

    pub fn draining(&self) -> bool {
        self.labels.contains_key(DRAINING_LABEL)
    }

    /// The labels an operator gave the node, without the reserved ones.
    pub fn user_labels(&self) -> impl Iterator<Item = (&String, &String)> {
        self.labels.iter().filter(|(k, _)| {
            ![CORDONED_LABEL, DRAINING_LABEL, OVERCOMMIT_LABEL].contains(&k.as_str())
        })
    }

    /// Takes the cordon and drain flags of `old` (a re-registration keeps them).
    pub fn keep_schedule(&mut self, old: &NodeRecord) {
        self.set_schedule(old.cordoned(), old.draining());
    }

    fn set_schedule(&mut self, cordoned: bool, draining: bool) {
        for (key, on) in [(CORDONED_LABEL, cordoned), (DRAINING_LABEL, draining)] {
            if on {
                self.labels.insert(key.to_string(), "true".to_string());
            } else {
                self.labels.remove(key);
            }
        }
    }
}

fn precondition(msg: String) -> CommandError {
    CommandError::FailedPrecondition(msg)
}

impl Catalog {
    /// Replacements in flight whose new member is `node`.
    pub fn repairs_to(&self, node: u64) -> usize {
        self.volumes
            .values()
            .filter(|v| v.repair.is_some_and(|r| r.to == node))
            .count()
    }

    pub(super) fn start_repair(
        &mut self,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<MetaReply, CommandError> {
        if !self.nodes.contains_key(&to) {
            return Err(not_found("node", &to.to_string()));
        }
        let Some(v) = self.volumes.get_mut(name) else {
            return Err(not_found("volume", name));
        };
        let want = Repair { from, to };
        match v.repair {
            Some(r) if r == want => return Ok(MetaReply::Volume(v.clone())),
            Some(r) => {
                return Err(precondition(format!(
                    "volume `{name}` is already replacing node {} by node {}",
                    r.from, r.to
                )));
            }
            None => {}
        }
        if !v.members.contains(&from) {
            return Err(precondition(format!(
                "node {from} holds no replica of volume `{name}`"
            )));
        }
        if v.members.contains(&to) {
            return Err(precondition(format!(
                "node {to} already holds a replica of volume `{name}`"
            )));
        }
        v.members.push(to);
        v.repair = Some(want);
        Ok(MetaReply::Volume(v.clone()))
    }

    pub(super) fn finish_repair(
        &mut self,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<MetaReply, CommandError> {
        self.end_repair(name, Repair { from, to }, from)
    }

    pub(super) fn abort_repair(
        &mut self,
        name: &str,
        from: u64,
        to: u64,
    ) -> Result<MetaReply, CommandError> {
        self.end_repair(name, Repair { from, to }, to)
    }

    /// Ends `repair` of `name` by dropping member `gone` (`from` when it finished, `to` when
    /// aborted); idempotent: once the record is cleared and `gone` is out, it answers as is.
    fn end_repair(
        &mut self,
        name: &str,
        repair: Repair,
        gone: u64,
    ) -> Result<MetaReply, CommandError> {
        let Some(v) = self.volumes.get_mut(name) else {
            return Err(not_found("volume", name));
        };
        // Already ended: the record is cleared, `gone` is out, and a finished repair left `to` in.
        let to_settled = gone == repair.to || v.members.contains(&repair.to);
        if v.repair.is_none() && !v.members.contains(&gone) && to_settled {
            return Ok(MetaReply::Volume(v.clone()));
        }
        if v.repair != Some(repair) {
            return Err(precondition(format!(
                "volume `{name}` is not replacing node {} by node {}",
                repair.from, repair.to
            )));
        }
        v.members.retain(|m| *m != gone);
        v.repair = None;
        Ok(MetaReply::Volume(v.clone()))
    }

    pub(super) fn set_schedule(
        &mut self,
        id: u64,
        cordoned: bool,
        draining: bool,
    ) -> Result<MetaReply, CommandError> {
        let Some(n) = self.nodes.get_mut(&id) else {
            return Err(not_found("node", &id.to_string()));
        };
        n.set_schedule(cordoned || draining, draining);
        Ok(MetaReply::Node(n.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::meta::catalog::{MetaCommand, NodeRole, VolumeKind, VolumeRecord, VolumeState};

    fn cat() -> Catalog {
        let mut c = Catalog::default();
        for id in 1..=4 {
            c.nodes.insert(
                id,
                NodeRecord {
                    id,
                    name: format!("node-{id}"),
                    addr: String::new(),
                    labels: BTreeMap::new(),
                    capacity_bytes: 1 << 30,
                    role: NodeRole::Voter,
                },
            );
        }
        c.volumes.insert(
            "v".into(),
            VolumeRecord {
                id: 1,
                name: "v".into(),
                size: 1 << 20,
                replicas: 3,
                kind: VolumeKind::Replicated,
                members: vec![1, 2, 3],
                attachments: vec![],
                labels: BTreeMap::new(),
                created_unix: 0,
                origin: None,
                state: VolumeState::Ready,
                generation: 0,
                repair: None,
            },
        );
        c
    }

    fn cmd(c: &mut Catalog, m: MetaCommand) -> Result<MetaReply, CommandError> {
        c.apply(m)
    }

    #[test]
    fn a_replacement_starts_once_and_finishes_or_aborts_idempotently() {
        let mut c = cat();
        let start = |from, to| MetaCommand::StartRepair {
            name: "v".into(),
            from,
            to,
        };
        cmd(&mut c, start(3, 4)).unwrap();
        cmd(&mut c, start(3, 4)).unwrap();
        assert_eq!(c.volumes["v"].members, vec![1, 2, 3, 4]);
        assert_eq!(c.allocated(4), 1 << 20, "the target's space is reserved");
        assert!(matches!(
            cmd(&mut c, start(2, 4)),
            Err(CommandError::FailedPrecondition(_))
        ));
        let finish = MetaCommand::FinishRepair {
            name: "v".into(),
            from: 3,
            to: 4,
        };
        cmd(&mut c, finish.clone()).unwrap();
        cmd(&mut c, finish).unwrap();
        assert_eq!(c.volumes["v"].members, vec![1, 2, 4]);
        assert_eq!(c.volumes["v"].repair, None);
        assert!(cmd(&mut c, MetaCommand::RemoveNode { id: 3 }).is_ok());

        let mut c = cat();
        cmd(&mut c, start(1, 4)).unwrap();
        let abort = MetaCommand::AbortRepair {
            name: "v".into(),
            from: 1,
            to: 4,
        };
        cmd(&mut c, abort.clone()).unwrap();
        cmd(&mut c, abort).unwrap();
        assert_eq!(c.volumes["v"].members, vec![1, 2, 3]);
        assert!(matches!(
            cmd(&mut c, start(4, 1)),
            Err(CommandError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn schedule_flags_survive_re_registration_and_stay_out_of_user_labels() {
        let mut c = cat();
        cmd(
            &mut c,
            MetaCommand::SetNodeSchedule {
                id: 2,
                cordoned: false,
                draining: true,
            },
        )
        .unwrap();
        let mut again = c.nodes[&2].clone();
        again.labels = [("zone".to_string(), "a".to_string())].into();
        cmd(&mut c, MetaCommand::RegisterNode(again)).unwrap();
        let n = &c.nodes[&2];
        assert!(n.cordoned() && n.draining(), "a drain implies a cordon");
        assert_eq!(n.user_labels().count(), 1);
        cmd(
            &mut c,
            MetaCommand::SetNodeSchedule {
                id: 2,
                cordoned: false,
                draining: false,
            },
        )
        .unwrap();
        assert!(!c.nodes[&2].cordoned());
        assert!(matches!(
            cmd(
                &mut c,
                MetaCommand::SetNodeSchedule {
                    id: 9,
                    cordoned: true,
                    draining: false
                }
            ),
            Err(CommandError::NotFound { .. })
        ));
    }
}
