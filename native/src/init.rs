//! Building `app.frozen.fast_init`'s records from their class call, compiled.
//!
//! `install_constructor(cls, fields)` sets the class's `tp_vectorcall`:
//! CPython (3.9+) then calls it for `cls(...)` instead of `type.__call__`'s
//! `object.__new__` + `__init__` lookup + bound-method call. It allocates the
//! object as `object.__new__` does (`tp_alloc`) and hands each argument to
//! its slot's member descriptor (`tp_descr_set`), as the generated Python
//! `__init__` does with `_set_<name>(self, value)`: the same arguments
//! (positional or keyword), the same defaults, the same TypeErrors. The
//! class keeps that Python `__init__` (explicit `cls.__init__(obj, ...)`
//! calls, introspection); the records stay frozen, their `__setattr__`
//! untouched. Measured: a 9-field record 1.6 µs through the Python
//! `__init__`, a fraction of that here (docs/native.md).

use std::sync::Mutex;

use pyo3::exceptions::{PySystemError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyType};

struct Constructor {
    class: Py<PyType>,
    class_name: String,
    names: Vec<Py<PyString>>,
    // Each field's member descriptor (the class's slot), in field order.
    slots: Vec<PyObject>,
    defaults: Vec<Option<PyObject>>,
}

/// Every class with a compiled constructor. Entries are never removed and
/// hold their class, so a class's address is never reused for another.
static CONSTRUCTORS: Mutex<Vec<(usize, &'static Constructor)>> = Mutex::new(Vec::new());

fn constructor_of(class: *mut ffi::PyObject) -> Option<&'static Constructor> {
    let table = CONSTRUCTORS.lock().ok()?;
    table.iter().find(|(address, _)| *address == class as usize).map(|(_, found)| *found)
}

/// `fields`: (name, the slot's member descriptor, default, has a default).
#[pyfunction]
pub fn install_constructor(
    py: Python<'_>,
    class: &Bound<'_, PyType>,
    fields: Vec<(String, PyObject, PyObject, bool)>,
) -> PyResult<()> {
    let class_name: String = class.getattr("__qualname__")?.extract()?;
    let mut names = Vec::with_capacity(fields.len());
    let mut slots = Vec::with_capacity(fields.len());
    let mut defaults = Vec::with_capacity(fields.len());
    for (name, slot, default, has_default) in fields {
        if unsafe { (*ffi::Py_TYPE(slot.as_ptr())).tp_descr_set }.is_none() {
            return Err(PyValueError::new_err(format!("{class_name}.{name}: not a settable slot")));
        }
        names.push(PyString::intern(py, &name).unbind());
        slots.push(slot);
        defaults.push(has_default.then_some(default));
    }
    let constructor: &'static Constructor =
        Box::leak(Box::new(Constructor { class: class.clone().unbind(), class_name, names, slots, defaults }));
    let address = constructor.class.as_ptr() as usize;
    let mut table = CONSTRUCTORS.lock().map_err(|_| PySystemError::new_err("constructor table poisoned"))?;
    table.retain(|(known, _)| *known != address);
    table.push((address, constructor));
    unsafe {
        (*(address as *mut ffi::PyTypeObject)).tp_vectorcall = Some(construct);
    }
    Ok(())
}

/// Whether `cls(...)` runs the compiled constructor (tests check it still does).
#[pyfunction]
pub fn has_constructor(class: &Bound<'_, PyType>) -> bool {
    let slot = unsafe { (*(class.as_ptr() as *mut ffi::PyTypeObject)).tp_vectorcall };
    // One crate, one codegen unit: `construct` has one address.
    let ours = construct as ffi::vectorcallfunc as usize;
    slot.map(|set| set as usize) == Some(ours) && constructor_of(class.as_ptr()).is_some()
}

unsafe extern "C" fn construct(
    callable: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let py = Python::assume_gil_acquired();
    let Some(constructor) = constructor_of(callable) else {
        PySystemError::new_err("a compiled constructor without its class").restore(py);
        return std::ptr::null_mut();
    };
    match constructor.build(py, callable, args, ffi::PyVectorcall_NARGS(nargsf), kwnames) {
        Ok(object) => object,
        Err(error) => {
            error.restore(py);
            std::ptr::null_mut()
        }
    }
}

