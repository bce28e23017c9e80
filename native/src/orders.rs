//! `app.engine._order_paid` compiled: an order of a user who holds a state.
//!
//! The same outcome as the Python reference, value for value (the new state,
//! the output records, the notes word for word), with the same budget calls
//! in the same order. It declines (returns None, before any budget call) what
//! it does not do itself, and the Python reference runs instead:
//! - an order at or after the user's next deadline (expiries first);
//! - a refund held for this order;
//! - a lottery plan, a revocation (a granted slot no longer due), slots out
//!   of order, a count_by other than "order" and "day";
//! - anything it cannot read as the reference reads it (a missing template
//!   or pool, an integer beyond 64 bits, a string with lone surrogates).
//!
//! What it calls back into Python: the budget (`try_debit`, which may raise
//! `AwaitingBudget` exactly where the reference would), an order rule's
//! `refusal` for the wording of a refusal, and `_purchase_day` for a
//! template counting purchase days (time zones stay in Python).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

use crate::ids::digest;
use crate::state::fields_of;

// The records' fields this path reads, each list read in one go from the
// record's slots (`state::fields_of`: the offsets of a `fast_init` class,
// found once; by attribute for any other class). An attribute lookup per
// field was ~9 % of the batch step (`perf` of `bench batchcore`).
const EVENT_FIELDS: &[&str] = &["at", "order_id", "amount_cents", "channel", "event_id"];
const E_AT: usize = 0;
const E_ORDER_ID: usize = 1;
const E_AMOUNT: usize = 2;
const E_CHANNEL: usize = 3;
const E_EVENT_ID: usize = 4;
const STATE_FIELDS: &[&str] = &["user_id", "instances", "orders", "held_refunds", "next_deadline", "last_claim"];
const S_USER_ID: usize = 0;
const S_INSTANCES: usize = 1;
const S_ORDERS: usize = 2;
const S_HELD: usize = 3;
const S_NEXT_DEADLINE: usize = 4;
const S_LAST_CLAIM: usize = 5;
const INSTANCE_FIELDS: &[&str] =
    &["task_id", "template_id", "status", "claimed_at", "deadline", "claim_event_id", "progress", "counted", "slots"];
const SLOT_FIELDS: &[&str] = &["slot", "status", "grants"];

const IN_PROGRESS: &str = "in_progress";
const COMPLETED: &str = "completed";
const EXPIRED: &str = "expired";
const GRANTED: &str = "granted";
const REJECTED: &str = "rejected";
const REVOKED: &str = "revoked";

/// Not this path's case: the Python reference runs.
struct Decline;

type Planned<T> = Result<T, Decline>;

impl From<PyErr> for Decline {
    fn from(_: PyErr) -> Self {
        Decline
    }
}

impl From<std::convert::Infallible> for Decline {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

#[pyclass(frozen, module = "taskstream_native")]
pub struct OrderPath {
    order_record: Py<PyType>,
    task_instance: Py<PyType>,
    reward_slot: Py<PyType>,
    user_state: Py<PyType>,
    outcome: Py<PyType>,
    task_advanced: Py<PyType>,
    task_completed: Py<PyType>,
    reward_granted: Py<PyType>,
    reward_rejected: Py<PyType>,
    mapping_proxy: Py<PyType>,
    purchase_day: PyObject,
    // Python's own constants, so the records hold the same string objects.
    in_progress: Py<PyString>,
    completed: Py<PyString>,
    granted: Py<PyString>,
    rejected: Py<PyString>,
    budget_exhausted: Py<PyString>,
    // plan mode -> the grant's reason (`app.rewards.GRANT_REASONS`)
    grant_reasons: Py<PyDict>,
}

/// One instance of the user's state, as read.
struct Instance<'py> {
    object: Bound<'py, PyAny>,
    task_id: Bound<'py, PyString>,
    template_id: Bound<'py, PyString>,
    status: String,
    claimed_at: i64,
    deadline: i64,
    // The fields a new instance copies or builds on, as the objects read.
    claimed_at_object: Bound<'py, PyAny>,
    deadline_object: Bound<'py, PyAny>,
    claim_event_id: Bound<'py, PyAny>,
    progress: Bound<'py, PyAny>,
    counted: Bound<'py, PyAny>,
    slots: Bound<'py, PyAny>,
}

