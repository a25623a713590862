//! Contract test: every request body the Firecracker driver sends validates against the
//! official OpenAPI spec (`../shared/firecracker/firecracker-api.yaml` beside the repo).

use std::path::Path;

use banger_testkit::openapi::{OpenApi, firecracker_spec_path};
use banger_vmm::firecracker::api_requests;
use banger_vmm::firecracker_snapshot::{
    pause_request, restore_requests, resume_request, snapshot_create_request,
};
use banger_vmm::{KernelFiles, MacAddr, NetSpec, VmmSpec, VsockSpec};
use serde_json::json;

fn load() -> Option<OpenApi> {
    let path = firecracker_spec_path();
    if !path.exists() {
        eprintln!("SKIP: Firecracker API spec not found at {}", path.display());
        return None;
    }
    Some(OpenApi::load(&path).expect("load the Firecracker spec"))
}

fn specs() -> Vec<(&'static str, VmmSpec, bool)> {
    let kernel = KernelFiles {
        vmlinux: Some("/var/lib/banger/kernels/6.1/vmlinux".into()),
        vmlinuz: None,
        initrd: None,
    };
    let dir = Path::new("/var/lib/banger/vms/dev");
    let minimal = VmmSpec::new("dev", dir, kernel.clone(), &dir.join("root.ext4"));
    let mut full = minimal.clone();
    full.name = "web-01".into();
    full.vcpus = 4;
    full.memory_mib = 4096;
    full.kernel.initrd = Some("/var/lib/banger/kernels/6.1/initrd.img".into());
    full.work_disk = Some(dir.join("work.ext4"));
    full.net = Some(NetSpec {
        tap: "bgr-web-01".into(),
        mac: MacAddr::derive("web-01"),
    });
    full.vsock = Some(VsockSpec {
        guest_cid: 42,
        uds_path: dir.join("v.sock"),
    });
    full.boot_args = "root=/dev/vda rw quiet loglevel=3".into();
    let mut one_cpu = minimal.clone();
    one_cpu.vcpus = 1;
    one_cpu.memory_mib = 128;
    one_cpu.vsock = Some(VsockSpec {
        guest_cid: 3,
        uds_path: dir.join("v.sock"),
    });
    let mut big = full.clone();
    big.vcpus = 32;
    big.memory_mib = 65536;
    vec![
        ("minimal", minimal, false),
        ("full", full, true),
        ("one-cpu-vsock", one_cpu, true),
        ("max-cpus", big, false),
    ]
}

#[test]
fn every_request_the_driver_sends_validates_against_the_official_spec() {
    let Some(api) = load() else { return };
    let mut checked = 0;
    for (label, spec, entropy) in specs() {
        let reqs = api_requests(&spec, entropy).expect("requests");
        assert_eq!(
            reqs.last().map(|r| r.path.as_str()),
            Some("/actions"),
            "{label}: InstanceStart must be last"
        );
        assert_eq!(
            reqs.last().map(|r| r.body.clone()),
            Some(json!({"action_type": "InstanceStart"}))
        );
        for r in &reqs {
            if let Err(errors) = api.validate(r.method, &r.path, &r.body) {
                panic!(
                    "{label}: {} {} body {} is invalid:\n{}",
                    r.method,
                    r.path,
                    r.body,
                    errors.join("\n")
                );
            }
            checked += 1;
        }
        let boot = reqs
            .iter()
            .find(|r| r.path == "/boot-source")
            .expect("boot-source");
        let args = boot.body["boot_args"].as_str().expect("boot_args");
        assert!(!args.contains("nomodule"), "{label}: {args}");
        assert!(args.contains("console=ttyS0"), "{label}: {args}");
    }
    // The stop request too.
    api.validate("PUT", "/actions", &json!({"action_type": "SendCtrlAltDel"}))
        .expect("SendCtrlAltDel");
    eprintln!("{checked} request bodies validated");
    assert!(checked >= 30);
}

