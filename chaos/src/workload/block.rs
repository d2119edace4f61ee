//! The block workload: several clients per volume write and read 4 KiB blocks holding unique
//! versions through `VolumeClient`, recording each operation; and the final reads after recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{Security, VolumeClient};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::Error;
use crate::history::{Key, Op, OpKind, Outcome, Recorder, Value};

/// The size of one register: a block of the volume.
pub const BLOCK: usize = 4096;
/// What a block that does not decode reads as: a value no write ever stores.
pub const UNDECODABLE: Value = Value(u64::MAX);
/// The client id the final reads are recorded under.
pub const FINAL_READER: u64 = 0;

/// A block holding `value`: its first 8 bytes the version (little endian), the rest derived from it.
pub fn encode(value: Value) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK];
    block[..8].copy_from_slice(&value.0.to_le_bytes());
    for (i, word) in block[8..].chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&filler(value, i as u64).to_le_bytes());
    }
    block
}

/// The value a block holds: `Value::INITIAL` for zeroes, the version for a block `encode` made,
/// else `UNDECODABLE` (a torn or foreign block, which the checker reports as never written).
pub fn decode(block: &[u8]) -> Value {
    if block.len() != BLOCK {
        return UNDECODABLE;
    }
    let version = Value(u64::from_le_bytes(block[..8].try_into().expect("8 bytes")));
    if version == Value::INITIAL {
        return match block.iter().all(|&b| b == 0) {
            true => Value::INITIAL,
            false => UNDECODABLE,
        };
    }
    match version != UNDECODABLE && block == encode(version).as_slice() {
        true => version,
        false => UNDECODABLE,
    }
}

/// splitmix64 of the version and the word's index: cheap, and different for every version.
fn filler(value: Value, index: u64) -> u64 {
    let mut z = value
        .0
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(index.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The workload's shape: which volumes, how many blocks of each are registers, how many
/// clients per volume, and the seed of their choices.
#[derive(Clone, Debug)]
pub struct BlockWorkload {
    pub volumes: Vec<String>,
    pub blocks_per_volume: u64,
    pub clients_per_volume: usize,
    pub seed: u64,
}

/// Running clients; `stop` lets each finish the operation it is in and returns.
pub struct Clients {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a workload client panicked");
            }
        }
    }
}

impl BlockWorkload {
    /// Starts the clients against the storaged nodes at `endpoints`; client `i` of a volume
    /// asks the nodes in an order starting at node `i`, so a volume's clients enter on different nodes.
    pub fn start(
        &self,
        endpoints: &[String],
        security: &Security,
        recorder: Arc<Recorder>,
    ) -> Result<Clients, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let versions = Arc::new(AtomicU64::new(1));
        let mut tasks = Vec::new();
        let mut id = FINAL_READER;
        for volume in &self.volumes {
            for i in 0..self.clients_per_volume {
                id += 1;
                let mut order = endpoints.to_vec();
                order.rotate_left(i % endpoints.len().max(1));
                let client = Client {
                    id,
                    volume: volume.clone(),
                    blocks: self.blocks_per_volume,
                    api: VolumeClient::new(order, security.clone())
                        .map_err(|s| Error::Config(s.message().into()))?,
                    rng: StdRng::seed_from_u64(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    versions: Arc::clone(&versions),
                    recorder: Arc::clone(&recorder),
                };
                tasks.push(tokio::spawn(client.run(Arc::clone(&stop))));
            }
        }
        Ok(Clients { stop, tasks })
    }

