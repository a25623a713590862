//! Workspace mode: which files of a repository go into the guest, and the
//! tar stream that carries them. Only git-tracked files by default, so a
//! local `.env` or scratch credentials never leave the host by accident.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The working tree's tracked files (plus untracked-but-not-ignored).
    WorkingTree { include_untracked: bool },
    /// The tree of a commit-ish (`--branch` / `--from`).
    Rev(String),
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(repo);
    c
}

fn run_git(mut c: Command, what: &str) -> anyhow::Result<Vec<u8>> {
    let out = c
        .output()
        .with_context(|| format!("cannot run git to {what} (install git)"))?;
    if !out.status.success() {
        bail!(
            "git could not {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Checks `path` is inside a git work tree and `source` names something real.
pub fn validate(path: &Path, source: &Source) -> anyhow::Result<()> {
    if !path.is_dir() {
        bail!(
            "{} is not a directory; workspace mode takes a git repository",
            path.display()
        );
    }
    let out = git(path)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .context("cannot run git (install git)")?;
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "true" {
        bail!(
            "{} is not inside a git repository: workspace mode ships the repository's git-tracked files (run `git init` and `git add` there first)",
            path.display()
        );
    }
    if let Source::Rev(rev) = source {
        let out = git(path)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("{rev}^{{tree}}"))
            .output()
            .context("cannot run git")?;
        if !out.status.success() {
            bail!(
                "{rev:?} is not a branch, tag or commit in {}",
                path.display()
            );
        }
    }
    Ok(())
}

/// git's `-z` output as paths, byte for byte: a name that is not UTF-8 or
/// holds a newline is a name like any other.
fn split_nul(bytes: &[u8]) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(std::ffi::OsStr::from_bytes(s)))
        .collect()
}

/// A file name for a person to read, one per line: as is when it is
/// printable UTF-8, else quoted the way git quotes it (`"a\nb"`,
/// `"caf\351"` for a Latin-1 name), so a newline in a name cannot pass for two files.
pub fn display_name(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    let plain = std::str::from_utf8(bytes)
        .is_ok_and(|s| !s.chars().any(|c| c.is_control() || c == '"' || c == '\\'));
    if plain {
        return p.display().to_string();
    }
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

/// "1 file", "2 files".
pub fn count_files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// The exact file list that would be shipped, sorted.
pub fn list_files(path: &Path, source: &Source) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = match source {
        Source::WorkingTree { include_untracked } => {
            let mut c = git(path);
            c.args(["ls-files", "-z", "--cached"]);
            if *include_untracked {
                c.args(["--others", "--exclude-standard"]);
            }
            split_nul(&run_git(c, "list the repository's files")?)
                .into_iter()
                // tracked but deleted, or a submodule (a directory): nothing to copy
                .filter(|f| {
                    std::fs::symlink_metadata(path.join(f))
                        .map(|m| m.is_file() || m.file_type().is_symlink())
                        .unwrap_or(false)
                })
                .collect::<Vec<_>>()
        }
        Source::Rev(rev) => {
            let mut c = git(path);
            c.args(["ls-tree", "-r", "-z", "--name-only", "--full-name"])
                .arg(rev);
            split_nul(&run_git(c, &format!("list the files of {rev}"))?)
        }
    };
    files.sort();
    files.dedup();
    Ok(files)
}

