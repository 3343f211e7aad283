//! `probe`: the test guest of stasis-host's runtime tests.
//!
//! It records every callback it receives into the app's key/value store and, on start, runs a
//! behaviour chosen by the call's first Stasis argument, so tests can see exactly what the host
//! delivered and how the host handled each import, trap and limit.
//!
//! # Trace: every callback
//!
//! Every callback first appends one line to kv key `trace:<channel-id>` (`kv.get`, append,
//! `kv.set`; `<channel-id>` is `ctx.channel.id`). Each line ends with `\n`:
//!
//! ```text
//! <callback-name> <json>\n
//! ```
//!
//! `<callback-name>` is the WIT name: `on-start`, `on-up`, `on-dtmf`, `on-playback-finished`,
//! `on-end`, `on-event`, `on-node`. `<json>` is one compact JSON object (no newline) with keys in
//! this order:
//!
//! ```text
//! {"app":"…","node":"…",
//!  "channel":{"id":"…","name":"…","state":"ring","caller":{"name":"…","number":"…"},
//!             "connected":{"name":"…","number":"…"},"context":"…","exten":"…"},
//!  "args":["…",…]
//!  <extras>}
//! ```
//!
//! `state` is the WIT enum case name (`down`, `rsrved`, `off-hook`, `dialing`, `ring`, `ringing`,
//! `up`, `busy`, `dialing-offhook`, `pre-ring`, `unknown`). Extras per callback:
//!
//! | callback | extras |
//! |---|---|
//! | `on-dtmf` | `"digit":"1","duration_ms":120` |
//! | `on-playback-finished` | `"playback":{"id":"…","media_uri":"…","target_uri":"…","state":"done"\|"failed"}` |
//! | `on-event` | `"kind":"ChannelVarset","json":"<the event JSON, as a JSON string>"` |
//! | `on-node` | `"event":{"node":"…","name":"…","status":"up"\|"down"}` |
//!
//! Strings are escaped as JSON requires (`"`, `\`, control characters as `\n`, `\t`, `\u00XX`).
//! The trace line is written before the behaviour runs, so it is there even when the behaviour
//! traps.
//!
//! # Results
//!
//! Behaviours that call ARI imports append one line per call to kv key `results:<channel-id>`,
//! each ending with `\n`:
//!
//! ```text
//! <import-name> ok <value>            value: see below; empty for imports returning nothing
//! <import-name> err <variant> <message>
//! ```
//!
//! `<import-name>` is the WIT function name (`answer`, `get-or-create-bridge`, …), `<variant>`
//! the WIT `ari-error` case (`not-found`, `denied`, `conflict`, `invalid`, `unavailable`,
//! `timeout`, `failed`). Values: `play`/`play-on-bridge` the playback id,
//! `get-or-create-bridge` the bridge id, `originate`/`dial` the new channel id, `get-variable`
//! the value, `start-recording` the recording name, `request` the HTTP status. Newlines in
//! values and messages are replaced by spaces. With an empty value the line is
//! `<import-name> ok ` (trailing space).
//!
//! # Behaviours (on-start, `args[0]`)
//!
//! * `exercise` — logs `probe log <level>` at each level (trace, debug, info, warn, error),
//!   calls `kv.increment("calls", 1)`, then calls every `ari` import exactly once, with `B` =
//!   `probe-<channel-id>` and `ME` = own channel id, in this order (WIT order, except that the
//!   bridge is destroyed after playing to it and the two calls that make the channel leave the
//!   app come last):
//!   1. `answer(ME)`
//!   2. `ring(ME)`
//!   3. `play(ME, ["sound:hello-world"])`
//!   4. `stop-playback(<id returned by play>)` (`probe-no-playback` if play failed)
//!   5. `get-or-create-bridge(B, mixing)`
//!   6. `bridge-add(B, ME)`
//!   7. `bridge-remove(B, ME)`
//!   8. `play-on-bridge(B, ["sound:beep"])`
//!   9. `bridge-destroy(B)`
//!   10. `originate({endpoint: "Local/9001@default", app-args: ["child"], rest none/empty})`
//!   11. `dial({endpoint: "Local/9001@default", app-args: ["child"], rest none/empty})`
//!   12. `get-variable(ME, "PROBE")`
//!   13. `set-variable(ME, "PROBE", "probe")`
//!   14. `start-moh(ME, none)`
//!   15. `stop-moh(ME)`
//!   16. `mute(ME, both)`
//!   17. `unmute(ME, both)`
//!   18. `send-dtmf(ME, "12#")`
//!   19. `start-recording(ME, {name: B, format: "wav", max-duration 0, max-silence 0,
//!       beep false, terminate-on "none"})`
//!   20. `request("GET", "/channels/ME", [], none)`
//!   21. `continue-in-dialplan(ME, "default", "9001", 1)`
//!   22. `hangup(ME, none)`
//! * `foreign <other-id>` — `answer(<other-id>)`, `hangup(<other-id>, none)`,
//!   `bridge-add("someone-elses-bridge", ME)` (never created), then
//!   `request("POST", "/channels/<other-id>/answer", [], none)`; results as above.
//! * `panic` — panics with `probe panic on purpose`.
//! * `loop` — spins forever (until the host's deadline interrupts it).
//! * `alloc` — allocates 1 MiB blocks, writing to each, without bound (until the host's memory
//!   limit stops it).
//! * `stderr <text>` — writes `<text>` (the remaining args joined by spaces) and a newline to
//!   stderr, then returns; no import called.
//! * `answer`, or no args — `answer(ME)`, result recorded.
//! * `slow <ms>` — busy-waits `<ms>` milliseconds (wall clock, `std::time::Instant`), then
//!   `answer(ME)`, result recorded.
//! * anything else (e.g. `child`, the args of the calls `exercise` originates) — nothing.
//!
//! # Other callbacks
//!
//! Only the trace line, except `on-dtmf` with digit `9`, which then panics with
//! `probe panic on dtmf 9` (to trap a call after a healthy start).