    /// Reads every block of every volume once the cluster has recovered, retrying failures
    /// until `within`; records the reads in the history and returns the values read (a block
    /// that could not be read is left out, which the final-read check reports as not read).
    pub async fn final_reads(
        &self,
        api: &VolumeClient,
        recorder: &Recorder,
        within: Duration,
    ) -> Vec<(Key, Value)> {
        let deadline = Instant::now() + within;
        let mut finals = Vec::new();
        for volume in &self.volumes {
            for block in 0..self.blocks_per_volume {
                let key = Key {
                    volume: volume.clone(),
                    block,
                };
                loop {
                    let invoke = recorder.now();
                    match api.read(volume, block * BLOCK as u64, BLOCK as u32).await {
                        Ok(data) => {
                            let value = decode(&data);
                            recorder.record(Op {
                                client: FINAL_READER,
                                key: key.clone(),
                                kind: OpKind::Read { value: Some(value) },
                                invoke,
                                complete: Some(recorder.now()),
                                outcome: Outcome::Ok,
                            });
                            finals.push((key, value));
                            break;
                        }
                        Err(e) if Instant::now() < deadline => {
                            tracing::warn!(%key, error = %e.message(), "final read failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => {
                            tracing::error!(%key, error = %e.message(), "final read failed");
                            break;
                        }
                    }
                }
            }
        }
        finals
    }
}

/// One client: operations one at a time on random blocks of its volume.
struct Client {
    id: u64,
    volume: String,
    blocks: u64,
    api: VolumeClient,
    rng: StdRng,
    versions: Arc<AtomicU64>,
    recorder: Arc<Recorder>,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            let block = self.rng.random_range(0..self.blocks);
            let op = match self.rng.random_bool(0.5) {
                true => self.write(block).await,
                false => self.read(block).await,
            };
            self.recorder.record(op);
        }
    }

    fn key(&self, block: u64) -> Key {
        Key {
            volume: self.volume.clone(),
            block,
        }
    }

    async fn write(&self, block: u64) -> Op {
        let value = Value(self.versions.fetch_add(1, Ordering::Relaxed));
        let invoke = self.recorder.now();
        let result = self
            .api
            .write(&self.volume, block * BLOCK as u64, encode(value).into())
            .await;
        let complete = self.recorder.now();
        let outcome = outcome(&result);
        if let Err(e) = &result {
            tracing::debug!(client = self.id, volume = %self.volume, block, ?outcome, error = %e.message(), "write did not succeed");
        }
        Op {
            client: self.id,
            key: self.key(block),
            kind: OpKind::Write { value },
            invoke,
            complete: (outcome != Outcome::Unknown).then_some(complete),
            outcome,
        }
    }

    async fn read(&self, block: u64) -> Op {
        let invoke = self.recorder.now();
        let result = self
            .api
            .read(&self.volume, block * BLOCK as u64, BLOCK as u32)
            .await;
        let complete = self.recorder.now();
        let outcome = outcome(&result);
        Op {
            client: self.id,
            key: self.key(block),
            kind: OpKind::Read {
                value: result.ok().map(|data| decode(&data)),
            },
            invoke,
            complete: (outcome != Outcome::Unknown).then_some(complete),
            outcome,
        }
    }
}

/// Ok; failed only when the client proves no attempt executed; else unknown.
fn outcome<T>(result: &Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) if cairn_client::never_executed(status) => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_to_their_version_and_anything_else_to_undecodable() {
        for v in [1, 2, 77, u64::MAX - 1] {
            assert_eq!(decode(&encode(Value(v))), Value(v));
        }
        assert_eq!(decode(&[0u8; BLOCK]), Value::INITIAL);
        let mut torn = encode(Value(5));
        torn[BLOCK - 1] ^= 1;
        assert_eq!(decode(&torn), UNDECODABLE);
        let mut mixed = encode(Value(5));
        mixed[2048..].copy_from_slice(&encode(Value(6))[2048..]);
        assert_eq!(decode(&mixed), UNDECODABLE);
        let mut dirty_zero = vec![0u8; BLOCK];
        dirty_zero[100] = 1;
        assert_eq!(decode(&dirty_zero), UNDECODABLE);
        assert_eq!(decode(&encode(Value(5))[..100]), UNDECODABLE);
        assert_ne!(encode(Value(1))[8..], encode(Value(2))[8..]);
    }
}