impl Constructor {
    unsafe fn build(
        &self,
        py: Python<'_>,
        class: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<*mut ffi::PyObject> {
        let count = self.names.len();
        let positional = usize::try_from(nargs).unwrap_or(0);
        if positional > count {
            return Err(self.too_many(positional));
        }
        let mut values: Vec<*mut ffi::PyObject> = vec![std::ptr::null_mut(); count];
        values[..positional].copy_from_slice(std::slice::from_raw_parts(args, positional));
        if !kwnames.is_null() {
            let keywords = usize::try_from(ffi::PyTuple_GET_SIZE(kwnames)).unwrap_or(0);
            for index in 0..keywords {
                let key = ffi::PyTuple_GET_ITEM(kwnames, index as ffi::Py_ssize_t);
                let field = self.index_of(py, key)?;
                if !values[field].is_null() {
                    return Err(PyTypeError::new_err(format!(
                        "{}.__init__() got multiple values for argument '{}'",
                        self.class_name,
                        Bound::from_borrowed_ptr(py, key)
                    )));
                }
                values[field] = *args.add(positional + index);
            }
        }
        let mut missing = Vec::new();
        for (field, value) in values.iter_mut().enumerate() {
            if value.is_null() {
                match &self.defaults[field] {
                    Some(default) => *value = default.as_ptr(),
                    None => missing.push(format!("'{}'", self.names[field].bind(py))),
                }
            }
        }
        if !missing.is_empty() {
            return Err(missing_error(&self.class_name, &missing));
        }
        let tp = class as *mut ffi::PyTypeObject;
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let object = alloc(tp, 0);
        if object.is_null() {
            return Err(PyErr::fetch(py));
        }
        for (slot, value) in self.slots.iter().zip(&values) {
            let set = (*ffi::Py_TYPE(slot.as_ptr())).tp_descr_set;
            let status = match set {
                Some(set) => set(slot.as_ptr(), object, *value),
                None => -1,
            };
            if status != 0 {
                ffi::Py_DECREF(object);
                return Err(PyErr::take(py).unwrap_or_else(|| PySystemError::new_err("slot not set")));
            }
        }
        // A frozen record holds only values that existed before it, so it can
        // never be part of a reference cycle: its memory goes back by
        // reference counting alone. Left tracked, every collector pass walked
        // the states in the worker's user cache (~130,000 young objects, a
        // 100 ms pass at times on the peer log).
        if ffi::PyType_IS_GC(tp) != 0 {
            ffi::PyObject_GC_UnTrack(object.cast());
        }
        for value in &values {
            untrack_field(*value);
        }
        Ok(object)
    }

    /// CPython's wording (`too_many_positional`), `self` counted.
    fn too_many(&self, positional: usize) -> PyErr {
        let defaults = self.defaults.iter().filter(|d| d.is_some()).count();
        let takes = self.names.len() + 1;
        let range = if defaults > 0 {
            format!("from {} to {takes} positional arguments", takes - defaults)
        } else if takes == 1 {
            "1 positional argument".to_string()
        } else {
            format!("{takes} positional arguments")
        };
        let given = positional + 1;
        PyTypeError::new_err(format!(
            "{}.__init__() takes {range} but {given} {} given",
            self.class_name,
            if given == 1 { "was" } else { "were" }
        ))
    }

    unsafe fn index_of(&self, py: Python<'_>, key: *mut ffi::PyObject) -> PyResult<usize> {
        // Keyword names are usually the interned field names: pointers first.
        if let Some(index) = self.names.iter().position(|name| name.as_ptr() == key) {
            return Ok(index);
        }
        let key = Bound::from_borrowed_ptr(py, key);
        for (index, name) in self.names.iter().enumerate() {
            if name.bind(py).as_any().eq(&key)? {
                return Ok(index);
            }
        }
        Err(PyTypeError::new_err(format!(
            "{}.__init__() got an unexpected keyword argument '{}'",
            self.class_name, key
        )))
    }
}

/// Where each of `names` is among the class's fields (its constructor's
/// argument order); every field named exactly once. For readers that build
/// records from values in their own order (read.rs, state.rs).
pub fn positions(class: &Bound<'_, PyType>, names: &[String]) -> PyResult<Vec<usize>> {
    let Some(constructor) = constructor_of(class.as_ptr()) else {
        return Err(PyValueError::new_err(format!(
            "{class}: no compiled constructor (decorate it with app.frozen.fast_init)"
        )));
    };
    let py = class.py();
    let fields: Vec<String> = constructor.names.iter().map(|name| name.bind(py).to_string()).collect();
    let mut order = Vec::with_capacity(names.len());
    for name in names {
        match fields.iter().position(|field| field == name) {
            Some(index) if !order.contains(&index) => order.push(index),
            _ => return Err(PyValueError::new_err(format!("{class}: no field {name:?}, or named twice"))),
        }
    }
    if order.len() != fields.len() {
        return Err(PyValueError::new_err(format!("{class}: every field must be read ({fields:?})")));
    }
    Ok(order)
}

/// The record of `class` from `values`, value i being field `order[i]`
/// (from `positions`), built by the class's compiled constructor.
pub fn build_in_order<'py>(
    class: &Bound<'py, PyType>,
    order: &[usize],
    values: &[Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let py = class.py();
    let constructor = constructor_of(class.as_ptr())
        .ok_or_else(|| PySystemError::new_err("a reader's class lost its constructor"))?;
    if values.len() != order.len() {
        return Err(PySystemError::new_err("a reader built the wrong number of values"));
    }
    let mut arguments = vec![std::ptr::null_mut(); order.len()];
    for (value, &position) in values.iter().zip(order) {
        arguments[position] = value.as_ptr();
    }
    unsafe {
        let count = arguments.len() as ffi::Py_ssize_t;
        let object = constructor.build(py, class.as_ptr(), arguments.as_ptr(), count, std::ptr::null_mut())?;
        Ok(Bound::from_owned_ptr(py, object))
    }
}

/// Python's wording: "missing 2 required positional arguments: 'a' and 'b'".
fn missing_error(class_name: &str, missing: &[String]) -> PyErr {
    let listed = match missing {
        [one] => one.clone(),
        [first, second] => format!("{first} and {second}"),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
        [] => String::new(),
    };
    let plural = if missing.len() == 1 { "argument" } else { "arguments" };
    PyTypeError::new_err(format!(
        "{class_name}.__init__() missing {} required positional {plural}: {listed}",
        missing.len()
    ))
}

/// Where each of `names`' values sits in an instance of `class` (a
/// `fast_init` class): the offsets of its member descriptors' object slots.
/// None when the class has no compiled constructor, lacks a field, or a
/// field's descriptor is not a plain object slot. Writers read records
/// through these (`read_slot`) instead of an attribute lookup per field:
/// the type's MRO walk, the descriptor call, for every field of every record.
pub fn slot_offsets(py: Python<'_>, class: *mut ffi::PyObject, names: &[&str]) -> Option<Vec<ffi::Py_ssize_t>> {
    let constructor = constructor_of(class)?;
    let mut offsets = Vec::with_capacity(names.len());
    for name in names {
        let index = constructor.names.iter().position(|known| known.bind(py).to_str().ok() == Some(*name))?;
        let slot = constructor.slots[index].as_ptr();
        unsafe {
            if ffi::Py_TYPE(slot) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
                return None;
            }
            // pyo3-ffi types d_member as a PyGetSetDef; CPython's is a PyMemberDef.
            let member = (*(slot as *mut ffi::PyMemberDescrObject)).d_member as *const ffi::PyMemberDef;
            if member.is_null() || (*member).type_code != ffi::Py_T_OBJECT_EX || (*member).offset <= 0 {
                return None;
            }
            offsets.push((*member).offset);
        }
    }
    Some(offsets)
}

