//! The path a new user takes, end to end: the default image (profile full,
//! built by `banger image build`, cached between tests and runs) with the
//! default sizes, under the same namespace harness as the other e2e tests.
//!
//! * `vm run ./fixture -- make test` on a small C project: the command's
//!   status comes back, passing and failing;
//! * a bare `vm run` whose ssh session runs commands, then `vm ssh`;
//! * ready means ready: /root is the work disk with the key in place;
//! * egress: with the test namespace's default route leading to a stand-in
//!   "outside" namespace and the host's /etc/resolv.conf naming only a
//!   loopback stub (as on systemd-resolved hosts), the guest resolves a name
//!   the outside's DNS serves and fetches a page from it;
//! * the supported host path: the four binaries copied into the guest
//!   (systemd is PID 1 there), `banger system install --owner dev`, status,
//!   `vm list` as the owner, restart, `uninstall --purge`.
//!
//! One test function on purpose: every boot of the full image costs a
//! minute or more under TCG, so the bare VM is shared by the later steps.

mod common;

use common::git;

use common::default_image;
use common::guests::{GuestEnv, LONG, SHORT, agent_binary, run_with_input, skip_reason};
use common::outside::{self, Outside};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const VM: &str = "dflt";

/// A C project whose `make test` passes on main and fails on `broken`.
fn c_fixture(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["config", "user.email", "e2e@example.invalid"]);
    git(dir, &["config", "user.name", "e2e"]);
    let c = "#include <stdio.h>\nint add(int a, int b) { return a + b; }\nint main(void) {\n  if (add(2, 3) != 5) { puts(\"add is broken\"); return 1; }\n  puts(\"all tests passed\");\n  return 0;\n}\n";
    std::fs::write(dir.join("test.c"), c).expect("w");
    std::fs::write(
        dir.join("Makefile"),
        "CFLAGS = -Wall -O1\n\ntest: test_bin\n\t./test_bin\n\ntest_bin: test.c\n\t$(CC) $(CFLAGS) -o $@ test.c\n\n.PHONY: test\n",
    )
    .expect("w");
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "passing"]);
    git(dir, &["checkout", "-q", "-b", "broken"]);
    std::fs::write(dir.join("test.c"), c.replace("a + b", "a - b")).expect("w");
    git(dir, &["commit", "-q", "-am", "failing"]);
    git(dir, &["checkout", "-q", "main"]);
}

/// Where a `spec:` line's vCPU count came from, checked against this host.
fn check_default_vcpus(out: &str) {
    let spec = out
        .lines()
        .find(|l| l.starts_with("spec: "))
        .unwrap_or_else(|| panic!("no spec line in {out}"));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if (2..8).contains(&cpus) {
        assert!(
            spec.starts_with("spec: 2 vCPU (host heuristic: at least 2 under QEMU/TCG"),
            "{spec}"
        );
    }
    assert!(spec.contains("disk (built-in)"), "{spec}");
}

fn exec(env: &GuestEnv, script: &str) -> (i32, String, String) {
    env.banger(&["vm", "exec", VM, "--", "sh", "-c", script], LONG)
}

