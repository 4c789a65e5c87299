//! `pause`: the first process of every pod sandbox (the `pause` image `cargo xtask images` builds). It
//! holds the pod's namespaces open, reaps the orphans the pod's shared PID namespace hands it (it is PID
//! 1 there), and exits 0 on SIGINT or SIGTERM, as upstream's `pause.c` does — but in safe Rust.

use rustix::process::{WaitOptions, wait};
use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("pause (k3rs) {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGCHLD]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pause: installing signal handlers: {e}");
            std::process::exit(1);
        }
    };
    for signal in signals.forever() {
        match signal {
            SIGCHLD => {
                // Reap every child that has ended; stop when none is left or none has ended.
                while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
            }
            _ => std::process::exit(0),
        }
    }
}
