//! Quiet volume groups cost nothing: a leader whose group has been idle stops its Raft timers
//! and tells the followers, which stop theirs; any message, I/O or dead leader wakes a group.
//!
//! Liveness moves from each group to each node pair: every node pings its peers (one small
//! RPC per peer per `PING_EVERY`, carrying the quiesce notices batched since the last one),
//! and a peer that has not answered for `DEAD_AFTER`, or whose port refuses a connection,
//! wakes every quiet group it led here, so those groups elect a new leader as they would
//! have without quiescence.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::cairn::v1::{PingRequest, QuiesceNotice};
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::node::groups::Groups;
use crate::node::meta::Meta;
use crate::raft::{ChannelCache, Raft};

/// How often the leader side looks for quiet groups and each node pings its peers. Both
/// nodes of a pair ping, and a ping received counts as an answer, so a node hears from each
/// live peer about every 250 ms: four chances within `DEAD_AFTER`.
const PING_EVERY: Duration = Duration::from_millis(500);
/// The default idle time after which a leader quiesces its group (`--quiet-after-ms`).
#[cfg(test)]
const QUIET_AFTER: Duration = Duration::from_secs(2);
/// A peer that has answered no ping for this long is taken as dead: the groups it led
/// here wake and elect (within the usual election timeout, 300–600 ms, after that).
pub const DEAD_AFTER: Duration = Duration::from_millis(1000);
/// One ping's deadline.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// What the leader of a group sees of it, for the quiesce decision.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderQuiet {
    /// The last log index, and since when it has not moved.
    pub last_index: Option<u64>,
    pub unchanged_for: Duration,
    /// How long a group must be idle to quiesce.
    pub quiet_after: Duration,
    pub applied: Option<u64>,
    /// Each voter's matched index (the leader's own included).
    pub matched: BTreeMap<u64, Option<u64>>,
    /// The voters whose node answers pings (the leader's own included).
    pub reachable: BTreeSet<u64>,
    /// Whether the membership is a single config with no learners.
    pub settled: bool,
}

/// Whether a leader may quiesce its group now: nothing new for `quiet_after`, everything
/// applied on the leader, a majority of voters and every reachable voter holding the last
/// entry, so no live follower needs a message to catch up. A voter on a dead node is not
/// waited for: it is woken back in when its node answers again (`Quiescer::returned`).
pub fn may_quiesce(v: &LeaderQuiet) -> bool {
    let caught_up = |id: &u64| v.matched.get(id).is_some_and(|m| *m == v.last_index);
    let holding = v.matched.keys().filter(|id| caught_up(id)).count();
    v.settled
        && v.unchanged_for >= v.quiet_after
        && v.last_index.is_some()
        && v.applied == v.last_index
        && holding > v.matched.len() / 2
        && v.matched
            .keys()
            .filter(|id| v.reachable.contains(id))
            .all(caught_up)
}

/// What a follower knows of its group, to take or refuse a leader's quiesce notice.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerView {
    pub term: u64,
    pub leader: Option<u64>,
    pub last_index: Option<u64>,
    pub follower: bool,
}

/// A follower stops its timers only on a notice from the leader it follows, in its term,
/// for exactly the log it holds; anything else (a newer entry since, another leader) means
/// the group is not quiet and the notice is stale.
pub fn accepts(f: &FollowerView, n: &QuiesceNotice) -> bool {
    f.follower
        && f.term == n.term
        && f.leader == Some(n.leader)
        && f.last_index == Some(n.last_index)
}

/// The quiet groups of this node and the pings to its peers.
pub struct Quiescer {
    me: u64,
    /// `None`: groups never go quiet.
    quiet_after: Option<Duration>,
    /// Quiet groups here, with the leader they were quiet under.
    quiet: Mutex<HashMap<u64, u64>>,
    /// Per group: the last index seen on the leader side, and when it last moved.
    seen: Mutex<HashMap<u64, (Option<u64>, Instant)>>,
    /// Notices not yet sent, per peer node.
    outbox: Mutex<HashMap<u64, Vec<QuiesceNotice>>>,
    /// When each peer last answered a ping or pinged.
    answered: Mutex<HashMap<u64, Instant>>,
    /// Peers whose address refused a ping's connection since they last answered: their
    /// process is gone, so they count as silent at once, without waiting `DEAD_AFTER`.
    gone: Mutex<HashSet<u64>>,
    /// Each peer's boot id, from its pings: a new one is a restarted node.
    boots: Mutex<HashMap<u64, u64>>,
    /// This process's boot id, and when pinging began.
    boot: u64,
    started: Instant,
}

