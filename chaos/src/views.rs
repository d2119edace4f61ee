//! The volumes' leaders and caught-up replicas as the meta leader reports them, polled in the
//! background (a task per volume), so the overlap injector reads them without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1::ReplicaState;

/// How often a volume is asked about.
const POLL: Duration = Duration::from_millis(50);
/// How many questions about one volume may be unanswered at once.
const IN_FLIGHT: usize = 4;
/// How long one GetVolume may take (it asks every member, up to 400 ms for one that is down).
const DEADLINE: Duration = Duration::from_secs(2);

/// One answer for a volume: when it was asked, the leader it named (0: none) and which of its
/// members were a leader or a caught-up follower.
#[derive(Clone, Debug)]
pub struct View {
    pub asked: Instant,
    pub leader: u64,
    pub caught_up: BTreeSet<u64>,
}

/// The latest answer for each volume, kept up to date until dropped.
pub struct Views {
    latest: Arc<Mutex<BTreeMap<String, View>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Views {
    /// Starts asking `client` about each of `volumes`: a new question every `POLL`, up to
    /// `IN_FLIGHT` at once per volume, so an answer asked after a fault comes about one
    /// answer's time later even while slow answers (a member down) are outstanding.
    pub fn start(client: VolumeClient, volumes: &[String]) -> Views {
        let latest: Arc<Mutex<BTreeMap<String, View>>> = Arc::default();
        let client = client.with_deadline(DEADLINE);
        let tasks = volumes
            .iter()
            .map(|volume| {
                let (client, latest, volume) = (client.clone(), latest.clone(), volume.clone());
                tokio::spawn(async move {
                    // Dropped with this task (`Views::drop` aborts it): so are the questions.
                    let mut asking = tokio::task::JoinSet::new();
                    loop {
                        while asking.len() >= IN_FLIGHT {
                            asking.join_next().await;
                        }
                        let (client, latest, volume) =
                            (client.clone(), latest.clone(), volume.clone());
                        asking.spawn(async move {
                            let asked = Instant::now();
                            if let Ok(v) = client.get_volume(&volume).await {
                                keep(&latest, &volume, view_of(asked, &v));
                            }
                        });
                        tokio::time::sleep(POLL).await;
                        while asking.try_join_next().is_some() {}
                    }
                })
            })
            .collect();
        Views { latest, tasks }
    }

    /// The latest answers.
    pub fn now(&self) -> BTreeMap<String, View> {
        self.latest.lock().expect("views lock").clone()
    }
}

/// What an answer asked at `asked` says.
fn view_of(asked: Instant, v: &cairn_proto::cairn::v1::Volume) -> View {
    let caught_up = v
        .members
        .iter()
        .filter(|m| matches!(m.state(), ReplicaState::Leader | ReplicaState::Follower))
        .map(|m| m.node_id)
        .collect();
    View {
        asked,
        leader: v.leader_node_id,
        caught_up,
    }
}

/// Keeps `view` as `volume`'s latest unless an answer asked later is kept already.
fn keep(latest: &Mutex<BTreeMap<String, View>>, volume: &str, view: View) {
    let mut latest = latest.lock().expect("views lock");
    if latest.get(volume).is_none_or(|old| old.asked < view.asked) {
        latest.insert(volume.to_string(), view);
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

/// Which of `waiting` (node → when a fault last started or healed on it) are caught up: every
/// volume that `members` places on the node was answered, asked after that time, with the
/// node a leader or caught-up follower; a node with no replica needs any answer asked after it
/// (a meta leader answering).
pub fn caught_up(
    waiting: &BTreeMap<u64, Instant>,
    views: &BTreeMap<String, View>,
    members: &BTreeMap<String, Vec<u64>>,
) -> Vec<u64> {
    waiting
        .iter()
        .filter(|&(id, &since)| {
            let mut held = members.iter().filter(|(_, m)| m.contains(id)).peekable();
            match held.peek() {
                None => views.values().any(|v| v.asked > since),
                Some(_) => held.all(|(volume, _)| {
                    views
                        .get(volume)
                        .is_some_and(|v| v.asked > since && v.caught_up.contains(id))
                }),
            }
        })
        .map(|(&id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(asked: Instant, leader: u64, caught_up: &[u64]) -> View {
        View {
            asked,
            leader,
            caught_up: caught_up.iter().copied().collect(),
        }
    }

    #[test]
    fn only_answers_asked_after_a_nodes_last_fault_count() {
        let t0 = Instant::now();
        let (before, after) = (t0, t0 + Duration::from_millis(200));
        let broke = t0 + Duration::from_millis(100);
        let members: BTreeMap<String, Vec<u64>> = [
            ("a".to_string(), vec![1, 2, 3]),
            ("b".to_string(), vec![3, 4, 5]),
        ]
        .into();
        let waiting: BTreeMap<u64, Instant> = [(3, broke), (6, broke)].into();
        // Node 3 holds a and b: both must show it caught up, answered after it broke.
        let stale: BTreeMap<String, View> = [
            ("a".to_string(), view(before, 1, &[1, 2, 3])),
            ("b".to_string(), view(after, 4, &[3, 4, 5])),
        ]
        .into();
        assert_eq!(
            caught_up(&waiting, &stale, &members),
            [6],
            "a's answer is stale for node 3; node 6 holds no replica, b's answer is news"
        );
        let behind: BTreeMap<String, View> = [
            ("a".to_string(), view(after, 1, &[1, 2])),
            ("b".to_string(), view(after, 4, &[3, 4, 5])),
        ]
        .into();
        assert_eq!(caught_up(&waiting, &behind, &members), [6], "3 behind in a");
        let fresh: BTreeMap<String, View> = [
            ("a".to_string(), view(after, 1, &[1, 2, 3])),
            ("b".to_string(), view(after, 4, &[3, 4, 5])),
        ]
        .into();
        assert_eq!(caught_up(&waiting, &fresh, &members), [3, 6]);
        assert!(
            caught_up(&waiting, &BTreeMap::new(), &members).is_empty(),
            "no answer at all: no meta leader"
        );
        // A leader is named from an answer asked after its own last fault only.
        let leader_1_broke = |id: u64| (id == 1).then_some(broke);
        assert_eq!(leader(&fresh, "a", leader_1_broke), Some(1));
        assert_eq!(leader(&stale, "a", leader_1_broke), None);
        assert_eq!(leader(&stale, "a", |_| None), Some(1));
        assert_eq!(
            leader(&stale, "a", |id| (id == 2).then_some(broke)),
            Some(1),
            "a fault on another member leaves the answer good"
        );
        let leaderless: BTreeMap<String, View> = [("a".to_string(), view(after, 0, &[]))].into();
        assert_eq!(leader(&leaderless, "a", |_| None), None);
        // Questions overlap: an answer asked earlier that arrives later is not kept.
        let latest = Mutex::new(BTreeMap::new());
        keep(&latest, "a", view(after, 2, &[]));
        keep(&latest, "a", view(before, 1, &[]));
        assert_eq!(latest.lock().unwrap()["a"].leader, 2);
    }
}
