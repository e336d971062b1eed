use std::process::ExitCode;

fn main() -> ExitCode {
    ledge::cli::main()
}
