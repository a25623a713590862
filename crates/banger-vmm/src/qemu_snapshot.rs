//! QEMU pause/resume, snapshot and restore, on QEMU 7.2's migration (no `file:` URI there).
//!
//! Save: `migrate-set-capabilities x-ignore-shared` (when guest RAM is a shared file, so it
//! stays out of the stream), `stop`, `migrate exec:cat > <snapshot>/state`; then, with the
//! guest still stopped, the RAM file and the disks are copied into the snapshot.
//! Restore: the same devices with the snapshot's RAM file mapped privately (`share=off`:
//! copy-on-write, nothing read up front), `-S -incoming defer`, `migrate-incoming
//! exec:cat <state>`, then `cont`. The `exec:` strings are shell command lines inside QEMU,
//! so only paths of plain characters reach them ([`check_plain_path`]).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::error::VmmError;
use crate::process::{RunningVmm, log_tail};
use crate::qemu::{Memory, QemuDriver, abort};
use crate::qmp::{qmp_command, qmp_commands};
use crate::snapshot::{
    AfterSnapshot, MEM_FILE, MemoryMode, Partial, RestoreReport, RestoredDisks, STATE_FILE, Saved,
    Snapshot, check_plain_path, source_disks, vmm_fingerprint,
};
use crate::spec::{VmmKind, VmmSpec};

/// Bound on a migration to or from a state file (RAM in the stream can be GiBs).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(300);

fn ignore_shared(on: bool) -> (&'static str, Value) {
    (
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] }),
    )
}

impl QemuDriver {
    pub(crate) async fn qemu_pause(&self, vm: &RunningVmm) -> Result<(), VmmError> {
        qmp_command(&vm.handle().control_socket, "stop", self.socket_timeout)
            .await
            .map(|_| ())
    }

    /// `cont`; also after a completed outgoing migration (QEMU reactivates the disks).
    pub(crate) async fn qemu_resume(&self, vm: &RunningVmm) -> Result<(), VmmError> {
        qmp_command(&vm.handle().control_socket, "cont", self.socket_timeout)
            .await
            .map(|_| ())
    }