impl Instance<'_> {
    fn is_live(&self, now: i64) -> bool {
        self.status != EXPIRED && now < self.deadline
    }
}

/// A slot to pay: its number, the grants before this one, amount, units.
struct Payment<'py> {
    slot: i64,
    grants: i64,
    amount: i64,
    pool_id: Option<Bound<'py, PyAny>>,
    units: i64,
}

/// What one counting instance becomes, decided before any budget call.
struct Advance<'py> {
    instance: usize,
    counted: Bound<'py, PyTuple>,
    progress: i64,
    target: i64,
    completed: bool,
    reason: Bound<'py, PyAny>,
    // The slots kept as they are, by slot number, and the slots to pay.
    kept: Vec<(i64, Bound<'py, PyAny>)>,
    payments: Vec<Payment<'py>>,
}

#[pymethods]
impl OrderPath {
    /// `parts`: the record classes by their Python names, "MappingProxyType",
    /// "purchase_day", the status constants "IN_PROGRESS", "COMPLETED",
    /// "GRANTED", "REJECTED", "BUDGET_EXHAUSTED", and "GRANT_REASONS".
    #[new]
    fn new(parts: &Bound<'_, PyDict>) -> PyResult<Self> {
        let class = |name: &str| -> PyResult<Py<PyType>> { Ok(required(parts, name)?.downcast_into::<PyType>()?.unbind()) };
        let constant = |name: &str, expected: &str| -> PyResult<Py<PyString>> {
            let text = required(parts, name)?.downcast_into::<PyString>()?;
            if text.to_str()? != expected {
                return Err(pyo3::exceptions::PyValueError::new_err(format!("{name} is not {expected:?}")));
            }
            Ok(text.unbind())
        };
        Ok(OrderPath {
            order_record: class("OrderRecord")?,
            task_instance: class("TaskInstance")?,
            reward_slot: class("RewardSlot")?,
            user_state: class("UserState")?,
            outcome: class("Outcome")?,
            task_advanced: class("TaskAdvanced")?,
            task_completed: class("TaskCompleted")?,
            reward_granted: class("RewardGranted")?,
            reward_rejected: class("RewardRejected")?,
            mapping_proxy: class("MappingProxyType")?,
            purchase_day: required(parts, "purchase_day")?.unbind(),
            in_progress: constant("IN_PROGRESS", IN_PROGRESS)?,
            completed: constant("COMPLETED", COMPLETED)?,
            granted: constant("GRANTED", GRANTED)?,
            rejected: constant("REJECTED", REJECTED)?,
            budget_exhausted: constant("BUDGET_EXHAUSTED", "budget_exhausted")?,
            grant_reasons: required(parts, "GRANT_REASONS")?.downcast_into::<PyDict>()?.unbind(),
        })
    }

    /// `_order_paid(state, event, catalog, budget)`, or None (declined).
    fn order_paid<'py>(
        &self,
        py: Python<'py>,
        state: &Bound<'py, PyAny>,
        event: &Bound<'py, PyAny>,
        catalog: &Bound<'py, PyAny>,
        budget: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(plan) = self.plan(py, state, event, catalog) else {
            return Ok(None);
        };
        match plan {
            Plan::Done(outcome) => Ok(Some(outcome)),
            Plan::Count(counting) => self.apply(py, budget, counting).map(Some),
        }
    }
}

fn required<'py>(parts: &Bound<'py, PyDict>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    parts.get_item(name)?.ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(name.to_string()))
}

