//! The steps of the user-table publish (RCU with per-core quiescent acks, docs/design.md
//! "User table publish"), over the words of the `ctl` file. [`super::ControlShm`] and
//! [`super::CoreShm`] call them with the mapped words, the loom models with heap ones.
//!
//! Writer: [`plan`] picks the inactive side; the side may be rebuilt once every running core
//! [`has_left`] it; after building it, [`switch`] makes it active and bumps `tables_gen`.
//! Reader (each core tick): [`reader_tick`] sees a new `tables_gen`, re-reads the active side
//! of each node ([`reader_side`]), then acknowledges the generation.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Release, SeqCst};

use super::layout::NodeSlot;
use super::sync::{fence, AtomicU64};

/// Which side of a node the next publish builds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// The node was published before (cores may read its active side).
    pub(crate) in_use: bool,
    /// The side cores use now.
    pub(crate) active: usize,
    /// The side to build.
    pub(crate) side: usize,
    /// Every running core must have seen this generation before `side` is overwritten.
    pub(crate) retired: u64,
}

/// Writer step 1 (under the publish lock: one writer).
pub(crate) fn plan(slot: &NodeSlot) -> Plan {
    let in_use = slot.in_use.load(Acquire) == 1;
    let active = slot.active.load(Acquire) as usize & 1;
    // A node's first table goes to side 0: until in_use is set no core looks at the node.
    let side = if in_use { 1 - active } else { 0 };
    Plan {
        in_use,
        active,
        side,
        retired: slot.retired_gen[side].load(Acquire),
    }
}

/// Writer step 2, per running core: has it acknowledged the generation that retired the
/// side? Acquire pairs with the core's Release ack, so the core's reads of the old side
/// happen before our writes to it.
pub(crate) fn has_left(seen_tables_gen: &AtomicU64, plan: &Plan) -> bool {
    seen_tables_gen.load(Acquire) >= plan.retired
}

/// Writer step 3, after the side is completely built: make it active, bump the generation,
/// and retire the side just left as of that generation. Returns the new generation.
pub(crate) fn switch(slot: &NodeSlot, tables_gen: &AtomicU64, plan: &Plan) -> u64 {
    // Release: the table contents are visible to a core that sees the new side.
    slot.active.store(plan.side as u32, Release);
    slot.in_use.store(1, Release);
    let gen = tables_gen.fetch_add(1, AcqRel) + 1;
    if plan.in_use {
        slot.retired_gen[plan.active].store(gen, Release);
    }
    // Store→load ordering against a core that is starting right now (it stores `running`,
    // then loads `active`; we store `active`, and the next publish loads `running`): with a
    // SeqCst fence on both sides, either the core sees the new side or we see it running.
    fence(SeqCst);
    gen
}

/// Reader step when a core starts: after publishing `running = 1` and before the first
/// [`reader_side`]; the counterpart of the fence in [`switch`].
pub(crate) fn reader_start(running: &super::sync::AtomicU32) {
    running.store(1, Release);
    fence(SeqCst);
}

/// Reader step for one node: the side (and its file incarnation) to use for new lookups,
/// `None` while the node is not in use. Call only after [`reader_tick`] saw a new generation.
pub(crate) fn reader_side(slot: &NodeSlot) -> Option<(usize, u64)> {
    if slot.in_use.load(Acquire) != 1 {
        return None;
    }
    let side = slot.active.load(Acquire) as usize & 1;
    Some((side, slot.incarnation[side].load(Acquire)))
}

/// Reader step per tick: when `tables_gen` moved past `seen`, run `remap` (which calls
/// [`reader_side`] for each node and drops references to the old sides), then acknowledge.
/// Returns whether the tables changed.
pub(crate) fn reader_tick(
    tables_gen: &AtomicU64,
    seen: &mut u64,
    ack: Option<&AtomicU64>,
    remap: impl FnOnce(),
) -> bool {
    let gen = tables_gen.load(Acquire);
    if gen == *seen {
        return false;
    }
    remap();
    *seen = gen;
    if let Some(a) = ack {
        // Release: our reads of the sides we no longer use happen before the writer reuses them.
        a.store(gen, Release);
    }
    true
}
