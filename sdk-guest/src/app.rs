use crate::{CallContext, NodeEvent, Playback, Result};

/// The callbacks of an app, one per export of the WIT interface `callbacks`.
///
/// Every method has a no-op default; implement those the app needs. `self` lives for one call
/// (see the [crate docs](crate#the-model)); `ctx` is a snapshot of the call as of the event.
/// Returning `Err` logs the error; it does not end the call.
pub trait App: Default + 'static {
    /// The ARI event types [`App::on_event`] receives, e.g. `&["ChannelHangupRequest"]`.
    /// `&["*"]`, the default, is every type. An app that does not use `on_event` should say
    /// `&[]`: the host then never wakes it for the twenty-odd bridge and variable events of a
    /// typical call. The other callbacks are delivered either way.
    const ON_EVENT: &'static [&'static str] = &["*"];

    /// The call entered the app (StasisStart). Always the first callback.
    fn on_start(&mut self, ctx: &CallContext) -> Result {
        let _ = ctx;
        Ok(())
    }

    /// The call's channel is Up (answered, or entered the app already answered).
    fn on_up(&mut self, ctx: &CallContext) -> Result {
        let _ = ctx;
        Ok(())
    }

    /// A DTMF `digit` (`"0"`–`"9"`, `"*"`, `"#"`, `"A"`–`"D"`) ended on the call's channel.
    fn on_dtmf(&mut self, ctx: &CallContext, digit: &str, duration_ms: u32) -> Result {
        let _ = (ctx, digit, duration_ms);
        Ok(())
    }

    /// A playback started by this call finished.
    fn on_playback_finished(&mut self, ctx: &CallContext, playback: &Playback) -> Result {
        let _ = (ctx, playback);
        Ok(())
    }

    /// The call left the app (StasisEnd). Always the last callback.
    fn on_end(&mut self, ctx: &CallContext) -> Result {
        let _ = ctx;
        Ok(())
    }

    /// Any other ARI event about the call's channel or bridges: `kind` is its `type`
    /// (e.g. `ChannelVarset`), `json` the event as the node sent it.
    fn on_event(&mut self, ctx: &CallContext, kind: &str, json: &str) -> Result {
        let _ = (ctx, kind, json);
        Ok(())
    }

    /// A node went down or came back.
    fn on_node(&mut self, ctx: &CallContext, event: &NodeEvent) -> Result {
        let _ = (ctx, event);
        Ok(())
    }
}
