//! taskstream's compiled kernel: the pure functions that the hot path calls
//! for every event, each byte for byte the same as the Python function it
//! stands in for (`schemas/native.py` wires them in; the property tests in
//! `tests/unit/test_native.py` compare the two on generated inputs).

use pyo3::prelude::*;
use pyo3::types::PyTuple;

mod digits;
mod ids;
mod init;
mod json_text;
mod orders;
mod read;
mod redo;
mod state;
mod timestamps;
mod write;

/// `app.ids._digest`: the first 32 hex digits of sha256 of the parts joined by U+001F.
#[pyfunction(signature = (*parts))]
fn digest(parts: &Bound<'_, PyTuple>) -> PyResult<String> {
    let mut texts = Vec::with_capacity(parts.len());
    for part in parts.iter() {
        texts.push(part.downcast_into::<pyo3::types::PyString>()?);
    }
    let mut strs = Vec::with_capacity(texts.len());
    for text in &texts {
        strs.push(text.to_str()?);
    }
    Ok(ids::digest(strs))
}

/// `schemas.timestamps._format` for years 1..=9999 (None outside).
#[pyfunction]
fn format_utc(micros: i64) -> Option<String> {
    timestamps::format_canonical(micros)
}

/// The canonical-shape part of `schemas.timestamps.parse_utc` (None otherwise).
#[pyfunction]
fn parse_utc(text: &str) -> Option<i64> {
    timestamps::parse_canonical(text.as_bytes())
}

#[pymodule]
fn taskstream_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(digest, module)?)?;
    module.add_function(wrap_pyfunction!(format_utc, module)?)?;
    module.add_function(wrap_pyfunction!(parse_utc, module)?)?;
    module.add_function(wrap_pyfunction!(state::encode_user_state, module)?)?;
    module.add_function(wrap_pyfunction!(redo::redo_body, module)?)?;
    module.add_function(wrap_pyfunction!(init::install_constructor, module)?)?;
    module.add_function(wrap_pyfunction!(init::has_constructor, module)?)?;
    module.add_class::<orders::OrderPath>()?;
    module.add_class::<read::InputReader>()?;
    module.add_class::<state::StateReader>()?;
    module.add_class::<write::RecordWriter>()?;
    Ok(())
}
