//! Records -> compact JSON bytes, as `schemas.codec.encode` (orjson over the
//! record's `to_wire` dict): `type` and `v` first, then the fields in order.
//! A value of an unexpected Python type (a bug upstream) gives None, and the
//! Python encoder writes, or refuses, it as it always has.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::json_text::write_string;
use crate::digits::push_int;
use crate::timestamps::push_canonical;

#[derive(Clone, Copy)]
enum FieldOut {
    Text,
    OptionalText,
    Integer,
    Time,
    Tags,
}

#[pyclass(frozen, module = "taskstream_native")]
pub struct RecordWriter {
    prefix: Vec<u8>,
    fields: Vec<(Py<PyString>, Vec<u8>, FieldOut)>,
}

#[pymethods]
impl RecordWriter {
    /// `fields`: [(name, kind)], kind one of "text", "optional_text",
    /// "integer", "time", "tags".
    #[new]
    fn new(py: Python<'_>, type_name: &str, version: i64, fields: Vec<(String, String)>) -> PyResult<Self> {
        let mut prefix = b"{\"type\":".to_vec();
        write_string(&mut prefix, type_name);
        prefix.extend_from_slice(format!(",\"v\":{version}").as_bytes());
        let mut built = Vec::with_capacity(fields.len());
        for (name, kind) in fields {
            let out = match kind.as_str() {
                "text" => FieldOut::Text,
                "optional_text" => FieldOut::OptionalText,
                "integer" => FieldOut::Integer,
                "time" => FieldOut::Time,
                "tags" => FieldOut::Tags,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "{type_name}.{name}: no writer for kind {other:?}"
                    )))
                }
            };
            let mut key = b",".to_vec();
            write_string(&mut key, &name);
            key.push(b':');
            built.push((PyString::intern(py, &name).unbind(), key, out));
        }
        Ok(RecordWriter { prefix, fields: built })
    }

    /// The record's JSON bytes, or None when a value is not of its kind's type.
    fn write<'py>(&self, py: Python<'py>, record: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.prefix);
        for (name, key, kind) in &self.fields {
            let value = record.getattr(name.bind(py))?;
            out.extend_from_slice(key);
            if !write_value(&mut out, &value, *kind) {
                return Ok(None);
            }
        }
        out.push(b'}');
        Ok(Some(PyBytes::new(py, &out)))
    }
}

fn write_value(out: &mut Vec<u8>, value: &Bound<'_, PyAny>, kind: FieldOut) -> bool {
    match kind {
        FieldOut::Text => write_text(out, value),
        FieldOut::OptionalText if value.is_none() => {
            out.extend_from_slice(b"null");
            true
        }
        FieldOut::OptionalText => write_text(out, value),
        FieldOut::Integer => match exact_int(value) {
            Some(number) => {
                push_int(out, number);
                true
            }
            None => false,
        },
        FieldOut::Time => {
            let Some(micros) = exact_int(value) else { return false };
            let at = out.len();
            out.push(b'"');
            if push_canonical(out, micros).is_none() {
                out.truncate(at);
                return false;
            }
            out.push(b'"');
            true
        }
        FieldOut::Tags => write_tags(out, value),
    }
}

fn write_text(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    if !value.is_exact_instance_of::<PyString>() {
        return false;
    }
    // A lone surrogate is not UTF-8: orjson refuses it, so does the fallback.
    match value.downcast::<PyString>().ok().and_then(|text| text.to_str().ok()) {
        Some(text) => {
            write_string(out, text);
            true
        }
        None => false,
    }
}

/// An `int` that is not a `bool` (orjson writes those as true/false), within i64.
fn exact_int(value: &Bound<'_, PyAny>) -> Option<i64> {
    if !value.is_exact_instance_of::<PyInt>() {
        return None;
    }
    value.extract::<i64>().ok()
}

fn write_tags(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    let items: Vec<Bound<'_, PyAny>> = if value.is_exact_instance_of::<PyTuple>() || value.is_exact_instance_of::<PyList>() {
        match value.try_iter() {
            Ok(iter) => iter.filter_map(Result::ok).collect(),
            Err(_) => return false,
        }
    } else {
        return false;
    };
    out.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if !write_text(out, item) {
            return false;
        }
    }
    out.push(b']');
    true
}
