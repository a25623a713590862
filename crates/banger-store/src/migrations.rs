//! Forward-only schema migrations, applied in order inside one transaction
//! each. Index `i` of [`MIGRATIONS`] moves the schema from version `i` to
//! `i + 1`; released migrations are never edited, only appended to.

use rusqlite::Connection;

use crate::{Result, StoreError};

const MIGRATIONS: &[&str] = &[
    // 0 -> 1: the first schema.
    "CREATE TABLE kernels (
        name TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        dir TEXT NOT NULL,
        has_vmlinux INTEGER NOT NULL,
        pvh INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE images (
        name TEXT PRIMARY KEY,
        digest TEXT NOT NULL,
        kernel TEXT NOT NULL REFERENCES kernels(name),
        size_bytes INTEGER NOT NULL,
        origin TEXT NOT NULL,
        dir TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        image TEXT NOT NULL,
        kernel TEXT NOT NULL,
        vcpu INTEGER NOT NULL,
        memory_mib INTEGER NOT NULL,
        disk_bytes INTEGER NOT NULL,
        mac TEXT NOT NULL UNIQUE,
        vmm TEXT NOT NULL,
        pid INTEGER,
        pid_start INTEGER,
        reason TEXT,
        no_egress INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE leases (
        ip TEXT PRIMARY KEY,
        vm TEXT NOT NULL UNIQUE REFERENCES vms(name) ON DELETE CASCADE,
        leased_at INTEGER NOT NULL
    );",
];

pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