use std::fmt::Write as _;

use stasis_sdk::prelude::*;
use stasis_sdk::{CallerId, raw};

#[derive(Default)]
struct Probe;

impl App for Probe {
    fn on_start(&mut self, ctx: &CallContext) -> Result {
        trace(ctx, "on-start", |_| {});
        let args: Vec<&str> = ctx.args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["exercise", ..] => exercise(ctx),
            ["foreign", other, ..] => foreign(ctx, other),
            ["panic", ..] => panic!("probe panic on purpose"),
            ["loop", ..] => spin(),
            ["alloc", ..] => alloc(),
            ["stderr", text @ ..] => eprintln!("{}", text.join(" ")),
            [] | ["answer", ..] => record(ctx, "answer", raw::answer(ctx.channel_id())),
            ["slow", ms, ..] => {
                let ms: u64 = ms.parse().unwrap_or(0);
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(ms) {
                    std::hint::spin_loop();
                }
                record(ctx, "answer", raw::answer(ctx.channel_id()))
            }
            _ => {}
        }
        Ok(())
    }

    fn on_up(&mut self, ctx: &CallContext) -> Result {
        trace(ctx, "on-up", |_| {});
        Ok(())
    }

    fn on_dtmf(&mut self, ctx: &CallContext, digit: &str, duration_ms: u32) -> Result {
        trace(ctx, "on-dtmf", |j| {
            j.push_str(",\"digit\":");
            json_str(j, digit);
            let _ = write!(j, ",\"duration_ms\":{duration_ms}");
        });
        if digit == "9" {
            panic!("probe panic on dtmf 9");
        }
        Ok(())
    }

    fn on_playback_finished(&mut self, ctx: &CallContext, playback: &Playback) -> Result {
        trace(ctx, "on-playback-finished", |j| {
            j.push_str(",\"playback\":{\"id\":");
            json_str(j, &playback.id);
            j.push_str(",\"media_uri\":");
            json_str(j, &playback.media_uri);
            j.push_str(",\"target_uri\":");
            json_str(j, &playback.target_uri);
            j.push_str(",\"state\":");
            json_str(j, playback.state.name());
            j.push('}');
        });
        Ok(())
    }

    fn on_end(&mut self, ctx: &CallContext) -> Result {
        trace(ctx, "on-end", |_| {});
        Ok(())
    }

    fn on_event(&mut self, ctx: &CallContext, kind: &str, json: &str) -> Result {
        trace(ctx, "on-event", |j| {
            j.push_str(",\"kind\":");
            json_str(j, kind);
            j.push_str(",\"json\":");
            json_str(j, json);
        });
        Ok(())
    }

    fn on_node(&mut self, ctx: &CallContext, event: &NodeEvent) -> Result {
        trace(ctx, "on-node", |j| {
            j.push_str(",\"event\":{\"node\":");
            json_str(j, &event.node);
            j.push_str(",\"name\":");
            json_str(j, &event.name);
            j.push_str(",\"status\":");
            json_str(j, event.status.name());
            j.push('}');
        });
        Ok(())
    }
}