impl Quiescer {
    pub fn new(me: u64, quiet_after: Option<Duration>) -> Self {
        Quiescer {
            me,
            quiet_after,
            quiet: Mutex::default(),
            seen: Mutex::default(),
            outbox: Mutex::default(),
            answered: Mutex::default(),
            gone: Mutex::default(),
            boots: Mutex::default(),
            boot: rand::random(),
            started: Instant::now(),
        }
    }

    /// Restarts a group's timers if it was quiet. Cheap when it was not (one map lookup):
    /// called on every I/O and every Raft message for the group.
    pub fn wake(&self, group: u64, raft: &Raft) {
        let was = self
            .quiet
            .lock()
            .expect("quiet map poisoned")
            .remove(&group);
        if was.is_some() {
            raft.runtime_config().tick(true);
            tracing::debug!(group, "quiet group woken");
        }
    }

    /// Wakes a quiet group for an I/O routed through this node: always on its leader; on a
    /// follower only when the leader's node is silent. A live leader is woken by the
    /// forwarded request itself and its heartbeats then wake the followers; a follower woken
    /// first would find its lease long expired and start an election against a healthy leader.
    pub fn wake_for_io(&self, group: u64, raft: &Raft) {
        let leader = self
            .quiet
            .lock()
            .expect("quiet map poisoned")
            .get(&group)
            .copied();
        match leader {
            None => {}
            Some(l) if l == self.me || self.silent(l, Instant::now()) => self.wake(group, raft),
            Some(_) => {}
        }
    }

    /// Whether `group` is quiet here now.
    pub fn is_quiet(&self, group: u64) -> bool {
        self.quiet
            .lock()
            .expect("quiet map poisoned")
            .contains_key(&group)
    }

    fn stop(&self, group: u64, leader: u64, raft: &Raft) {
        self.quiet
            .lock()
            .expect("quiet map poisoned")
            .insert(group, leader);
        raft.runtime_config().tick(false);
    }

    /// Takes the notices a peer sent: each group whose follower here agrees goes quiet.
    pub fn on_notices(&self, groups: &Groups, notices: &[QuiesceNotice]) {
        for n in notices {
            let Some(raft) = groups.get(n.group_id) else {
                continue;
            };
            let m = raft.metrics().borrow_watched().clone();
            let view = FollowerView {
                term: m.current_term,
                leader: m.current_leader,
                last_index: m.last_log_index,
                follower: m.state == ServerState::Follower,
            };
            if accepts(&view, n) {
                self.stop(n.group_id, n.leader, &raft);
            }
        }
    }

