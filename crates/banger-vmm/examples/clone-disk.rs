//! `clone-disk SRC DST`: clones a root disk with banger's `clone_disk` and prints
//! `<method> <milliseconds>` (used by scripts/bench-clone).

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: clone-disk SRC DST");
        std::process::exit(2);
    }
    let t0 = Instant::now();
    match banger_vmm::clone_disk(args[1].as_ref(), args[2].as_ref()) {
        Ok(method) => {
            let name = match method {
                banger_vmm::CloneMethod::Reflink => "reflink".to_string(),
                banger_vmm::CloneMethod::SparseCopy { data_bytes } => {
                    format!("sparse-copy({data_bytes}B)")
                }
            };
            println!("{name} {:.1}", t0.elapsed().as_secs_f64() * 1000.0);
        }
        Err(e) => {
            eprintln!("clone-disk: {e}");
            std::process::exit(1);
        }
    }
}