fn timing(err: &str) -> String {
    err.lines()
        .filter(|l| l.starts_with("timing:"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn default_image_with_default_sizes() {
    if let Some(why) = skip_reason(&["ssh", "dig", "dnsmasq", "busybox", "strip", "git"]) {
        eprintln!("SKIP: default-image end-to-end test: {why}");
        return;
    }
    let agent = agent_binary();
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("BANGER_AGENT_BIN", &agent) };
    let mut env = GuestEnv::start("dflt");
    let outside = Outside::start(&env);
    std::fs::write(
        env.config_file(),
        format!(
            "[dns]\nupstream_resolv_conf = \"{}\"\n",
            outside.upstreams_file.display()
        ),
    )
    .expect("config");
    env.start_daemons();
    let t = Instant::now();
    let how = default_image::ensure(&env, &agent);
    eprintln!("default image: {how} ({:.0} s)", t.elapsed().as_secs_f64());

    // workspace mode on a C project, default image and sizes, both outcomes
    let repo = env.path("cfix");
    c_fixture(&repo);
    let repo_s = repo.display().to_string();
    let t = Instant::now();
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--timings",
            &repo_s,
            "--",
            "make",
            "test",
        ],
        LONG,
    );
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("all tests passed"), "{out}");
    check_default_vcpus(&out);
    eprintln!(
        "FIGURE make test (passing): {:.0} s total; {}",
        t.elapsed().as_secs_f64(),
        timing(&err)
    );
    let t = Instant::now();
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--timings",
            "--branch",
            "broken",
            &repo_s,
            "--",
            "make",
            "test",
        ],
        LONG,
    );
    assert_eq!(
        code, 2,
        "make's failure status\nstdout: {out}\nstderr: {err}"
    );
    assert!(out.contains("add is broken"), "{out}");
    eprintln!(
        "FIGURE make test (failing): {:.0} s total; {}",
        t.elapsed().as_secs_f64(),
        timing(&err)
    );
    assert!(env.vm_names().is_empty(), "--rm deleted both VMs");

    // a bare vm run: its ssh session runs what the user types
    let argv = env.user_env_argv();
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).arg(env!("CARGO_BIN_EXE_banger")).args([
        "vm",
        "run",
        "--name",
        VM,
        "--timings",
    ]);
    let t = Instant::now();
    let typed = b"echo session-$((6 * 7)) on $(hostname)\nstat -c '%a %U' /root/.ssh/authorized_keys\nexit 3\n";
    let (code, out, err) = run_with_input(c, Some(typed), LONG);
    eprintln!("$ banger vm run --name {VM} → {code}\n{out}{err}");
    assert_eq!(
        code, 3,
        "the session's exit status\nstdout: {out}\nstderr: {err}"
    );
    assert!(out.contains(&format!("session-42 on {VM}")), "{out}");
    assert!(out.contains("600 root"), "{out}");
    check_default_vcpus(&out);
    assert!(!err.contains("Permission denied"), "{err}");
    eprintln!(
        "FIGURE bare vm run to session end: {:.0} s; {}",
        t.elapsed().as_secs_f64(),
        timing(&err)
    );
    let (code, out, err) = env.banger(&["vm", "ssh", VM, "--", "uname", "-n"], LONG);
    assert_eq!((code, out.trim()), (0, VM), "{err}");

    // ready meant ready: /root is the work disk
    let (code, out, _) = exec(&env, "findmnt -n -o SOURCE /root");
    assert_eq!((code, out.trim()), (0, "/dev/vdb"));
    let log = env.log("bangerd.log");
    let ready: Vec<&str> = log.lines().filter(|l| l.contains("guest ready")).collect();
    eprintln!("FIGURE boot to ready (daemon log):\n{}", ready.join("\n"));

    // egress: forwarding on, banger's resolver forwards to the outside's DNS
    let (_, fwd, _) = env.netns(&["cat", "/proc/sys/net/ipv4/ip_forward"], SHORT);
    assert_eq!(fwd.trim(), "1", "the helper enabled forwarding for NAT");
    let (code, out, _) = exec(&env, "grep '^nameserver' /etc/resolv.conf");
    assert_eq!(
        (code, out.trim()),
        (0, "nameserver 172.16.0.1"),
        "the gateway, not the host's stub"
    );
    let (code, out, err) = exec(&env, &format!("getent ahostsv4 {}", outside::NAME));
    assert_eq!(code, 0, "{out}{err}\n{}", outside.log("dnsmasq.log"));
    assert!(out.contains(outside::OUTSIDE_IP), "{out}");
    let url = format!("http://{}:{}/marker", outside::NAME, outside::WEB_PORT);
    let (code, out, err) = env.banger(
        &[
            "vm",
            "exec",
            VM,
            "--",
            "curl",
            "-fsS",
            "--max-time",
            "30",
            &url,
        ],
        LONG,
    );
    assert_eq!((code, out.trim()), (0, outside::MARKER), "{err}");
    let (code, out, _) = exec(&env, "getent hosts box.vm example.invalid; echo rc=$?");
    assert!(
        code == 0 && out.contains("rc=2"),
        "unknown names fail fast: {out}"
    );

    system_install_in_guest(&env, &agent);
    let (code, _, err) = env.banger(&["vm", "delete", VM], LONG);
    assert_eq!(code, 0, "{err}");

    // --no-egress keeps its meaning: no route out, no forwarded names
    // (the minimal image boots faster and serves this as well)
    let built = common::guests::minimal_image(&agent);
    env.register_minimal(&built, "e2e-kernel");
    let probe = format!(
        "getent hosts {name}; echo dns=$?; timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'; echo tcp=$?",
        name = outside::NAME,
        ip = outside::OUTSIDE_IP,
        port = outside::WEB_PORT
    );
    let (code, out, err) = env.banger(
        &[
            "vm",
            "run",
            "--rm",
            "--no-egress",
            "--image",
            common::guests::MINIMAL_IMAGE,
            "--",
            "sh",
            "-c",
            &probe,
        ],
        LONG,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("dns=2"),
        "the name is not resolved for a --no-egress VM: {out}"
    );
    assert!(!out.contains("tcp=0"), "no connection out: {out}");
}