    /// The leader side: quiesces each group this node leads that has been quiet long enough
    /// and queues a notice for each of its followers.
    fn quiesce_led(&self, groups: &Groups, now: Instant) {
        let Some(quiet_after) = self.quiet_after else {
            return;
        };
        let led = groups.volumes();
        let mut seen = self.seen.lock().expect("seen map poisoned");
        seen.retain(|g, _| led.iter().any(|(id, _)| id == g));
        let quiet: HashSet<u64> = self
            .quiet
            .lock()
            .expect("quiet map poisoned")
            .keys()
            .copied()
            .collect();
        for (group, raft) in led {
            // Quiet groups and followers are skipped before their metrics are copied: with
            // a thousand quiet groups this loop is the node's steady idle work.
            if quiet.contains(&group) || !raft.is_leader() {
                seen.remove(&group);
                continue;
            }
            let m = raft.metrics().borrow_watched().clone();
            let entry = seen.entry(group).or_insert((m.last_log_index, now));
            if entry.0 != m.last_log_index {
                *entry = (m.last_log_index, now);
            }
            let membership = m.membership_config.membership();
            let voters: Vec<u64> = membership.voter_ids().collect();
            let replication = m.replication.clone().unwrap_or_default();
            let reachable = voters
                .iter()
                .copied()
                .filter(|v| *v == self.me || !self.silent(*v, now))
                .collect();
            let view = LeaderQuiet {
                quiet_after,
                reachable,
                last_index: m.last_log_index,
                unchanged_for: now.saturating_duration_since(entry.1),
                applied: m.last_applied.as_ref().map(|l| l.index()),
                matched: voters
                    .iter()
                    .map(|v| {
                        let i = replication
                            .get(v)
                            .and_then(|l| l.as_ref().map(|l| l.index()));
                        (*v, if *v == self.me { m.last_log_index } else { i })
                    })
                    .collect(),
                settled: membership.get_joint_config().len() == 1
                    && membership.learner_ids().next().is_none(),
            };
            if !may_quiesce(&view) {
                continue;
            }
            let notice = QuiesceNotice {
                group_id: group,
                term: m.current_term,
                leader: self.me,
                last_index: m.last_log_index.unwrap_or(0),
            };
            self.stop(group, self.me, &raft);
            seen.remove(&group);
            let mut outbox = self.outbox.lock().expect("outbox poisoned");
            for v in voters.into_iter().filter(|v| *v != self.me) {
                outbox.entry(v).or_default().push(notice);
            }
            tracing::debug!(group, last_index = notice.last_index, "group quiesced");
        }
    }

    /// Wakes every quiet group here whose leader is `peer`.
    fn wake_led_by(&self, groups: &Groups, peer: u64) {
        let woken = self.wake_where(groups, |_, leader| leader == peer);
        if woken > 0 {
            tracing::info!(
                peer,
                groups = woken,
                "peer not answering: its quiet groups here woken"
            );
        }
    }

    /// Wakes the quiet groups here that `peer` led before it restarted: a restarted node
    /// leads nothing until it is elected again (decision 052), and if its replica failed to
    /// open it never campaigns, so without a wake nobody here would until the next I/O.
    fn wake_led_before_restart(&self, groups: &Groups, peer: u64) {
        let woken = self.wake_where(groups, |_, leader| leader == peer);
        if woken > 0 {
            tracing::info!(
                peer,
                groups = woken,
                "peer restarted: the quiet groups it led here are woken"
            );
        }
    }

    /// Wakes the quiet groups for which `pick(group, leader)` holds; how many.
    fn wake_where(&self, groups: &Groups, pick: impl Fn(u64, u64) -> bool) -> usize {
        let woken: Vec<u64> = {
            let mut q = self.quiet.lock().expect("quiet map poisoned");
            let ids: Vec<u64> = q
                .iter()
                .filter(|(g, l)| pick(**g, **l))
                .map(|(g, _)| *g)
                .collect();
            for g in &ids {
                q.remove(g);
            }
            ids
        };
        for g in &woken {
            if let Some(raft) = groups.get(*g) {
                raft.runtime_config().tick(true);
            }
        }
        woken.len()
    }

    /// Takes a ping from `peer` (alive, started as `boot`): a peer that restarted or was
    /// silent gets heartbeats again from every group led here that it is a member of, so it
    /// catches up, and hears from its leaders before its election timers run out; the quiet
    /// groups a restarted peer led are woken here, to elect.
    pub fn pinged_by(&self, groups: &Groups, peer: u64, boot: u64) {
        let restarted = {
            let mut boots = self.boots.lock().expect("boots map poisoned");
            boots.insert(peer, boot) != Some(boot)
        };
        if restarted {
            self.wake_led_before_restart(groups, peer);
        }
        self.answered(groups, peer, Instant::now(), restarted);
    }

