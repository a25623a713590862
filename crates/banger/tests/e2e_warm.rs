//! Warm starts with real guests under QEMU/TCG, in the e2e harness (its own network
//! namespace, root helper and daemon, the cached minimal image with the static agent):
//! `image warm` boots one VM and snapshots it; VMs restored from that one snapshot each
//! get their own identity (hostname, MAC, IP, ssh host key, machine-id), reach each
//! other by `<name>.vm` and take `vm ssh` with strict host-key checking; `vm run --rm`
//! from it exits 0 and leaves nothing; restored VMs are re-adopted by a restarted
//! daemon; a snapshot QEMU cannot load is discarded with a warning and the run boots
//! cold, and that cold boot makes the next snapshot. Skips with a message where it
//! cannot run (not root, no qemu, no mmdebstrap).
//!
//! One test function on purpose: the scenarios share the one booted image and the one
//! warm snapshot, which is the expensive part (a cold boot is 30–90 s under TCG).

mod common;

use common::guests::{
    GuestEnv, LONG, MINIMAL_IMAGE as IMAGE, SHORT, agent_binary, minimal_image, skip_reason,
};

use std::path::{Path, PathBuf};
use std::time::Instant;

const SHAPE: [&str; 6] = ["--image", IMAGE, "--vcpu", "2", "--memory", "1024"];

fn show(env: &GuestEnv, vm: &str) -> serde_json::Value {
    let (code, out, err) = env.banger(&["vm", "show", vm, "--json"], SHORT);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).expect("vm show json")
}

/// `sh -c SCRIPT` in `vm` through the agent: (exit code, trimmed stdout).
fn sh(env: &GuestEnv, vm: &str, script: &str) -> (i32, String) {
    let (code, out, _) = env.banger(&["vm", "exec", vm, "--", "sh", "-c", script], SHORT);
    (code, out.trim().to_string())
}

