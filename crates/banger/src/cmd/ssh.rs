//! The user's ssh identity for banger, the user-facing ssh_config, and
//! OpenSSH invocation. No trust on first use: host keys are pinned by the
//! daemon before a guest boots, and ssh runs with StrictHostKeyChecking.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use banger_proto::{SshInfo, VmInfo};

use crate::client::Client;

/// The private key banger uses, created (ed25519, 0600 in a 0700 dir) when
/// it is banger's default key and missing.
pub fn ensure_identity(
    config: &banger_core::Config,
    home: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let key = config.ssh_key(home);
    let path = key.value;
    if !path.exists() {
        if key.source == banger_proto::Provenance::Config {
            bail!(
                "ssh_key_path {} (from config) does not exist; create it with ssh-keygen or fix the config",
                path.display()
            );
        }
        let dir = path.parent().context("ssh key path has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        banger_core::ssh::keygen_ed25519(&path, "banger")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    let public = std::fs::read_to_string(&pub_path)
        .with_context(|| format!("cannot read the public key {}", pub_path.display()))?;
    Ok((path, public.trim().to_string()))
}

/// The text of `~/.config/banger/ssh_config`.
pub fn ssh_config_text(key: &Path, known_hosts: &str) -> String {
    format!(
        "# Written by banger; regenerated on every `banger vm run` / `banger vm ssh`.\n\
         # Pull it into ~/.ssh/config with `banger ssh-config --install`.\n\
         Host *.vm\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    UserKnownHostsFile {}\n    StrictHostKeyChecking yes\n    LogLevel ERROR\n",
        key.display(),
        known_hosts
    )
}

/// Keeps the user-facing ssh_config fresh and returns its path.
pub async fn refresh_ssh_config(client: &Client, key: &Path) -> anyhow::Result<PathBuf> {
    let info: SshInfo = client.get("/v1/ssh").await?;
    let dir =
        banger_core::paths::config_dir().context("cannot find your config directory: set $HOME")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("ssh_config");
    let text = ssh_config_text(key, &info.known_hosts);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &text)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// The ssh argv (without the program) for a VM. The address is given
/// explicitly so ssh works whether or not `.vm` DNS routing is set up; the
/// host key is still checked under the `<name>.vm` alias.
pub fn ssh_args(
    ssh_config: &Path,
    vm: &VmInfo,
    tty: bool,
    command: &[String],
) -> anyhow::Result<Vec<String>> {
    let ip = vm.ip.as_deref().with_context(|| {
        format!(
            "VM {} has no address, so ssh cannot reach it (was it created without networking?)",
            vm.name
        )
    })?;
    let mut args = vec![
        "-F".to_string(),
        ssh_config.display().to_string(),
        "-o".into(),
        format!("HostName={ip}"),
        "-o".into(),
        format!("HostKeyAlias={}.vm", vm.name),
        "-o".into(),
        "ConnectTimeout=10".into(),
    ];
    if tty {
        args.push("-t".into());
    }
    args.push(format!("{}.vm", vm.name));
    if !command.is_empty() {
        // ssh hands the remote side one string for its shell; quote each
        // argument so the guest sees exactly the argv the user typed.
        args.push("--".into());
        args.push(
            command
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    Ok(args)
}

/// POSIX single-quote quoting.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs ssh and returns its exit code (a signal death as 128+n).
pub fn run_ssh(args: &[String]) -> anyhow::Result<i32> {
    let status = Command::new("ssh")
        .args(args)
        .status()
        .context("cannot run ssh (install openssh-client)")?;
    Ok(exit_code(status))
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_preserves_argv() {
        assert_eq!(shell_quote("make"), "make");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn config_is_strict() {
        let t = ssh_config_text(Path::new("/k/id"), "/var/lib/banger/ssh/known_hosts");
        assert!(t.contains("StrictHostKeyChecking yes"));
        assert!(t.contains("UserKnownHostsFile /var/lib/banger/ssh/known_hosts"));
        assert!(t.contains("IdentityFile /k/id"));
    }
}
