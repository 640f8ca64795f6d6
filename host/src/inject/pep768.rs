//! Python 3.14+: PEP 768 remote execution (placeholder until filled in below).
use crate::discover::python_runtime::{Mapping, RuntimeDetails};

use super::{InjectError, InjectOptions, InjectReport};

pub fn inject(
    _pid: u32,
    _runtime: &RuntimeDetails,
    _maps: &[Mapping],
    _api_path: &str,
    _code: &str,
    _opts: &InjectOptions,
) -> Result<InjectReport, InjectError> {
    Err(InjectError::Pep768("not implemented".into()))
}
