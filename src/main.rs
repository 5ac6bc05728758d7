//! The `kimberlite` binary: see `cli` for its commands.

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(kimberlite::cli::main_with_args(&arguments));
}
