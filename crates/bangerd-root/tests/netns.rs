//! The real helper, as root, inside network namespaces this test creates and
//! removes: bridge, owned tap, nftables tables, egress blocking with real
//! packets between namespaces, peer-uid refusal, capability bounding, and a
//! teardown that leaves nothing behind. No packet leaves the test's own
//! namespaces (192.0.2.0/24 is TEST-NET-1 and exists only on a veth pair
//! inside the test namespace).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const OWNER: u32 = 4242;
const NOBODY: u32 = 65534;
const CAP_NET_ADMIN_MASK: &str = "0000000000001000";

struct Netns(String);

impl Netns {
    fn new(suffix: &str) -> Netns {
        let name = format!("banger-t-{}-{suffix}", std::process::id());
        run("ip", &["netns", "add", &name]);
        Netns(name)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        run("ip", &a)
    }
    fn exec(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }
    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Helper {
    child: Child,
    log: PathBuf,
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Killed by the pid we started, never by name.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- bangerd-root log ---\n{log}");
        }
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: bangerd-root netns test needs root");
        return false;
    }
    for tool in ["ip", "nft", "ping"] {
        if Command::new(tool).arg("-V").output().is_err() {
            eprintln!("SKIP: {tool} not found (Debian packages iproute2, nftables, iputils-ping)");
            return false;
        }
    }
    true
}

fn call(sock: &Path, req: Value) -> Value {
    let mut s = UnixStream::connect(sock).expect("connect to helper");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = serde_json::to_vec(&req).expect("json");
    line.push(b'\n');
    s.write_all(&line).expect("write");
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).expect("read");
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
}

fn op(sock: &Path, body: Value) -> Value {
    let mut req = body;
    req["version"] = json!(1);
    call(sock, req)
}

fn ok(sock: &Path, body: Value) -> Value {
    let r = op(sock, body.clone());
    assert_eq!(r["status"], "ok", "{body} -> {r}");
    r["reply"].clone()
}

fn wait_for_socket(sock: &Path, helper: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if UnixStream::connect(sock).is_ok() {
            return;
        }
        if let Ok(Some(st)) = helper.try_wait() {
            panic!("bangerd-root exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("bangerd-root did not listen within 10s");
}

/// `(CapEff, CapPrm, CapBnd, CapInh, CapAmb)` of a process.
fn caps_of(pid: u32) -> [String; 5] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let get = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    [
        get("CapEff:"),
        get("CapPrm:"),
        get("CapBnd:"),
        get("CapInh:"),
        get("CapAmb:"),
    ]
}

/// Re-run this test binary as `uid` to connect to the helper: the only
/// honest way to present another SO_PEERCRED.
fn probe_as(uid: u32, sock: &Path) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe)
        .args([
            "--exact",
            "peer_probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BANGER_PROBE_SOCKET", sock)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .output()
        .expect("spawn probe child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split_once("PROBE-RESULT: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "probe child printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string()
}

/// Child half of [`probe_as`]; a no-op when run normally.
#[test]
fn peer_probe_child() {
    let Some(sock) = std::env::var_os("BANGER_PROBE_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<String> {
        let mut s = UnixStream::connect(&sock)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"{\"version\":1,\"op\":\"ping\"}\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(if line.is_empty() {
            "CLOSED".into()
        } else {
            line.trim().to_string()
        })
    })();
    match result {
        Ok(r) => println!("PROBE-RESULT: {r}"),
        Err(e)
            if e.kind() == std::io::ErrorKind::ConnectionReset
                || e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            println!("PROBE-RESULT: CLOSED")
        }
        Err(e) => println!("PROBE-RESULT: ERROR {e}"),
    }
}

fn ping(ns: &Netns, target: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "2", target])
        .status
        .success()
}

