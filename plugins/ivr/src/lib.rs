//! `ivr`: a one-level voice menu driven by DTMF and playbacks.
//!
//! Every request goes to the call's own channel (`<ch>`), one at a time, in this order:
//!
//! | when | state | requests (ARI imports) | next state |
//! |---|---|---|---|
//! | on start | – | `answer(<ch>)`, `play(<ch>, ["sound:ivr-menu"])` | menu |
//! | DTMF `1` | menu | `play(<ch>, ["sound:option-1"])` | announcing (that playback id) |
//! | DTMF `2` | menu | `get-or-create-bridge("support", mixing)`, `bridge-add("support", <ch>)` | in support |
//! | DTMF `0` | menu | `continue-in-dialplan(<ch>, "default", "operator", 1)` | done |
//! | DTMF `#` | menu | `play(<ch>, ["sound:ivr-menu"])` (the menu again) | menu |
//! | DTMF `*` | menu | `hangup(<ch>, none)` | done |
//! | any other DTMF | menu | `play(<ch>, ["sound:option-is-invalid"])` | invalid (that playback id) |
//! | playback finished, the announcement's id | announcing | `hangup(<ch>, none)` | done |
//! | playback finished, the invalid prompt's id | invalid | `play(<ch>, ["sound:ivr-menu"])` | menu |
//!
//! Everything else sends nothing: digits outside the `menu` state (while an announcement or
//! the invalid prompt plays, in the support bridge, after leaving), other playbacks finishing
//! (e.g. the menu prompt itself), `on up`, `on event`, `on node`, `on end`. Prompts are not
//! interrupted by a digit: Asterisk queues a new playback behind the current one.
//!
//! If the answer in `on start` fails, the menu is not played (the SDK logs the error). If a
//! request of a DTMF choice fails, the error is logged and the state is as if it succeeded,
//! except that a failed `play` keeps the `menu` state (the caller can choose again).

use stasis_sdk::prelude::*;

/// Where the caller is in the menu; one value per call.
#[derive(Default)]
enum Ivr {
    /// Waiting for a choice.
    #[default]
    Menu,
    /// Playing the option-1 announcement (this playback id); hang up when it ends.
    Announcing(String),
    /// Playing the invalid-choice prompt (this playback id); back to the menu when it ends.
    Invalid(String),
    /// In the `support` bridge.
    InSupport,
    /// Left the menu (hung up or back in the dialplan).
    Done,
}

const MENU: &str = "sound:ivr-menu";

impl App for Ivr {
    fn on_start(&mut self, ctx: &CallContext) -> Result {
        ctx.answer()?;
        ctx.play(MENU)?;
        Ok(())
    }

    fn on_dtmf(&mut self, ctx: &CallContext, digit: &str, _duration_ms: u32) -> Result {
        if !matches!(self, Ivr::Menu) {
            return Ok(());
        }
        match digit {
            "1" => *self = Ivr::Announcing(ctx.play("sound:option-1")?),
            "2" => {
                *self = Ivr::InSupport;
                ctx.join_bridge("support", BridgeType::Mixing)?;
            }
            "0" => {
                *self = Ivr::Done;
                ctx.continue_at("default", "operator", 1)?;
            }
            "#" => {
                ctx.play(MENU)?;
            }
            "*" => {
                *self = Ivr::Done;
                ctx.hangup()?;
            }
            _ => *self = Ivr::Invalid(ctx.play("sound:option-is-invalid")?),
        }
        Ok(())
    }

    fn on_playback_finished(&mut self, ctx: &CallContext, playback: &Playback) -> Result {
        match self {
            Ivr::Announcing(id) if *id == playback.id => {
                *self = Ivr::Done;
                ctx.hangup()
            }
            Ivr::Invalid(id) if *id == playback.id => {
                *self = Ivr::Menu;
                ctx.play(MENU).map(drop)
            }
            _ => Ok(()),
        }
    }
}

export_app!(Ivr);
