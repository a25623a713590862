//! The VM state machine: one table says, for every operation and every
//! state a VM can be in, where the operation takes it. Every state write in
//! the daemon goes through [`Daemon::apply`], which looks the move up here
//! and writes it with the store's compare-and-set, so a request that lost a
//! race to another gets a typed `Conflict` and writes nothing.
//!
//! The table (rows not listed refuse with a `Conflict` that names the state):
//!
//! | operation     | from                        | to                 |
//! |---------------|-----------------------------|--------------------|
//! | `Provisioned` | creating                    | stopped            |
//! | `Abandon`     | creating                    | (row removed)      |
//! | `Start`       | stopped, error              | starting           |
//! | `Start`       | running                     | (already done)     |
//! | `Booted`      | starting                    | running            |
//! | `BootFailed`  | starting                    | error              |
//! | `Stop`        | running                     | stopping           |
//! | `Stop`        | stopped, error              | (already done)     |
//! | `Halted`      | stopping                    | stopped            |
//! | `StopFailed`  | stopping                    | running            |
//! | `Exited`      | running                     | stopped            |
//! | `Adopted`     | starting, running, stopping | running            |
//! | `Lost`        | starting, running, stopping | stopped            |
//! | `Delete`      | stopped, error              | (row removed)      |
//!
//! `delete` of a running VM is `Stop`, `Halted`, then `Delete`; `restart`
//! is `stop` then `start`.

use banger_proto::VmState;
use banger_store::VmRecord;

use crate::{Daemon, DaemonError, DaemonResult};

/// Something that changes a VM's state: a user's request, or what the
/// daemon saw happen (a boot finished, a VMM exited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A create's disk work finished.
    Provisioned,
    /// A create failed, or a previous daemon died during one.
    Abandon,
    /// `vm start` begins.
    Start,
    /// The VMM runs the guest.
    Booted,
    /// A start failed (its VMM, if any, was stopped again).
    BootFailed,
    /// `vm stop` begins.
    Stop,
    /// A stop finished: no VMM, no network.
    Halted,
    /// The VMM could not be stopped; it still runs.
    StopFailed,
    /// The VMM exited on its own.
    Exited,
    /// After a daemon restart, the VM's VMM is still alive.
    Adopted,
    /// After a daemon restart, the VM's VMM is gone.
    Lost,
    /// `vm delete` of a VM that runs nothing.
    Delete,
}

impl Op {
    pub const ALL: [Op; 12] = [
        Op::Provisioned,
        Op::Abandon,
        Op::Start,
        Op::Booted,
        Op::BootFailed,
        Op::Stop,
        Op::Halted,
        Op::StopFailed,
        Op::Exited,
        Op::Adopted,
        Op::Lost,
        Op::Delete,
    ];

    /// How a refusal reads: "VM x is running; it can be {verb} only when …".
    fn verb(self) -> &'static str {
        match self {
            Op::Provisioned | Op::Abandon => "finish creating",
            Op::Start => "be started",
            Op::Booted | Op::BootFailed => "finish starting",
            Op::Stop => "be stopped",
            Op::Halted | Op::StopFailed => "finish stopping",
            Op::Exited => "record an exit",
            Op::Adopted | Op::Lost => "be re-adopted",
            Op::Delete => "be deleted",
        }
    }
}

/// Where an operation takes a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// The VM goes to this state.
    To(VmState),
    /// The VM's row goes (its lease with it).
    Remove,
    /// The VM is already where the operation would take it: nothing to do.
    AlreadyDone,
    /// Not from this state.
    Refused,
}

use Move::{AlreadyDone, Remove, To};
use VmState::{Creating, Error, Running, Starting, Stopped, Stopping};

