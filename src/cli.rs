//! Command-line parsing and the subcommands. (Being written.)

pub fn main_with_args(_arguments: &[String]) -> i32 {
    eprintln!("kimberlite: not built yet");
    1
}
