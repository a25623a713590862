//! End to end with real guests: the root helper and the owner daemon run
//! inside a network namespace this test creates (and removes), guests boot
//! under the qemu driver (TCG here), and the CLI drives everything the way a
//! user would. Skips with a message where it cannot run (not root, no qemu,
//! no mmdebstrap).
//!
//! One test function on purpose: the daemon, the image and the guests are
//! expensive, and the scenarios below run in order against them.

mod common;

use common::git;

use common::guests::{
    GuestEnv, LONG, MINIMAL_IMAGE as IMAGE, SHORT, agent_binary, minimal_image, skip_reason,
};

use std::path::Path;
use std::time::{Duration, Instant};

fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.email", "e2e@example.invalid"]);
    git(dir, &["config", "user.name", "e2e"]);
    std::fs::write(dir.join(".gitignore"), "ignored.txt\n").expect("w");
    std::fs::write(dir.join("tracked.txt"), "tracked\n").expect("w");
    std::fs::write(dir.join("src/main.sh"), "echo hi\n").expect("w");
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "init"]);
    std::fs::write(dir.join("untracked.txt"), "u\n").expect("w");
    std::fs::write(dir.join("ignored.txt"), "i\n").expect("w");
}

#[test]
fn real_guests_end_to_end() {
    if let Some(why) = skip_reason(&["ssh", "dig"]) {
        eprintln!("SKIP: real-guest end-to-end test: {why}");
        return;
    }
    let agent = agent_binary();
    let built = minimal_image(&agent);

    let mut env = GuestEnv::start("e2e");
    // file_sync: written into every new VM's /root
    let h = env.home();
    std::fs::create_dir_all(h.join(".aws")).expect("mkdir");
    std::fs::write(h.join(".aws/credentials"), "secret\n").expect("w");
    std::fs::create_dir_all(h.join("bin")).expect("mkdir");
    std::fs::write(h.join("bin/tool"), "#!/bin/sh\necho tool\n").expect("w");
    std::fs::write(
        h.join(".config/banger/config.toml"),
        "[[file_sync]]\nhost = \"~/.aws\"\nguest = \"~/.aws\"\n\n[[file_sync]]\nhost = \"~/bin/tool\"\nguest = \"~/bin/tool\"\nmode = \"0755\"\n",
    )
    .expect("config");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    env.start_daemons();

    // register the image the user way
    env.register_minimal(&built, "e2e-kernel");

    // --dry-run: exactly the tracked files, and no VM
    let repo = env.path("myrepo");
    make_repo(&repo);
    let repo_s = repo.display().to_string();
    let (code, out, _) = env.banger(&["vm", "run", "--dry-run", &repo_s], SHORT);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [".gitignore", "src/main.sh", "tracked.txt"]
    );
    assert!(env.vm_names().is_empty(), "--dry-run created nothing");

    // workspace + command + --rm: the command's status comes back, only
    // tracked files made it, and the VM is gone afterwards
    let checks = "test -f tracked.txt && test -f src/main.sh && test ! -e untracked.txt && test ! -e ignored.txt \
                  && test \"$(pwd)\" = /root/myrepo || exit 99; exit 7";
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            IMAGE,
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--timings",
            &repo_s,
            "--",
            "sh",
            "-c",
            checks,
        ],
        LONG,
    );
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    assert!(
        out.starts_with("spec: 2 vCPU (flag), 1024 MiB RAM (flag)"),
        "{out}"
    );
    assert!(err.contains("timing: boot"), "{err}");
    assert!(env.vm_names().is_empty(), "--rm deleted the VM");

    // --include-untracked ships untracked (never ignored) files
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--image",
            IMAGE,
            "--vcpu",
            "2",
            "--memory",
            "1024",
            "--include-untracked",
            &repo_s,
            "--",
            "sh",
            "-c",
            "test -f untracked.txt && test ! -e ignored.txt && sleep 2 \
             && grep -q 'nothing to install' /root/.cache/banger/vm-run-tooling-myrepo.log",
        ],
        LONG,
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");

    // a long-lived VM: ssh with strict host key checking, exec, DNS
    let (code, out, err) = env.banger(
        &[
            "vm", "create", "--name", "box", "--image", IMAGE, "--vcpu", "2", "--memory", "1024",
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("created box (running)"), "{out}");
    let (code, out, err) = env.banger(&["vm", "ssh", "box", "--", "uname", "-n"], LONG);
    assert_eq!((code, out.trim()), (0, "box"), "{err}");
    let (code, _, _) = env.banger(&["vm", "exec", "box", "--", "sh", "-c", "exit 5"], SHORT);
    assert_eq!(code, 5);
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "box",
            "--",
            "stat",
            "-c",
            "%a %U",
            "/root",
            "/root/.ssh",
            "/root/.ssh/authorized_keys",
            "/root/.aws/credentials",
            "/root/bin/tool",
        ],
        SHORT,
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["700 root", "700 root", "600 root", "600 root", "755 root"]
    );
    let (code, out, _) = env.banger(
        &[
            "vm",
            "exec",
            "box",
            "--",
            "systemctl",
            "is-active",
            "multi-user.target",
        ],
        SHORT,
    );
    assert_eq!((code, out.trim()), (0, "active"));
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "no-such-command"], SHORT);
    assert_eq!(code, 127, "{out}");

    // a daemon restart does not stop running VMs: they are re-adopted
    env.stop_daemon();
    env.start_daemon();
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "cat", "/etc/hostname"], LONG);
    assert_eq!(
        (code, out.trim()),
        (0, "box"),
        "re-adopted VM still answers"
    );
    assert!(
        env.log("bangerd.log").contains("re-adopted running VM"),
        "{}",
        env.log("bangerd.log")
    );

    let (code, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let ip = info["ip"].as_str().expect("ip").to_string();
    // <name>.vm resolves through banger's DNS on the bridge; other names are refused
    let (code, out, _) = env.netns(
        &[
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            "@172.16.0.1",
            "box.vm",
            "A",
        ],
        SHORT,
    );
    assert_eq!((code, out.trim()), (0, ip.as_str()));
    let (_, out, _) = env.netns(
        &["dig", "+time=2", "+tries=1", "@172.16.0.1", "nope.vm", "A"],
        SHORT,
    );
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    let (_, out, _) = env.netns(
        &[
            "dig",
            "+time=2",
            "+tries=1",
            "@172.16.0.1",
            "example.com",
            "A",
        ],
        SHORT,
    );
    assert!(out.contains("status: REFUSED"), "{out}");
    // and the address it gave reaches a port in the guest: sshd's banner
    let probe = format!("exec 3<>/dev/tcp/{ip}/22; head -c 7 <&3");
    let (code, out, _) = env.netns(&["timeout", "20", "bash", "-c", &probe], SHORT);
    assert_eq!((code, out.as_str()), (0, "SSH-2.0"));
    // stop, start again, still works; logs exist
    let (code, out, _) = env.banger(&["vm", "stop", "box"], LONG);
    assert_eq!((code, out.trim()), (0, "box stopped"));
    let (code, out, _) = env.banger(&["vm", "start", "box"], LONG);
    assert_eq!((code, out.trim()), (0, "box running"));
    let (code, out, _) = env.banger(&["vm", "exec", "box", "--", "cat", "/etc/hostname"], LONG);
    assert_eq!((code, out.trim()), (0, "box"));
    let (code, out, _) = env.banger(&["vm", "logs", "box"], SHORT);
    assert_eq!(code, 0);
    assert!(!out.is_empty(), "console log is kept");

    // a VMM that dies shows as stopped, with why and the console's tail
    let (_, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    let pid = info["pid"].as_i64().expect("pid");
    let handle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.path("state/vms/box/vmm.json")).expect("vmm.json"),
    )
    .expect("handle");
    let helper_pids: Vec<i64> = handle["helpers"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|x| x["process"]["pid"].as_i64())
                .collect()
        })
        .unwrap_or_default();
    // SAFETY: the VMM pid our own daemon reports for our own VM.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let (_, out, _) = env.banger(&["vm", "show", "box", "--json"], SHORT);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        if v["state"] == "stopped" {
            break v;
        }
        assert!(Instant::now() < deadline, "crash not noticed: {v}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let reason = info["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("exited unexpectedly") && reason.contains("console tail"),
        "{reason}"
    );
    // and its helpers (if the VMM has any) do not outlive it
    let deadline = Instant::now() + Duration::from_secs(20);
    // SAFETY: signal 0 only checks whether our daemon's helper still exists.
    while helper_pids
        .iter()
        .any(|p| unsafe { libc::kill(*p as i32, 0) } == 0)
    {
        assert!(
            Instant::now() < deadline,
            "VMM helpers {helper_pids:?} outlived the crashed VMM"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // delete frees everything
    let (code, _, _) = env.banger(&["vm", "delete", "box"], LONG);
    assert_eq!(code, 0);
    assert!(env.vm_names().is_empty());
    assert!(!env.path("state/vms/box").exists(), "VM directory removed");
    let kh = std::fs::read_to_string(env.path("state/ssh/known_hosts")).unwrap_or_default();
    assert!(!kh.contains("box.vm"), "host key unpinned: {kh}");
    let (_, out, _) = env.netns(&["ip", "-o", "link", "show", "type", "tun"], SHORT);
    assert!(!out.contains("bangertap"), "taps removed: {out}");
}
