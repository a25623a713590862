//! The real helper, as root, inside network namespaces this test creates and
//! removes: bridge, owned tap, nftables tables, egress blocking with real
//! packets between namespaces, peer-uid refusal, capability bounding, and a
//! teardown that leaves nothing behind. No packet leaves the test's own
//! namespaces (192.0.2.0/24 is TEST-NET-1 and exists only on a veth pair
//! inside the test namespace).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Helper, Netns, can_run, ok, op};
use serde_json::{Value, json};

const OWNER: u32 = 4242;
const NOBODY: u32 = 65534;
const CAP_NET_ADMIN_MASK: &str = "0000000000001000";

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
        let ping = format!(
            "{{\"version\":{},\"op\":\"ping\"}}\n",
            banger_proto::root::ROOT_PROTOCOL_VERSION
        );
        s.write_all(ping.as_bytes())?;
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
    let outside = Netns::new("o");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A stand-in uplink so the NAT rule has a default-route interface, with
    // an "outside" namespace at its other end. (A veth pair, not a dummy:
    // container kernels may lack the dummy module.)
    router.ip(&["link", "set", "lo", "up"]);
    router.ip(&[
        "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p", "netns", &outside.0,
    ]);
    router.ip(&["addr", "add", "192.0.2.2/24", "dev", "uplink0"]);
    router.ip(&["link", "set", "uplink0", "up"]);
    outside.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink0p"]);
    outside.ip(&["link", "set", "uplink0p", "up"]);
    router.ip(&["route", "add", "default", "via", "192.0.2.1"]);

    let helper = Helper::start(&router, dir.path(), OWNER, &[]);
    let sock = helper.sock.clone();

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

    // A tap before the guest filters exist would be a hole: refused.
    let tap = json!({"op": "create_tap", "tap": "bangertap0test", "bridge": "banger0",
        "owner_uid": OWNER, "mac": "02:00:00:00:00:07", "ip": "172.16.0.7", "egress": "none"});
    let r = op(&sock, tap.clone());
    assert_eq!(r["error"]["kind"], "conflict", "{r}");
    assert!(!router.ip(&["link", "show"]).contains("bangertap0test"));
    ok(
        &sock,
        json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    // Tap owned by the owner, attached to the bridge, bound to its guest.
    ok(&sock, tap);
    let ports = router.exec_ok(&["nft", "-j", "list", "set", "bridge", "banger", "ports"]);
    assert!(
        ports.contains("bangertap0test") && ports.contains("02:00:00:00:00:07"),
        "{ports}"
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
        json!({"op": "create_tap", "tap": "bangertap1", "bridge": "banger0", "owner_uid": 0,
            "mac": "02:00:00:00:00:08", "ip": "172.16.0.8", "egress": "all"}),
    );
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");
    let r = op(
        &sock,
        json!({"op": "ensure_bridge", "bridge": "banger1", "subnet": "172.16.0.0/24"}),
    );
    assert_eq!(r["error"]["kind"], "bad_request", "a second bridge: {r}");
    assert!(!router.ip(&["link", "show"]).contains("banger1"));
    let r = op(&sock, json!({"op": "run_shell", "cmd": "id"}));
    assert_eq!(r["error"]["kind"], "bad_request", "{r}");

    // NAT and forward rules in banger's own tables only.
    let nat = ok(
        &sock,
        json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    assert_eq!(nat["uplink"], "uplink0");
    let ip_table = router.exec_ok(&["nft", "-j", "list", "table", "ip", "banger"]);
    let t: Value = serde_json::from_str(&ip_table).expect("nft json");
    ok(
        &sock,
        json!({"op": "ensure_nat", "bridge": "banger0", "subnet": "172.16.0.0/24"}),
    );
    let rules: Vec<&Value> = t["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e.get("rule"))
        .collect();
    let again = router.exec_ok(&["nft", "-j", "list", "table", "ip", "banger"]);
    let count = |text: &str| text.matches("\"rule\"").count();
    assert_eq!(
        count(&again),
        rules.len(),
        "a second ensure does not duplicate rules"
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
    // A real kernel stack on an unregistered, non-tap port: NAT works, and
    // the host's own uplink address is not a service guests may reach.
    assert!(ping(&vm, "192.0.2.1"), "egress through the masquerade");
    assert!(ping(&vm, "172.16.0.1"), "ICMP echo to the gateway");
    assert!(
        !ping(&vm, "192.0.2.2"),
        "the host's other addresses are not reachable from the bridge"
    );
    assert!(ping(&router, "172.16.0.2"), "the host still reaches the VM");
    assert!(
        !ping(&outside, "172.16.0.2"),
        "no new connections from outside into the bridge"
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
    let logged = helper.log_text();
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
    let ports = router.exec_ok(&["nft", "-j", "list", "set", "bridge", "banger", "ports"]);
    let blocked = router.exec_ok(&["nft", "-j", "list", "set", "ip", "banger", "no_egress"]);
    assert!(
        !ports.contains("bangertap0test") && !blocked.contains("172.16.0.7"),
        "delete_tap forgets the binding and the egress block: {ports} {blocked}"
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
    assert_eq!(names, vec!["lo", "uplink0"]);
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
