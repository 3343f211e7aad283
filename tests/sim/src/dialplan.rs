//! A small dialplan model: `context` / `exten` → a [`Route`], expanded into Asterisk-like
//! priorities ([`Step`]s).
//!
//! Why routes instead of a general dialplan language: the recordings only ever exercise a
//! handful of shapes (Stasis, Echo, Answer+Wait, Playback+Hangup, never answer, SendDTMF, Goto),
//! and each shape must produce exactly the priorities/app names Asterisk reports in
//! `channel.dialplan` and `ChannelDialplan` events (e.g. `default/8000` is `1 NoOp`, `2 Stasis`,
//! so a StasisStart shows priority 2, as recorded). A route is therefore a named recipe that
//! expands into those priorities.
//!
//! Templating: route strings may contain `${EXTEN}`, `${CONTEXT}`, `${CALLERID(num)}`,
//! `${CALLERID(name)}` and `${VAR}` (a channel variable, e.g. one given at originate and carried
//! over a trunk). This is how a trunk leg can carry a conference id into `Stasis(app, args)`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What an extension does. Serialized externally tagged in snake_case, e.g.
/// `"echo"`, `{"stasis": {"app": "conf", "args": ["${EXTEN}"]}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `1 NoOp`, `2 Stasis(app[,args])`. If the app has no websocket, the dialplan continues
    /// (and ends, so the channel hangs up), as on a real node.
    Stasis {
        app: String,
        #[serde(default)]
        args: Vec<String>,
    },
    /// `1 Answer`, `2 Echo` (forever).
    Echo,
    /// `1 Answer`, `2 Wait(3600)`: answers and stays silent.
    AnswerWait,
    /// `1 Answer`, `2 Playback(sound)`, `3 Hangup`.
    PlaybackHangup {
        #[serde(default = "default_sound")]
        sound: String,
    },
    /// `1 Ringing`, `2 Wait(3600)`: rings, never answers.
    NeverAnswer,
    /// `1 Answer`, `2 Wait(1)`, `3 SendDTMF(digits)`, `4 Wait(30)`, `5 Hangup`.
    SendDtmf { digits: String },
    /// `1 Goto(context,exten,1)`: continue in another context (templated).
    Goto {
        context: String,
        #[serde(default = "default_exten")]
        exten: String,
    },
    /// `1 Hangup(cause)`: rejects the call (e.g. 17 busy).
    Hangup {
        #[serde(default = "default_cause")]
        cause: u32,
    },
}

fn default_sound() -> String {
    "hello-world".into()
}
fn default_exten() -> String {
    "${EXTEN}".into()
}
fn default_cause() -> u32 {
    16
}

/// One dialplan priority.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Step {
    NoOp(String),
    Answer,
    Ringing,
    Wait(u64),
    Echo,
    Playback(String),
    Hangup(u32),
    Stasis { app: String, args: Vec<String> },
    SendDtmf(String),
    Goto { context: String, exten: String },
}

impl Step {
    /// `(app_name, app_data)` as Asterisk shows them in `channel.dialplan`.
    pub(crate) fn app(&self) -> (&'static str, String) {
        match self {
            Step::NoOp(t) => ("NoOp", t.clone()),
            Step::Answer => ("Answer", String::new()),
            Step::Ringing => ("Ringing", String::new()),
            Step::Wait(ms) => ("Wait", format_secs(*ms)),
            Step::Echo => ("Echo", String::new()),
            Step::Playback(s) => ("Playback", s.clone()),
            Step::Hangup(c) => (
                "Hangup",
                if *c == 16 {
                    String::new()
                } else {
                    c.to_string()
                },
            ),
            Step::Stasis { app, args } => ("Stasis", stasis_data(app, args)),
            Step::SendDtmf(d) => ("SendDTMF", d.clone()),
            Step::Goto { context, exten } => ("Goto", format!("{context},{exten},1")),
        }
    }
}

fn format_secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}", ms as f64 / 1000.0)
    }
}

/// `app_data` of a Stasis priority: `app` or `app,arg1,arg2`.
pub(crate) fn stasis_data(app: &str, args: &[String]) -> String {
    let mut s = app.to_string();
    for a in args {
        s.push(',');
        s.push_str(a);
    }
    s
}

/// Values a template may refer to.
pub(crate) struct TemplateCtx<'a> {
    pub context: &'a str,
    pub exten: &'a str,
    pub caller_name: &'a str,
    pub caller_number: &'a str,
    pub vars: &'a HashMap<String, String>,
}