    /// Records that `peer` is alive at `at`; wakes its groups led here if it is back from
    /// silence (or `restarted`).
    fn answered(&self, groups: &Groups, peer: u64, at: Instant, restarted: bool) {
        let back = self.silent(peer, at);
        self.gone.lock().expect("gone set poisoned").remove(&peer);
        self.answered
            .lock()
            .expect("answered map poisoned")
            .insert(peer, at);
        if back || restarted {
            self.returned(groups, peer);
        }
    }

    /// Wakes every quiet group led here that has `peer` as a member.
    fn returned(&self, groups: &Groups, peer: u64) {
        let led: Vec<u64> = self
            .quiet
            .lock()
            .expect("quiet map poisoned")
            .iter()
            .filter(|(_, l)| **l == self.me)
            .map(|(g, _)| *g)
            .collect();
        let mut woken = 0;
        for g in led {
            let Some(raft) = groups.get(g) else { continue };
            let member = raft
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .get_node(&peer)
                .is_some();
            if member {
                self.wake(g, &raft);
                woken += 1;
            }
        }
        if woken > 0 {
            tracing::info!(
                peer,
                groups = woken,
                "peer back: quiet groups it is in woken"
            );
        }
    }

    /// Whether `peer`'s node has not answered a ping for `DEAD_AFTER`, or refused one.
    pub fn is_silent(&self, peer: u64) -> bool {
        self.silent(peer, Instant::now())
    }

    /// Whether `peer` refused a ping since it last answered, or has not been heard from for
    /// `DEAD_AFTER` before `now` (a peer never heard from counts from when pinging began).
    fn silent(&self, peer: u64, now: Instant) -> bool {
        if self.gone.lock().expect("gone set poisoned").contains(&peer) {
            return true;
        }
        let last = self
            .answered
            .lock()
            .expect("answered map poisoned")
            .get(&peer)
            .copied()
            .unwrap_or(self.started);
        now.saturating_duration_since(last) >= DEAD_AFTER
    }
}