/// The value in an object's slot at `offset` (from `slot_offsets` for the
/// object's exact type), or None if the slot is empty (never set).
///
/// Safety: `offset` must come from `slot_offsets` for `Py_TYPE(object)`.
pub unsafe fn read_slot<'py>(object: &Bound<'py, PyAny>, offset: ffi::Py_ssize_t) -> Option<Bound<'py, PyAny>> {
    let place = (object.as_ptr() as *const u8).offset(offset) as *const *mut ffi::PyObject;
    Bound::from_borrowed_ptr_or_opt(object.py(), *place)
}

// ------------------------------------------------------------ untracking

/// How deep `untrack_tuple` looks into tuples of tuples (a task's `counted`
/// is a tuple of (str, int) pairs: two levels).
const TUPLE_DEPTH: u32 = 2;

/// Untrack a record's field from the cycle collector when it can never be
/// part of a reference cycle, the record's own rule carried one level down:
/// an exact tuple whose items are all such values, or the exact dict under a
/// `MappingProxyType`, of str keys and such values (a record's mapping
/// field: frozen by contract, reachable only through the proxy).
///
/// Why: CPython untracks a tuple or a dict only when every item is atomic or
/// a tracked-less *tuple*; any other collectable type, even one untracked
/// like our records, keeps it tracked for good. So every user state's
/// tuples of tasks and slots, and its orders' dict, stayed in the
/// collector's sight: on the peer log 53,000 tuples, 20,000 dicts and their
/// 20,000 proxies survived each young pass, the passes took 8-50 ms (100 ms
/// for the middle generation), all finding nothing (docs/native.md).
///
/// Safety: `value` is a live object (a field value just stored).
unsafe fn untrack_field(value: *mut ffi::PyObject) {
    if ffi::PyTuple_CheckExact(value) != 0 {
        untrack_tuple(value, TUPLE_DEPTH);
    } else if ffi::Py_TYPE(value) == std::ptr::addr_of_mut!(ffi::PyDictProxy_Type) {
        untrack_proxy(value);
    }
}