/// Expand `${...}` references; unknown variables expand to "" like in Asterisk.
pub(crate) fn expand(template: &str, ctx: &TemplateCtx<'_>) -> String {
    if !template.contains("${") {
        return template.to_string();
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Find the matching `}` (names like CALLERID(num) contain no braces).
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &after[..end];
        match name {
            "EXTEN" => out.push_str(ctx.exten),
            "CONTEXT" => out.push_str(ctx.context),
            "CALLERID(num)" => out.push_str(ctx.caller_number),
            "CALLERID(name)" => out.push_str(ctx.caller_name),
            other => {
                if let Some(v) = ctx.vars.get(other) {
                    out.push_str(v)
                }
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

impl Route {
    /// Expand into priorities, with templates resolved against the calling channel.
    pub(crate) fn steps(&self, ctx: &TemplateCtx<'_>, wait_forever_ms: u64) -> Vec<Step> {
        match self {
            Route::Stasis { app, args } => {
                let app = expand(app, ctx);
                let args: Vec<String> = args.iter().map(|a| expand(a, ctx)).collect();
                vec![
                    Step::NoOp(format!(
                        "{}/{} -> Stasis({})",
                        ctx.context,
                        ctx.exten,
                        stasis_data(&app, &args)
                    )),
                    Step::Stasis { app, args },
                ]
            }
            Route::Echo => vec![Step::Answer, Step::Echo],
            Route::AnswerWait => vec![Step::Answer, Step::Wait(wait_forever_ms)],
            Route::PlaybackHangup { sound } => {
                vec![
                    Step::Answer,
                    Step::Playback(expand(sound, ctx)),
                    Step::Hangup(16),
                ]
            }
            Route::NeverAnswer => vec![Step::Ringing, Step::Wait(wait_forever_ms)],
            Route::SendDtmf { digits } => vec![
                Step::Answer,
                Step::Wait(1000),
                Step::SendDtmf(expand(digits, ctx)),
                Step::Wait(30_000),
                Step::Hangup(16),
            ],
            Route::Goto { context, exten } => vec![Step::Goto {
                context: expand(context, ctx),
                exten: expand(exten, ctx),
            }],
            Route::Hangup { cause } => vec![Step::Hangup(*cause)],
        }
    }
}

/// A whole dialplan: context → exten → route. The exten `_.` matches any extension (checked
/// after an exact match), like a catch-all pattern in `extensions.conf`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Dialplan {
    pub contexts: BTreeMap<String, BTreeMap<String, Route>>,
}

impl Dialplan {
    /// The route for `context`/`exten`, if any.
    pub fn lookup(&self, context: &str, exten: &str) -> Option<&Route> {
        let ctx = self.contexts.get(context)?;
        ctx.get(exten).or_else(|| ctx.get("_."))
    }

    /// Add or replace one extension (like `dialplan add extension ... replace`).
    pub fn set(&mut self, context: &str, exten: &str, route: Route) {
        self.contexts
            .entry(context.to_string())
            .or_default()
            .insert(exten.to_string(), route);
    }
}

impl Default for Dialplan {
    /// The default dialplan, mirroring the recorded nodes:
    ///
    /// | context | exten | route |
    /// |---|---|---|
    /// | default | 8000 | Stasis(conf) |
    /// | default | 9000 | Answer, Echo |
    /// | default | 9001 | Answer, Wait(3600) |
    /// | default | 9002 | Answer, Playback(hello-world), Hangup |
    /// | default | 9003 | Ringing, never answers |
    /// | default | 9010 | Answer, Wait(1), SendDTMF(1234#), Wait(30), Hangup |
    /// | from-trunk | `_.` | Goto(default,${EXTEN},1) |
    /// | stasis | `_.` | Stasis(conf,${EXTEN}) |
    fn default() -> Self {
        let mut d = Dialplan {
            contexts: BTreeMap::new(),
        };
        d.set(
            "default",
            "8000",
            Route::Stasis {
                app: "conf".into(),
                args: vec![],
            },
        );
        d.set("default", "9000", Route::Echo);
        d.set("default", "9001", Route::AnswerWait);
        d.set(
            "default",
            "9002",
            Route::PlaybackHangup {
                sound: "hello-world".into(),
            },
        );
        d.set("default", "9003", Route::NeverAnswer);
        d.set(
            "default",
            "9010",
            Route::SendDtmf {
                digits: "1234#".into(),
            },
        );
        d.set(
            "from-trunk",
            "_.",
            Route::Goto {
                context: "default".into(),
                exten: "${EXTEN}".into(),
            },
        );
        d.set(
            "stasis",
            "_.",
            Route::Stasis {
                app: "conf".into(),
                args: vec!["${EXTEN}".into()],
            },
        );
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(vars: &'a HashMap<String, String>) -> TemplateCtx<'a> {
        TemplateCtx {
            context: "from-trunk",
            exten: "conf-7",
            caller_name: "Alice",
            caller_number: "1001",
            vars,
        }
    }

    #[test]
    fn templates_expand() {
        let mut vars = HashMap::new();
        vars.insert("CONF_ID".to_string(), "c42".to_string());
        let c = ctx(&vars);
        assert_eq!(expand("${EXTEN}", &c), "conf-7");
        assert_eq!(expand("x-${CONF_ID}-${CALLERID(num)}", &c), "x-c42-1001");
        assert_eq!(expand("${NOPE}", &c), "");
        assert_eq!(expand("plain", &c), "plain");
    }

    #[test]
    fn stasis_route_has_priority_two() {
        let vars = HashMap::new();
        let steps = Route::Stasis {
            app: "conf".into(),
            args: vec!["${EXTEN}".into()],
        }
        .steps(&ctx(&vars), 1000);
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[1],
            Step::Stasis {
                app: "conf".into(),
                args: vec!["conf-7".into()]
            }
        );
        assert_eq!(steps[1].app(), ("Stasis", "conf,conf-7".to_string()));
    }

    #[test]
    fn default_dialplan_and_catch_all() {
        let d = Dialplan::default();
        assert_eq!(d.lookup("default", "9000"), Some(&Route::Echo));
        assert!(matches!(
            d.lookup("from-trunk", "1234"),
            Some(Route::Goto { .. })
        ));
        assert_eq!(d.lookup("default", "1234"), None);
        assert_eq!(d.lookup("nope", "8000"), None);
    }

    #[test]
    fn routes_deserialize_from_json() {
        let r: Route = serde_json::from_str(r#"{"stasis":{"app":"ivr","args":["a"]}}"#).unwrap();
        assert_eq!(
            r,
            Route::Stasis {
                app: "ivr".into(),
                args: vec!["a".into()]
            }
        );
        let r: Route = serde_json::from_str(r#""echo""#).unwrap();
        assert_eq!(r, Route::Echo);
    }
}
