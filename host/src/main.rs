use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (it reads this symbol before the first allocation). Two arenas
/// are plenty for the agent's few busy threads; freed memory goes back to the system after a
/// second instead of ten, and a background thread does it, since an idle agent allocates too
/// rarely to trigger the purge itself (idle RSS 30 MB; 35–37 without the thread, 41 with
/// jemalloc's defaults; the flat-out rate was the same with and without it).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 70] =
    b"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
