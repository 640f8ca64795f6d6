use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = zerostep::cli::Cli::parse();
    zerostep::cli::init_logging(cli.log.as_deref());
    match zerostep::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("zerostep: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
