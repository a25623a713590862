//! Upload (containment, scale) and download over an in-process agent.

mod common;

use std::io::Write;
use std::time::Instant;

use banger_agent::AgentError;
use banger_proto::agent::AgentErrorKind;
use common::*;
use tar::EntryType;
use tokio::io::AsyncReadExt;

macro_rules! bounded {
    ($body:expr) => {
        tokio::time::timeout(TEST_TIMEOUT, $body)
            .await
            .expect("test timed out")
    };
}

fn rejected(e: AgentError) -> String {
    match e {
        AgentError::Guest(m) => {
            assert_eq!(m.kind, AgentErrorKind::PathRejected, "{}", m.message);
            m.message
        }
        other => panic!("expected a guest path rejection, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_rejected_and_write_nothing_outside() {
    let a = serve_in_process();
    let root = a.dir.path();
    let target = root.join("target");
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    std::fs::write(outside.join("victim"), b"original").expect("write");
    let target_s = target.to_str().expect("utf8").to_string();
    bounded!(async {
        // 1. `..` escaping the target.
        let mut t = Vec::new();
        raw_entry(&mut t, b"ok.txt", EntryType::Regular, b"", b"fine");
        raw_entry(
            &mut t,
            b"../outside/dotdot",
            EntryType::Regular,
            b"",
            b"pwned",
        );
        raw_finish(&mut t);
        let e = a
            .client
            .upload_tar(&t[..], &target_s)
            .await
            .expect_err("dotdot");
        let m = rejected(e);
        assert!(m.contains("..") && m.contains("dotdot"), "{m}");
        assert!(!outside.join("dotdot").exists());

        // 2. An absolute path.
        let abs = format!("{}/abs", outside.display());
        let mut t = Vec::new();
        raw_entry(&mut t, abs.as_bytes(), EntryType::Regular, b"", b"pwned");
        raw_finish(&mut t);
        let m = rejected(
            a.client
                .upload_tar(&t[..], &target_s)
                .await
                .expect_err("abs"),
        );
        assert!(m.contains("absolute"), "{m}");
        assert!(!outside.join("abs").exists());

        // 3. A symlink to outside, then a file through it.
        let mut t = Vec::new();
        raw_entry(
            &mut t,
            b"link",
            EntryType::Symlink,
            outside.to_str().expect("utf8").as_bytes(),
            b"",
        );
        raw_entry(&mut t, b"link/through", EntryType::Regular, b"", b"pwned");
        raw_finish(&mut t);
        let m = rejected(
            a.client
                .upload_tar(&t[..], &target_s)
                .await
                .expect_err("symlink"),
        );
        assert!(m.contains("symlink") && m.contains("link/through"), "{m}");
        assert!(!outside.join("through").exists());

        // 4. Same with a relative `..` symlink and a directory entry through it.
        let mut t = Vec::new();
        raw_entry(&mut t, b"up", EntryType::Symlink, b"../outside", b"");
        raw_entry(&mut t, b"up/newdir/", EntryType::Directory, b"", b"");
        raw_finish(&mut t);
        rejected(
            a.client
                .upload_tar(&t[..], &target_s)
                .await
                .expect_err("symlink dir"),
        );
        assert!(!outside.join("newdir").exists());

        // 5. A hard link to a file outside.
        let mut t = Vec::new();
        raw_entry(&mut t, b"hl", EntryType::Link, b"../outside/victim", b"");
        raw_finish(&mut t);
        let m = rejected(
            a.client
                .upload_tar(&t[..], &target_s)
                .await
                .expect_err("hardlink"),
        );
        assert!(m.contains("hard link"), "{m}");

        // 6. A symlink to a file outside, replaced by a regular file of the
        // same name: the symlink is replaced, the victim stays intact.
        let mut t = Vec::new();
        raw_entry(
            &mut t,
            b"same",
            EntryType::Symlink,
            outside.join("victim").to_str().expect("utf8").as_bytes(),
            b"",
        );
        raw_entry(&mut t, b"same", EntryType::Regular, b"", b"replaced");
        raw_finish(&mut t);
        a.client
            .upload_tar(&t[..], &target_s)
            .await
            .expect("replace symlink");
        assert_eq!(
            std::fs::read(outside.join("victim")).expect("read"),
            b"original"
        );
        assert_eq!(
            std::fs::read(target.join("same")).expect("read"),
            b"replaced"
        );
        assert!(
            !std::fs::symlink_metadata(target.join("same"))
                .expect("meta")
                .file_type()
                .is_symlink()
        );

        // 7. Devices are refused.
        let mut t = Vec::new();
        raw_entry(&mut t, b"dev", EntryType::Char, b"", b"");
        raw_finish(&mut t);
        let m = rejected(
            a.client
                .upload_tar(&t[..], &target_s)
                .await
                .expect_err("device"),
        );
        assert!(m.contains("not supported"), "{m}");

        // 8. A relative target dir is a bad request.
        let e = a
            .client
            .upload_tar(&b""[..], "relative/dir")
            .await
            .expect_err("relative");
        assert!(e.to_string().contains("absolute"), "{e}");

        // Nothing new appeared outside the target through all of it.
        assert_eq!(
            list_tree(&outside),
            vec![std::path::PathBuf::from("victim")]
        );
        // And the agent still works.
        a.client.ping().await.expect("ping");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_entry_deep_in_a_large_upload_fails_fast() {
    let a = serve_in_process();
    let target = a.dir.path().join("t");
    bounded!(async {
        // The bad entry comes first; 32 MiB of data follow. The refusal must
        // come back as the agent's error, not a broken pipe.
        let mut t = Vec::new();
        raw_entry(&mut t, b"../escape", EntryType::Regular, b"", b"x");
        raw_entry(
            &mut t,
            b"big",
            EntryType::Regular,
            b"",
            &vec![7u8; 32 << 20],
        );
        raw_finish(&mut t);
        let e = a
            .client
            .upload_tar(&t[..], target.to_str().expect("utf8"))
            .await
            .expect_err("rejected");
        rejected(e);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_20000_files_then_download_round_trip() {
    let a = serve_in_process();
    let src = a.dir.path().join("src");
    let target = a.dir.path().join("guest/root/repo");
    // Build the tree on disk, then tar it (as `banger vm run ./repo` will).
    for d in 0..200 {
        let dir = src.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..100 {
            let mut file = std::fs::File::create(dir.join(format!("f{f:03}.txt"))).expect("create");
            writeln!(file, "file {d}/{f}").expect("write");
        }
    }
    std::os::unix::fs::symlink("d000/f000.txt", src.join("alias")).expect("symlink");
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &src).expect("tar");
    let tarball = b.into_inner().expect("tar");

    bounded!(async {
        let t = Instant::now();
        let s = a
            .client
            .upload_tar(&tarball[..], target.to_str().expect("utf8"))
            .await
            .expect("upload");
        let took = t.elapsed();
        eprintln!(
            "uploaded {} entries ({} bytes of files, {} tar bytes) in {took:?}",
            s.entries,
            s.bytes,
            tarball.len()
        );
        assert!(s.entries >= 20_000 + 200, "{s:?}");
        let files: Vec<_> = list_tree(&target);
        assert_eq!(files.len(), 20_000 + 200 + 1);
        assert_eq!(
            std::fs::read_to_string(target.join("d123/f045.txt")).expect("read"),
            "file 123/45\n"
        );
        assert_eq!(
            std::fs::read_link(target.join("alias")).expect("link"),
            std::path::PathBuf::from("d000/f000.txt")
        );

        // Download the directory back and compare.
        let mut stream = a
            .client
            .download(target.to_str().expect("utf8"))
            .await
            .expect("download");
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.expect("read download");
        let out = a.dir.path().join("back");
        std::fs::create_dir_all(&out).expect("mkdir");
        tar::Archive::new(&back[..])
            .unpack(&out)
            .expect("unpack download");
        assert_eq!(list_tree(&out.join("repo")), list_tree(&target));
        assert_eq!(
            std::fs::read_to_string(out.join("repo/d199/f099.txt")).expect("read"),
            "file 199/99\n"
        );

        // A single file downloads as a one-entry tar.
        let mut stream = a
            .client
            .download(target.join("d001/f002.txt").to_str().expect("utf8"))
            .await
            .expect("download");
        let mut one = Vec::new();
        stream.read_to_end(&mut one).await.expect("read");
        let mut ar = tar::Archive::new(&one[..]);
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["f002.txt".to_string()]);

        // A missing path is a clear NotFound before any stream.
        match a.client.download("/no/such/path").await {
            Err(AgentError::Guest(m)) => {
                assert_eq!(m.kind, AgentErrorKind::NotFound);
                assert!(m.message.contains("/no/such/path"));
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("download of a missing path succeeded"),
        }
    });
}
