//! `app.state_codec.encode_user_state` without building the nested lists:
//! the same positional arrays, written straight from the `UserState`,
//! `TaskInstance`, `RewardSlot` and `OrderRecord` objects, byte for byte what
//! orjson writes for them. A value of a type the Python encoder would not
//! write this way (a float, a non-str key, an int beyond 64 bits) gives None,
//! and the Python encoder handles it.

use std::sync::Mutex;

use pyo3::exceptions::PySystemError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple, PyType};
use serde_json::Value;

use crate::digits::push_int;
use crate::init::{build_in_order, positions, read_slot, slot_offsets};
use crate::json_text::write_string;

/// Not this encoder's case: the Python encoder takes over.
struct Decline;

type Step = Result<(), Decline>;

#[pyfunction]
pub fn encode_user_state<'py>(
    py: Python<'py>,
    format: i64,
    state: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let mut out = Vec::with_capacity(512);
    match write_state(py, &mut out, format, state) {
        Ok(Ok(())) => Ok(Some(PyBytes::new(py, &out))),
        Ok(Err(Decline)) => Ok(None),
        Err(error) => Err(error),
    }
}

const USER_FIELDS: &[&str] = &["user_id", "instances", "orders", "held_refunds", "next_deadline", "last_claim"];
const INSTANCE_FIELDS: &[&str] = &[
    "task_id",
    "template_id",
    "claim_event_id",
    "claimed_at",
    "deadline",
    "status",
    "progress",
    "counted",
    "slots",
];
const SLOT_FIELDS: &[&str] = &["slot", "status", "reward_id", "amount_cents", "prize_id", "pool_id", "debited", "grants"];
const ORDER_FIELDS: &[&str] = &["amount_cents", "refunded_cents", "refund_ids", "at", "channel"];

/// Per (field list, exact type): its slot offsets, or None for a type whose
/// fields are read by name. Only `fast_init` classes get offsets, and their
/// constructors keep them alive for good, so a cached address is never
/// another class's.
type Offsets = Option<&'static [ffi::Py_ssize_t]>;
static LAYOUTS: Mutex<Vec<(usize, usize, Offsets)>> = Mutex::new(Vec::new());

fn layout(object: &Bound<'_, PyAny>, names: &'static [&'static str]) -> Offsets {
    let class = unsafe { ffi::Py_TYPE(object.as_ptr()) } as usize;
    let list = names.as_ptr() as usize;
    let mut table = LAYOUTS.lock().ok()?;
    if let Some((_, _, found)) = table.iter().find(|(l, c, _)| *l == list && *c == class) {
        return *found;
    }
    let found: Offsets = slot_offsets(object.py(), class as *mut ffi::PyObject, names)
        .map(|offsets| &*Box::leak(offsets.into_boxed_slice()));
    table.push((list, class, found));
    found
}

/// The record's values of `names`, in that order: straight from its slots
/// when its type's layout is known, else by attribute (which raises what
/// Python's encoder would raise for a missing one).
pub(crate) fn fields_of<'py>(object: &Bound<'py, PyAny>, names: &'static [&'static str]) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let offsets = layout(object, names);
    let mut values = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        // Safety: the offsets are those of this object's exact type.
        let value = match offsets.and_then(|offsets| unsafe { read_slot(object, offsets[index]) }) {
            Some(value) => value,
            None => object.getattr(*name)?,
        };
        values.push(value);
    }
    Ok(values)
}

/// The dict behind a dict or a `MappingProxyType` of one (iterated without
/// the `items()` view's tuples); None for any other mapping.
fn dict_behind<'py>(mapping: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    if let Ok(dict) = mapping.downcast_exact::<PyDict>() {
        return Some(dict.clone());
    }
    unsafe {
        if ffi::Py_TYPE(mapping.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyDictProxy_Type) {
            return None;
        }
        // CPython's mappingproxyobject: PyObject_HEAD, then the mapping.
        let place = (mapping.as_ptr() as *const u8).add(std::mem::size_of::<ffi::PyObject>()) as *const *mut ffi::PyObject;
        let inner = Bound::from_borrowed_ptr_or_opt(mapping.py(), *place)?;
        inner.downcast_exact::<PyDict>().ok().cloned()
    }
}

