//! The volumes' and the meta group's leaders and members' progress, polled in the background
//! (GetVolume per volume, GroupStatus of the meta group per node), so the injector never waits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1::ReplicaState;
use cairn_storaged::raft::{ChannelCache, META_GROUP};
use cairn_storaged::testkit::ProcCluster;
use cairn_storaged::tls::Identity;

/// How often a group is asked about.
const POLL: Duration = Duration::from_millis(50);
/// How many questions about one group may be unanswered at once.
const IN_FLIGHT: usize = 4;
/// How long one GetVolume may take (it asks every member, up to 400 ms for one that is down).
const DEADLINE: Duration = Duration::from_secs(2);
/// How long one node may take to answer GroupStatus of the meta group.
const STATUS_DEADLINE: Duration = Duration::from_millis(400);
/// The key of the meta group's answers, beside the volumes' names (`chaos-N`).
pub const META: &str = "meta";

/// One answer about a group: when it was asked, the leader it named (0: none), the leader's
/// last log index (at least the group's commit index) and, for each member that answered its
/// own status while that leader led, the leader's matched index for it.
#[derive(Clone, Debug)]
pub struct View {
    pub asked: Instant,
    pub leader: u64,
    pub last: u64,
    pub answered: BTreeMap<u64, u64>,
}

