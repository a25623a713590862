//! `banger ssh-config [--install|--uninstall]`: opt-in `Include` of banger's
//! ssh_config from ~/.ssh/config, inside a marker-fenced block that
//! `--uninstall` removes byte for byte. A symlinked ~/.ssh/config (dotfile
//! managers) stays a symlink: the file it points to is edited.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::SshConfigArgs;
use crate::client::Client;

pub const BEGIN: &str = "# >>> banger (managed by `banger ssh-config`) >>>";
pub const END: &str = "# <<< banger <<<";
pub const INCLUDE: &str = "Include ~/.config/banger/ssh_config";

fn block() -> String {
    format!("{BEGIN}\n{INCLUDE}\n{END}\n")
}

/// Adds the block. It goes first: an `Include` placed after a `Host` line
/// would only apply inside that host's section.
pub fn add_block(text: &str) -> Option<String> {
    if text.contains(BEGIN) {
        return None;
    }
    Some(format!("{}{}", block(), text))
}

/// Removes exactly what [`add_block`] added; None when it is not there.
pub fn remove_block(text: &str) -> Option<String> {
    let b = block();
    if let Some(i) = text.find(&b) {
        let mut out = String::with_capacity(text.len() - b.len());
        out.push_str(&text[..i]);
        out.push_str(&text[i + b.len()..]);
        return Some(out);
    }
    // Tolerate a hand-edited block: drop from BEGIN to END inclusive.
    let start = text.find(BEGIN)?;
    let end_rel = text[start..].find(END)?;
    let mut end = start + end_rel + END.len();
    if text[end..].starts_with('\n') {
        end += 1;
    }
    Some(format!("{}{}", &text[..start], &text[end..]))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("banger-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    // Keep the mode the user chose for an existing file.
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o7777),
        )?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// The file a path finally names: symlinks followed (relative ones from
/// their own directory), also when the last one dangles. Bounded like the
/// kernel's own resolution (40 links).
pub fn link_target(path: &Path) -> anyhow::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p)
                    .with_context(|| format!("cannot read the symlink {}", p.display()))?;
                p = match p.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(p),
        }
    }
    anyhow::bail!(
        "{} is a loop of symlinks; point it at a file and retry",
        path.display()
    )
}

pub fn install(ssh_config: &Path) -> anyhow::Result<bool> {
    let ssh_config = &link_target(ssh_config)?;
    let text = match std::fs::read_to_string(ssh_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ssh_config.display())),
    };
    let Some(new) = add_block(&text) else {
        return Ok(false);
    };
    if let Some(dir) = ssh_config.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    write_private(ssh_config, &new)?;
    Ok(true)
}

pub fn uninstall(ssh_config: &Path) -> anyhow::Result<bool> {
    let ssh_config = &link_target(ssh_config)?;
    let text = match std::fs::read_to_string(ssh_config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", ssh_config.display())),
    };
    match remove_block(&text) {
        Some(new) => {
            write_private(ssh_config, &new)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// What the included file holds before banger first writes it.
const PLACEHOLDER: &str = "# Written by banger. bangerd was not reachable when `banger ssh-config --install`\n\
     # ran, so this file has no entries yet: the next `banger vm run` or `banger vm ssh`\n\
     # fills them in.\n";

/// The included file exists as soon as the `Include` does: the current
/// entries when the daemon answers, else a placeholder (never overwriting
/// a file that is there).
fn ensure_included(client: &Client, home: &Path) -> anyhow::Result<PathBuf> {
    let written = super::block_on(async {
        let config = super::load_config()?;
        let (key, _) = super::ssh::ensure_identity(&config, home)?;
        super::ssh::refresh_ssh_config(client, &key).await
    });
    if let Ok(p) = written {
        return Ok(p);
    }
    let dir =
        banger_core::paths::config_dir().context("cannot find your config directory: set $HOME")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("ssh_config");
    if !path.exists() {
        write_private(&path, PLACEHOLDER)?;
    }
    Ok(path)
}

pub fn run(client: &Client, a: SshConfigArgs) -> anyhow::Result<ExitCode> {
    let home = super::home()?;
    let path = home.join(".ssh/config");
    if a.install {
        let edited = link_target(&path)?;
        let shown = if edited == path {
            path.display().to_string()
        } else {
            format!("{} (the target of {})", edited.display(), path.display())
        };
        if install(&path)? {
            outln!("added `{INCLUDE}` to {shown}")?;
        } else {
            outln!("{shown} already includes banger's ssh_config")?;
        }
        let included = ensure_included(client, &home)?;
        outln!("included file: {}", included.display())?;
    } else if a.uninstall {
        if uninstall(&path)? {
            outln!("removed banger's block from {}", path.display())?;
        } else {
            outln!("{} has no banger block; nothing to do", path.display())?;
        }
    } else {
        outln!("{INCLUDE}")?;
        eprintln!(
            "Put that line at the top of {} (or run `banger ssh-config --install`) so `ssh <name>.vm` works.",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_uninstall_round_trips_byte_for_byte() {
        for original in [
            "",
            "Host a\n  User x\n",
            "Host b\n  Port 2\n# no trailing newline",
        ] {
            let added = add_block(original).expect("added");
            assert!(added.starts_with(BEGIN));
            assert_eq!(add_block(&added), None, "idempotent");
            assert_eq!(remove_block(&added).as_deref(), Some(original));
        }
        assert_eq!(remove_block("Host a\n"), None);
    }

    #[test]
    fn files_keep_their_mode_and_new_files_are_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(".ssh/config");
        assert!(install(&p).expect("install"));
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(p.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert!(uninstall(&p).expect("uninstall"));
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "");

        std::fs::write(&p, "Host z\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        install(&p).expect("install");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        uninstall(&p).expect("uninstall");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "Host z\n");
    }

    #[test]
    fn a_symlinked_config_stays_a_symlink() {
        let dir = tempfile::tempdir().expect("tmp");
        let dotfiles = dir.path().join("dotfiles");
        std::fs::create_dir_all(dir.path().join(".ssh")).expect("mkdir");
        std::fs::create_dir_all(&dotfiles).expect("mkdir");
        std::fs::write(dotfiles.join("ssh_config"), "Host z\n").expect("write");
        let link = dir.path().join(".ssh/config");
        // relative, through a second link, as dotfile managers make them
        std::os::unix::fs::symlink("dotfiles/ssh_config", dir.path().join("mid")).expect("ln");
        std::os::unix::fs::symlink("../mid", &link).expect("ln");
        assert!(install(&link).expect("install"));
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink(),
            "still a symlink"
        );
        let target = std::fs::read_to_string(dotfiles.join("ssh_config")).expect("read");
        assert!(
            target.starts_with(BEGIN) && target.ends_with("Host z\n"),
            "{target}"
        );
        assert!(uninstall(&link).expect("uninstall"));
        assert_eq!(
            std::fs::read_to_string(dotfiles.join("ssh_config")).expect("read"),
            "Host z\n"
        );
        // a dangling link: the file is created where it points
        std::fs::remove_file(dotfiles.join("ssh_config")).expect("rm");
        assert!(install(&link).expect("install"));
        assert!(dotfiles.join("ssh_config").exists());
        // a loop is an error, not a hang
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).expect("ln");
        std::os::unix::fs::symlink(&a, &b).expect("ln");
        let e = install(&a).expect_err("loop").to_string();
        assert!(e.contains("loop of symlinks"), "{e}");
    }
}