fn both_units_active(env: &GuestEnv, when: &str) {
    let (code, out, err) = exec(
        env,
        "systemctl is-active bangerd.service bangerd-root.service",
    );
    assert_eq!(
        (code, out.lines().collect::<Vec<_>>()),
        (0, vec!["active", "active"]),
        "{when}: {err}"
    );
}

/// Item 12: the supported host path under a real systemd (the guest's).
fn system_install_in_guest(env: &GuestEnv, agent: &Path) {
    let bins = env.path("bins");
    std::fs::create_dir_all(&bins).expect("mkdir");
    // Stripped copies: the debug builds are ~400 MB together.
    for (name, src) in [
        ("banger", common::bin("banger")),
        ("bangerd", common::bin("bangerd")),
        ("bangerd-root", common::bin("bangerd-root")),
        ("banger-vsock-agent", agent.to_path_buf()),
    ] {
        let st = Command::new("strip")
            .arg("-o")
            .arg(bins.join(name))
            .arg(&src)
            .status()
            .expect("strip");
        assert!(st.success(), "strip {}", src.display());
    }
    let t = Instant::now();
    let (code, _, err) = env.banger(
        &[
            "vm",
            "cp",
            &bins.display().to_string(),
            &format!("{VM}:/root"),
        ],
        LONG,
    );
    assert_eq!(code, 0, "{err}");
    // The owner, with a subnet of its own: the guest itself sits on the
    // outer banger's 172.16.0.0/24.
    let setup = "useradd -m -s /bin/sh dev && mkdir -p /home/dev/.config/banger \
        && printf '[network]\\nsubnet = \"192.168.77.0/24\"\\n' > /home/dev/.config/banger/config.toml \
        && chown -R dev:dev /home/dev/.config";
    let (code, out, err) = exec(env, setup);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = exec(env, "/root/bins/banger system install --owner dev");
    assert_eq!(code, 0, "system install\n{out}{err}");
    both_units_active(env, "after install");
    let (code, out, err) = exec(env, "banger system status --json");
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let answering: Vec<bool> = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["socket"]["answering"] == true)
        .collect();
    assert_eq!(answering, [true, true], "both sockets answer: {out}");
    let (code, out, err) = exec(env, "runuser -u dev -- banger vm list");
    assert_eq!(code, 0, "vm list as the owner\n{out}{err}");
    // `systemctl reload` re-reads the owner's config (ExecReload: SIGHUP).
    let edit = "printf 'default_image_name = \"reloaded\"\\n[network]\\nsubnet = \"192.168.77.0/24\"\\n' \
        > /home/dev/.config/banger/config.toml && systemctl reload bangerd.service";
    let (code, out, err) = exec(env, edit);
    assert_eq!(code, 0, "systemctl reload\n{out}{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, err) = exec(env, "runuser -u dev -- banger config show --json");
        assert_eq!(code, 0, "{out}{err}");
        if out.contains("\"reloaded\"") {
            assert!(out.contains("\"applied\""), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "systemctl reload did not reload the config: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (code, out, err) = exec(env, "banger system restart");
    assert_eq!(code, 0, "{out}{err}");
    both_units_active(env, "after restart");
    let (code, out, err) = exec(env, "banger system uninstall --purge");
    assert_eq!(code, 0, "{out}{err}");
    let leftovers = "ls -d /usr/local/bin/banger /usr/local/bin/bangerd /usr/local/bin/bangerd-root \
        /usr/local/lib/banger /var/lib/banger /var/cache/banger /etc/banger \
        /etc/systemd/system/bangerd.service /etc/systemd/system/bangerd-root.service 2>/dev/null; \
        systemctl list-units --all --no-legend 'bangerd*'";
    let (_, out, _) = exec(env, leftovers);
    assert_eq!(out.trim(), "", "uninstall --purge leaves nothing");
    eprintln!(
        "FIGURE system install/status/restart/uninstall in the guest: {:.0} s",
        t.elapsed().as_secs_f64()
    );
}
