//! Intake decode benchmark (bench/90-intake.sh): thread CPU per span to decode span frames, as the
//! tracer writes them (bench/intake_frames.py), into `Span`s with `intake::wire::decode`, the call
//! an intake connection makes per frame. Only decoding is timed; freeing the spans happens on the
//! pipeline's side in the agent. Prints numbers; asserts nothing. Kept to the API that older
//! revisions have too, so bench/90-intake.sh can build it against a base revision.
//!
//! Usage: intake_bench FRAMES_FILE [SECONDS (default 3)] [LABEL]
use std::time::{Duration, Instant};

use zerostep::intake::wire::{decode, PeerFrame};
use zerostep::span::Span;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Frame bodies from a file of length-prefixed frames.
fn frames(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((head, tail)) = rest.split_first_chunk::<4>() {
        let n = u32::from_be_bytes(*head) as usize;
        let (body, next) = tail.split_at(n.min(tail.len()));
        out.push(body);
        rest = next;
    }
    out
}

fn decode_all(frames: &[&[u8]]) -> Vec<Vec<Span>> {
    frames
        .iter()
        .map(|f| match decode(f) {
            Ok(PeerFrame::Spans { spans, .. }) => spans,
            Ok(_) => panic!("not a span frame"),
            Err(e) => panic!("frame does not decode: {e}"),
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: intake_bench FRAMES_FILE [SECONDS] [LABEL]");
    let secs: f64 = args.get(2).map_or(3.0, |s| s.parse().expect("seconds"));
    let label = args.get(3).map_or("decode", String::as_str);
    let data = std::fs::read(path).expect("read frames");
    let frames = frames(&data);
    let spans: usize = decode_all(&frames).iter().map(Vec::len).sum();

    // Rounds of one pass over every frame; the fastest round is the least disturbed by neighbours.
    let mut per_span = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline || per_span.len() < 3 {
        let t0 = thread_cpu_ns();
        let out = std::hint::black_box(decode_all(&frames));
        let dt = thread_cpu_ns() - t0;
        drop(out);
        per_span.push(dt as f64 / spans as f64);
    }
    per_span.sort_by(f64::total_cmp);
    println!(
        "{label:>10}: {:7.0} ns/span CPU (min; median {:.0}, {} rounds) · {} frames, {} spans, {:.0} B/span",
        per_span[0],
        per_span[per_span.len() / 2],
        per_span.len(),
        frames.len(),
        spans,
        data.len() as f64 / spans as f64,
    );
}
