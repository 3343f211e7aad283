//! Support code for [`export_app!`](crate::export_app); not a stable API.

use std::cell::RefCell;
use std::thread::LocalKey;

pub use crate::bindings::exports::stasis::app::callbacks::Guest;
pub use crate::bindings::exports::stasis::app::interest::Guest as InterestGuest;
pub use wit_bindgen;

use crate::{App, CallContext, NodeEvent, Playback, Result};

/// Where `export_app!` keeps the call's app value.
pub type Slot<A> = LocalKey<RefCell<Option<A>>>;

/// Runs one callback on the call's app value, creating it if needed, and logs an `Err`.
fn run<A: App>(slot: &'static Slot<A>, name: &str, f: impl FnOnce(&mut A) -> Result) {
    // Callbacks of one instance never overlap (no reentrance in the component model), so the
    // borrow cannot fail.
    let result = slot.with(|cell| f(cell.borrow_mut().get_or_insert_with(A::default)));
    if let Err(e) = result {
        crate::log::error(&format!("{name} failed: {}: {}", e.kind(), e.message()));
    }
}

pub fn on_event_types<A: App>() -> Vec<String> {
    A::ON_EVENT.iter().map(|t| t.to_string()).collect()
}

pub fn on_start<A: App>(slot: &'static Slot<A>, ctx: CallContext) {
    // A fresh value per call, even if the host reused an instance.
    slot.with(|cell| *cell.borrow_mut() = Some(A::default()));
    run(slot, "on-start", |a| a.on_start(&ctx))
}

pub fn on_up<A: App>(slot: &'static Slot<A>, ctx: CallContext) {
    run(slot, "on-up", |a| a.on_up(&ctx))
}

pub fn on_dtmf<A: App>(slot: &'static Slot<A>, ctx: CallContext, digit: String, duration_ms: u32) {
    run(slot, "on-dtmf", |a| a.on_dtmf(&ctx, &digit, duration_ms))
}

pub fn on_playback_finished<A: App>(slot: &'static Slot<A>, ctx: CallContext, playback: Playback) {
    run(slot, "on-playback-finished", |a| {
        a.on_playback_finished(&ctx, &playback)
    })
}

pub fn on_end<A: App>(slot: &'static Slot<A>, ctx: CallContext) {
    run(slot, "on-end", |a| a.on_end(&ctx));
    slot.with(|cell| cell.borrow_mut().take());
}

pub fn on_event<A: App>(slot: &'static Slot<A>, ctx: CallContext, kind: String, json: String) {
    run(slot, "on-event", |a| a.on_event(&ctx, &kind, &json))
}

pub fn on_node<A: App>(slot: &'static Slot<A>, ctx: CallContext, event: NodeEvent) {
    run(slot, "on-node", |a| a.on_node(&ctx, &event))
}
