//! Span enrichment: borrowed spans in, [`Patch`]es out (only what changes, like the WIT
//! `span-patch`). Rules, in the order they run on each span:
//!
//! 1. [`redact`]: credentials in `url.full`, `http.url`, `url.query`, `http.target`,
//!    `db.connection_string` and credential-bearing request/response headers;
//! 2. [`sql`]: literals in `db.query.text` / `db.statement` become `?` (SQL systems only);
//! 3. [`route`]: a server span without `http.route` gets one derived from `url.path` (or the
//!    older `http.target`), and the name `METHOD /route`;
//! 4. [`status`]: an unset status becomes an error from `http.response.status_code` (server:
//!    5xx; client: 4xx and 5xx), and `error.type` gets the status code if absent.

pub mod redact;
pub mod route;
pub mod sql;
pub mod status;

mod attributes;
mod span;

pub use attributes::ATTRIBUTE_KEYS;
pub use span::{OwnedValue, Patch, SpanKind, SpanView, Status, StatusCode, Value};

use attributes::Known;

/// Only the rules that keep secrets out ([`redact`] and [`sql`]), for the host's native baseline:
/// what runs when a sensor could not enrich a batch. `None` when nothing changes.
pub fn redact_span<'a>(
    index: u32,
    attributes: impl IntoIterator<Item = (&'a str, Value<'a>)>,
) -> Option<Patch> {
    let known = Known::collect(attributes);
    let mut patch = Patch::new(index);
    redact::apply(&known, &mut patch);
    sql::apply(&known, &mut patch);
    (!patch.is_empty()).then_some(patch)
}

/// Enriches one span; `None` when nothing changes. `attributes` may hold any keys: those not in
/// [`ATTRIBUTE_KEYS`] are ignored.
pub fn enrich_span<'a>(
    index: u32,
    name: &str,
    kind: SpanKind,
    status: StatusCode,
    attributes: impl IntoIterator<Item = (&'a str, Value<'a>)>,
) -> Option<Patch> {
    let known = Known::collect(attributes);
    let mut patch = Patch::new(index);
    redact::apply(&known, &mut patch);
    sql::apply(&known, &mut patch);
    route::apply(&known, name, kind, &mut patch);
    status::apply(&known, kind, status, &mut patch);
    (!patch.is_empty()).then_some(patch)
}

/// Enriches a batch; patches carry the index of their span in `spans`.
pub fn enrich_batch(spans: &[SpanView<'_>]) -> Vec<Patch> {
    spans
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let index = u32::try_from(i).ok()?;
            enrich_span(
                index,
                s.name,
                s.kind,
                s.status,
                s.attributes.iter().copied(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