/// Each (key, value) of a mapping, written by `entry`, comma-separated.
fn write_entries(
    py: Python<'_>,
    out: &mut Vec<u8>,
    mapping: &Bound<'_, PyAny>,
    mut entry: impl FnMut(&mut Vec<u8>, &Bound<'_, PyAny>, &Bound<'_, PyAny>) -> PyResult<Step>,
) -> PyResult<Step> {
    if let Some(dict) = dict_behind(mapping) {
        for (index, (key, value)) in dict.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            if entry(out, &key, &value)?.is_err() {
                return Ok(Err(Decline));
            }
        }
        return Ok(Ok(()));
    }
    for (index, item) in mapping.call_method0(intern!(py, "items"))?.try_iter()?.enumerate() {
        let item = item?;
        if index > 0 {
            out.push(b',');
        }
        if entry(out, &item.get_item(0)?, &item.get_item(1)?)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    Ok(Ok(()))
}

fn write_state(py: Python<'_>, out: &mut Vec<u8>, format: i64, state: &Bound<'_, PyAny>) -> PyResult<Step> {
    let [user_id, instances, orders, held, next_deadline, last_claim]: [Bound<'_, PyAny>; 6] =
        fields_of(state, USER_FIELDS)?.try_into().map_err(|_| PySystemError::new_err("field count"))?;
    out.push(b'[');
    push_int(out, format);
    out.push(b',');
    if scalar(out, &user_id).is_err() {
        return Ok(Err(Decline));
    }
    out.extend_from_slice(b",[");
    for (index, instance) in instances.try_iter()?.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if write_instance(out, &instance?)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"],{");
    let written = write_entries(py, out, &orders, |out, key, order| {
        if key_text(out, key).is_err() {
            return Ok(Err(Decline));
        }
        write_order(out, order)
    })?;
    if written.is_err() {
        return Ok(Err(Decline));
    }
    out.extend_from_slice(b"},{");
    let written = write_entries(py, out, &held, |out, key, value_of| {
        Ok(key_text(out, key).and_then(|()| value(out, value_of)))
    })?;
    if written.is_err() {
        return Ok(Err(Decline));
    }
    out.extend_from_slice(b"},");
    if scalar(out, &next_deadline).is_err() {
        return Ok(Err(Decline));
    }
    out.push(b',');
    if value(out, &last_claim).is_err() {
        return Ok(Err(Decline));
    }
    out.push(b']');
    Ok(Ok(()))
}

fn write_instance(out: &mut Vec<u8>, instance: &Bound<'_, PyAny>) -> PyResult<Step> {
    let values = fields_of(instance, INSTANCE_FIELDS)?;
    out.push(b'[');
    let (scalars, slots) = values.split_at(INSTANCE_FIELDS.len() - 1);
    for item in scalars {
        if value(out, item).is_err() {
            return Ok(Err(Decline));
        }
        out.push(b',');
    }
    out.push(b'[');
    for (index, slot) in slots[0].try_iter()?.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if fields(out, &slot?, SLOT_FIELDS)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"]]");
    Ok(Ok(()))
}

fn write_order(out: &mut Vec<u8>, order: &Bound<'_, PyAny>) -> PyResult<Step> {
    fields(out, order, ORDER_FIELDS)
}

/// An object's attributes as one array, in the order given.
fn fields(out: &mut Vec<u8>, object: &Bound<'_, PyAny>, names: &'static [&'static str]) -> PyResult<Step> {
    out.push(b'[');
    for (index, item) in fields_of(object, names)?.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if value(out, item).is_err() {
            return Ok(Err(Decline));
        }
    }
    out.push(b']');
    Ok(Ok(()))
}

fn key_text(out: &mut Vec<u8>, key: &Bound<'_, PyAny>) -> Step {
    if !key.is_exact_instance_of::<PyString>() {
        return Err(Decline);
    }
    scalar(out, key)?;
    out.push(b':');
    Ok(())
}

/// A scalar, or a tuple or list of values (as `list(...)` gives orjson).
fn value(out: &mut Vec<u8>, item: &Bound<'_, PyAny>) -> Step {
    if item.is_exact_instance_of::<PyTuple>() || item.is_exact_instance_of::<PyList>() {
        out.push(b'[');
        for (index, element) in item.try_iter().map_err(|_| Decline)?.enumerate() {
            if index > 0 {
                out.push(b',');
            }
            value(out, &element.map_err(|_| Decline)?)?;
        }
        out.push(b']');
        return Ok(());
    }
    scalar(out, item)
}