/// Writes the tar stream of the workspace to `out` (a temp file: memory
/// stays flat however large the repository).
pub fn write_tar(
    path: &Path,
    source: &Source,
    files: &[PathBuf],
    out: &mut std::fs::File,
) -> anyhow::Result<()> {
    match source {
        Source::Rev(rev) => {
            let mut c = git(path);
            c.args(["archive", "--format=tar"]).arg(rev);
            let bytes = run_git(c, &format!("archive {rev}"))?;
            out.write_all(&bytes)?;
        }
        Source::WorkingTree { .. } => {
            banger_agent::transfer::pack_files(path, files, &mut *out)
                .context("cannot write the workspace archive")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The directory name the repository gets under /root (its own name).
pub fn repo_name(path: &Path) -> String {
    std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "repo".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, args: &[&str]) {
        let st = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .status()
            .expect("run");
        assert!(st.success(), "{args:?}");
    }

    fn paths(names: &[&str]) -> Vec<PathBuf> {
        names.iter().map(PathBuf::from).collect()
    }

    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path();
        sh(p, &["git", "init", "-q", "-b", "main"]);
        sh(p, &["git", "config", "user.email", "t@example.invalid"]);
        sh(p, &["git", "config", "user.name", "t"]);
        std::fs::write(p.join(".gitignore"), "ignored.txt\n").expect("w");
        std::fs::write(p.join("tracked.txt"), "t").expect("w");
        std::fs::create_dir(p.join("src")).expect("mkdir");
        std::fs::write(p.join("src/lib.rs"), "x").expect("w");
        sh(p, &["git", "add", "."]);
        sh(p, &["git", "commit", "-q", "-m", "one"]);
        std::fs::write(p.join("untracked.txt"), "u").expect("w");
        std::fs::write(p.join("ignored.txt"), "i").expect("w");
        d
    }

    #[test]
    fn tracked_untracked_ignored() {
        let r = repo();
        let p = r.path();
        let wt = Source::WorkingTree {
            include_untracked: false,
        };
        validate(p, &wt).expect("valid");
        assert_eq!(
            list_files(p, &wt).expect("list"),
            paths(&[".gitignore", "src/lib.rs", "tracked.txt"])
        );
        let with = Source::WorkingTree {
            include_untracked: true,
        };
        assert_eq!(
            list_files(p, &with).expect("list"),
            paths(&[".gitignore", "src/lib.rs", "tracked.txt", "untracked.txt"])
        );
        // a ref ships that commit's tree, not the working tree
        std::fs::write(p.join("later.txt"), "l").expect("w");
        sh(p, &["git", "add", "later.txt"]);
        sh(p, &["git", "commit", "-q", "-m", "two"]);
        let rev = Source::Rev("HEAD~1".into());
        validate(p, &rev).expect("valid rev");
        assert_eq!(
            list_files(p, &rev).expect("list"),
            paths(&[".gitignore", "src/lib.rs", "tracked.txt"])
        );
        let bad = Source::Rev("no-such-branch".into());
        let e = validate(p, &bad).expect_err("bad rev");
        assert!(
            e.to_string().contains("is not a branch, tag or commit"),
            "{e}"
        );
    }

    #[test]
    fn not_a_repo_is_a_clear_error() {
        let d = tempfile::tempdir().expect("tmp");
        let e = validate(
            d.path(),
            &Source::WorkingTree {
                include_untracked: false,
            },
        )
        .expect_err("no repo");
        assert!(
            e.to_string().contains("is not inside a git repository"),
            "{e}"
        );
    }

    #[test]
    fn tar_holds_exactly_the_list() {
        let r = repo();
        let p = r.path();
        let wt = Source::WorkingTree {
            include_untracked: false,
        };
        let files = list_files(p, &wt).expect("list");
        let mut f = tempfile::tempfile().expect("tmp");
        write_tar(p, &wt, &files, &mut f).expect("tar");
        use std::io::Seek;
        f.rewind().expect("rewind");
        let mut a = tar::Archive::new(f);
        let mut names: Vec<PathBuf> = a
            .entries()
            .expect("entries")
            .map(|e| e.expect("entry").path().expect("path").into_owned())
            .collect();
        names.sort();
        assert_eq!(names, files);
    }

    /// Names git stores byte for byte: Latin-1 (not UTF-8) and a newline.
    fn odd_names() -> [PathBuf; 2] {
        use std::os::unix::ffi::OsStrExt;
        [
            PathBuf::from(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
            PathBuf::from("two\nlines.txt"),
        ]
    }

    #[test]
    fn odd_file_names_round_trip_byte_for_byte() {
        let r = repo();
        let p = r.path();
        let odd = odd_names();
        for (i, name) in odd.iter().enumerate() {
            std::fs::write(p.join(name), format!("odd {i}")).expect("write odd name");
        }
        sh(p, &["git", "add", "."]);
        sh(p, &["git", "commit", "-q", "-m", "odd names"]);
        let wt = Source::WorkingTree {
            include_untracked: false,
        };
        for source in [wt, Source::Rev("HEAD".into())] {
            let files = list_files(p, &source).expect("list");
            for name in &odd {
                assert!(files.contains(name), "{source:?}: {name:?} in {files:?}");
            }
            assert_eq!(files.len(), 6, "{files:?}");
            // Shipped and unpacked with the agent's own extraction rules.
            let mut f = tempfile::tempfile().expect("tmp");
            write_tar(p, &source, &files, &mut f).expect("tar");
            use std::io::Seek;
            f.rewind().expect("rewind");
            let out = tempfile::tempdir().expect("out");
            banger_agent::transfer::unpack_contained(
                f,
                out.path(),
                banger_agent::transfer::Modes::Preserve,
            )
            .expect("unpack");
            for (i, name) in odd.iter().enumerate() {
                assert_eq!(
                    std::fs::read_to_string(out.path().join(name)).expect("shipped"),
                    format!("odd {i}"),
                    "{source:?}: {name:?}"
                );
            }
        }
        assert_eq!(display_name(&odd[0]), "\"caf\\351.txt\"");
        assert_eq!(display_name(&odd[1]), "\"two\\nlines.txt\"");
        assert_eq!(display_name(Path::new("src/café.rs")), "src/café.rs");
        assert_eq!(display_name(Path::new("a\"b")), "\"a\\\"b\"");
    }

    #[test]
    fn counts_read_right() {
        assert_eq!(count_files(0), "0 files");
        assert_eq!(count_files(1), "1 file");
        assert_eq!(count_files(2), "2 files");
    }
}