/// Runs for the node's lifetime: quiesces idle groups it leads, pings every peer in the
/// catalogue with the pending notices, and wakes the quiet groups of a peer gone silent.
pub(super) async fn run(
    quiescer: Arc<Quiescer>,
    meta: Arc<Meta>,
    groups: Arc<Groups>,
    channels: ChannelCache,
    space: Arc<super::space::Space>,
) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Measured by `space::measure_loop`, never waited for here.
        let mine = space.report();
        let now = Instant::now();
        quiescer.quiesce_led(&groups, now);
        let peers: Vec<(u64, String)> = meta.with_catalog(|cat| {
            cat.nodes
                .values()
                .filter(|n| n.id != quiescer.me)
                .map(|n| (n.id, n.addr.clone()))
                .collect()
        });
        let failed_groups = groups.failed().report(now);
        for (peer, addr) in peers {
            let failed_groups = failed_groups.clone();
            let notices = quiescer
                .outbox
                .lock()
                .expect("outbox poisoned")
                .remove(&peer)
                .unwrap_or_default();
            let q = quiescer.clone();
            let channels = channels.clone();
            let me = quiescer.me;
            let boot = quiescer.boot;
            let groups_for_ping = groups.clone();
            let space = space.clone();
            tokio::spawn(async move {
                let Ok(mut client) = channels.client(&addr) else {
                    return;
                };
                let req = PingRequest {
                    from: me,
                    boot,
                    quiesce: notices.clone(),
                    short_of_space: space.short(),
                    failed_groups,
                    used_bytes: mine.map(|u| u.used),
                    fs_free_bytes: mine.map(|u| u.fs_free),
                    reserve_bytes: mine.map(|u| u.reserve),
                };
                let sent = tokio::time::timeout(PING_TIMEOUT, client.ping(req)).await;
                match sent {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        space.peer_reported(peer, reply.short_of_space);
                        let usage = super::space::from_wire(
                            reply.used_bytes,
                            reply.fs_free_bytes,
                            reply.reserve_bytes,
                        );
                        space.peer_usage(peer, usage);
                        q.answered(&groups_for_ping, peer, Instant::now(), false)
                    }
                    // Nothing listens there: the peer's process is gone. Its groups here
                    // elect now, as they would on an election timeout were they not quiet.
                    Ok(Err(status)) if cairn_client::refused(&status) => {
                        q.gone.lock().expect("gone set poisoned").insert(peer);
                        q.wake_led_by(&groups_for_ping, peer);
                    }
                    // Unsent notices are dropped: the groups stay quiet on the leader, and a
                    // follower that never heard elects; the next leader quiesces afresh.
                    _ => tracing::trace!(peer, notices = notices.len(), "ping not answered"),
                }
            });
            if quiescer.silent(peer, now) {
                quiescer.wake_led_by(&groups, peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_leader() -> LeaderQuiet {
        LeaderQuiet {
            last_index: Some(10),
            unchanged_for: QUIET_AFTER,
            quiet_after: QUIET_AFTER,
            applied: Some(10),
            matched: [(1, Some(10)), (2, Some(10)), (3, Some(10))].into(),
            reachable: [1, 2, 3].into(),
            settled: true,
        }
    }

    #[test]
    fn a_caught_up_idle_group_quiesces() {
        assert!(may_quiesce(&quiet_leader()));
    }

    #[test]
    fn a_group_with_anything_in_flight_stays_awake() {
        let busy = LeaderQuiet {
            unchanged_for: QUIET_AFTER - Duration::from_millis(1),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&busy));
        let minority = LeaderQuiet {
            matched: [(1, Some(10)), (2, Some(9)), (3, None)].into(),
            reachable: [1].into(),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&minority));
        let lagging = LeaderQuiet {
            matched: [(1, Some(10)), (2, Some(9)), (3, Some(10))].into(),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&lagging));
        let unknown = LeaderQuiet {
            matched: [(1, Some(10)), (2, None), (3, Some(10))].into(),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&unknown));
        let unapplied = LeaderQuiet {
            applied: Some(9),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&unapplied));
        let changing = LeaderQuiet {
            settled: false,
            ..quiet_leader()
        };
        assert!(!may_quiesce(&changing));
        let empty = LeaderQuiet {
            last_index: None,
            applied: None,
            matched: [(1, None)].into(),
            ..quiet_leader()
        };
        assert!(!may_quiesce(&empty));
    }

    #[test]
    fn a_dead_follower_is_not_waited_for_but_a_live_laggard_is() {
        let dead = LeaderQuiet {
            matched: [(1, Some(10)), (2, Some(10)), (3, Some(4))].into(),
            reachable: [1, 2].into(),
            ..quiet_leader()
        };
        assert!(may_quiesce(&dead));
        let live = LeaderQuiet {
            reachable: [1, 2, 3].into(),
            ..dead
        };
        assert!(!may_quiesce(&live));
    }

    #[test]
    fn a_follower_takes_only_its_own_leaders_notice_for_its_log() {
        let f = FollowerView {
            term: 4,
            leader: Some(1),
            last_index: Some(10),
            follower: true,
        };
        let n = QuiesceNotice {
            group_id: 7,
            term: 4,
            leader: 1,
            last_index: 10,
        };
        assert!(accepts(&f, &n));
        assert!(!accepts(&f, &QuiesceNotice { term: 3, ..n }));
        assert!(!accepts(&f, &QuiesceNotice { leader: 2, ..n }));
        assert!(!accepts(&f, &QuiesceNotice { last_index: 9, ..n }));
        let candidate = FollowerView {
            follower: false,
            ..f.clone()
        };
        assert!(!accepts(&candidate, &n));
    }

    #[test]
    fn a_peer_is_silent_only_after_dead_after_without_an_answer() {
        let q = Quiescer::new(1, Some(QUIET_AFTER));
        let t0 = q.started;
        assert!(!q.silent(2, t0 + DEAD_AFTER / 2));
        assert!(q.silent(2, t0 + DEAD_AFTER));
        q.answered.lock().unwrap().insert(2, t0 + DEAD_AFTER);
        assert!(!q.silent(2, t0 + DEAD_AFTER + DEAD_AFTER / 2));
        assert!(q.silent(2, t0 + DEAD_AFTER * 2));
    }
}