#[test]
fn helper_in_netns_end_to_end() {
    if !can_run() {
        return;
    }
    let router = Netns::new("r");
    let vm = Netns::new("v");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = dir.path().join("root.sock");
    let log = dir.path().join("helper.log");

    // A stand-in uplink so the NAT rule has a default-route interface.
    router.ip(&["link", "set", "lo", "up"]);
    // (A veth pair, not a dummy: container kernels may lack the dummy
    // module.)
    router.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p",
    ]);
    router.ip(&["addr", "add", "192.0.2.2/24", "dev", "uplink0"]);
    router.ip(&["link", "set", "uplink0p", "up"]);
    router.ip(&["link", "set", "uplink0", "up"]);
    router.ip(&["route", "add", "default", "via", "192.0.2.1"]);

    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &router.0,
            env!("CARGO_BIN_EXE_bangerd-root"),
        ])
        .arg("--socket")
        .arg(&sock)
        .args(["--owner-uid", &OWNER.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start bangerd-root");
    let mut helper = Helper { child, log };
    wait_for_socket(&sock, &mut helper.child);

    // Socket: owner's, 0600.
    let meta = std::fs::metadata(&sock).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), OWNER);

    // Root (admin) may ping; capabilities are bounded to CAP_NET_ADMIN.
    let pong = ok(&sock, json!({"op": "ping"}));
    assert_eq!(pong["owner_uid"], OWNER);
    // The daemon's client against the real helper.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = banger_net::RootClient::new(&sock).with_timeout(Duration::from_secs(20));
    assert_eq!(rt.block_on(client.ping()).expect("RootClient ping"), OWNER);
    let err = rt
        .block_on(client.call(banger_proto::root::RootOp::DeleteBridge {
            bridge: "eth0".into(),
        }))
        .expect_err("foreign bridge refused");
    assert!(
        err.to_string().contains("does not start with \"banger\""),
        "{err}"
    );
    let [eff, prm, bnd, inh, amb] = caps_of(helper.child.id());
    assert_eq!(
        (
            eff.as_str(),
            prm.as_str(),
            bnd.as_str(),
            inh.as_str(),
            amb.as_str()
        ),
        (
            CAP_NET_ADMIN_MASK,
            CAP_NET_ADMIN_MASK,
            CAP_NET_ADMIN_MASK,
            "0000000000000000",
            "0000000000000000"
        )
    );

    // Bridge with the gateway address, up.
    ok(
        &sock,
        json!({"op": "ensure_bridge", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    ok(
        &sock,
        json!({"op": "ensure_bridge", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    let addrs: Value =
        serde_json::from_str(&router.ip(&["-j", "addr", "show", "dev", "banger0"])).expect("json");
    let a = &addrs[0];
    assert!(
        a["flags"].as_array().expect("flags").contains(&json!("UP")),
        "{a}"
    );
    let v4: Vec<_> = a["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|i| i["family"] == "inet")
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or(""), i["prefixlen"]))
        .collect();
    assert_eq!(
        v4,
        vec!["172.16.0.1/24"],
        "one gateway address, even after a second ensure"
    );

    // Tap owned by the owner, attached to the bridge.
    ok(
        &sock,
        json!({"op": "create_tap", "tap": "bangertap0test", "bridge": "banger0", "owner_uid": OWNER}),
    );
    let detail = router.ip(&["-d", "link", "show", "bangertap0test"]);
    assert!(detail.contains("master banger0"), "{detail}");
    assert!(
        detail.contains("tun type tap") && detail.contains(&format!("user {OWNER}")),
        "{detail}"
    );
    assert!(detail.contains("persist on"), "{detail}");

    // Refusals: foreign names, wrong tap owner, overlapping subnet.
    let r = op(&sock, json!({"op": "delete_tap", "tap": "uplink0"}));
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");
    let r = op(
        &sock,
        json!({"op": "create_tap", "tap": "bangertap1", "bridge": "banger0", "owner_uid": 0}),
    );
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");
    let r = op(
        &sock,
        json!({"op": "ensure_bridge", "bridge": "banger1", "subnet": "192.0.2.0/25"}),
    );
    assert_eq!(r["error"]["kind"], "conflict", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("192.0.2.0/24 dev uplink0"),
        "{r}"
    );
    assert!(!router.ip(&["link", "show"]).contains("banger1"));
    let r = op(&sock, json!({"op": "run_shell", "cmd": "id"}));
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");

    // NAT and forward rules in banger's own tables only.
    let nat = ok(
        &sock,
        json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    assert_eq!(nat["uplink"], "uplink0");
    ok(
        &sock,
        json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    let ip_table = router.exec_ok(&["nft", "-j", "list", "table", "ip", "banger"]);
    let t: Value = serde_json::from_str(&ip_table).expect("nft json");
    let rules: Vec<&Value> = t["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e.get("rule"))
        .collect();
    assert_eq!(
        rules.len(),
        3,
        "masquerade + 2 forward rules, not duplicated by the second ensure: {ip_table}"
    );
    let masq = rules
        .iter()
        .find(|r| r["chain"] == "postrouting")
        .expect("masquerade rule");
    let masq_text = masq.to_string();
    assert!(
        masq_text.contains("\"masquerade\"")
            && masq_text.contains("uplink0")
            && masq_text.contains("172.16.0.0"),
        "{masq_text}"
    );
    ok(&sock, json!({"op": "enable_forwarding"}));
    assert_eq!(
        router
            .exec_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
            .trim(),
        "1"
    );

    // A "VM": a namespace behind a veth whose bridge end is a banger port.
    router.ip(&[
        "link",
        "add",
        "bangerv0test",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &vm.0,
    ]);
    router.ip(&["link", "set", "bangerv0test", "master", "banger0", "up"]);
    vm.ip(&["link", "set", "lo", "up"]);
    vm.ip(&["addr", "add", "172.16.0.2/24", "dev", "eth0"]);
    vm.ip(&["link", "set", "eth0", "up"]);
    vm.ip(&["route", "add", "default", "via", "172.16.0.1"]);
    assert!(ping(&vm, "192.0.2.2"), "egress allowed by default");

    ok(
        &sock,
        json!({"op": "set_egress", "tap": "bangerv0test", "allowed": false}),
    );
    let set = router.exec_ok(&["nft", "-j", "list", "set", "bridge", "banger", "no_egress"]);
    assert!(set.contains("bangerv0test"), "{set}");
    assert!(!ping(&vm, "192.0.2.2"), "egress must be blocked");
    assert!(ping(&vm, "172.16.0.1"), "the gateway stays reachable");
    assert!(ping(&router, "172.16.0.2"), "the host still reaches the VM");
    ok(
        &sock,
        json!({"op": "set_egress", "tap": "bangerv0test", "allowed": true}),
    );
    assert!(ping(&vm, "192.0.2.2"), "egress restored");
    ok(
        &sock,
        json!({"op": "set_egress", "tap": "bangertap0test", "allowed": false}),
    );

    // Other uids: the owner is served, anyone else is refused at SO_PEERCRED
    // (the socket is opened up to 0666 so the connect itself succeeds and
    // the helper's own check is what is tested).
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let owner_probe = probe_as(OWNER, &sock);
    assert!(
        owner_probe.contains("\"pong\""),
        "owner must be served: {owner_probe}"
    );
    let nobody_probe = probe_as(NOBODY, &sock);
    assert_eq!(nobody_probe, "CLOSED", "uid {NOBODY} must be refused");
    let logged = std::fs::read_to_string(&helper.log).expect("log");
    assert!(
        logged.contains("refused connection") && logged.contains(&format!("peer_uid={NOBODY}")),
        "{logged}"
    );
    assert!(
        logged.contains("op=\"create_tap\""),
        "operations are logged: {logged}"
    );

    // Teardown leaves nothing.
    router.ip(&["link", "del", "bangerv0test"]);
    ok(&sock, json!({"op": "delete_tap", "tap": "bangertap0test"}));
    let set = router.exec_ok(&["nft", "-j", "list", "set", "bridge", "banger", "no_egress"]);
    assert!(
        !set.contains("bangertap0test"),
        "delete_tap forgets the egress block: {set}"
    );
    ok(&sock, json!({"op": "delete_tap", "tap": "bangertap0test"}));
    ok(&sock, json!({"op": "remove_nat"}));
    ok(&sock, json!({"op": "remove_nat"}));
    ok(&sock, json!({"op": "delete_bridge", "bridge": "banger0"}));
    let links: Value = serde_json::from_str(&router.ip(&["-j", "link", "show"])).expect("json");
    let mut names: Vec<&str> = links
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, vec!["lo", "uplink0", "uplink0p"]);
    let ruleset = router.exec_ok(&["nft", "-j", "list", "ruleset"]);
    let rs: Value = serde_json::from_str(&ruleset).expect("json");
    assert!(
        rs["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .all(|e| e.get("metainfo").is_some()),
        "no tables left: {ruleset}"
    );
}

#[test]
fn helper_accepts_a_root_owner_with_a_warning() {
    // Hosts where everything runs as root (containers, CI) have no other
    // owner to name: the helper serves, and says the split protects nothing.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the helper only starts as root");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("root.sock");
    let log = dir.path().join("helper.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bangerd-root"))
        .arg("--socket")
        .arg(&sock)
        .args(["--owner-uid", "0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "helper did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("the privilege split gives no protection"),
        "{text}"
    );
}
