//! `flatten <tree-dir> <layer>...`: apply local layer blobs (tar, tar.gz,
//! tar.zst) with the Flattener and print what the ext4 step would get.
//! For timing and debugging the flattener without a registry.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: flatten <tree-dir> <layer>...");
        std::process::exit(2);
    }
    let start = Instant::now();
    let run = || -> banger_oci::Result<()> {
        let mut f = banger_oci::Flattener::new(std::path::Path::new(&args[1]), Default::default())?;
        for layer in &args[2..] {
            let file = std::fs::File::open(layer).map_err(|source| banger_oci::Error::Io {
                action: "open",
                path: layer.into(),
                source,
            })?;
            let s = f.apply_layer(layer, file, None)?;
            eprintln!(
                "[{:6.2}s] {layer}: {} entries, {} bytes",
                start.elapsed().as_secs_f64(),
                s.entries,
                s.uncompressed
            );
        }
        let out = f.finish()?;
        eprintln!(
            "[{:6.2}s] {} paths, {} file bytes, {} fixups, {} xattrs",
            start.elapsed().as_secs_f64(),
            out.paths,
            out.file_bytes,
            out.fixups.len(),
            out.xattrs.len()
        );
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
