use clap::Parser;

// The agent allocates many short-lived strings per span (decode → enrich → store) across
// threads; glibc's malloc spent a third of a saturated core in its own bookkeeping.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