/// The latest answer for each group (volume names, and `META`), kept up to date until dropped.
pub struct Views {
    latest: Arc<Mutex<BTreeMap<String, View>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Views {
    /// Starts asking `cluster` about each of `volumes` and about the meta group: a new
    /// question every `POLL`, up to `IN_FLIGHT` at once per group, so an answer asked after a
    /// fault comes about one answer's time later even while slow answers are outstanding.
    pub fn start(cluster: &ProcCluster, volumes: &[String]) -> Views {
        let latest: Arc<Mutex<BTreeMap<String, View>>> = Arc::default();
        let client: VolumeClient = cluster.client().with_deadline(DEADLINE);
        let mut tasks: Vec<_> = volumes
            .iter()
            .map(|volume| {
                let (client, volume) = (client.clone(), volume.clone());
                poll(latest.clone(), volume.clone(), move || {
                    let (client, volume) = (client.clone(), volume.clone());
                    async move {
                        let asked = Instant::now();
                        let v = client.get_volume(&volume).await.ok()?;
                        Some(volume_view(asked, &v))
                    }
                })
            })
            .collect();
        let addrs = cluster.node_addrs();
        if let Some(&asker) = addrs.keys().next() {
            // RaftService answers node identities only: ask as one of the nodes.
            let channels = ChannelCache::new(cluster.security_for(&Identity::Node(asker)));
            tasks.push(poll(latest.clone(), META.to_string(), move || {
                let (channels, addrs) = (channels.clone(), addrs.clone());
                async move { Some(meta_view(&channels, &addrs).await) }
            }));
        }
        Views { latest, tasks }
    }

    /// The latest answers.
    pub fn now(&self) -> BTreeMap<String, View> {
        self.latest.lock().expect("views lock").clone()
    }
}

/// A task that asks `ask` about `group` every `POLL`, up to `IN_FLIGHT` at once, and keeps
/// the answers in `latest`.
fn poll<F, Fut>(
    latest: Arc<Mutex<BTreeMap<String, View>>>,
    group: String,
    ask: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<View>> + Send + 'static,
{
    tokio::spawn(async move {
        // Dropped with this task (`Views::drop` aborts it): so are the questions.
        let mut asking = tokio::task::JoinSet::new();
        loop {
            while asking.len() >= IN_FLIGHT {
                asking.join_next().await;
            }
            let (latest, group, question) = (latest.clone(), group.clone(), ask());
            asking.spawn(async move {
                if let Some(view) = question.await {
                    keep(&latest, &group, view);
                }
            });
            tokio::time::sleep(POLL).await;
            while asking.try_join_next().is_some() {}
        }
    })
}

/// What a GetVolume answer asked at `asked` says: a member answered its status if the
/// leader's view shows it leading, following or lagging (not unreachable, failed or a
/// learner being rebuilt).
fn volume_view(asked: Instant, v: &cairn_proto::cairn::v1::Volume) -> View {
    let answered = match v.leader_node_id {
        0 => BTreeMap::new(),
        _ => v
            .members
            .iter()
            .filter(|m| {
                matches!(
                    m.state(),
                    ReplicaState::Leader | ReplicaState::Follower | ReplicaState::Lagging
                )
            })
            .map(|m| (m.node_id, m.matched_index))
            .collect(),
    };
    let last = v
        .members
        .iter()
        .find(|m| m.node_id == v.leader_node_id)
        .map_or(0, |m| m.matched_index);
    View {
        asked,
        leader: v.leader_node_id,
        last,
        answered,
    }
}

/// Every node's GroupStatus of the meta group, asked at once: the leader is the node that
/// says it leads (the highest term if two do); the members that answered hosting the group
/// and naming that leader, with the leader's matched index for each.
async fn meta_view(channels: &ChannelCache, addrs: &BTreeMap<u64, String>) -> View {
    let asked = Instant::now();
    let asks = addrs.iter().map(|(&id, addr)| async move {
        let s = cairn_storaged::node::status::ask(channels, addr, META_GROUP, STATUS_DEADLINE);
        (id, s.await)
    });
    let answers: Vec<_> = futures::future::join_all(asks).await;
    let leading = answers
        .iter()
        .filter_map(|(id, s)| {
            s.as_ref()
                .filter(|s| s.leader == Some(*id))
                .map(|s| (*id, s))
        })
        .max_by_key(|(_, s)| s.term);
    let Some((leader, ls)) = leading else {
        return View {
            asked,
            leader: 0,
            last: 0,
            answered: BTreeMap::new(),
        };
    };
    let last = ls.last_log_index.unwrap_or(0);
    let answered = answers
        .iter()
        .filter(|(_, s)| {
            s.as_ref()
                .is_some_and(|s| s.hosted && s.leader == Some(leader))
        })
        .map(|(id, _)| {
            let matched = match *id == leader {
                true => last,
                false => ls.matched.get(id).copied().flatten().unwrap_or(0),
            };
            (*id, matched)
        })
        .collect();
    View {
        asked,
        leader,
        last,
        answered,
    }
}

/// Keeps `view` as `group`'s latest unless an answer asked later is kept already.
fn keep(latest: &Mutex<BTreeMap<String, View>>, group: &str, view: View) {
    let mut latest = latest.lock().expect("views lock");
    if latest.get(group).is_none_or(|old| old.asked < view.asked) {
        latest.insert(group.to_string(), view);
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

/// The leader `views` name for `volume`, if they name one in an answer asked after the last
/// time a fault started or healed on that node (`touched`): a fault elsewhere does not move
/// leadership away from it.
pub fn leader(
    views: &BTreeMap<String, View>,
    volume: &str,
    touched: impl Fn(u64) -> Option<Instant>,
) -> Option<u64> {
    let v = views.get(volume)?;
    (v.leader != 0 && touched(v.leader).is_none_or(|t| v.asked > t)).then_some(v.leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(asked: Instant, leader: u64) -> View {
        View {
            asked,
            leader,
            last: 0,
            answered: BTreeMap::new(),
        }
    }

    #[test]
    fn a_leader_is_named_only_from_an_answer_newer_than_its_last_fault() {
        let t0 = Instant::now();
        let (before, after) = (t0, t0 + Duration::from_millis(200));
        let broke = t0 + Duration::from_millis(100);
        let fresh: BTreeMap<String, View> = [("a".to_string(), view(after, 1))].into();
        let stale: BTreeMap<String, View> = [("a".to_string(), view(before, 1))].into();
        let leader_1_broke = |id: u64| (id == 1).then_some(broke);
        assert_eq!(leader(&fresh, "a", leader_1_broke), Some(1));
        assert_eq!(leader(&stale, "a", leader_1_broke), None);
        assert_eq!(leader(&stale, "a", |_| None), Some(1));
        assert_eq!(
            leader(&stale, "a", |id| (id == 2).then_some(broke)),
            Some(1),
            "a fault on another member leaves the answer good"
        );
        let leaderless: BTreeMap<String, View> = [("a".to_string(), view(after, 0))].into();
        assert_eq!(leader(&leaderless, "a", |_| None), None);
        // Questions overlap: an answer asked earlier that arrives later is not kept.
        let latest = Mutex::new(BTreeMap::new());
        keep(&latest, "a", view(after, 2));
        keep(&latest, "a", view(before, 1));
        assert_eq!(latest.lock().unwrap()["a"].leader, 2);
    }

    #[test]
    fn a_volume_answer_counts_members_that_answered_while_a_leader_led() {
        use cairn_proto::cairn::v1::{Replica, Volume};
        let member = |id: u64, state: ReplicaState, matched: u64| Replica {
            node_id: id,
            state: state as i32,
            matched_index: matched,
            ..Default::default()
        };
        let mut v = Volume {
            leader_node_id: 2,
            members: vec![
                member(1, ReplicaState::Lagging, 40),
                member(2, ReplicaState::Leader, 90),
                member(3, ReplicaState::Unreachable, 0),
            ],
            ..Default::default()
        };
        let t = Instant::now();
        let got = volume_view(t, &v);
        assert_eq!((got.leader, got.last), (2, 90));
        assert_eq!(got.answered, [(1, 40), (2, 90)].into());
        // No leader: every member that answered looks like a follower; none counts.
        v.leader_node_id = 0;
        v.members[1] = member(2, ReplicaState::Follower, 0);
        assert!(volume_view(t, &v).answered.is_empty());
    }
}
