//! The `emulate` binary: parses flags and hands over to the library.
fn main() -> std::process::ExitCode {
    emulate::cli::main()
}