fn scalar(out: &mut Vec<u8>, item: &Bound<'_, PyAny>) -> Step {
    if item.is_none() {
        out.extend_from_slice(b"null");
    } else if item.is_exact_instance_of::<PyString>() {
        let text = item.downcast::<PyString>().map_err(|_| Decline)?;
        write_string(out, text.to_str().map_err(|_| Decline)?);
    } else if item.is_exact_instance_of::<PyInt>() {
        let number: i64 = item.extract().map_err(|_| Decline)?;
        push_int(out, number);
    } else if item.is_exact_instance_of::<PyBool>() {
        out.extend_from_slice(if item.is_truthy().map_err(|_| Decline)? { b"true" } else { b"false" });
    } else {
        return Err(Decline);
    }
    Ok(())
}

// ------------------------------------------------------------------ reading

/// `app.state_codec.decode_user_state` for states of the usual shape: the
/// same objects, built without running their `__init__` (each slot set as
/// `fast_init`'s `__init__` would set it). Any other shape, or a value that
/// is not a string, an integer or null, gives None: the Python decoder then
/// reads it (and raises what it raises).
#[pyclass(frozen, module = "taskstream_native")]
pub struct StateReader {
    format: i64,
    mapping_proxy: PyObject,
    user_state: Builder,
    instance: Builder,
    order: Builder,
    slot: Builder,
}

struct Builder {
    class: Py<PyType>,
    // Each array position's place among the class's fields (init::positions).
    order: Vec<usize>,
}

type ClassSpec = (Py<PyType>, Vec<String>);

#[pymethods]
impl StateReader {
    /// Each class with its field names in order (the arrays' order).
    #[new]
    fn new(
        py: Python<'_>,
        format: i64,
        user_state: ClassSpec,
        instance: ClassSpec,
        order: ClassSpec,
        slot: ClassSpec,
        mapping_proxy: PyObject,
    ) -> PyResult<Self> {
        let builder = |(class, names): ClassSpec| -> PyResult<Builder> {
            let order = positions(class.bind(py), &names)?;
            Ok(Builder { class, order })
        };
        Ok(StateReader {
            format,
            mapping_proxy,
            user_state: builder(user_state)?,
            instance: builder(instance)?,
            order: builder(order)?,
            slot: builder(slot)?,
        })
    }

    fn read(&self, py: Python<'_>, raw: &[u8]) -> PyResult<Option<PyObject>> {
        let Ok(Value::Array(doc)) = serde_json::from_slice::<Value>(raw) else {
            return Ok(None);
        };
        match self.state(py, &doc)? {
            Some(state) => Ok(Some(state.unbind())),
            None => Ok(None),
        }
    }
}

/// None: not this reader's case (the Python decoder takes over).
type Built<'py> = PyResult<Option<Bound<'py, PyAny>>>;

impl StateReader {
    fn build<'py>(&self, py: Python<'py>, builder: &Builder, values: Vec<Bound<'py, PyAny>>) -> Built<'py> {
        if values.len() != builder.order.len() {
            return Ok(None);
        }
        // The class's compiled constructor: the slots set as fast_init's
        // __init__ sets them, the frozen __setattr__ never called.
        Ok(Some(build_in_order(builder.class.bind(py), &builder.order, &values)?))
    }