#[test]
fn the_validator_rejects_wrong_bodies() {
    let Some(api) = load() else { return };
    let bad = [
        ("PUT", "/machine-config", json!({"vcpu_count": 2})), // missing mem_size_mib
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": "2", "mem_size_mib": 512}),
        ), // wrong type
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 64, "mem_size_mib": 512}),
        ), // above maximum
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": "/k", "bootargs": "x"}),
        ), // unknown field
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": "/r"}),
        ), // missing is_root_device
        (
            "PUT",
            "/drives/rootfs",
            json!({"drive_id": "other", "path_on_host": "/r", "is_root_device": true}),
        ), // id mismatch
        ("PUT", "/actions", json!({"action_type": "Reboot"})), // not in enum
        ("PUT", "/vsock", json!({"guest_cid": 2, "uds_path": "/v"})), // below minimum
        (
            "PUT",
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0"}),
        ), // missing host_dev_name
        ("PUT", "/no-such-endpoint", json!({})),
    ];
    for (m, p, body) in bad {
        assert!(
            api.validate(m, p, &body).is_err(),
            "{m} {p} {body} was accepted"
        );
    }
}

#[test]
fn firecracker_refuses_specs_it_cannot_boot() {
    let (_, mut spec, _) = specs().remove(0);
    spec.kernel.vmlinux = None;
    spec.kernel.vmlinuz = Some("/boot/vmlinuz".into());
    assert!(
        api_requests(&spec, false).is_err(),
        "no vmlinux must be an error"
    );
    let (_, mut spec, _) = specs().remove(0);
    spec.vcpus = 3;
    assert!(
        api_requests(&spec, false).is_err(),
        "odd vcpu count > 1 must be an error"
    );
}

#[test]
fn every_snapshot_request_validates_against_the_official_spec() {
    let Some(api) = load() else { return };
    let snap_dir = Path::new("/var/lib/banger/snapshots/dev-1");
    let mut reqs = vec![
        pause_request(),
        resume_request(),
        snapshot_create_request(snap_dir),
    ];
    let mut loads = 0;
    for (label, mut spec, _) in specs() {
        // A restore goes into a new VM dir with its own tap and vsock socket.
        spec.vm_dir = "/var/lib/banger/vms/clone-1".into();
        if let Some(n) = &mut spec.net {
            n.tap = "bgr-clone-1".into();
        }
        if let Some(v) = &mut spec.vsock {
            v.uds_path = spec.vm_dir.join("v.sock");
        }
        let r = restore_requests(snap_dir, &spec);
        let load = r
            .iter()
            .find(|q| q.path == "/snapshot/load")
            .unwrap_or_else(|| panic!("{label}: no /snapshot/load"));
        assert_eq!(load.body["mem_backend"]["backend_type"], "File", "{label}");
        assert_eq!(
            load.body["network_overrides"][0]["host_dev_name"].as_str(),
            spec.net.as_ref().map(|n| n.tap.as_str()),
            "{label}"
        );
        assert_eq!(
            load.body["vsock_override"]["uds_path"].as_str(),
            spec.vsock.as_ref().and_then(|v| v.uds_path.to_str()),
            "{label}"
        );
        assert_eq!(
            r.last().map(|q| q.body.clone()),
            Some(json!({"state": "Resumed"}))
        );
        loads += 1;
        reqs.extend(r);
    }
    for r in &reqs {
        if let Err(errors) = api.validate(r.method, &r.path, &r.body) {
            panic!(
                "{} {} body {} is invalid:\n{}",
                r.method,
                r.path,
                r.body,
                errors.join("\n")
            );
        }
    }
    assert_eq!(
        snapshot_create_request(snap_dir).body["snapshot_type"],
        "Full"
    );
    eprintln!(
        "{} snapshot request bodies validated ({loads} restores)",
        reqs.len()
    );
    // The validator does check these schemas.
    for (m, p, body) in [
        ("PATCH", "/vm", json!({"state": "Frozen"})),
        ("PUT", "/snapshot/create", json!({"snapshot_path": "/s"})),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}),
        ),
        (
            "PUT",
            "/snapshot/load",
            json!({"snapshot_path": "/s", "network_overrides": [{"iface_id": "eth0"}]}),
        ),
    ] {
        assert!(
            api.validate(m, p, &body).is_err(),
            "{m} {p} {body} was accepted"
        );
    }
}

#[test]
fn disks_inside_the_vm_dir_are_named_relative_to_it() {
    let (_, spec, _) = specs().remove(1);
    let reqs = api_requests(&spec, false).expect("requests");
    let drive = |id: &str| {
        reqs.iter()
            .find(|r| r.path == format!("/drives/{id}"))
            .map(|r| r.body["path_on_host"].clone())
    };
    assert_eq!(drive("rootfs"), Some(json!("root.ext4")));
    assert_eq!(drive("work"), Some(json!("work.ext4")));
}
