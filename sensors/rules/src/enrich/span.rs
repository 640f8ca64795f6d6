//! Borrowed spans in, patches out.

/// An attribute value, borrowed from the caller's span (the WIT `attribute-value`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    /// A string.
    Str(&'a str),
    /// A signed integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A list of strings (e.g. HTTP header values).
    StrArray(&'a [String]),
}

impl<'a> Value<'a> {
    pub(crate) fn as_str(&self) -> Option<&'a str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// An attribute value a patch sets.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    /// A string.
    Str(String),
    /// A signed integer.
    Int(i64),
    /// A float.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A list of strings.
    StrArray(Vec<String>),
}

/// The WIT `span-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the process.
    Internal,
    /// Handles an incoming request (HTTP server spans get routes).
    Server,
    /// An outgoing request (HTTP client, database).
    Client,
    /// Sends a message.
    Producer,
    /// Receives a message.
    Consumer,
}

/// The WIT `status-code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// Nobody said (most spans).
    Unset,
    /// Explicitly fine.
    Ok,
    /// Failed.
    Error,
}

/// The WIT `span-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: StatusCode,
    /// A description; empty when the code says it all.
    pub message: String,
}

/// A borrowed span for [`super::enrich_batch`]: only what enrichment reads.
#[derive(Debug, Clone, Copy)]
pub struct SpanView<'a> {
    /// The span's name.
    pub name: &'a str,
    /// The span's kind.
    pub kind: SpanKind,
    /// The span's status code as the tracer set it.
    pub status: StatusCode,
    /// (key, value) pairs; keys outside [`super::ATTRIBUTE_KEYS`] are ignored.
    pub attributes: &'a [(&'a str, Value<'a>)],
}

/// What enrichment changes on one span (the WIT `span-patch`). Keys are always ones from
/// [`super::ATTRIBUTE_KEYS`].
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// Index of the span in the batch.
    pub index: u32,
    /// A new name.
    pub name: Option<String>,
    /// A new status.
    pub status: Option<Status>,
    /// Set (add or replace) these attributes.
    pub set_attributes: Vec<(&'static str, OwnedValue)>,
    /// Remove these attribute keys.
    pub remove_attributes: Vec<&'static str>,
}

impl Patch {
    pub(crate) fn new(index: u32) -> Self {
        Patch {
            index,
            name: None,
            status: None,
            set_attributes: Vec::new(),
            remove_attributes: Vec::new(),
        }
    }

    pub(crate) fn set(&mut self, key: &'static str, value: OwnedValue) {
        self.set_attributes.push((key, value));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.status.is_none()
            && self.set_attributes.is_empty()
            && self.remove_attributes.is_empty()
    }
}