/// Whether `item`, held by an untracked container, could hide a cycle from
/// the collector: never for a value the collector does not handle, an
/// untracked exact tuple (immutable) or an untracked record of ours (frozen,
/// and it refers only to values made before it, so not to the container).
unsafe fn settled(item: *mut ffi::PyObject) -> bool {
    if ffi::PyObject_IS_GC(item) == 0 {
        return true;
    }
    if ffi::PyObject_GC_IsTracked(item) != 0 {
        return false;
    }
    ffi::PyTuple_CheckExact(item) != 0 || is_record(ffi::Py_TYPE(item))
}

/// A `fast_init` record's class: its class call is our constructor.
unsafe fn is_record(tp: *mut ffi::PyTypeObject) -> bool {
    (*tp).tp_vectorcall.map(|call| call as usize) == Some(construct as ffi::vectorcallfunc as usize)
}

/// Untrack an exact tuple whose items are all `settled` (tracked tuples
/// among them first, `depth` levels down); whether it is untracked now.
unsafe fn untrack_tuple(tuple: *mut ffi::PyObject, depth: u32) -> bool {
    if ffi::PyObject_GC_IsTracked(tuple) == 0 {
        return true;
    }
    let size = ffi::PyTuple_GET_SIZE(tuple);
    for index in 0..size {
        let item = ffi::PyTuple_GET_ITEM(tuple, index);
        if ffi::PyTuple_CheckExact(item) != 0 && ffi::PyObject_GC_IsTracked(item) != 0 {
            if depth == 0 || !untrack_tuple(item, depth - 1) {
                return false;
            }
        } else if !settled(item) {
            return false;
        }
    }
    ffi::PyObject_GC_UnTrack(tuple.cast());
    true
}

/// CPython's `mappingproxyobject`: the header and the mapping it shows.
#[repr(C)]
struct MappingProxy {
    ob_base: ffi::PyObject,
    mapping: *mut ffi::PyObject,
}

/// Untrack the dict under a proxy when its keys are exact str and its
/// values `settled` (tuples among them untracked first). Not the proxy
/// itself: CPython's `mappingproxy_dealloc` unlinks it from the collector's
/// list unchecked (`_PyObject_GC_UNTRACK`), and crashes on one untracked
/// (a dict's and a tuple's dealloc check first).
unsafe fn untrack_proxy(proxy: *mut ffi::PyObject) {
    let mapping = (*(proxy as *mut MappingProxy)).mapping;
    if mapping.is_null() || ffi::PyDict_CheckExact(mapping) == 0 {
        return;
    }
    let mut position: ffi::Py_ssize_t = 0;
    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
    let mut item: *mut ffi::PyObject = std::ptr::null_mut();
    while ffi::PyDict_Next(mapping, &mut position, &mut key, &mut item) != 0 {
        if ffi::PyUnicode_CheckExact(key) == 0 {
            return;
        }
        let ok = if ffi::PyTuple_CheckExact(item) != 0 {
            untrack_tuple(item, TUPLE_DEPTH)
        } else {
            settled(item)
        };
        if !ok {
            return;
        }
    }
    if ffi::PyObject_GC_IsTracked(mapping) != 0 {
        ffi::PyObject_GC_UnTrack(mapping.cast());
    }
}
