//! A batch's redo record body, as `streams.partition_state._redo_body_python`
//! (format 4's bytes after its magic; the caller compresses them): big-endian
//! `>qII` (seq, writes, outputs), then per write `>Ii` (key length, value
//! length or -1 for a delete) with its key and value, then per output
//! `>HiIi` (role length, key length or -1, value length, partition or -1)
//! with its role (UTF-8), key and value.
//!
//! The Python body is a `struct.pack` per item and a join: ~0.4 µs an item,
//! two items per event on the peer log. Here it is one buffer, sized first.
//! Anything `struct.pack` would refuse, or that is not of the exact types
//! the worker passes (bytes, str, int, None), gives None and the Python
//! reference runs, and raises as it always has.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::state::fields_of;

struct Decline;

impl From<PyErr> for Decline {
    fn from(_: PyErr) -> Self {
        Decline
    }
}

fn exact_bytes<'a>(value: &'a Bound<'_, PyAny>) -> Result<&'a [u8], Decline> {
    // Exact bytes only: a bytearray or memoryview would pack too in Python
    // (struct only asks for a length), but the worker never passes one.
    Ok(value.downcast_exact::<PyBytes>().map_err(|_| Decline)?.as_bytes())
}

fn optional_bytes<'a>(value: &'a Bound<'_, PyAny>) -> Result<Option<&'a [u8]>, Decline> {
    if value.is_none() {
        Ok(None)
    } else {
        exact_bytes(value).map(Some)
    }
}

fn u32_len(n: usize) -> Result<u32, Decline> {
    u32::try_from(n).map_err(|_| Decline)
}

fn i32_len(n: usize) -> Result<i32, Decline> {
    i32::try_from(n).map_err(|_| Decline)
}

/// An output record's fields, read from its slots (`state::fields_of`: an
/// `Output` is a `fast_init` record; anything else is read by attribute).
const OUTPUT_FIELDS: &[&str] = &["role", "key", "value", "partition"];
/// An output's fields, checked: role text, key bytes (None: no key), value bytes, partition (-1: by key).
type OutputParts<'a> = (&'a str, Option<&'a [u8]>, &'a [u8], i32);

fn body(
    seq: &Bound<'_, PyAny>,
    writes: &Bound<'_, PyTuple>,
    outputs: &Bound<'_, PyTuple>,
) -> Result<Vec<u8>, Decline> {
    if seq.downcast_exact::<pyo3::types::PyInt>().is_err() {
        return Err(Decline);
    }
    let seq: i64 = seq.extract()?;
    let mut parts: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(writes.len());
    let mut size = 16usize;
    // The borrowed slices below need their objects held: the pairs' items.
    let mut pairs: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)> = Vec::with_capacity(writes.len());
    for item in writes.iter() {
        let pair = item.downcast_exact::<PyTuple>().map_err(|_| Decline)?;
        if pair.len() != 2 {
            return Err(Decline);
        }
        pairs.push((pair.get_item(0)?, pair.get_item(1)?));
    }
    for (key, value) in &pairs {
        let key = exact_bytes(key)?;
        let value = optional_bytes(value)?;
        size += 8 + key.len() + value.map_or(0, <[u8]>::len);
        parts.push((key, value));
    }
    let mut fields: Vec<[Bound<'_, PyAny>; 4]> = Vec::with_capacity(outputs.len());
    for output in outputs.iter() {
        fields.push(fields_of(&output, OUTPUT_FIELDS)?.try_into().map_err(|_| Decline)?);
    }
    let mut outs: Vec<OutputParts<'_>> = Vec::with_capacity(fields.len());
    for [role, key, value, partition] in &fields {
        let role = role.downcast_exact::<PyString>().map_err(|_| Decline)?.to_str()?;
        let key = optional_bytes(key)?;
        let value = exact_bytes(value)?;
        let partition = if partition.is_none() {
            -1
        } else {
            // struct's `i` takes any int in i32's range (a bool too, as 0/1:
            // the worker never passes one, so decline it).
            if partition.downcast_exact::<pyo3::types::PyInt>().is_err() {
                return Err(Decline);
            }
            partition.extract::<i32>()?
        };
        size += 14 + role.len() + key.map_or(0, <[u8]>::len) + value.len();
        outs.push((role, key, value, partition));
    }
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&u32_len(parts.len())?.to_be_bytes());
    out.extend_from_slice(&u32_len(outs.len())?.to_be_bytes());
    for (key, value) in parts {
        out.extend_from_slice(&u32_len(key.len())?.to_be_bytes());
        out.extend_from_slice(&match value {
            None => -1i32,
            Some(v) => i32_len(v.len())?,
        }
        .to_be_bytes());
        out.extend_from_slice(key);
        if let Some(v) = value {
            out.extend_from_slice(v);
        }
    }
    for (role, key, value, partition) in outs {
        let role_len = u16::try_from(role.len()).map_err(|_| Decline)?;
        out.extend_from_slice(&role_len.to_be_bytes());
        out.extend_from_slice(&match key {
            None => -1i32,
            Some(k) => i32_len(k.len())?,
        }
        .to_be_bytes());
        out.extend_from_slice(&u32_len(value.len())?.to_be_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(role.as_bytes());
        if let Some(k) = key {
            out.extend_from_slice(k);
        }
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// The body's bytes, or None (the Python reference then runs).
#[pyfunction]
pub fn redo_body<'py>(
    py: Python<'py>,
    seq: &Bound<'py, PyAny>,
    writes: &Bound<'py, PyAny>,
    outputs: &Bound<'py, PyAny>,
) -> Option<Bound<'py, PyBytes>> {
    let writes = writes.downcast_exact::<PyTuple>().ok()?;
    let outputs = outputs.downcast_exact::<PyTuple>().ok()?;
    match body(seq, writes, outputs) {
        Ok(bytes) => Some(PyBytes::new(py, &bytes)),
        Err(Decline) => None,
    }
}
