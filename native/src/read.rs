//! The input events' fast reader, as the generated `read` functions of
//! `schemas/codec.py`: a message of the current version whose every field is
//! plainly valid gives its record; anything else gives None and the Python
//! reader (which upcasts and words every error) reads the message again.
//!
//! So this reader may refuse more than Python does, never accept more:
//! ids must be printable ASCII here (Python's `str.isprintable` also admits
//! most of Unicode), timestamps the canonical shape.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::{Number, Value};

use crate::init::{build_in_order, positions};
use crate::timestamps::parse_canonical;

#[derive(Clone, Copy)]
enum FieldKind {
    Id,
    Cents,
    Time,
    Tags,
}

struct InputType {
    name: String,
    version: i64,
    class: Py<PyType>,
    // (index of the field's name in `InputReader::keys`, its kind)
    fields: Vec<(usize, FieldKind)>,
    // Each field's place among the class's fields (init::positions).
    order: Vec<usize>,
}

/// Where "type" and "v" are in `InputReader::keys`.
const TYPE_KEY: usize = 0;
const VERSION_KEY: usize = 1;

/// Limits of `schemas/limits.py`, handed over by the Python side.
struct Limits {
    max_id_chars: usize,
    max_cents: u64,
    min_at: i64,
    max_at: i64,
    max_tags: usize,
}

#[pyclass(frozen, module = "taskstream_native")]
pub struct InputReader {
    types: Vec<InputType>,
    // Every key some input type reads ("type" and "v" first); a message's
    // values are kept by their key's index here, any other key's are dropped.
    keys: Vec<String>,
    limits: Limits,
}

type TypeSpec = (String, i64, Py<PyType>, Vec<(String, String)>);

#[pymethods]
impl InputReader {
    /// `types`: (type, v, record class, [(field, kind)]) with kind one of
    /// "id", "cents", "time", "tags"; the record class is called with the
    /// fields' values in that order.
    #[new]
    fn new(
        py: Python<'_>,
        types: Vec<TypeSpec>,
        max_id_chars: usize,
        max_cents: u64,
        min_at: i64,
        max_at: i64,
        max_tags: usize,
    ) -> PyResult<Self> {
        let mut keys = vec!["type".to_string(), "v".to_string()];
        let mut built = Vec::with_capacity(types.len());
        for (name, version, class, fields) in types {
            let mut kinds = Vec::with_capacity(fields.len());
            let mut names: Vec<String> = Vec::with_capacity(fields.len());
            for (field, kind) in fields {
                let kind = match kind.as_str() {
                    "id" => FieldKind::Id,
                    "cents" => FieldKind::Cents,
                    "time" => FieldKind::Time,
                    "tags" => FieldKind::Tags,
                    other => {
                        return Err(PyValueError::new_err(format!(
                            "{name}.{field}: no fast reading for kind {other:?}"
                        )))
                    }
                };
                let index = match keys.iter().position(|key| *key == field) {
                    Some(index) => index,
                    None => {
                        keys.push(field.clone());
                        keys.len() - 1
                    }
                };
                names.push(field);
                kinds.push((index, kind));
            }
            let order = positions(class.bind(py), &names)?;
            built.push(InputType { name, version, class, fields: kinds, order });
        }
        let limits = Limits { max_id_chars, max_cents, min_at, max_at, max_tags };
        Ok(InputReader { types: built, keys, limits })
    }

    /// The record of one message, or None when the Python reader must judge it.
    fn read(&self, py: Python<'_>, raw: &[u8]) -> PyResult<Option<PyObject>> {
        let mut parser = serde_json::Deserializer::from_slice(raw);
        let Ok(doc) = (Message { keys: &self.keys }).deserialize(&mut parser) else {
            return Ok(None);
        };
        if parser.end().is_err() {
            return Ok(None); // trailing characters
        }
        let Some(Value::String(type_name)) = &doc[TYPE_KEY] else {
            return Ok(None);
        };
        let Some(input) = self.types.iter().find(|t| t.name == *type_name) else {
            return Ok(None);
        };
        match &doc[VERSION_KEY] {
            Some(Value::Number(v)) if v.as_i64() == Some(input.version) => {}
            _ => return Ok(None),
        }
        match self.values(py, input, &doc)? {
            Some(values) => Ok(Some(build_in_order(input.class.bind(py), &input.order, &values)?.unbind())),
            None => Ok(None),
        }
    }
}

/// A message's values by key index (`InputReader::keys`), None where absent.
type Values = Vec<Option<Value>>;

/// Reads one JSON object into `Values`: each key compared with the known
/// ones, no map built. A repeated key keeps its last value, as a map would.
/// An unknown key's value is still read as a `Value`, so what is refused
/// (bad escapes, lone surrogates, depth) is what `serde_json::Value` refuses.
struct Message<'k> {
    keys: &'k [String],
}

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = Values;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Values, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = Values;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Values, A::Error> {
        let mut values: Values = vec![None; self.keys.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: Value = map.next_value()?;
            if let Some(index) = self.keys.iter().position(|known| *known == *key) {
                values[index] = Some(value);
            }
        }
        Ok(values)
    }
}

impl InputReader {
    fn values<'py>(
        &self,
        py: Python<'py>,
        input: &InputType,
        doc: &Values,
    ) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
        let mut values: Vec<Bound<'py, PyAny>> = Vec::with_capacity(input.fields.len());
        for (index, kind) in &input.fields {
            let value = match (kind, doc[*index].as_ref()) {
                (FieldKind::Id, Some(Value::String(text))) if self.plain_id(text) => {
                    PyString::new(py, text).into_any()
                }
                (FieldKind::Cents, Some(Value::Number(number))) => match self.cents(number) {
                    Some(cents) => cents.into_pyobject(py)?.into_any(),
                    None => return Ok(None),
                },
                (FieldKind::Time, Some(Value::String(text))) => {
                    match parse_canonical(text.as_bytes()) {
                        Some(at) if self.limits.min_at <= at && at < self.limits.max_at => {
                            at.into_pyobject(py)?.into_any()
                        }
                        _ => return Ok(None),
                    }
                }
                (FieldKind::Tags, Some(Value::Array(items))) => match self.tags(py, items)? {
                    Some(tags) => tags.into_any(),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
            values.push(value);
        }
        Ok(Some(values))
    }

    /// Non-empty, within the length limit, printable ASCII only.
    fn plain_id(&self, text: &str) -> bool {
        !text.is_empty()
            && text.len() <= self.limits.max_id_chars
            && text.bytes().all(|c| (0x20..0x7f).contains(&c))
    }

    /// A JSON integer (orjson reads `-0` as the integer 0) within the limit.
    fn cents(&self, number: &Number) -> Option<u64> {
        let cents = number.as_u64().or_else(|| (number.as_i64() == Some(0)).then_some(0))?;
        (cents <= self.limits.max_cents).then_some(cents)
    }

    fn tags<'py>(&self, py: Python<'py>, items: &[Value]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        if items.len() > self.limits.max_tags {
            return Ok(None);
        }
        let mut tags = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(text) if self.plain_id(text) => tags.push(PyString::new(py, text)),
                _ => return Ok(None),
            }
        }
        Ok(Some(PyTuple::new(py, tags)?))
    }
}
