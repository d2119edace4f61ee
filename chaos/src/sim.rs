//! Test-only: a seeded simulation of real linearizable registers driven by concurrent clients that
//! record invoke and complete around each atomic step, and the checker's property tests over it.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::history::{Key, Op, OpKind, Outcome, Value};

pub(crate) struct Sim {
    pub keys: usize,
    pub clients_per_key: usize,
    pub ops: usize,
    /// Chance that a pending write is refused before it applies (`Failed`).
    pub p_fail: f64,
    /// Chance that a pending op is abandoned (`Unknown`), before or after it applied.
    pub p_unknown: f64,
}

enum Client {
    Idle,
    Pending { op: usize, applied: bool },
}

/// Runs the simulation: each tick one client invokes, applies or completes its op, or an abandoned
/// write still in flight lands. Logical time is the tick, so a completion never precedes its effect.
pub(crate) fn simulate(seed: u64, sim: &Sim) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut registers = vec![Value::INITIAL; sim.keys];
    let mut clients: Vec<Client> = (0..sim.keys * sim.clients_per_key)
        .map(|_| Client::Idle)
        .collect();
    let mut in_flight: Vec<(usize, Value)> = Vec::new();
    let mut history: Vec<Op> = Vec::new();
    let mut next_value = 1;
    let mut tick = 0u64;
    while history.len() < sim.ops || clients.iter().any(|c| matches!(c, Client::Pending { .. })) {
        tick += 1;
        if !in_flight.is_empty() && rng.random_bool(0.05) {
            let (key, value) = in_flight.swap_remove(rng.random_range(0..in_flight.len()));
            registers[key] = value;
            continue;
        }
        let c = rng.random_range(0..clients.len());
        let key = c % sim.keys;
        match clients[c] {
            Client::Idle if history.len() < sim.ops => {
                let kind = if rng.random_bool(0.5) {
                    next_value += 1;
                    OpKind::Write {
                        value: Value(next_value - 1),
                    }
                } else {
                    OpKind::Read { value: None }
                };
                let block = Key {
                    volume: format!("vol-{}", key % 3),
                    block: key as u64,
                };
                history.push(Op {
                    client: c as u64,
                    key: block,
                    kind,
                    invoke: tick,
                    complete: None,
                    outcome: Outcome::Unknown,
                });
                clients[c] = Client::Pending {
                    op: history.len() - 1,
                    applied: false,
                };
            }
            Client::Idle => {}
            Client::Pending { op, applied } => {
                let entry = &mut history[op];
                let is_write = entry.written().is_some();
                if rng.random_bool(sim.p_unknown) {
                    // The client gives up; a write not yet applied may still land later, or never.
                    if let (false, Some(value)) = (applied, entry.written()) {
                        in_flight.push((key, value));
                    }
                    clients[c] = Client::Idle;
                } else if !applied && is_write && rng.random_bool(sim.p_fail) {
                    entry.complete = Some(tick);
                    entry.outcome = Outcome::Failed;
                    clients[c] = Client::Idle;
                } else if !applied {
                    match &mut entry.kind {
                        OpKind::Write { value } => registers[key] = *value,
                        OpKind::Read { value } => *value = Some(registers[key]),
                    }
                    clients[c] = Client::Pending { op, applied: true };
                } else {
                    entry.complete = Some(tick);
                    entry.outcome = Outcome::Ok;
                    clients[c] = Client::Idle;
                }
            }
        }
    }
    history
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::checker::{Config, Reason, Verdict, check};

    fn acked_reads(history: &[Op]) -> Vec<usize> {
        (0..history.len())
            .filter(|&i| {
                history[i].outcome == Outcome::Ok && matches!(history[i].kind, OpKind::Read { .. })
            })
            .collect()
    }

    fn set_read(op: &mut Op, value: Value) {
        op.kind = OpKind::Read { value: Some(value) };
    }

    /// The oracle: tries every subset of unknown writes and every order that keeps real time.
    fn brute_force_linearizable(history: &[Op]) -> bool {
        let counts = |op: &&Op| match (op.kind, op.outcome) {
            (_, Outcome::Failed) => false,
            (OpKind::Read { .. }, outcome) => outcome == Outcome::Ok,
            (OpKind::Write { .. }, _) => true,
        };
        let ops: Vec<&Op> = history.iter().filter(counts).collect();
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].outcome == Outcome::Unknown)
            .collect();
        (0..1u32 << unknown.len()).any(|mask| {
            let dropped = |i: usize| {
                unknown
                    .iter()
                    .position(|&u| u == i)
                    .is_some_and(|bit| mask & (1 << bit) == 0)
            };
            let chosen: Vec<&Op> = (0..ops.len())
                .filter(|&i| !dropped(i))
                .map(|i| ops[i])
                .collect();
            some_order(&chosen, &mut vec![false; chosen.len()], Value::INITIAL)
        })
    }

    fn some_order(ops: &[&Op], placed: &mut Vec<bool>, register: Value) -> bool {
        if placed.iter().all(|&p| p) {
            return true;
        }
        (0..ops.len()).any(|i| {
            let ready = !placed[i] && (0..ops.len()).all(|j| placed[j] || !ops[j].precedes(ops[i]));
            let after = match ops[i].kind {
                OpKind::Write { value } => Some(value),
                OpKind::Read { value } => (value == Some(register)).then_some(register),
            };
            let Some(after) = after.filter(|_| ready) else {
                return false;
            };
            placed[i] = true;
            let found = some_order(ops, placed, after);
            placed[i] = false;
            found
        })
    }

    fn small_history() -> impl Strategy<Value = Vec<Op>> {
        let op = (any::<bool>(), 0u64..5, 0u64..20, 0u64..8, 0u8..10);
        prop::collection::vec(op, 1..8).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (is_write, read_value, invoke, length, outcome))| {
                    let outcome = match outcome {
                        0 => Outcome::Failed,
                        1 | 2 => Outcome::Unknown,
                        _ => Outcome::Ok,
                    };
                    let kind = if is_write {
                        OpKind::Write {
                            value: Value(i as u64 + 1),
                        }
                    } else {
                        OpKind::Read {
                            value: Some(Value(read_value)),
                        }
                    };
                    let complete = (outcome != Outcome::Unknown).then_some(invoke + length);
                    let key = Key {
                        volume: "vol-0".into(),
                        block: 0,
                    };
                    Op {
                        client: i as u64,
                        key,
                        kind,
                        invoke,
                        complete,
                        outcome,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_checker_agrees_with_brute_force_on_small_histories(history in small_history()) {
            let report = check(&history, &Config::default()).unwrap();
            prop_assert_eq!(report.is_linearizable(), brute_force_linearizable(&history), "{:?}", report);
        }

        #[test]
        fn histories_of_a_linearizable_register_are_accepted(
            seed in any::<u64>(), keys in 1usize..4, clients in 1usize..7, ops in 1usize..120,
            p_fail in 0.0f64..0.2, p_unknown in 0.0f64..0.2,
        ) {
            let history = simulate(seed, &Sim { keys, clients_per_key: clients, ops, p_fail, p_unknown });
            let report = check(&history, &Config::default()).unwrap();
            prop_assert!(report.is_linearizable(), "{:?}", report.keys.iter().find(|k| !matches!(k.verdict, Verdict::Linearizable)));
        }

        #[test]
        fn a_read_mutated_to_a_never_written_value_is_rejected(
            seed in any::<u64>(), keys in 1usize..4, clients in 1usize..7, ops in 10usize..120, pick in any::<prop::sample::Index>(),
        ) {
            let mut history = simulate(seed, &Sim { keys, clients_per_key: clients, ops, p_fail: 0.1, p_unknown: 0.1 });
            let reads = acked_reads(&history);
            prop_assume!(!reads.is_empty());
            let victim = reads[pick.index(reads.len())];
            set_read(&mut history[victim], Value(u64::MAX));
            let report = check(&history, &Config::default()).unwrap();
            let verdict = report.verdict(&history[victim].key).unwrap();
            prop_assert!(
                matches!(verdict, Verdict::Violation(v) if v.reason == Reason::NeverWritten { value: Value(u64::MAX) }),
                "{verdict:?}"
            );
        }
    }

    /// A read made to return a write that was overwritten, in real time, before the read began must
    /// be rejected by the search itself (the value was written, so no shortcut catches it).
    #[test]
    fn a_read_mutated_to_an_overwritten_value_is_rejected() {
        let mut rejected = 0;
        for seed in 0..300 {
            let mut history = simulate(
                seed,
                &Sim {
                    keys: 2,
                    clients_per_key: 3,
                    ops: 60,
                    p_fail: 0.0,
                    p_unknown: 0.0,
                },
            );
            let writes: Vec<&Op> = history
                .iter()
                .filter(|op| op.written().is_some() && op.outcome == Outcome::Ok)
                .collect();
            let stale = acked_reads(&history).into_iter().find_map(|r| {
                let read = &history[r];
                writes.iter().find_map(|old| {
                    let overwritten = writes
                        .iter()
                        .any(|w| w.key == read.key && old.precedes(w) && w.precedes(read));
                    (old.key == read.key && overwritten).then(|| (r, old.written().unwrap()))
                })
            });
            let Some((r, value)) = stale else { continue };
            set_read(&mut history[r], value);
            let report = check(&history, &Config::default()).unwrap();
            match report.verdict(&history[r].key).unwrap() {
                Verdict::Violation(v) => assert!(
                    matches!(v.reason, Reason::NoLinearization { .. }),
                    "seed {seed}: {v}"
                ),
                other => panic!("seed {seed}: a stale read was accepted: {other:?}"),
            }
            rejected += 1;
        }
        assert!(
            rejected > 200,
            "only {rejected} of 300 histories had a stale read to plant"
        );
    }

    #[test]
    fn a_20000_op_history_over_64_keys_gets_a_verdict() {
        let history = simulate(
            21,
            &Sim {
                keys: 64,
                clients_per_key: 8,
                ops: 20_000,
                p_fail: 0.02,
                p_unknown: 0.02,
            },
        );
        assert_eq!(history.len(), 20_000);
        let report = check(&history, &Config::default()).unwrap();
        assert_eq!(report.keys.len(), 64);
        assert!(
            report.gave_up().next().is_none(),
            "gave up on {:?}",
            report.gave_up().next()
        );
        assert!(report.is_linearizable(), "{:?}", report.violations().next());
    }
}
