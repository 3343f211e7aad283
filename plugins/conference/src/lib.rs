//! `conference`: the seed's conference app.
//!
//! Every caller joins one cluster-wide conference, the mixing bridge `conf`:
//!
//! * **on start**: get-or-create the mixing bridge `conf`, then answer the call
//!   (ARI: `get-or-create-bridge("conf", mixing)`, then `answer(<channel>)`);
//! * **on up**: add the call's channel to `conf` (ARI: `bridge-add("conf", <channel>)`).
//!
//! Nothing else: no other callback sends a request, and the app asks for no `on-event`
//! events. A failed request is logged by the SDK; in `on start` a failed get-or-create stops
//! there (the call is not answered).

use stasis_sdk::prelude::*;

#[derive(Default)]
struct Conference;

impl App for Conference {
    // No on_event: the host need not wake the call for bridge and variable updates.
    const ON_EVENT: &'static [&'static str] = &[];

    fn on_start(&mut self, ctx: &CallContext) -> Result {
        bridge::get_or_create("conf", BridgeType::Mixing)?;
        ctx.answer()
    }

    fn on_up(&mut self, ctx: &CallContext) -> Result {
        ctx.add_to_bridge("conf")
    }
}

export_app!(Conference);
