use std::collections::HashSet;
use std::sync::Arc;

use super::*;

fn vm(name: &str, mac: &str) -> VmRecord {
    VmRecord {
        vcpu: 2,
        memory_mib: 1024,
        disk_bytes: 8 << 30,
        vmm: "qemu".into(),
        ..VmRecord::creating(name, "img", "k", mac)
    }
}

/// First free host address in 10.0.0.0/24 after the gateway.
fn first_free(used: &[String]) -> Option<String> {
    (2..255)
        .map(|i| format!("10.0.0.{i}"))
        .find(|ip| !used.contains(ip))
}

#[test]
fn vm_round_trip_and_lease() {
    let s = Store::open_in_memory().expect("open");
    let r = s
        .insert_vm(
            &vm("a", "02:00:00:00:00:01"),
            Some(&first_free),
            "10.0.0.0/24",
        )
        .expect("insert");
    assert_eq!(r.ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(r.state, VmState::Creating);
    assert!(r.created_at > 0);
    let r2 = s
        .insert_vm(
            &vm("b", "02:00:00:00:00:02"),
            Some(&first_free),
            "10.0.0.0/24",
        )
        .expect("insert");
    assert_eq!(r2.ip.as_deref(), Some("10.0.0.3"));
    assert_eq!(s.list_vms().expect("list").len(), 2);

    // delete frees the lease, and the address is reused
    s.delete_vm("a", VmState::Creating).expect("delete");
    assert_eq!(s.leased_ips().expect("leases").len(), 1);
    let r3 = s
        .insert_vm(
            &vm("c", "02:00:00:00:00:03"),
            Some(&first_free),
            "10.0.0.0/24",
        )
        .expect("insert");
    assert_eq!(r3.ip.as_deref(), Some("10.0.0.2"));
    assert!(matches!(s.get_vm("a"), Err(StoreError::VmNotFound(_))));
    assert!(matches!(
        s.delete_vm("a", VmState::Creating),
        Err(StoreError::VmNotFound(_))
    ));
}

#[test]
fn duplicate_name_is_refused_and_leaves_no_lease() {
    let s = Store::open_in_memory().expect("open");
    s.insert_vm(&vm("a", "02:00:00:00:00:01"), Some(&first_free), "n")
        .expect("insert");
    let err = s
        .insert_vm(&vm("a", "02:00:00:00:00:09"), Some(&first_free), "n")
        .expect_err("duplicate");
    assert!(
        matches!(err, StoreError::VmExists(ref n) if n == "a"),
        "{err}"
    );
    assert_eq!(s.leased_ips().expect("leases").len(), 1);
}

#[test]
fn full_subnet_rolls_back_the_vm() {
    let s = Store::open_in_memory().expect("open");
    let none = |_: &[String]| None;
    let err = s
        .insert_vm(&vm("a", "02:00:00:00:00:01"), Some(&none), "10.0.0.0/29")
        .expect_err("full");
    assert_eq!(
        err.to_string(),
        "no free address left in 10.0.0.0/29; delete a VM or configure a larger [network] subnet"
    );
    assert!(s.list_vms().expect("list").is_empty());
}

#[test]
fn transitions_are_compare_and_set() {
    let s = Store::open_in_memory().expect("open");
    s.insert_vm(&vm("a", "m1"), None, "n").expect("insert");
    s.transition_vm("a", VmState::Creating, VmState::Stopped, None)
        .expect("creating -> stopped");
    // A second writer that read `creating` too loses, and writes nothing.
    let lost = s
        .transition_vm("a", VmState::Creating, VmState::Error, Some("late"))
        .expect_err("lost race");
    assert!(
        matches!(
            lost,
            StoreError::StateChanged {
                expected: VmState::Creating,
                found: VmState::Stopped,
                ..
            }
        ),
        "{lost}"
    );
    let r = s.get_vm("a").expect("get");
    assert_eq!((r.state, r.reason), (VmState::Stopped, None));
    s.transition_vm("a", VmState::Stopped, VmState::Error, Some("boom"))
        .expect("stopped -> error");
    assert_eq!(s.get_vm("a").expect("get").reason.as_deref(), Some("boom"));
    s.set_vm_process("a", Some(42), Some(1234)).expect("proc");
    let r = s.get_vm("a").expect("get");
    assert_eq!((r.pid, r.pid_start), (Some(42), Some(1234)));
    // Deletes are compare-and-set too.
    let e = s.delete_vm("a", VmState::Stopped).expect_err("not stopped");
    assert!(matches!(e, StoreError::StateChanged { .. }), "{e}");
    assert!(matches!(
        s.transition_vm("b", VmState::Stopped, VmState::Error, None),
        Err(StoreError::VmNotFound(_))
    ));
    s.delete_vm("a", VmState::Error).expect("delete");
}

#[test]
fn images_and_kernels_refuse_delete_while_in_use() {
    let s = Store::open_in_memory().expect("open");
    let k = KernelRecord {
        name: "k".into(),
        version: "6.1".into(),
        dir: "/x".into(),
        has_vmlinux: true,
        pvh: false,
        created_at: 0,
    };
    s.insert_kernel(&k).expect("kernel");
    assert!(matches!(
        s.insert_kernel(&k),
        Err(StoreError::KernelExists(_))
    ));
    let img = ImageRecord {
        name: "img".into(),
        digest: "sha256:00".into(),
        kernel: "k".into(),
        size_bytes: 1,
        origin: "build".into(),
        dir: "/y".into(),
        created_at: 0,
    };
    s.insert_image(&img).expect("image");
    let orphan = ImageRecord {
        name: "orphan".into(),
        kernel: "nope".into(),
        ..img.clone()
    };
    assert!(matches!(
        s.insert_image(&orphan),
        Err(StoreError::KernelNotFound(_))
    ));
    s.insert_vm(&vm("a", "m1"), None, "n").expect("vm");

    let e = s.delete_image("img").expect_err("in use");
    assert_eq!(
        e.to_string(),
        "image \"img\" is in use by VM a; delete those first"
    );
    let e = s.delete_kernel("k").expect_err("in use");
    assert_eq!(
        e.to_string(),
        "kernel \"k\" is in use by image img, VM a; delete those first"
    );

    s.delete_vm("a", VmState::Creating).expect("vm delete");
    s.delete_image("img").expect("image delete");
    s.delete_kernel("k").expect("kernel delete");
    assert!(s.list_images().expect("list").is_empty());
    assert!(s.list_kernels().expect("list").is_empty());
}

#[test]
fn reopen_keeps_state_and_refuses_newer_schema() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("state.db");
    {
        let s = Store::open(&path).expect("open");
        s.insert_vm(&vm("a", "m1"), Some(&first_free), "n")
            .expect("vm");
    }
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.get_vm("a").expect("kept").ip.as_deref(), Some("10.0.0.2"));
    assert_eq!(s.schema_version().expect("v"), migrations::SCHEMA_VERSION);
    drop(s);
    let c = Connection::open(&path).expect("raw");
    c.pragma_update(None, "user_version", 99).expect("bump");
    drop(c);
    let e = Store::open(&path).err().expect("too new");
    assert!(
        e.to_string().contains("schema version 99, newer than"),
        "{e}"
    );
}

/// 50 creates at once from separate connections: every VM gets its own
/// address, none is lost and none is shared.
#[test]
fn concurrent_leases_never_collide() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = Arc::new(dir.path().join("state.db"));
    Store::open(&path).expect("init");
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                let s = Store::open(&path).expect("open");
                s.insert_vm(
                    &vm(&format!("vm{i}"), &format!("02:00:00:00:01:{i:02x}")),
                    Some(&first_free),
                    "10.0.0.0/24",
                )
                .expect("insert")
            })
        })
        .collect();
    let ips: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").ip.expect("leased"))
        .collect();
    let unique: HashSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), 50, "duplicate leases: {ips:?}");
}

#[test]
fn duplicate_mac_is_an_error_not_a_silent_overwrite() {
    let s = Store::open_in_memory().expect("open");
    s.insert_vm(&vm("a", "m1"), None, "n").expect("vm");
    let e = s
        .insert_vm(&vm("b", "m1"), None, "n")
        .expect_err("same mac");
    assert!(matches!(e, StoreError::Sql(_)), "{e}");
}