/// The transition table: (operation, from states, move).
const TABLE: &[(Op, &[VmState], Move)] = &[
    (Op::Provisioned, &[Creating], To(Stopped)),
    (Op::Abandon, &[Creating], Remove),
    (Op::Start, &[Stopped, Error], To(Starting)),
    (Op::Start, &[Running], AlreadyDone),
    (Op::Booted, &[Starting], To(Running)),
    (Op::BootFailed, &[Starting], To(Error)),
    (Op::Stop, &[Running], To(Stopping)),
    (Op::Stop, &[Stopped, Error], AlreadyDone),
    (Op::Halted, &[Stopping], To(Stopped)),
    (Op::StopFailed, &[Stopping], To(Running)),
    (Op::Exited, &[Running], To(Stopped)),
    (Op::Adopted, &[Starting, Running, Stopping], To(Running)),
    (Op::Lost, &[Starting, Running, Stopping], To(Stopped)),
    (Op::Delete, &[Stopped, Error], Remove),
];

/// Where `op` takes a VM in state `from`.
pub fn next(from: VmState, op: Op) -> Move {
    TABLE
        .iter()
        .find(|(o, states, _)| *o == op && states.contains(&from))
        .map_or(Move::Refused, |(_, _, m)| *m)
}

/// The states `op` moves a VM out of (for refusal messages).
fn accepted(op: Op) -> Vec<VmState> {
    TABLE
        .iter()
        .filter(|(o, _, m)| *o == op && *m != AlreadyDone)
        .flat_map(|(_, s, _)| s.iter().copied())
        .collect()
}

/// What [`Daemon::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Moved(VmState),
    Removed,
    AlreadyDone,
}

impl Daemon {
    /// Applies `op` to the VM as it was read in `rec`: looks the move up in
    /// the table and writes it only if the VM is still in `rec.state`. A
    /// refused move, or a race lost to another request, is a `Conflict`.
    pub fn apply(&self, rec: &VmRecord, op: Op, reason: Option<&str>) -> DaemonResult<Applied> {
        let name = &rec.name;
        match next(rec.state, op) {
            To(to) => {
                self.store.transition_vm(name, rec.state, to, reason)?;
                tracing::debug!(vm = %name, from = %rec.state, %to, ?op, "state");
                Ok(Applied::Moved(to))
            }
            Remove => {
                self.store.delete_vm(name, rec.state)?;
                Ok(Applied::Removed)
            }
            AlreadyDone => Ok(Applied::AlreadyDone),
            Move::Refused => {
                let when: Vec<&str> = accepted(op).iter().map(|s| s.as_str()).collect();
                Err(DaemonError::conflict(format!(
                    "VM {name} is {}; it can {} only when {}",
                    rec.state,
                    op.verb(),
                    when.join(" or ")
                )))
            }
        }
    }

