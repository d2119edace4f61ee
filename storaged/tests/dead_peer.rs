//! A dead or paused peer costs the survivors nothing: CPU of real storaged processes,
//! from /proc/<pid>/stat, with one follower killed or stopped, for 1 and 50 volumes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_client::VolumeClient;
use cairn_proto::cairn::v1 as pb;
use cairn_storaged::testkit::ProcCluster;

const VOL_SIZE: u64 = 64 << 20;
/// The extra CPU the survivors may spend while a peer is down, in cores.
const ALLOWED_EXTRA: f64 = 0.10;
const SETTLE: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(10);

/// Clusters are measured one at a time: two at once would share the two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The storaged under test; `CAIRN_STORAGED_BIN` measures another build (a before/after
/// comparison) with the same test.
fn bin() -> PathBuf {
    std::env::var_os("CAIRN_STORAGED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_storaged")))
}

/// CPU ticks (user + system) that process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Cores used by `pids` together over `WINDOW`.
async fn cores_used(pids: &[u32]) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as f64;
    let sum = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let (t0, started) = (sum(), Instant::now());
    tokio::time::sleep(WINDOW).await;
    (sum() - t0) as f64 / hz / started.elapsed().as_secs_f64()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("idle-{i}")).collect()
}

/// Writes `bytes` of data to each volume in 256 KiB pieces, retrying (bounded) while a
/// group elects a leader.
async fn write_all(client: &VolumeClient, vols: &[String], bytes: u64) {
    for v in vols {
        for off in (0..bytes).step_by(256 << 10) {
            let data = bytes::Bytes::from(vec![(off >> 18) as u8 + 1; 256 << 10]);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match client.write(v, off, data.clone()).await {
                    Ok(()) => break,
                    // No leader yet (an election after the fault): retry shortly.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("write {v}@{off}: {e}"),
                }
            }
        }
    }
}

/// The node that leads the fewest of `vols`' groups and not the meta group.
async fn quietest_node(c: &ProcCluster, vols: &[String]) -> u64 {
    let client = c.client();
    let meta = client.cluster_status().await.unwrap().meta_leader_id;
    let mut led = std::collections::BTreeMap::new();
    for n in &c.nodes {
        led.insert(n.id, 0usize);
    }
    for v in vols {
        let l = c.volume_leader(v, Duration::from_secs(10)).await.unwrap();
        *led.get_mut(&l).unwrap() += 1;
    }
    led.into_iter()
        .filter(|(id, _)| *id != meta)
        .min_by_key(|(_, n)| *n)
        .map(|(id, _)| id)
        .unwrap()
}

/// Waits (bounded) until `node`'s matched index reaches its leader's on every volume.
async fn caught_up(c: &ProcCluster, vols: &[String], node: u64, within: Duration) {
    let client = c.client();
    let deadline = Instant::now() + within;
    for v in vols {
        loop {
            let vol = client.get_volume(v).await.unwrap();
            let leader = vol.members.iter().find(|m| m.node_id == vol.leader_node_id);
            let mine = vol.members.iter().find(|m| m.node_id == node);
            if let (Some(l), Some(m)) = (leader, mine)
                && m.matched_index >= l.matched_index
                && l.matched_index > 0
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node} has not caught up on {v} within {within:?}: {:?}",
                vol.members
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Pause,
}

/// One cluster with `n` volumes: idle cost, then each fault's cost and the recovery.
async fn survivors_pay_nothing(n: usize, bytes_each: u64) {
    let _serial = SERIAL.lock().await;
    let mut c = ProcCluster::start(&bin(), 3, &[]).unwrap();
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = c.client();
    let vols = names(n);
    for v in &vols {
        client
            .create_volume(pb::CreateVolumeRequest {
                name: v.clone(),
                size_bytes: VOL_SIZE,
                replicas: 3,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    write_all(&client, &vols, bytes_each).await;
    let refs: Vec<&str> = vols.iter().map(String::as_str).collect();
    c.wait_replicas_healthy(&refs, Duration::from_secs(60))
        .await
        .unwrap();
    let victim = quietest_node(&c, &vols).await;
    let survivors: Vec<u32> = c
        .nodes
        .iter()
        .filter(|x| x.id != victim)
        .map(|x| c.pid(x.id).unwrap())
        .collect();

    tokio::time::sleep(SETTLE).await;
    let idle = cores_used(&survivors).await;
    for fault in [Fault::Kill, Fault::Pause] {
        match fault {
            Fault::Kill => c.kill9(victim),
            Fault::Pause => c.pause(victim, true),
        }
        tokio::time::sleep(SETTLE).await;
        let faulted = cores_used(&survivors).await;
        eprintln!(
            "{n} volumes, node {victim} {fault:?}: survivors {faulted:.3} cores, idle {idle:.3}"
        );
        assert!(
            faulted - idle <= ALLOWED_EXTRA,
            "{n} volumes with node {victim} {fault:?}: survivors use {faulted:.3} cores, \
             {idle:.3} when all were up"
        );
        match fault {
            Fault::Kill => c.restart(victim).unwrap(),
            Fault::Pause => c.pause(victim, false),
        }
        // Back: a write to every volume succeeds and the node catches up within 5 s.
        write_all(&client, &vols, 4096).await;
        caught_up(&c, &vols, victim, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_paused_follower_costs_one_volume_nothing() {
    survivors_pay_nothing(1, 8 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_or_paused_follower_costs_fifty_volumes_nothing() {
    survivors_pay_nothing(50, 256 << 10).await;
}