    fn state<'py>(&self, py: Python<'py>, doc: &[Value]) -> Built<'py> {
        let [format, user_id, instances, orders, held, next_deadline, last_claim] = doc else {
            return Ok(None);
        };
        if format.as_i64() != Some(self.format) || !format.is_i64() {
            return Ok(None);
        }
        let (Value::Array(instances), Value::Object(orders), Value::Object(held)) = (instances, orders, held) else {
            return Ok(None);
        };
        let mut built = Vec::with_capacity(instances.len());
        for instance in instances {
            match self.instance(py, instance)? {
                Some(instance) => built.push(instance),
                None => return Ok(None),
            }
        }
        let order_map = PyDict::new(py);
        for (order_id, order) in orders {
            let Value::Array(fields) = order else { return Ok(None) };
            let [amount, refunded, refund_ids, at, channel] = fields.as_slice() else {
                return Ok(None);
            };
            let Some(refund_ids) = plain_tuple(py, refund_ids)? else { return Ok(None) };
            let values = match (plain(py, amount)?, plain(py, refunded)?, plain(py, at)?, plain(py, channel)?) {
                (Some(a), Some(r), Some(t), Some(c)) => vec![a, r, refund_ids.into_any(), t, c],
                _ => return Ok(None),
            };
            let Some(record) = self.build(py, &self.order, values)? else { return Ok(None) };
            order_map.set_item(order_id, record)?;
        }
        let held_map = PyDict::new(py);
        for (order_id, items) in held {
            let Value::Array(items) = items else { return Ok(None) };
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Array(triple) if triple.len() == 3 => match plain_tuple(py, item)? {
                        Some(entry) => entries.push(entry),
                        None => return Ok(None),
                    },
                    _ => return Ok(None),
                }
            }
            held_map.set_item(order_id, PyTuple::new(py, entries)?)?;
        }
        let last_claim = match last_claim {
            Value::Null => py.None().into_bound(py),
            Value::Array(pair) if pair.len() == 2 => match plain_tuple(py, last_claim)? {
                Some(pair) => pair.into_any(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let (Some(user_id), Some(next_deadline)) = (plain(py, user_id)?, plain(py, next_deadline)?) else {
            return Ok(None);
        };
        let proxy = self.mapping_proxy.bind(py);
        let values = vec![
            user_id,
            PyTuple::new(py, built)?.into_any(),
            proxy.call1((order_map,))?,
            proxy.call1((held_map,))?,
            next_deadline,
            last_claim,
        ];
        self.build(py, &self.user_state, values)
    }

    fn instance<'py>(&self, py: Python<'py>, instance: &Value) -> Built<'py> {
        let Value::Array(fields) = instance else { return Ok(None) };
        let [task_id, template_id, claim_event_id, claimed_at, deadline, status, progress, counted, slots] =
            fields.as_slice()
        else {
            return Ok(None);
        };
        let Value::Array(counted) = counted else { return Ok(None) };
        let mut pairs = Vec::with_capacity(counted.len());
        for pair in counted {
            match pair {
                Value::Array(items) if items.len() == 2 => match plain_tuple(py, pair)? {
                    Some(pair) => pairs.push(pair),
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        let Value::Array(slots) = slots else { return Ok(None) };
        let mut built_slots = Vec::with_capacity(slots.len());
        for slot in slots {
            let Value::Array(items) = slot else { return Ok(None) };
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                match plain(py, item)? {
                    Some(value) => values.push(value),
                    None => return Ok(None),
                }
            }
            match self.build(py, &self.slot, values)? {
                Some(slot) => built_slots.push(slot),
                None => return Ok(None),
            }
        }
        let mut values = Vec::with_capacity(9);
        for item in [task_id, template_id, claim_event_id, claimed_at, deadline, status, progress] {
            match plain(py, item)? {
                Some(value) => values.push(value),
                None => return Ok(None),
            }
        }
        values.push(PyTuple::new(py, pairs)?.into_any());
        values.push(PyTuple::new(py, built_slots)?.into_any());
        self.build(py, &self.instance, values)
    }
}

/// A string, an integer (within 64 bits) or null, as orjson reads them.
fn plain<'py>(py: Python<'py>, value: &Value) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(match value {
        Value::Null => Some(py.None().into_bound(py)),
        Value::String(text) => Some(PyString::new(py, text).into_any()),
        Value::Number(number) => {
            if let Some(signed) = number.as_i64() {
                Some(signed.into_pyobject(py)?.into_any())
            } else if let Some(unsigned) = number.as_u64() {
                Some(unsigned.into_pyobject(py)?.into_any())
            } else {
                None // a float: orjson gives a float, left to the Python decoder
            }
        }
        _ => None,
    })
}

/// An array of plain values as a tuple.
fn plain_tuple<'py>(py: Python<'py>, value: &Value) -> PyResult<Option<Bound<'py, PyTuple>>> {
    let Value::Array(items) = value else { return Ok(None) };
    let mut values = Vec::with_capacity(items.len());
    for item in items {
        match plain(py, item)? {
            Some(value) => values.push(value),
            None => return Ok(None),
        }
    }
    Ok(Some(PyTuple::new(py, values)?))
}