    /// Polls `query-migrate` until the migration completed; its error otherwise.
    async fn wait_migration(&self, vm: &mut RunningVmm, what: &str) -> Result<(), VmmError> {
        let qmp = vm.handle().control_socket.clone();
        let deadline = Instant::now() + MIGRATE_TIMEOUT;
        loop {
            if !vm.is_alive() {
                return Err(VmmError::Qmp {
                    command: what.into(),
                    socket: qmp.clone(),
                    detail: format!(
                        "QEMU exited; its log:\n{}",
                        log_tail(&vm.handle().vmm_log, 20)
                    ),
                });
            }
            let st = match qmp_command(&qmp, "query-migrate", self.socket_timeout).await {
                Ok(st) => st,
                // QEMU exits when an incoming stream is bad: say that, not "reset by peer".
                Err(_) if vm.wait_exit(Duration::from_millis(500)).await.is_some() => continue,
                Err(e) => return Err(e),
            };
            match st.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let why = st.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(VmmError::Qmp {
                        command: what.into(),
                        socket: qmp,
                        detail: format!("migration failed: {why}"),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Qmp {
                    command: what.into(),
                    socket: qmp,
                    detail: format!("migration not complete within {MIGRATE_TIMEOUT:?}: {st}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) async fn qemu_snapshot(
        &self,
        vm: &mut RunningVmm,
        source: &VmmSpec,
        dest: &Path,
        then: AfterSnapshot,
    ) -> Result<Snapshot, VmmError> {
        let partial = Partial::create(dest)?;
        let state = partial.path.join(STATE_FILE);
        check_plain_path("snapshot state file", &state)?;
        source_disks(source)?;
        let memory_file = vm.handle().memory_file.clone();
        let mode = match memory_file {
            Some(_) => MemoryMode::File,
            None => MemoryMode::Stream,
        };
        let qmp = vm.handle().control_socket.clone();
        let t0 = Instant::now();
        let uri = format!("exec:cat > {}", state.display());
        qmp_commands(
            &qmp,
            &[
                ignore_shared(mode == MemoryMode::File),
                ("stop", Value::Null),
                ("migrate", json!({ "uri": uri })),
            ],
            self.socket_timeout,
        )
        .await?;
        let saved = async {
            self.wait_migration(vm, "migrate").await?;
            let mem_bytes = u64::from(source.memory_mib) << 20;
            if let Some(f) = &memory_file {
                crate::disk::clone_disk(f, &partial.path.join(MEM_FILE))?;
            }
            partial.finish(
                source,
                Saved {
                    vmm: VmmKind::Qemu,
                    bin: &self.bin,
                    memory: mode,
                    mem_bytes: if mode == MemoryMode::File {
                        mem_bytes
                    } else {
                        0
                    },
                    save_ms: t0.elapsed().as_millis() as u64,
                    qemu_img: self.qemu_img.as_deref(),
                },
            )
        }
        .await;
        let result = saved.and_then(|m| partial.commit(m));
        // The source runs again whether or not the snapshot worked, unless asked not to.
        if then == AfterSnapshot::Resume || result.is_err() {
            self.qemu_resume(vm).await?;
        }
        if let Ok(s) = &result {
            tracing::info!(vm = %source.name, dir = %s.dir.display(),
                save_ms = s.manifest.save_ms, disk_ms = s.manifest.disk_copy_ms, "qemu snapshot");
        }
        result
    }

    pub(crate) async fn qemu_restore(
        &self,
        snap: &Snapshot,
        spec: &VmmSpec,
    ) -> Result<(RunningVmm, RestoreReport), VmmError> {
        snap.check_restorable(spec, VmmKind::Qemu, &vmm_fingerprint(&self.bin)?)?;
        let state = snap.state_path();
        check_plain_path("snapshot state file", &state)?;
        let t0 = Instant::now();
        let disks = RestoredDisks::create(snap, spec, self.qemu_img.as_deref(), false)?;
        let disk_ms = t0.elapsed().as_millis() as u64;
        let mem = snap.mem_path();
        let memory = match snap.manifest.memory {
            MemoryMode::File => Memory::PrivateFile(&mem),
            MemoryMode::Stream => Memory::Incoming,
        };
        let t1 = Instant::now();
        let launched = match self.argv_with(spec, memory) {
            Ok(argv) => self.launch(spec, &argv, None).await,
            Err(e) => Err(e),
        };
        let mut vm = launched?;
        let qmp = vm.handle().control_socket.clone();
        let loaded = async {
            let uri = format!("exec:cat {}", state.display());
            qmp_commands(
                &qmp,
                &[
                    ignore_shared(snap.manifest.memory == MemoryMode::File),
                    ("migrate-incoming", json!({ "uri": uri })),
                ],
                self.socket_timeout,
            )
            .await?;
            self.wait_migration(&mut vm, "migrate-incoming").await?;
            qmp_command(&qmp, "cont", self.socket_timeout).await?;
            let st = qmp_command(&qmp, "query-status", self.socket_timeout).await?;
            if st.get("running").and_then(Value::as_bool) != Some(true) {
                return Err(VmmError::Qmp {
                    command: "cont".into(),
                    socket: qmp.clone(),
                    detail: format!("guest is not running after restore: {st}"),
                });
            }
            Ok(())
        };
        if let Err(e) = loaded.await {
            let log = log_tail(&vm.handle().vmm_log, 20);
            abort(&mut vm).await;
            return Err(VmmError::Snapshot {
                dir: snap.dir.clone(),
                reason: format!("QEMU could not restore it: {e}\nQEMU's log:\n{log}"),
            });
        }
        let report = RestoreReport {
            disks: disks.keep(),
            disk_ms,
            restore_ms: t1.elapsed().as_millis() as u64,
        };
        tracing::info!(vm = %spec.name, pid = vm.pid(), restore_ms = report.restore_ms, "qemu restored");
        Ok((vm, report))
    }
}
