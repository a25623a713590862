//! `oci-pull <reference> <images-dir> <cache-dir>`: pull_to_ext4 from the
//! command line, with a one-line-per-event progress log on stderr. Used by
//! scripts/bench-oci and handy for trying a registry by hand.

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: oci-pull <reference> <images-dir> <cache-dir>");
        std::process::exit(2);
    }
    let start = Instant::now();
    let mut last_phase = None;
    let mut progress = |p: &banger_oci::Progress| {
        if last_phase != Some((p.layer, p.phase)) {
            last_phase = Some((p.layer, p.phase));
            eprintln!(
                "[{:6.2}s] layer {}/{} {} {:?}",
                start.elapsed().as_secs_f64(),
                p.layer + 1,
                p.layers,
                p.digest.get(..19).unwrap_or(&p.digest),
                p.phase
            );
        }
    };
    let mut opts =
        banger_oci::PullOptions::new(PathBuf::from(&args[2]), PathBuf::from(&args[3]), "default");
    opts.progress = Some(&mut progress);
    match banger_oci::pull_to_ext4(&args[1], opts) {
        Ok(p) => {
            println!("{}", p.image.rootfs.display());
            eprintln!(
                "pulled {} in {:.2}s: {} layers, {} bytes downloaded, rootfs {} bytes ({} allocated)",
                p.reference,
                start.elapsed().as_secs_f64(),
                p.layers.len(),
                p.downloaded,
                p.image.manifest.size.apparent,
                p.image.manifest.size.allocated
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
