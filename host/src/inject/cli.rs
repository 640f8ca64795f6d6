//! `zerostep inject`: one injection from the command line, for operators and tests.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::{inject, InjectOptions, InjectReport};

/// Exit status: the code ran (confirmed).
pub const EXIT_RAN: u8 = 0;
/// Exit status: injected but not failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: scheduled (pending call) but not confirmed within the timeout.
pub const EXIT_PENDING: u8 = 3;
/// Exit status: refused before touching the target.
pub const EXIT_REFUSED: u8 = 4;

/// Run Python code inside a running CPython 3.8+ process, without restarting it.
///
/// Exit status: 0 ran (confirmed), 3 scheduled but not yet confirmed, 4 refused (nothing was
/// touched), 1 failed.
#[derive(Debug, Args, Clone)]
pub struct InjectArgs {
    /// The target process.
    #[arg(long)]
    pub pid: u32,
    /// Python source to run.
    #[arg(long, conflicts_with = "file", required_unless_present_any = ["file", "cleanup"])]
    pub code: Option<String>,
    /// File with the Python source to run (read by the injector, not by the target).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Bound on the whole injection, including waiting for a pending call to run.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Do not wait for a pending call to run (report "scheduled").
    #[arg(long)]
    pub no_wait: bool,
    /// Only remove scratch pages left by earlier interrupted injections.
    #[arg(long, conflicts_with_all = ["code", "file"])]
    pub cleanup: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Testing: sleep between ptrace steps.
    #[arg(long, hide = true)]
    pub step_delay_us: Option<u64>,
}

pub fn run(args: InjectArgs) -> Result<ExitCode> {
    if args.cleanup {
        return match super::cleanup(args.pid, Duration::from_millis(args.timeout_ms)) {
            Ok(n) => {
                println!("removed {n} leftover page(s)");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refusal_or_failure(&e, args.json),
        };
    }
    let code = match (&args.code, &args.file) {
        (Some(c), _) => c.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => anyhow::bail!("--code or --file is required"),
    };
    let opts = InjectOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        wait_for_pending: !args.no_wait,
        step_delay: args.step_delay_us.map(Duration::from_micros),
    };
    match inject(args.pid, &code, &opts) {
        Ok(report) => {
            print_report(&report, args.json)?;
            Ok(ExitCode::from(if report.confirmed {
                EXIT_RAN
            } else {
                EXIT_PENDING
            }))
        }
        Err(e) => refusal_or_failure(&e, args.json),
    }
}

fn refusal_or_failure(e: &super::InjectError, json: bool) -> Result<ExitCode> {
    let refused = e.is_refusal();
    if json {
        let v = serde_json::json!({ "error": e.to_string(), "refused": refused });
        println!("{v}");
    } else {
        eprintln!(
            "zerostep inject: {}: {e}",
            if refused { "refused" } else { "failed" }
        );
    }
    Ok(ExitCode::from(if refused {
        EXIT_REFUSED
    } else {
        EXIT_FAILED
    }))
}

fn print_report(r: &InjectReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let mode = serde_json::to_value(r.mode)?;
    println!(
        "pid {} (Python {}): mode {} ({}), thread stopped {:.3} ms, {}",
        r.pid,
        r.python,
        mode.as_str().unwrap_or("?"),
        r.thread_state,
        r.stop_time.as_secs_f64() * 1e3,
        match (r.confirmed, r.already_present, &r.raised) {
            (true, true, _) => "confirmed (already present, not run again)".to_string(),
            (true, false, Some(m)) => format!("confirmed, the code raised: {m}"),
            (true, false, None) => "confirmed".to_string(),
            (false, ..) => "scheduled, not yet confirmed".to_string(),
        }
    );
    Ok(())
}