export_app!(Probe);

/// Appends `<callback> <json>\n` to `trace:<channel-id>`; `extras` adds callback-specific keys.
fn trace(ctx: &CallContext, callback: &str, extras: impl FnOnce(&mut String)) {
    let mut j = String::with_capacity(256);
    j.push_str(callback);
    j.push_str(" {\"app\":");
    json_str(&mut j, &ctx.app);
    j.push_str(",\"node\":");
    json_str(&mut j, &ctx.node);
    let c = &ctx.channel;
    j.push_str(",\"channel\":{\"id\":");
    json_str(&mut j, &c.id);
    j.push_str(",\"name\":");
    json_str(&mut j, &c.name);
    j.push_str(",\"state\":");
    json_str(&mut j, c.state.name());
    j.push_str(",\"caller\":");
    caller(&mut j, &c.caller);
    j.push_str(",\"connected\":");
    caller(&mut j, &c.connected);
    j.push_str(",\"context\":");
    json_str(&mut j, &c.context);
    j.push_str(",\"exten\":");
    json_str(&mut j, &c.exten);
    j.push_str("},\"args\":[");
    for (i, a) in ctx.args.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        json_str(&mut j, a);
    }
    j.push(']');
    extras(&mut j);
    j.push_str("}\n");
    append(&format!("trace:{}", c.id), &j);
}

fn caller(j: &mut String, c: &CallerId) {
    j.push_str("{\"name\":");
    json_str(j, &c.name);
    j.push_str(",\"number\":");
    json_str(j, &c.number);
    j.push('}');
}

/// Writes `s` as a JSON string literal.
fn json_str(j: &mut String, s: &str) {
    j.push('"');
    for ch in s.chars() {
        match ch {
            '"' => j.push_str("\\\""),
            '\\' => j.push_str("\\\\"),
            '\n' => j.push_str("\\n"),
            '\r' => j.push_str("\\r"),
            '\t' => j.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(j, "\\u{:04x}", c as u32);
            }
            c => j.push(c),
        }
    }
    j.push('"');
}

/// kv has no append: get, concatenate, set (calls of one channel never run concurrently).
fn append(key: &str, line: &str) {
    let mut value = kv::get(key).unwrap_or_default();
    value.push_str(line);
    kv::set(key, &value);
}

/// Something that can be shown as the value of an `ok` result line.
trait Shown {
    fn shown(&self) -> String;
}
impl Shown for () {
    fn shown(&self) -> String {
        String::new()
    }
}
impl Shown for String {
    fn shown(&self) -> String {
        self.clone()
    }
}
impl Shown for stasis_sdk::RawResponse {
    fn shown(&self) -> String {
        self.status.to_string()
    }
}

