//! `hangup-cause`: records why each call ended, and asks the host for nothing else.
//!
//! * **on start**: answer the call.
//! * **on event** (`ChannelHangupRequest` only, declared through [`App::ON_EVENT`]): store the
//!   request's `cause` (an ISDN cause code; absent when Asterisk sends none) in kv key
//!   `cause:<channel-id>`, and count it in kv key `causes:<cause>`.
//! * Every `on-event` the app receives appends its kind and a space to kv key
//!   `events:<channel-id>`, so a test can see that the host delivered only what the app asked
//!   for: the bridge, state and variable events of the call never wake it.
//!
//! The cause is read from the event JSON with a plain text search: a telephony app this small
//! needs no JSON parser in its component.

use stasis_sdk::prelude::*;

#[derive(Default)]
struct HangupCause;

impl App for HangupCause {
    const ON_EVENT: &'static [&'static str] = &["ChannelHangupRequest"];

    fn on_start(&mut self, ctx: &CallContext) -> Result {
        ctx.answer()
    }

    fn on_event(&mut self, ctx: &CallContext, kind: &str, json: &str) -> Result {
        let id = &ctx.channel.id;
        let seen = kv::get(&format!("events:{id}")).unwrap_or_default();
        kv::set(&format!("events:{id}"), &format!("{seen}{kind} "));
        if kind == "ChannelHangupRequest" {
            let cause = cause_of(json).unwrap_or("none");
            kv::set(&format!("cause:{id}"), cause);
            kv::increment(&format!("causes:{cause}"), 1);
        }
        Ok(())
    }
}

/// The digits of `"cause":<n>` in an event's JSON.
fn cause_of(json: &str) -> Option<&str> {
    let rest = &json[json.find("\"cause\"")? + "\"cause\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

export_app!(HangupCause);
