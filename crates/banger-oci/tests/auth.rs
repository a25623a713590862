//! Basic and bearer-token auth against a real registry behind a named fake
//! auth front (`common::AuthProxy`), credentials from an auth file.

mod common;

use banger_oci::{Error, PullOptions, pull_to_ext4};
use common::{AuthProxy, Comp, E, Guard, Layer, Layout, Registry, tar};
use serde_json::json;

fn push_small(reg: &Registry) {
    let layout = Layout::new();
    let l = Layer::new(tar(&[E::File("hello", b"auth\n", 0o644, 0, 0)]), Comp::Gzip);
    let m = layout.image(&[l], "amd64", json!({}));
    layout.tag(m, "t");
    reg.push(&layout, "t", "private/app", &[]);
}

fn auth_file(dir: &std::path::Path, registry: &str, user: &str, pass: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let f = dir.join("auth.json");
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(&f, json!({"auths": {registry: {"auth": enc}}}).to_string()).expect("write");
    f
}

fn pull(proxy: &AuthProxy, auth: Option<std::path::PathBuf>) -> banger_oci::Result<Vec<u8>> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut o = PullOptions::new(
        tmp.path().join("images"),
        tmp.path().join("cache"),
        "default",
    );
    o.registry.auth_files = auth.into_iter().collect();
    o.free_space = 8 << 20;
    let p = pull_to_ext4(&format!("{}/private/app:t", proxy.addr), o)?;
    Ok(banger_image::ext4::read_file(&p.image.rootfs, "/hello").expect("read"))
}

#[test]
fn basic_auth_from_auth_file() {
    require_prereqs!();
    let reg = Registry::start();
    push_small(&reg);
    let guard = Guard::Basic {
        user: "alice".into(),
        pass: "pw-basic".into(),
    };
    let proxy = AuthProxy::start(&reg.addr, guard);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = auth_file(dir.path(), &proxy.addr, "alice", "pw-basic");
    assert_eq!(
        pull(&proxy, Some(good)).expect("pull with credentials"),
        b"auth\n"
    );
    match pull(&proxy, None) {
        Err(Error::Unauthorized { status: 401, .. }) => {}
        other => panic!("anonymous pull should be refused, got {other:?}"),
    }
    let bad = auth_file(dir.path(), &proxy.addr, "alice", "wrong");
    let err = pull(&proxy, Some(bad)).expect_err("wrong password");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "secret in message: {err}"
    );
}

#[test]
fn bearer_token_with_credentials() {
    require_prereqs!();
    let reg = Registry::start();
    push_small(&reg);
    let guard = Guard::Bearer {
        creds: Some(("bob".into(), "pw-token".into())),
    };
    let proxy = AuthProxy::start(&reg.addr, guard);
    let dir = tempfile::tempdir().expect("tempdir");
    let good = auth_file(dir.path(), &proxy.addr, "bob", "pw-token");
    assert_eq!(
        pull(&proxy, Some(good)).expect("pull with token"),
        b"auth\n"
    );
    let seen = proxy.token_requests.lock().expect("lock").clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a.starts_with("Basic ")),
        "{seen:?}"
    );
    let err = pull(&proxy, None).expect_err("no credentials");
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
}

#[test]
fn bearer_token_anonymous() {
    require_prereqs!();
    let reg = Registry::start();
    push_small(&reg);
    let proxy = AuthProxy::start(&reg.addr, Guard::Bearer { creds: None });
    assert_eq!(pull(&proxy, None).expect("anonymous token pull"), b"auth\n");
    let seen = proxy.token_requests.lock().expect("lock").clone();
    assert!(
        seen.iter().all(String::is_empty),
        "anonymous token requests carry no auth: {seen:?}"
    );
}

/// A registry on loopback whose token realm is plain http on a host that
/// is not loopback: the client refuses before sending credentials there.
/// (0.0.0.0 is not a loopback name but would still connect to this host,
/// so even a broken client sends nothing off the machine.)
#[test]
fn a_plain_http_realm_off_loopback_is_refused() {
    require_prereqs!();
    let reg = Registry::start();
    push_small(&reg);
    let guard = Guard::BearerAt {
        realm: "http://0.0.0.0:9/token".into(),
    };
    let proxy = AuthProxy::start(&reg.addr, guard);
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = auth_file(dir.path(), &proxy.addr, "alice", "secret");
    let err = pull(&proxy, Some(creds)).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("plain http") && msg.contains("0.0.0.0:9"),
        "{msg}"
    );
}