/// Appends `<import> ok <value>` or `<import> err <variant> <message>` to `results:<own id>`.
fn record<T: Shown>(ctx: &CallContext, import: &str, result: Result<T>) {
    let line = match &result {
        Ok(v) => format!("{import} ok {}", v.shown()),
        Err(e) => format!("{import} err {} {}", e.kind(), e.message()),
    };
    let line = line.replace(['\n', '\r'], " ") + "\n";
    append(&format!("results:{}", ctx.channel_id()), &line);
}

fn exercise(ctx: &CallContext) {
    use stasis_sdk::log::{Level, log};
    for (level, name) in [
        (Level::Trace, "trace"),
        (Level::Debug, "debug"),
        (Level::Info, "info"),
        (Level::Warn, "warn"),
        (Level::Error, "error"),
    ] {
        log(level, &format!("probe log {name}"));
    }
    kv::increment("calls", 1);

    let me = ctx.channel_id();
    let bridge = format!("probe-{me}");
    let media = |m: &str| vec![m.to_string()];

    record(ctx, "answer", raw::answer(me));
    record(ctx, "ring", raw::ring(me));
    let played = raw::play(me, &media("sound:hello-world"));
    let playback_id = played
        .clone()
        .unwrap_or_else(|_| "probe-no-playback".into());
    record(ctx, "play", played);
    record(ctx, "stop-playback", raw::stop_playback(&playback_id));
    record(
        ctx,
        "get-or-create-bridge",
        raw::get_or_create_bridge(&bridge, BridgeType::Mixing),
    );
    record(ctx, "bridge-add", raw::bridge_add(&bridge, me));
    record(ctx, "bridge-remove", raw::bridge_remove(&bridge, me));
    record(
        ctx,
        "play-on-bridge",
        raw::play_on_bridge(&bridge, &media("sound:beep")),
    );
    record(ctx, "bridge-destroy", raw::bridge_destroy(&bridge));
    let child = OriginateRequest::new("Local/9001@default").app_args(["child"]);
    record(ctx, "originate", raw::originate(&child));
    record(ctx, "dial", raw::dial(&child));
    record(ctx, "get-variable", raw::get_variable(me, "PROBE"));
    record(ctx, "set-variable", raw::set_variable(me, "PROBE", "probe"));
    record(ctx, "start-moh", raw::start_moh(me, None));
    record(ctx, "stop-moh", raw::stop_moh(me));
    record(ctx, "mute", raw::mute(me, MuteDirection::Both));
    record(ctx, "unmute", raw::unmute(me, MuteDirection::Both));
    record(ctx, "send-dtmf", raw::send_dtmf(me, "12#"));
    record(
        ctx,
        "start-recording",
        raw::start_recording(me, &RecordingOptions::new(&bridge, "wav")),
    );
    record(
        ctx,
        "request",
        raw::request("GET", &format!("/channels/{me}"), &[], None),
    );
    record(
        ctx,
        "continue-in-dialplan",
        raw::continue_in_dialplan(me, Some("default"), Some("9001"), Some(1)),
    );
    record(ctx, "hangup", raw::hangup(me, None));
}

fn foreign(ctx: &CallContext, other: &str) {
    record(ctx, "answer", raw::answer(other));
    record(ctx, "hangup", raw::hangup(other, None));
    record(
        ctx,
        "bridge-add",
        raw::bridge_add("someone-elses-bridge", ctx.channel_id()),
    );
    record(
        ctx,
        "request",
        raw::request("POST", &format!("/channels/{other}/answer"), &[], None),
    );
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        // black_box keeps the optimiser from proving the loop has no effect.
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn alloc() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        // Non-zero fill writes every page, so the memory is really committed.
        blocks.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&mut blocks);
    }
}