/// The complete warm snapshot generations on disk.
fn generations(state: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for key in std::fs::read_dir(state.join("snapshots/warm"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for g in std::fs::read_dir(key.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = g.file_name().to_string_lossy().into_owned();
            if n.starts_with('g') && !n.ends_with(".partial") && g.path().is_dir() {
                out.push(g.path());
            }
        }
    }
    out.sort();
    out
}

/// Replaces the start of a snapshot's state stream with zeros and records the new
/// checksum in its manifest, so the snapshot passes banger's checks and QEMU itself
/// refuses the stream.
fn corrupt_state(generation: &Path) {
    let state = generation.join("state");
    let mut bytes = std::fs::read(&state).expect("state");
    let n = bytes.len().min(4096);
    bytes[..n].fill(0);
    std::fs::write(&state, &bytes).expect("write state");
    let out = std::process::Command::new("sha256sum")
        .arg(&state)
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string();
    let mf = generation.join("snapshot.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mf).expect("manifest")).expect("json");
    m["state_sha256"] = sum.into();
    m["state_bytes"] = bytes.len().into();
    std::fs::write(&mf, m.to_string()).expect("write manifest");
}

/// Copies `vm`'s console log to `$BANGER_TEST_CACHE/e2e-warm-consoles/` (its VM
/// directory goes with the VM), so every guest's console outlives the test.
fn keep_console(env: &GuestEnv, vm: &str) {
    let dir = banger_testkit::test_cache_dir().join("e2e-warm-consoles");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::copy(
        env.path(&format!("state/vms/{vm}/console.log")),
        dir.join(format!("{vm}.log")),
    );
}

fn run_true(env: &GuestEnv) -> (i32, String, f64) {
    let mut args = vec!["vm", "run", "--rm", "--timings"];
    args.extend(SHAPE);
    args.extend(["--", "true"]);
    let t0 = Instant::now();
    let (code, _, err) = env.banger(&args, LONG);
    (code, err, t0.elapsed().as_secs_f64())
}

#[test]
fn warm_starts_with_real_guests() {
    if let Some(why) = skip_reason(&["ssh", "sha256sum"]) {
        eprintln!("SKIP: real-guest warm start test: {why}");
        return;
    }
    let agent = agent_binary();
    let built = minimal_image(&agent);
    let mut env = GuestEnv::start("warm");
    // VMs reach each other only without isolation (docs/privilege-model.md).
    std::fs::write(env.config_file(), "[network]\nisolate_vms = false\n").expect("config");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    env.start_daemons_with(&["--isolate-vms", "false"]);
    env.register_minimal(&built, "e2e-kernel");
    let state = env.path("state");

    // `image warm`: one cold boot, snapshotted; its VM is gone afterwards.
    let mut args = vec!["image", "warm", IMAGE, "--vcpu", "2", "--memory", "1024"];
    args.push("--json");
    let t0 = Instant::now();
    let (code, out, err) = env.banger(&args, LONG);
    assert_eq!(code, 0, "{err}");
    eprintln!("image warm took {:.1}s", t0.elapsed().as_secs_f64());
    let info: serde_json::Value = serde_json::from_str(&out).expect("warm json");
    assert_eq!(info["made"], true, "{info}");
    assert_eq!(
        (info["vcpu"].as_u64(), info["memory_mib"].as_u64()),
        (Some(2), Some(1024))
    );
    assert!(env.vm_names().is_empty(), "the warm VM was deleted");
    let first = generations(&state);
    assert_eq!(first.len(), 1, "{first:?}");
    // Asked again, it is answered with the same snapshot.
    let (code, out, err) = env.banger(&args, LONG);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).expect("warm json");
    assert_eq!(
        (again["made"].clone(), again["dir"].clone()),
        (false.into(), info["dir"].clone())
    );

    // `vm run --rm -- true` restores, says so, exits 0 and leaves nothing behind.
    let (code, err, secs) = run_true(&env);
    assert_eq!(code, 0, "{err}");
    eprintln!("warm vm run --rm -- true: {secs:.2}s");
    assert!(err.contains("timing: restore"), "{err}");
    assert!(!err.contains("timing: boot"), "{err}");
    assert!(
        err.contains("root: qcow2 overlay"),
        "which disk path: {err}"
    );
    assert!(env.vm_names().is_empty(), "--rm deleted the VM");
    let left: Vec<_> = std::fs::read_dir(state.join("vms"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "VM directories left: {left:?}");
    let mem_left: Vec<_> = std::fs::read_dir(env.path("run/mem"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(mem_left.is_empty(), "guest RAM files left: {mem_left:?}");
    let (_, taps, _) = env.netns(&["ip", "-o", "link", "show", "type", "tun"], SHORT);
    assert!(!taps.contains("bangertap"), "taps removed: {taps}");

    // Two VMs from the one snapshot: each its own identity.
    for vm in ["wa", "wb"] {
        let mut a = vec!["vm", "create", "--name", vm];
        a.extend(SHAPE);
        let (code, out, err) = env.banger(&a, LONG);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&format!("created {vm} (running)")), "{out}");
    }
    let mut facts = Vec::new();
    for vm in ["wa", "wb"] {
        let info = show(&env, vm);
        assert_eq!(info["restored_from"].as_str(), first[0].to_str(), "{info}");
        let ip = info["ip"].as_str().expect("ip").to_string();
        let mac = info["mac"].as_str().expect("mac").to_string();
        let (code, host) = sh(&env, vm, "cat /proc/sys/kernel/hostname /etc/hostname");
        assert_eq!((code, host), (0, format!("{vm}\n{vm}")));
        let (code, guest_mac) = sh(&env, vm, "cat /sys/class/net/eth0/address");
        assert_eq!((code, guest_mac), (0, mac.clone()));
        let (code, addr) = sh(&env, vm, "ip -4 -o addr show dev eth0");
        assert_eq!(code, 0);
        assert!(addr.contains(&format!("inet {ip}/")), "{vm}: {addr}");
        let (code, key) = sh(&env, vm, "cat /etc/ssh/ssh_host_ed25519_key.pub");
        assert_eq!(code, 0);
        let pinned = std::fs::read_to_string(state.join("ssh/known_hosts")).expect("known_hosts");
        let key_body = key.split_whitespace().nth(1).expect("key").to_string();
        assert!(
            pinned
                .lines()
                .any(|l| l.contains(&format!("{vm}.vm")) && l.contains(&key_body)),
            "{vm}'s host key is the pinned one: {key}\n{pinned}"
        );
        let (code, mid) = sh(&env, vm, "cat /etc/machine-id");
        assert_eq!((code, mid.len()), (0, 32), "{mid}");
        // sshd with strict host-key checking against the pinned key
        let (code, out, err) = env.banger(&["vm", "ssh", vm, "--", "uname", "-n"], LONG);
        assert_eq!((code, out.trim()), (0, vm), "{err}");
        facts.push((ip, mac, key_body, mid));
    }
    let (a, b) = (&facts[0], &facts[1]);
    assert_ne!(a.0, b.0, "IP");
    assert_ne!(a.1, b.1, "MAC");
    assert_ne!(a.2, b.2, "ssh host key");
    assert_ne!(a.3, b.3, "machine-id");
    // They reach each other by name: banger's DNS, then sshd's banner over the bridge.
    for (from, to, ip) in [("wa", "wb", &b.0), ("wb", "wa", &a.0)] {
        let probe = format!(
            "getent hosts {to}.vm; timeout 10 bash -c 'exec 3<>/dev/tcp/{to}.vm/22; head -c 7 <&3'"
        );
        let (code, out) = sh(&env, from, &probe);
        assert_eq!(code, 0, "{from} → {to}.vm: {out}");
        assert!(
            out.starts_with(ip.as_str()) && out.ends_with("SSH-2.0"),
            "{out}"
        );
    }

    // A restarted daemon re-adopts restored VMs.
    env.stop_daemon();
    env.start_daemon();
    let (code, out) = sh(&env, "wa", "cat /etc/hostname");
    assert_eq!(
        (code, out.as_str()),
        (0, "wa"),
        "re-adopted restored VM answers"
    );
    assert!(
        env.log("bangerd.log").contains("re-adopted running VM"),
        "{}",
        env.log("bangerd.log")
    );
    assert_eq!(
        show(&env, "wb")["restored_from"].as_str(),
        first[0].to_str()
    );

    // A snapshot QEMU refuses: discarded with a warning (kept, retired, while wa and wb
    // back onto it), the run boots cold, and that cold boot makes the next snapshot.
    corrupt_state(&first[0]);
    let (code, err, secs) = run_true(&env);
    assert_eq!(code, 0, "{err}");
    eprintln!("cold fallback vm run --rm -- true: {secs:.2}s");
    assert!(err.contains("timing: boot"), "{err}");
    let log = env.log("bangerd.log");
    assert!(log.contains("discarding warm snapshot"), "{log}");
    assert!(
        first[0].join("retired").exists(),
        "retired, not removed: wa and wb use it"
    );
    let now = generations(&state);
    assert_eq!(now.len(), 2, "the cold boot made a new snapshot: {now:?}");
    let (code, err, secs) = run_true(&env);
    assert_eq!(code, 0, "{err}");
    eprintln!("warm vm run --rm -- true from the new snapshot: {secs:.2}s");
    assert!(err.contains("timing: restore"), "{err}");
    // Once its last user is gone, the retired snapshot goes too.
    for vm in ["wa", "wb"] {
        keep_console(&env, vm);
        let (code, _, err) = env.banger(&["vm", "delete", vm], LONG);
        assert_eq!(code, 0, "{err}");
    }
    assert!(
        !first[0].exists(),
        "retired snapshot removed with its last VM"
    );
    assert_eq!(generations(&state).len(), 1);
    // Deleting the image deletes its snapshots.
    let (code, _, err) = env.banger(&["image", "delete", IMAGE], SHORT);
    assert_eq!(code, 0, "{err}");
    assert!(generations(&state).is_empty(), "{:?}", generations(&state));
}