enum Plan<'py> {
    /// Nothing counts: the outcome is known without the budget.
    Done(Bound<'py, PyAny>),
    Count(Counting<'py>),
}

struct Counting<'py> {
    event_fields: Vec<Bound<'py, PyAny>>,
    state_fields: Vec<Bound<'py, PyAny>>,
    instances: Vec<Instance<'py>>,
    record: Bound<'py, PyAny>,
    notes: Vec<String>,
    advances: Vec<Advance<'py>>,
}

impl OrderPath {
    fn plan<'py>(
        &self,
        py: Python<'py>,
        state: &Bound<'py, PyAny>,
        event: &Bound<'py, PyAny>,
        catalog: &Bound<'py, PyAny>,
    ) -> Planned<Plan<'py>> {
        let event_fields = fields_of(event, EVENT_FIELDS)?;
        let state_fields = fields_of(state, STATE_FIELDS)?;
        let at: i64 = event_fields[E_AT].extract()?;
        let next_deadline = &state_fields[S_NEXT_DEADLINE];
        if !next_deadline.is_none() && at >= next_deadline.extract::<i64>()? {
            return Err(Decline); // expiries come first: the reference does them
        }
        let order_id = event_fields[E_ORDER_ID].clone().downcast_into::<PyString>().map_err(|_| Decline)?;
        let order_text = order_id.to_str()?;
        let orders = &state_fields[S_ORDERS];
        if !(orders.is_exact_instance(self.mapping_proxy.bind(py)) || orders.is_exact_instance_of::<PyDict>()) {
            return Err(Decline); // the reference copies other mappings its own way
        }
        if orders.contains(&order_id)? {
            let note = format!("duplicate order {order_text}: already applied");
            return Ok(Plan::Done(self.unchanged(py, state, &[note])?));
        }
        let instances = read_instances(&state_fields[S_INSTANCES])?;
        let in_window: Vec<usize> = (0..instances.len())
            .filter(|&i| instances[i].is_live(at) && instances[i].claimed_at <= at)
            .collect();
        if in_window.is_empty() {
            let note = outside_windows_note(&instances, at)?;
            return Ok(Plan::Done(self.unchanged(py, state, &[note])?));
        }
        let held = &state_fields[S_HELD];
        if held.len()? > 0 && held.contains(&order_id)? {
            return Err(Decline); // a refund held for this order: rare, the reference applies it
        }
        let amount_object = &event_fields[E_AMOUNT];
        let amount: i64 = amount_object.extract()?;
        let channel = event_fields[E_CHANNEL].clone();
        let record = self.order_record.bind(py).call1((
            amount_object,
            0,
            PyTuple::empty(py),
            &event_fields[E_AT],
            &channel,
        ))?;
        let remaining = amount.max(0);

        let templates = catalog.getattr(intern!(py, "templates"))?;
        let mut notes = Vec::new();
        let mut matching: Vec<(usize, Bound<'py, PyAny>)> = Vec::new();
        for &index in &in_window {
            let instance = &instances[index];
            let template = templates.get_item(&instance.template_id)?;
            let template_text = instance.template_id.to_str()?;
            if instance.status != IN_PROGRESS {
                notes.push(format!("{template_text}: task already completed"));
                continue;
            }
            let rule = template.getattr(intern!(py, "order_rule"))?;
            let channels = rule.getattr(intern!(py, "channels"))?;
            let minimum: i64 = rule.getattr(intern!(py, "min_amount_cents"))?.extract()?;
            let refused = (!channels.is_none() && !channels.contains(&channel)?) || remaining <= 0 || remaining < minimum;
            if refused {
                // The reference's own wording (reprs of channels and all).
                let refusal = rule.call_method1(intern!(py, "refusal"), (remaining, &channel))?;
                let refusal = refusal.downcast_into::<PyString>().map_err(|_| Decline)?;
                notes.push(format!("{template_text}: does not count ({})", refusal.to_str()?));
                continue;
            }
            matching.push((index, template));
        }
        let chosen = choose_tasks(py, &instances, matching, &mut notes)?;
        let mut advances = Vec::with_capacity(chosen.len());
        for (index, template) in chosen {
            advances.push(self.advance(py, &instances[index], index, template, &order_id, at, catalog)?);
        }
        Ok(Plan::Count(Counting { event_fields, state_fields, instances, record, notes, advances }))
    }

    /// `_advance` and `settle` up to the budget: the new progress and which
    /// slots to pay, or Decline for what the reference alone does.
    #[allow(clippy::too_many_arguments)]
    fn advance<'py>(
        &self,
        py: Python<'py>,
        instance: &Instance<'py>,
        index: usize,
        template: Bound<'py, PyAny>,
        order_id: &Bound<'py, PyString>,
        at: i64,
        catalog: &Bound<'py, PyAny>,
    ) -> Planned<Advance<'py>> {
        let count_by = template.getattr(intern!(py, "count_by"))?;
        let by_day = match count_by.downcast::<PyString>().map_err(|_| Decline)?.to_str()? {
            "order" => false,
            "day" => true,
            _ => return Err(Decline),
        };
        let day: i64 = if by_day { self.purchase_day.bind(py).call1((&template, at))?.extract()? } else { 0 };
        let previous = instance.counted.downcast::<PyTuple>().map_err(|_| Decline)?;
        let mut items: Vec<Bound<'py, PyAny>> = previous.iter().collect();
        items.push(PyTuple::new(py, [order_id.clone().into_any(), day.into_pyobject(py)?.into_any()])?.into_any());
        let counted = PyTuple::new(py, &items)?;
        let progress = if by_day {
            let mut days = Vec::with_capacity(items.len());
            for item in &items {
                let day: i64 = item.get_item(1)?.extract()?;
                if !days.contains(&day) {
                    days.push(day);
                }
            }
            days.len() as i64
        } else {
            items.len() as i64
        };
        let target: i64 = template.getattr(intern!(py, "target"))?.extract()?;
        let plan = template.getattr(intern!(py, "reward"))?;
        let mode_object = plan.getattr(intern!(py, "mode"))?;
        let mode = mode_object.downcast::<PyString>().map_err(|_| Decline)?.to_str()?.to_string();
        let due: i64 = match mode.as_str() {
            "per_order" => progress.min(plan.getattr(intern!(py, "per_order_cents"))?.len()? as i64),
            "cumulative" => i64::from(progress >= target),
            "milestones" => {
                let mut reached = 0;
                for milestone in plan.getattr(intern!(py, "milestones"))?.try_iter()? {
                    if milestone?.getattr(intern!(py, "at"))?.extract::<i64>()? <= progress {
                        reached += 1;
                    }
                }
                reached
            }
            _ => return Err(Decline), // lottery: the reference draws
        };
        let reason = self.grant_reasons.bind(py).get_item(&mode_object)?.ok_or(Decline)?;
        let (kept, unpaid) = read_slots(&instance.slots, due)?;
        let mut payments = Vec::with_capacity(unpaid.len());
        let pool_id = plan.getattr(intern!(py, "pool_id"))?;
        for (slot, grants) in unpaid {
            let amount: i64 = match mode.as_str() {
                "per_order" => plan.getattr(intern!(py, "per_order_cents"))?.get_item(slot)?.extract()?,
                "milestones" => plan.getattr(intern!(py, "milestones"))?.get_item(slot)?.getattr(intern!(py, "amount_cents"))?.extract()?,
                _ => plan.getattr(intern!(py, "amount_cents"))?.extract()?,
            };
            let (pool_id, units) = if pool_id.is_none() {
                (None, 0)
            } else {
                let pool = catalog.getattr(intern!(py, "pools"))?.get_item(&pool_id)?;
                let unit = pool.getattr(intern!(py, "unit"))?;
                let items = unit.downcast::<PyString>().map_err(|_| Decline)?.to_str()? == "items";
                (Some(pool_id.clone()), if items { 1 } else { amount })
            };
            payments.push(Payment { slot, grants, amount, pool_id, units });
        }
        Ok(Advance { instance: index, counted, progress, target, completed: progress >= target, reason, kept, payments })
    }

    /// Outcome(state, (), notes).
    fn unchanged<'py>(&self, py: Python<'py>, state: &Bound<'py, PyAny>, notes: &[String]) -> PyResult<Bound<'py, PyAny>> {
        let notes = PyTuple::new(py, notes)?;
        self.outcome.bind(py).call1((state, PyTuple::empty(py), notes))
    }

    /// The budget calls, the output records and the new state.
    fn apply<'py>(
        &self,
        py: Python<'py>,
        budget: &Bound<'py, PyAny>,
        counting: Counting<'py>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Counting { event_fields, state_fields, instances, record, mut notes, advances } = counting;
        let user_id = &state_fields[S_USER_ID];
        let caused_by = event_fields[E_EVENT_ID].clone().downcast_into::<PyString>()?;
        let caused_text = caused_by.to_str()?;
        let at = &event_fields[E_AT];
        let at_micros: i64 = at.extract()?;
        let order_id = &event_fields[E_ORDER_ID];
        let mut out: Vec<Bound<'py, PyAny>> = Vec::new();
        // (index of the instance replaced, its new value, status, deadline)
        let mut replaced: Vec<(usize, Bound<'py, PyAny>, bool, bool)> = Vec::new();
        for advance in advances {
            let instance = &instances[advance.instance];
            let task_text = instance.task_id.to_str()?;
            let template_text = instance.template_id.to_str()?;
            let previous: i64 = instance.progress.extract()?;
            let (progress, target) = (advance.progress, advance.target);
            let task_record = |kind: &str, class: &Py<PyType>| -> PyResult<Bound<'py, PyAny>> {
                let id = format!("evt-{}", digest([kind, caused_text, task_text, "-1"]));
                class.bind(py).call1((
                    id,
                    &user_id,
                    &instance.template_id,
                    &instance.task_id,
                    &at,
                    &caused_by,
                    progress,
                    target,
                    &order_id,
                ))
            };
            if progress > previous {
                out.push(task_record("task_advanced", &self.task_advanced)?);
                notes.push(format!("{template_text}: counted, progress {progress}/{target}"));
            } else {
                notes.push(format!(
                    "{template_text}: counted, but this purchase day already counts (progress stays {progress}/{target})"
                ));
            }
            if advance.completed {
                out.push(task_record("task_completed", &self.task_completed)?);
                notes.push(format!("{template_text}: completed"));
            }
            let mut slots = advance.kept;
            for payment in advance.payments {
                let slot_text = payment.slot.to_string();
                let reward_id = format!("rwd-{}", digest([task_text, slot_text.as_str(), payment.grants.to_string().as_str()]));
                let debited = match &payment.pool_id {
                    None => Some(0),
                    Some(pool_id) => {
                        let paid = budget.call_method1(intern!(py, "try_debit"), (pool_id, payment.units, &reward_id))?;
                        paid.is_truthy()?.then_some(payment.units)
                    }
                };
                let pool_id = payment.pool_id.as_ref().map_or_else(|| py.None().into_bound(py), Clone::clone);
                let (kind, class, status, reason, slot_debited, grants) = match debited {
                    Some(units) => ("reward_granted", &self.reward_granted, &self.granted, advance.reason.clone(), units, payment.grants + 1),
                    None => ("reward_rejected", &self.reward_rejected, &self.rejected, self.budget_exhausted.bind(py).clone().into_any(), 0, payment.grants),
                };
                let id = format!("evt-{}", digest([kind, caused_text, task_text, slot_text.as_str()]));
                out.push(class.bind(py).call1((
                    id,
                    &reward_id,
                    &user_id,
                    &instance.template_id,
                    &instance.task_id,
                    payment.amount,
                    py.None(),
                    &pool_id,
                    reason,
                    &at,
                    &caused_by,
                ))?);
                let slot = self.reward_slot.bind(py).call1((
                    payment.slot,
                    status.bind(py),
                    &reward_id,
                    payment.amount,
                    py.None(),
                    &pool_id,
                    slot_debited,
                    grants,
                ))?;
                slots.push((payment.slot, slot));
            }
            slots.sort_by_key(|(number, _)| *number);
            let slots = PyTuple::new(py, slots.into_iter().map(|(_, slot)| slot))?;
            let status = if advance.completed { &self.completed } else { &self.in_progress };
            let moved = self.task_instance.bind(py).call1((
                &instance.task_id,
                &instance.template_id,
                &instance.claim_event_id,
                &instance.claimed_at_object,
                &instance.deadline_object,
                status.bind(py),
                progress,
                &advance.counted,
                slots,
            ))?;
            replaced.push((advance.instance, moved, advance.completed, !advance.completed));
        }

        let orders = state_fields[S_ORDERS].call_method0(intern!(py, "copy"))?;
        orders.set_item(order_id, &record)?;
        let orders = self.mapping_proxy.bind(py).call1((orders,))?;
        let (new_instances, next_deadline) = if replaced.is_empty() {
            (state_fields[S_INSTANCES].clone(), state_fields[S_NEXT_DEADLINE].clone())
        } else {
            let mut values = Vec::with_capacity(instances.len());
            let mut earliest: Option<i64> = None;
            for instance in &instances {
                // `replaced.get(i.task_id, i)`: by task id, as the reference does.
                let found = replaced.iter().find(|(which, ..)| instances[*which].task_id.as_any().eq(&instance.task_id).unwrap_or(false));
                let (value, completed, in_progress) = match found {
                    Some((_, value, completed, in_progress)) => (value.clone(), *completed, *in_progress),
                    None => (instance.object.clone(), instance.status == COMPLETED, instance.status == IN_PROGRESS),
                };
                if in_progress || (completed && instance.deadline > at_micros) {
                    earliest = Some(earliest.map_or(instance.deadline, |e| e.min(instance.deadline)));
                }
                values.push(value);
            }
            let next = match earliest {
                Some(deadline) => deadline.into_pyobject(py)?.into_any(),
                None => py.None().into_bound(py),
            };
            (PyTuple::new(py, values)?.into_any(), next)
        };
        let new_state = self.user_state.bind(py).call1((
            user_id,
            new_instances,
            orders,
            &state_fields[S_HELD],
            next_deadline,
            &state_fields[S_LAST_CLAIM],
        ))?;
        self.outcome.bind(py).call1((new_state, PyTuple::new(py, out)?, PyTuple::new(py, notes)?))
    }
}

