//! banger's persistent state in SQLite.
//!
//! One database file under the state dir, opened in WAL mode. The schema is
//! versioned with `PRAGMA user_version` and migrated forward at open; a
//! database from a newer banger is refused rather than misread.
//!
//! Uniqueness that matters for safety (VM names, MACs, IP addresses) is
//! enforced by the schema itself, so concurrent creates cannot collide even
//! if the daemon's own checks race.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use banger_proto::VmState;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use thiserror::Error;

mod migrations;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open state database {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state database {path} has schema version {found}, newer than this banger understands ({supported}); upgrade banger"
    )]
    TooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("a VM named {0:?} already exists; pick another name or delete it first")]
    VmExists(String),
    #[error("no VM named {0:?}")]
    VmNotFound(String),
    #[error("an image named {0:?} already exists; delete it first or pick another name")]
    ImageExists(String),
    #[error("no image named {0:?}")]
    ImageNotFound(String),
    #[error("a kernel named {0:?} already exists; delete it first or pick another name")]
    KernelExists(String),
    #[error("no kernel named {0:?}")]
    KernelNotFound(String),
    #[error("{what} {name:?} is in use by {users}; delete those first")]
    InUse {
        what: &'static str,
        name: String,
        users: String,
    },
    /// A compare-and-set lost its race: another request changed the VM first.
    #[error(
        "VM {name:?} changed state while this request ran (it is {found} now, not {expected}); try again"
    )]
    StateChanged {
        name: String,
        expected: VmState,
        found: VmState,
    },
    #[error("no free address left in {0}; delete a VM or configure a larger [network] subnet")]
    SubnetFull(String),
    #[error("state database error: {0}")]
    Sql(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Chooses a free address given the addresses already leased.
pub type IpPicker<'a> = &'a dyn Fn(&[String]) -> Option<String>;

/// A VM row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRecord {
    pub name: String,
    pub state: VmState,
    pub image: String,
    pub kernel: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub mac: String,
    pub ip: Option<String>,
    pub vmm: String,
    pub pid: Option<u32>,
    /// Process start time (clock ticks since boot, /proc/<pid>/stat field
    /// 22) so a recycled pid is never mistaken for our VMM.
    pub pid_start: Option<u64>,
    pub reason: Option<String>,
    pub no_egress: bool,
    pub created_at: i64,
    /// Free-form JSON owned by the daemon (spec provenance, driver details).
    pub extra: String,
}

impl VmRecord {
    /// A row about to be inserted: state `creating`, no address or process
    /// yet, empty extra; the caller fills in the rest.
    pub fn creating(name: &str, image: &str, kernel: &str, mac: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            state: VmState::Creating,
            image: image.into(),
            kernel: kernel.into(),
            vcpu: 1,
            memory_mib: 128,
            disk_bytes: 0,
            mac: mac.into(),
            ip: None,
            vmm: "none".into(),
            pid: None,
            pid_start: None,
            reason: None,
            no_egress: false,
            created_at: 0,
            extra: "{}".into(),
        }
    }
}

/// An image row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub digest: String,
    pub kernel: String,
    pub size_bytes: u64,
    pub origin: String,
    pub dir: String,
    pub created_at: i64,
}

/// A kernel row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    pub name: String,
    pub version: String,
    pub dir: String,
    pub has_vmlinux: bool,
    pub pvh: bool,
    pub created_at: i64,
}

pub struct Store {
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why a compare-and-set on `name` wrote nothing: the VM is gone, or its
/// state is no longer `expected`.
fn state_changed(conn: &Connection, name: &str, expected: VmState) -> Result<StoreError> {
    let found: Option<String> = conn
        .query_row("SELECT state FROM vms WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(match found {
        None => StoreError::VmNotFound(name.to_string()),
        Some(f) => StoreError::StateChanged {
            name: name.to_string(),
            expected,
            found: VmState::parse(&f).unwrap_or(VmState::Error),
        },
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

const VM_COLS: &str = "name, state, image, kernel, vcpu, memory_mib, disk_bytes, mac, \
    (SELECT ip FROM leases WHERE leases.vm = vms.name), vmm, pid, pid_start, reason, no_egress, created_at, extra";

fn vm_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VmRecord> {
    let state: String = r.get(1)?;
    Ok(VmRecord {
        name: r.get(0)?,
        state: VmState::parse(&state).unwrap_or(VmState::Error),
        image: r.get(2)?,
        kernel: r.get(3)?,
        vcpu: r.get(4)?,
        memory_mib: r.get::<_, i64>(5)? as u64,
        disk_bytes: r.get::<_, i64>(6)? as u64,
        mac: r.get(7)?,
        ip: r.get(8)?,
        vmm: r.get(9)?,
        pid: r.get(10)?,
        pid_start: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        reason: r.get(12)?,
        no_egress: r.get(13)?,
        created_at: r.get(14)?,
        extra: r.get(15)?,
    })
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let p = path.display().to_string();
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: p.clone(),
            source,
        })?;
        Store::init(conn, &p)
    }