    /// [`Daemon::apply`] on the VM as it is now.
    pub fn apply_now(&self, name: &str, op: Op, reason: Option<&str>) -> DaemonResult<Applied> {
        let rec = self.store.get_vm(name)?;
        self.apply(&rec, op, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [VmState; 6] = [Creating, Stopped, Starting, Running, Stopping, Error];

    /// The table written out cell by cell, independently of `TABLE`: every
    /// operation from every state. Changing a transition fails this test.
    fn expected(op: Op, from: VmState) -> Move {
        use Move::Refused as R;
        // columns: creating, stopped, starting, running, stopping, error
        let row: [Move; 6] = match op {
            Op::Provisioned => [To(Stopped), R, R, R, R, R],
            Op::Abandon => [Remove, R, R, R, R, R],
            Op::Start => [R, To(Starting), R, AlreadyDone, R, To(Starting)],
            Op::Booted => [R, R, To(Running), R, R, R],
            Op::BootFailed => [R, R, To(Error), R, R, R],
            Op::Stop => [R, AlreadyDone, R, To(Stopping), R, AlreadyDone],
            Op::Halted => [R, R, R, R, To(Stopped), R],
            Op::StopFailed => [R, R, R, R, To(Running), R],
            Op::Exited => [R, R, R, To(Stopped), R, R],
            Op::Adopted => [R, R, To(Running), To(Running), To(Running), R],
            Op::Lost => [R, R, To(Stopped), To(Stopped), To(Stopped), R],
            Op::Delete => [R, Remove, R, R, R, Remove],
        };
        let i = STATES.iter().position(|s| *s == from).expect("state");
        row[i]
    }

    #[test]
    fn every_operation_from_every_state_matches_the_table() {
        for op in Op::ALL {
            for from in STATES {
                assert_eq!(next(from, op), expected(op, from), "{op:?} from {from}");
            }
        }
    }

    #[test]
    fn no_cell_is_listed_twice() {
        for op in Op::ALL {
            for from in STATES {
                let rows = TABLE
                    .iter()
                    .filter(|(o, s, _)| *o == op && s.contains(&from))
                    .count();
                assert!(rows <= 1, "{op:?} from {from} has {rows} rows");
            }
        }
    }

    fn daemon() -> (tempfile::TempDir, Daemon) {
        let tmp = tempfile::tempdir().expect("tmp");
        let d = Daemon::open(
            banger_core::Paths::under(tmp.path()),
            banger_core::Config::default(),
            &crate::Options {
                no_network: true,
                dns_listen: None,
            },
        )
        .expect("open");
        (tmp, d)
    }

    fn put(d: &Daemon, name: &str, state: VmState) -> VmRecord {
        static MACS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MACS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mac = format!("02:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff);
        let rec = VmRecord::creating(name, "i", "k", &mac);
        d.store.insert_vm(&rec, None, "n").expect("insert");
        if state != Creating {
            d.store
                .transition_vm(name, Creating, state, None)
                .expect("set up");
        }
        d.store.get_vm(name).expect("get")
    }

    /// Every operation from every state through the store: the moves the
    /// table allows are written, the others write nothing.
    #[test]
    fn apply_writes_exactly_the_tables_moves() {
        let (_tmp, d) = daemon();
        for op in Op::ALL {
            for from in STATES {
                let name = format!("vm-{}-{}", op as u8, from.as_str());
                let rec = put(&d, &name, from);
                let r = d.apply(&rec, op, Some("why"));
                let now = d.store.get_vm(&name).ok();
                match expected(op, from) {
                    To(to) => {
                        assert_eq!(r.expect("moved"), Applied::Moved(to));
                        let now = now.expect("row");
                        assert_eq!((now.state, now.reason.as_deref()), (to, Some("why")));
                    }
                    Remove => {
                        assert_eq!(r.expect("removed"), Applied::Removed);
                        assert!(now.is_none(), "{name} removed");
                    }
                    AlreadyDone => {
                        assert_eq!(r.expect("no-op"), Applied::AlreadyDone);
                        assert_eq!(now.expect("row").state, from);
                    }
                    Move::Refused => {
                        let e = r.expect_err("refused");
                        assert_eq!(e.kind, banger_proto::ErrorKind::Conflict, "{op:?} {from}");
                        assert!(e.message.contains(&format!("is {from}")), "{}", e.message);
                        assert_eq!(now.expect("row").state, from, "nothing written");
                    }
                }
            }
        }
    }

    /// Two requests that read the same state: the second one's write is a
    /// typed conflict, and the first one's result stands.
    #[test]
    fn a_lost_race_is_a_conflict_not_a_silent_overwrite() {
        let (_tmp, d) = daemon();
        let rec = put(&d, "race", Running);
        d.apply(&rec, Op::Exited, Some("crashed")).expect("first");
        let e = d.apply(&rec, Op::Stop, None).expect_err("second");
        assert_eq!(e.kind, banger_proto::ErrorKind::Conflict);
        assert!(e.message.contains("changed state"), "{}", e.message);
        let now = d.store.get_vm("race").expect("get");
        assert_eq!(
            (now.state, now.reason.as_deref()),
            (Stopped, Some("crashed"))
        );
    }

    #[test]
    fn refusals_say_which_states_would_do() {
        let (_tmp, d) = daemon();
        let rec = put(&d, "busy", Stopping);
        let e = d.apply(&rec, Op::Start, None).expect_err("refused");
        assert_eq!(
            e.message,
            "VM busy is stopping; it can be started only when stopped or error"
        );
    }
}