fn read_instances<'py>(instances: &Bound<'py, PyAny>) -> Planned<Vec<Instance<'py>>> {
    let instances = instances.downcast::<PyTuple>().map_err(|_| Decline)?;
    let mut read = Vec::with_capacity(instances.len());
    for object in instances.iter() {
        let [task_id, template_id, status, claimed_at, deadline, claim_event_id, progress, counted, slots]: [Bound<'py, PyAny>; 9] =
            fields_of(&object, INSTANCE_FIELDS)?.try_into().map_err(|_| Decline)?;
        read.push(Instance {
            task_id: task_id.downcast_into::<PyString>().map_err(|_| Decline)?,
            template_id: template_id.downcast_into::<PyString>().map_err(|_| Decline)?,
            status: status.downcast::<PyString>().map_err(|_| Decline)?.to_str()?.to_string(),
            claimed_at: claimed_at.extract()?,
            deadline: deadline.extract()?,
            claimed_at_object: claimed_at,
            deadline_object: deadline,
            claim_event_id,
            progress,
            counted,
            slots,
            object,
        });
    }
    Ok(read)
}

/// `_outside_windows_note`.
fn outside_windows_note(instances: &[Instance<'_>], at: i64) -> Planned<String> {
    let mut reasons = Vec::with_capacity(instances.len());
    for instance in instances {
        let template = instance.template_id.to_str()?;
        reasons.push(if instance.is_live(at) {
            format!("{template}: order before the claim")
        } else if at >= instance.deadline {
            format!("{template}: order at/after the deadline")
        } else {
            format!("{template}: task already expired")
        });
    }
    if reasons.is_empty() {
        return Ok("no active task: the order counts for nothing".to_string());
    }
    Ok(reasons.join("; "))
}

/// `_choose_tasks`: every non-exclusive match, and the first exclusive one
/// by (priority highest, claimed earliest, template id).
fn choose_tasks<'py>(
    py: Python<'py>,
    instances: &[Instance<'py>],
    matching: Vec<(usize, Bound<'py, PyAny>)>,
    notes: &mut Vec<String>,
) -> Planned<Vec<(usize, Bound<'py, PyAny>)>> {
    let mut exclusive = Vec::new();
    for (position, (index, template)) in matching.iter().enumerate() {
        if template.getattr(intern!(py, "exclusive"))?.is_truthy()? {
            let priority: i64 = template.getattr(intern!(py, "priority"))?.extract()?;
            exclusive.push((position, *index, priority));
        }
    }
    if exclusive.len() <= 1 {
        return Ok(matching);
    }
    let mut winner = exclusive[0];
    for &candidate in &exclusive[1..] {
        let (best, this) = (&instances[winner.1], &instances[candidate.1]);
        let better = (-candidate.2, this.claimed_at, this.template_id.to_str()?)
            < (-winner.2, best.claimed_at, best.template_id.to_str()?);
        if better {
            winner = candidate;
        }
    }
    let winner_template = instances[winner.1].template_id.to_str()?;
    for &(position, index, _) in &exclusive {
        if position != winner.0 {
            let template = instances[index].template_id.to_str()?;
            notes.push(format!("{template}: exclusive, the order went to {winner_template}"));
        }
    }
    Ok(matching
        .into_iter()
        .enumerate()
        .filter(|(position, _)| !exclusive.iter().any(|e| e.0 == *position) || *position == winner.0)
        .map(|(_, chosen)| chosen)
        .collect())
}

/// The slots kept as they are and the slots to pay, (slot, grants so far),
/// for `due` slots due; Decline when `settle` would revoke or the slots are
/// out of order (the reference handles both).
#[allow(clippy::type_complexity)]
fn read_slots<'py>(
    slots: &Bound<'py, PyAny>,
    due: i64,
) -> Planned<(Vec<(i64, Bound<'py, PyAny>)>, Vec<(i64, i64)>)> {
    let slots = slots.downcast::<PyTuple>().map_err(|_| Decline)?;
    let mut kept = Vec::with_capacity(slots.len() + 1);
    let mut read: Vec<(i64, String, i64)> = Vec::with_capacity(slots.len());
    for slot in slots.iter() {
        let [number, status, grants]: [Bound<'py, PyAny>; 3] =
            fields_of(&slot, SLOT_FIELDS)?.try_into().map_err(|_| Decline)?;
        let number: i64 = number.extract()?;
        if read.last().is_some_and(|last| last.0 >= number) {
            return Err(Decline);
        }
        let status = status.downcast::<PyString>().map_err(|_| Decline)?.to_str()?.to_string();
        if number >= due && status == GRANTED {
            return Err(Decline); // a revocation: the reference gives the units back
        }
        let grants: i64 = grants.extract()?;
        read.push((number, status, grants));
        kept.push((number, slot));
    }
    let mut unpaid = Vec::new();
    for number in 0..due {
        match read.iter().position(|(slot, ..)| *slot == number) {
            Some(found) => {
                let (_, status, grants) = &read[found];
                if status == GRANTED || status == REJECTED {
                    continue;
                }
                if status != REVOKED {
                    return Err(Decline);
                }
                unpaid.push((number, *grants));
                kept.remove(kept.iter().position(|(slot, _)| *slot == number).ok_or(Decline)?);
            }
            None => unpaid.push((number, 0)),
        }
    }
    Ok((kept, unpaid))
}