    /// An in-memory store for tests.
    pub fn open_in_memory() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        Store::init(conn, ":memory:")
    }

    fn init(mut conn: Connection, path: &str) -> Result<Store> {
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        migrations::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- VMs -------------------------------------------------------------

    /// Registers a new VM (normally in state `creating`) and leases it an
    /// address chosen by `pick_ip` from the addresses already leased, in one
    /// transaction: either both happen or neither does.
    pub fn insert_vm(
        &self,
        vm: &VmRecord,
        pick_ip: Option<IpPicker<'_>>,
        subnet_label: &str,
    ) -> Result<VmRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let r = tx.execute(
            "INSERT INTO vms (name, state, image, kernel, vcpu, memory_mib, disk_bytes, mac, vmm, pid, pid_start, reason, no_egress, created_at, extra)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                vm.name,
                vm.state.as_str(),
                vm.image,
                vm.kernel,
                vm.vcpu,
                vm.memory_mib as i64,
                vm.disk_bytes as i64,
                vm.mac,
                vm.vmm,
                vm.pid,
                vm.pid_start.map(|v| v as i64),
                vm.reason,
                vm.no_egress,
                if vm.created_at == 0 { now() } else { vm.created_at },
                vm.extra,
            ],
        );
        match r {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                let name_taken: bool = tx
                    .query_row("SELECT 1 FROM vms WHERE name = ?1", [&vm.name], |_| {
                        Ok(true)
                    })
                    .optional()?
                    .unwrap_or(false);
                if name_taken {
                    return Err(StoreError::VmExists(vm.name.clone()));
                }
                return Err(StoreError::Sql(e));
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(pick) = pick_ip {
            let used: Vec<String> = {
                let mut st = tx.prepare("SELECT ip FROM leases")?;
                st.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            let ip = pick(&used).ok_or_else(|| StoreError::SubnetFull(subnet_label.to_string()))?;
            tx.execute(
                "INSERT INTO leases (ip, vm, leased_at) VALUES (?1, ?2, ?3)",
                params![ip, vm.name, now()],
            )?;
        }
        tx.commit()?;
        drop(conn);
        self.get_vm(&vm.name)
    }

    pub fn get_vm(&self, name: &str) -> Result<VmRecord> {
        self.conn()
            .query_row(
                &format!("SELECT {VM_COLS} FROM vms WHERE name = ?1"),
                [name],
                vm_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::VmNotFound(name.to_string()))
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {VM_COLS} FROM vms ORDER BY created_at, name"
        ))?;
        let rows = st
            .query_map([], vm_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Moves `name` from state `from` to `to`, recording `reason` (cleared
    /// when None), only if it is still in `from`: compare-and-set. When
    /// another request changed the state first, nothing is written and the
    /// answer is [`StoreError::StateChanged`] with the state found. This is
    /// the only way a VM's state is written after its insert.
    pub fn transition_vm(
        &self,
        name: &str,
        from: VmState,
        to: VmState,
        reason: Option<&str>,
    ) -> Result<()> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE vms SET state = ?3, reason = ?4 WHERE name = ?1 AND state = ?2",
            params![name, from.as_str(), to.as_str(), reason],
        )?;
        if n == 1 {
            return Ok(());
        }
        Err(state_changed(&conn, name, from)?)
    }

    /// Records (or clears) the VMM process identity.
    pub fn set_vm_process(&self, name: &str, pid: Option<u32>, start: Option<u64>) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE vms SET pid = ?2, pid_start = ?3 WHERE name = ?1",
            params![name, pid, start.map(|v| v as i64)],
        )?;
        if n == 0 {
            return Err(StoreError::VmNotFound(name.to_string()));
        }
        Ok(())
    }

    pub fn set_vm_extra(&self, name: &str, extra: &str) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE vms SET extra = ?2 WHERE name = ?1",
            params![name, extra],
        )?;
        if n == 0 {
            return Err(StoreError::VmNotFound(name.to_string()));
        }
        Ok(())
    }

    /// Deletes the VM row if it is still in state `from` (compare-and-set,
    /// like [`Store::transition_vm`]); its lease goes with it (foreign key
    /// cascade).
    pub fn delete_vm(&self, name: &str, from: VmState) -> Result<()> {
        let conn = self.conn();
        let n = conn.execute(
            "DELETE FROM vms WHERE name = ?1 AND state = ?2",
            params![name, from.as_str()],
        )?;
        if n == 1 {
            return Ok(());
        }
        Err(state_changed(&conn, name, from)?)
    }

    pub fn leased_ips(&self) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT ip, vm FROM leases ORDER BY ip")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ---- images ----------------------------------------------------------

    pub fn insert_image(&self, img: &ImageRecord) -> Result<()> {
        let r = self.conn().execute(
            "INSERT INTO images (name, digest, kernel, size_bytes, origin, dir, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                img.name,
                img.digest,
                img.kernel,
                img.size_bytes as i64,
                img.origin,
                img.dir,
                if img.created_at == 0 { now() } else { img.created_at }
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::ImageExists(img.name.clone())),
            Err(e) if matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => {
                Err(StoreError::KernelNotFound(img.kernel.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn get_image(&self, name: &str) -> Result<ImageRecord> {
        self.conn()
            .query_row(
                "SELECT name, digest, kernel, size_bytes, origin, dir, created_at FROM images WHERE name = ?1",
                [name],
                image_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::ImageNotFound(name.to_string()))
    }

    pub fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, digest, kernel, size_bytes, origin, dir, created_at FROM images ORDER BY name",
        )?;
        let rows = st
            .query_map([], image_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes an image unless a VM still uses it.
    pub fn delete_image(&self, name: &str) -> Result<ImageRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let img = tx
            .query_row(
                "SELECT name, digest, kernel, size_bytes, origin, dir, created_at FROM images WHERE name = ?1",
                [name],
                image_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::ImageNotFound(name.to_string()))?;
        let users = users_of(
            &tx,
            "SELECT name FROM vms WHERE image = ?1 ORDER BY name",
            name,
        )?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                what: "image",
                name: name.to_string(),
                users: format!("VM {}", users.join(", ")),
            });
        }
        tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(img)
    }

    // ---- kernels ---------------------------------------------------------

    pub fn insert_kernel(&self, k: &KernelRecord) -> Result<()> {
        let r = self.conn().execute(
            "INSERT INTO kernels (name, version, dir, has_vmlinux, pvh, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                k.name,
                k.version,
                k.dir,
                k.has_vmlinux,
                k.pvh,
                if k.created_at == 0 { now() } else { k.created_at }
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::KernelExists(k.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    pub fn get_kernel(&self, name: &str) -> Result<KernelRecord> {
        self.conn()
            .query_row(
                "SELECT name, version, dir, has_vmlinux, pvh, created_at FROM kernels WHERE name = ?1",
                [name],
                kernel_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::KernelNotFound(name.to_string()))
    }

    pub fn list_kernels(&self) -> Result<Vec<KernelRecord>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT name, version, dir, has_vmlinux, pvh, created_at FROM kernels ORDER BY name",
        )?;
        let rows = st
            .query_map([], kernel_from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes a kernel unless an image or a VM references it.
    pub fn delete_kernel(&self, name: &str) -> Result<KernelRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let k = tx
            .query_row(
                "SELECT name, version, dir, has_vmlinux, pvh, created_at FROM kernels WHERE name = ?1",
                [name],
                kernel_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::KernelNotFound(name.to_string()))?;
        let mut users: Vec<String> = users_of(
            &tx,
            "SELECT name FROM images WHERE kernel = ?1 ORDER BY name",
            name,
        )?
        .into_iter()
        .map(|n| format!("image {n}"))
        .collect();
        users.extend(
            users_of(
                &tx,
                "SELECT name FROM vms WHERE kernel = ?1 ORDER BY name",
                name,
            )?
            .into_iter()
            .map(|n| format!("VM {n}")),
        );
        if !users.is_empty() {
            return Err(StoreError::InUse {
                what: "kernel",
                name: name.to_string(),
                users: users.join(", "),
            });
        }
        tx.execute("DELETE FROM kernels WHERE name = ?1", [name])?;
        tx.commit()?;
        Ok(k)
    }
}

fn users_of(tx: &rusqlite::Transaction<'_>, sql: &str, name: &str) -> Result<Vec<String>> {
    let mut st = tx.prepare(sql)?;
    let rows = st
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

fn image_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ImageRecord> {
    Ok(ImageRecord {
        name: r.get(0)?,
        digest: r.get(1)?,
        kernel: r.get(2)?,
        size_bytes: r.get::<_, i64>(3)? as u64,
        origin: r.get(4)?,
        dir: r.get(5)?,
        created_at: r.get(6)?,
    })
}

fn kernel_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KernelRecord> {
    Ok(KernelRecord {
        name: r.get(0)?,
        version: r.get(1)?,
        dir: r.get(2)?,
        has_vmlinux: r.get(3)?,
        pvh: r.get(4)?,
        created_at: r.get(5)?,
    })
}

#[cfg(test)]
mod tests;
