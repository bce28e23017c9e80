//! `app.state_codec.encode_user_state` without building the nested lists:
//! the same positional arrays, written straight from the `UserState`,
//! `TaskInstance`, `RewardSlot` and `OrderRecord` objects, byte for byte what
//! orjson writes for them. A value of a type the Python encoder would not
//! write this way (a float, a non-str key, an int beyond 64 bits) gives None,
//! and the Python encoder handles it.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyList, PyString, PyTuple};

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

fn write_state(py: Python<'_>, out: &mut Vec<u8>, format: i64, state: &Bound<'_, PyAny>) -> PyResult<Step> {
    out.push(b'[');
    out.extend_from_slice(format.to_string().as_bytes());
    out.push(b',');
    if scalar(out, &state.getattr(intern!(py, "user_id"))?).is_err() {
        return Ok(Err(Decline));
    }
    out.extend_from_slice(b",[");
    let instances = state.getattr(intern!(py, "instances"))?;
    for (index, instance) in instances.try_iter()?.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if write_instance(py, out, &instance?)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"],{");
    let orders = state.getattr(intern!(py, "orders"))?;
    for (index, item) in orders.call_method0(intern!(py, "items"))?.try_iter()?.enumerate() {
        let item = item?;
        let (key, order) = (item.get_item(0)?, item.get_item(1)?);
        if index > 0 {
            out.push(b',');
        }
        if key_text(out, &key).is_err() || write_order(py, out, &order)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"},{");
    let held = state.getattr(intern!(py, "held_refunds"))?;
    for (index, item) in held.call_method0(intern!(py, "items"))?.try_iter()?.enumerate() {
        let item = item?;
        if index > 0 {
            out.push(b',');
        }
        if key_text(out, &item.get_item(0)?).is_err() || value(out, &item.get_item(1)?).is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"},");
    if scalar(out, &state.getattr(intern!(py, "next_deadline"))?).is_err() {
        return Ok(Err(Decline));
    }
    out.push(b',');
    if value(out, &state.getattr(intern!(py, "last_claim"))?).is_err() {
        return Ok(Err(Decline));
    }
    out.push(b']');
    Ok(Ok(()))
}

fn write_instance(py: Python<'_>, out: &mut Vec<u8>, instance: &Bound<'_, PyAny>) -> PyResult<Step> {
    out.push(b'[');
    let names = [
        intern!(py, "task_id"),
        intern!(py, "template_id"),
        intern!(py, "claim_event_id"),
        intern!(py, "claimed_at"),
        intern!(py, "deadline"),
        intern!(py, "status"),
        intern!(py, "progress"),
        intern!(py, "counted"),
    ];
    for name in names {
        if value(out, &instance.getattr(name)?).is_err() {
            return Ok(Err(Decline));
        }
        out.push(b',');
    }
    out.push(b'[');
    let slots = instance.getattr(intern!(py, "slots"))?;
    for (index, slot) in slots.try_iter()?.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if write_slot(py, out, &slot?)?.is_err() {
            return Ok(Err(Decline));
        }
    }
    out.extend_from_slice(b"]]");
    Ok(Ok(()))
}

fn write_slot(py: Python<'_>, out: &mut Vec<u8>, slot: &Bound<'_, PyAny>) -> PyResult<Step> {
    let names = [
        intern!(py, "slot"),
        intern!(py, "status"),
        intern!(py, "reward_id"),
        intern!(py, "amount_cents"),
        intern!(py, "prize_id"),
        intern!(py, "pool_id"),
        intern!(py, "debited"),
        intern!(py, "grants"),
    ];
    fields(out, slot, &names)
}

fn write_order(py: Python<'_>, out: &mut Vec<u8>, order: &Bound<'_, PyAny>) -> PyResult<Step> {
    let names = [
        intern!(py, "amount_cents"),
        intern!(py, "refunded_cents"),
        intern!(py, "refund_ids"),
        intern!(py, "at"),
        intern!(py, "channel"),
    ];
    fields(out, order, &names)
}

/// An object's attributes as one array, in the order given.
fn fields(out: &mut Vec<u8>, object: &Bound<'_, PyAny>, names: &[&Bound<'_, PyString>]) -> PyResult<Step> {
    out.push(b'[');
    for (index, name) in names.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        if value(out, &object.getattr(*name)?).is_err() {
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
        out.extend_from_slice(number.to_string().as_bytes());
    } else if item.is_exact_instance_of::<PyBool>() {
        out.extend_from_slice(if item.is_truthy().map_err(|_| Decline)? { b"true" } else { b"false" });
    } else {
        return Err(Decline);
    }
    Ok(())
}
