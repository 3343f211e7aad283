//! What an app may act on, and the policy for raw ARI requests.
//!
//! Capabilities are per app name (shared by all calls and versions of the app, they live in
//! [`AppShared`](super::AppShared)): a call's channel is granted when the call starts and
//! revoked when it ends; a channel the app originates or dials is granted *before* the request
//! is sent (its id is chosen by the runtime) so an event of the new channel can never race the
//! grant; a bridge is granted when the app creates it (get-or-create) or when the host reports
//! that one of the app's calls joined it; playbacks and recordings the app started are granted
//! for the life of the call that started them.
//!
//! Bridge ids are one cluster-wide namespace shared by every app, so a runtime-wide
//! [`BridgeClaims`] table remembers which app created which bridge: another app asking to
//! get-or-create the same id is denied instead of being handed someone else's conference.
//!
//! Raw requests (`ari.request`) are checked by [`plan_raw`], which parses the path and decides
//! which resources the request touches. The policy, deny by default:
//! - `/channels/{id}/...`, `/bridges/{id}/...`, `/playbacks/{id}/...`: the id must be granted;
//!   ids in the `channel` / `caller` query parameters (addChannel, removeChannel, dial) too.
//!   `/channels/{id}/move` is allowed only into the app itself.
//! - Creation (`POST /channels`, `/channels/create`, `/channels/externalMedia`, `/bridges`,
//!   `/channels/{id}/snoop`, `.../play`): allowed; the runtime chooses every new id (adds
//!   `channelId`, `otherChannelId`, `bridgeId`, `snoopId` or `playbackId` to the query; the
//!   response carries it) and grants it once the node answers 2xx. A guest-chosen new id is
//!   denied — it could be another app's resource (`POST /channels/{id}`, `/bridges/{id}`,
//!   `/play/{playbackId}` pass only for ids the app already holds). Named, cluster-wide
//!   bridges are made with `get-or-create-bridge`. An originate may only target the app
//!   itself (`app` absent or equal to the app's name). Recording names are chosen by the app
//!   (they are file names on the node) and granted to it after 2xx.
//! - Read-only, non-call resources: `GET /asterisk/info`, `GET /asterisk/ping`,
//!   `GET /sounds...`, `GET /endpoints...`, `GET /applications/{own name}`.
//! - Everything else is denied: listing all channels or bridges (`GET /channels`,
//!   `GET /bridges`) would reveal other apps' calls; `/asterisk/*` writes, modules, config,
//!   global variables, device states, mailboxes, user events, other applications.
//! - A JSON body may not carry resource ids or `app` (put them in the query, where they are
//!   checked); such a request is denied.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

/// A resource an import touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Channel(String),
    Bridge(String),
    Playback(String),
    Recording(String),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Channel(id) => write!(f, "channel {id}"),
            Resource::Bridge(id) => write!(f, "bridge {id}"),
            Resource::Playback(id) => write!(f, "playback {id}"),
            Resource::Recording(id) => write!(f, "recording {id}"),
        }
    }
}

#[derive(Default)]
struct Sets {
    channels: HashSet<String>,
    bridges: HashSet<String>,
    playbacks: HashSet<String>,
    recordings: HashSet<String>,
}

impl Sets {
    fn set<'a, 'b>(&'a mut self, r: &'b Resource) -> (&'a mut HashSet<String>, &'b str) {
        match r {
            Resource::Channel(id) => (&mut self.channels, id),
            Resource::Bridge(id) => (&mut self.bridges, id),
            Resource::Playback(id) => (&mut self.playbacks, id),
            Resource::Recording(id) => (&mut self.recordings, id),
        }
    }
}

/// The resources one app may act on.
#[derive(Default)]
pub struct Capabilities {
    sets: Mutex<Sets>,
}

impl Capabilities {
    pub fn grant(&self, r: &Resource) {
        let mut sets = self.sets.lock();
        let (set, id) = sets.set(r);
        set.insert(id.to_owned());
    }

    pub fn revoke(&self, r: &Resource) {
        let mut sets = self.sets.lock();
        let (set, id) = sets.set(r);
        set.remove(id);
    }

    pub fn allows(&self, r: &Resource) -> bool {
        let mut sets = self.sets.lock();
        let (set, id) = sets.set(r);
        set.contains(id)
    }

    /// The first resource of `rs` that is not granted, if any.
    pub fn first_denied<'a>(&self, rs: &'a [Resource]) -> Option<&'a Resource> {
        let mut sets = self.sets.lock();
        rs.iter().find(|r| {
            let (set, id) = sets.set(r);
            !set.contains(id)
        })
    }

    /// Granted (channels, bridges, playbacks, recordings), for admin and leak tests.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let s = self.sets.lock();
        (
            s.channels.len(),
            s.bridges.len(),
            s.playbacks.len(),
            s.recordings.len(),
        )
    }
}

/// Which app created which bridge, across the whole runtime.
#[derive(Default)]
pub struct BridgeClaims {
    owners: Mutex<HashMap<String, String>>,
}

impl BridgeClaims {
    /// Claims `bridge` for `app`: Ok if it is free or already the app's; Err(owner) otherwise.
    pub fn claim(&self, bridge: &str, app: &str) -> Result<(), String> {
        let mut owners = self.owners.lock();
        match owners.get(bridge) {
            Some(owner) if owner != app => Err(owner.clone()),
            Some(_) => Ok(()),
            None => {
                owners.insert(bridge.to_owned(), app.to_owned());
                Ok(())
            }
        }
    }

    /// Releases `bridge` if `app` holds it.
    pub fn release(&self, bridge: &str, app: &str) {
        let mut owners = self.owners.lock();
        if owners.get(bridge).is_some_and(|o| o == app) {
            owners.remove(bridge);
        }
    }

    pub fn owner(&self, bridge: &str) -> Option<String> {
        self.owners.lock().get(bridge).cloned()
    }
}

/// A fresh id with a distinct leading part: `sh<kind>-<32 hex digits>`. All ids of a kind
/// have the same length and random digits, so none is a prefix of another (Asterisk refuses
/// a `channelId` that is a case-insensitive prefix of an existing one, see ARI-NOTES).
pub fn fresh_id(kind: &str) -> String {
    format!("sh{kind}-{:032x}", rand::random::<u128>())
}

/// What a raw request needs before and after it is sent.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RawPlan {
    /// Must all be granted, or the request is denied.
    pub check: Vec<Resource>,
    /// Granted when the node answers 2xx.
    pub grant: Vec<Resource>,
    /// Bridges to claim for the app before sending (creation).
    pub claim_bridges: Vec<String>,
    /// Query parameters the runtime adds (generated ids).
    pub add_query: Vec<(String, String)>,
}

/// Query parameters that name a resource to create; the runtime chooses them.
const NEW_ID_PARAMS: &[&str] = &[
    "channelId",
    "otherChannelId",
    "bridgeId",
    "snoopId",
    "playbackId",
];

/// Body keys that name resources or an app; they must be in the query, where they are checked.
const BODY_FORBIDDEN: &[&str] = &[
    "channel",
    "channelId",
    "otherChannelId",
    "bridgeId",
    "playbackId",
    "snoopId",
    "caller",
    "app",
    "name",
];

fn query_get<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.chars().any(|c| {
            c == '%' || c == '?' || c == '#' || c == '\\' || c.is_whitespace() || c.is_control()
        })
}

/// Decides whether a raw request may be sent and what it touches. `Err` is the denial
/// message.
pub fn plan_raw(
    app: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: Option<&str>,
) -> Result<RawPlan, String> {
    let method = method.to_ascii_uppercase();
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} must start with '/'"));
    };
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segs.iter().any(|s| !valid_segment(s)) {
        return Err(format!("malformed path {path:?}"));
    }
    if let Some(body) = body.map(str::trim).filter(|b| !b.is_empty()) {
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => {
                if let Some(k) = BODY_FORBIDDEN.iter().find(|k| map.contains_key(**k)) {
                    return Err(format!(
                        "raw request body may not carry {k:?}; pass it as a query parameter"
                    ));
                }
            }
            Ok(_) => {}
            Err(_) => return Err("raw request body must be JSON".to_owned()),
        }
    }
    // `app` in the query: an originate or move may only target the app itself.
    if let Some(target) = query_get(query, "app")
        && target != app
    {
        return Err(format!("may not hand a channel to app {target:?}"));
    }

    let mut plan = RawPlan::default();
    // Ids named by query parameters that must already be granted.
    for key in ["channel", "caller"] {
        if let Some(v) = query_get(query, key) {
            for id in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                plan.check.push(Resource::Channel(id.to_owned()));
            }
        }
    }
    // Every new id is chosen by the runtime (added to the query, granted after 2xx): an id
    // chosen by the guest could be another app's resource.
    for key in NEW_ID_PARAMS {
        if query_get(query, key).is_some() {
            return Err(format!(
                "the host chooses {key}; omit it (the response carries the new id)"
            ));
        }
    }
    let new_id = |plan: &mut RawPlan, key: &str, kind: &str, make: fn(String) -> Resource| {
        let id = fresh_id(kind);
        plan.add_query.push((key.to_owned(), id.clone()));
        plan.grant.push(make(id));
    };
    let get = method == "GET";
    let post = method == "POST";
    match segs.as_slice() {
        // Originate / create / external media: creation of channels.
        ["channels"] | ["channels", "create"] | ["channels", "externalMedia"] if post => {
            new_id(&mut plan, "channelId", "c", Resource::Channel);
            if segs.len() == 1 || segs[1] == "create" {
                new_id(&mut plan, "otherChannelId", "c", Resource::Channel);
            }
        }
        ["channels", id, rest @ ..] => {
            // `POST /channels/{id}` (originate with a chosen id) only passes for an id the app
            // already holds, where Asterisk answers 409: new channels get host-chosen ids.
            plan.check.push(Resource::Channel((*id).to_owned()));
            match rest {
                ["snoop"] if post => new_id(&mut plan, "snoopId", "c", Resource::Channel),
                ["play"] if post => new_id(&mut plan, "playbackId", "p", Resource::Playback),
                ["snoop", _] | ["play", _] if post => {
                    return Err(format!(
                        "{path}: the host chooses new ids; omit the last segment"
                    ));
                }
                ["record"] if post => match query_get(query, "name") {
                    Some(name) => plan.grant.push(Resource::Recording(name.to_owned())),
                    None => return Err("record needs a name".to_owned()),
                },
                ["move"] if query_get(query, "app").is_none() => {
                    return Err("move needs app (this app)".to_owned());
                }
                _ => {}
            }
        }
        ["bridges"] if post => {
            let id = fresh_id("b");
            plan.add_query.push(("bridgeId".to_owned(), id.clone()));
            plan.claim_bridges.push(id.clone());
            plan.grant.push(Resource::Bridge(id));
        }
        ["bridges", id, rest @ ..] => {
            // `POST /bridges/{id}` creates or updates: only for a bridge the app holds (named
            // bridges are created with get-or-create-bridge).
            plan.check.push(Resource::Bridge((*id).to_owned()));
            match rest {
                ["play"] if post => new_id(&mut plan, "playbackId", "p", Resource::Playback),
                ["play", _] if post => {
                    return Err(format!(
                        "{path}: the host chooses new ids; omit the last segment"
                    ));
                }
                ["record"] if post => match query_get(query, "name") {
                    Some(name) => plan.grant.push(Resource::Recording(name.to_owned())),
                    None => return Err("record needs a name".to_owned()),
                },
                ["videoSource", ch] => plan.check.push(Resource::Channel((*ch).to_owned())),
                _ => {}
            }
        }
        ["playbacks", id] | ["playbacks", id, "control"] => {
            plan.check.push(Resource::Playback((*id).to_owned()));
        }
        ["recordings", "live" | "stored", name, ..] => {
            plan.check.push(Resource::Recording((*name).to_owned()));
        }
        ["asterisk", "info"] | ["asterisk", "ping"] if get => {}
        ["sounds", ..] | ["endpoints", ..] if get => {}
        ["applications", name] if get && *name == app => {}
        _ => return Err(format!("{method} {path} is not allowed for apps")),
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn raw_channel_paths_check_the_id() {
        let p = plan_raw("a", "GET", "/channels/X", &[], None).unwrap();
        assert_eq!(p.check, vec![Resource::Channel("X".into())]);
        let p = plan_raw("a", "post", "/channels/X/answer", &[], None).unwrap();
        assert_eq!(p.check, vec![Resource::Channel("X".into())]);
        let p = plan_raw(
            "a",
            "POST",
            "/bridges/B/addChannel",
            &q(&[("channel", "X,Y")]),
            None,
        )
        .unwrap();
        assert_eq!(
            p.check,
            vec![
                Resource::Channel("X".into()),
                Resource::Channel("Y".into()),
                Resource::Bridge("B".into())
            ]
        );
        let p = plan_raw("a", "DELETE", "/playbacks/P", &[], None).unwrap();
        assert_eq!(p.check, vec![Resource::Playback("P".into())]);
    }

    #[test]
    fn raw_creation_grants_after() {
        let p = plan_raw(
            "a",
            "POST",
            "/channels",
            &q(&[("endpoint", "PJSIP/x")]),
            None,
        )
        .unwrap();
        assert!(p.check.is_empty());
        let keys: Vec<&str> = p.add_query.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["channelId", "otherChannelId"]);
        assert_eq!(
            p.grant,
            vec![
                Resource::Channel(p.add_query[0].1.clone()),
                Resource::Channel(p.add_query[1].1.clone())
            ]
        );
        let p = plan_raw("a", "POST", "/bridges", &q(&[("type", "mixing")]), None).unwrap();
        assert_eq!(p.add_query[0].0, "bridgeId");
        assert_eq!(p.claim_bridges, vec![p.add_query[0].1.clone()]);
        assert_eq!(p.grant, vec![Resource::Bridge(p.add_query[0].1.clone())]);
        let p = plan_raw("a", "POST", "/channels/X/snoop", &q(&[("spy", "in")]), None).unwrap();
        assert_eq!(p.check, vec![Resource::Channel("X".into())]);
        assert_eq!(p.grant, vec![Resource::Channel(p.add_query[0].1.clone())]);
        // Existing ids in the path are checked, never granted.
        let p = plan_raw("a", "POST", "/bridges/B", &[], None).unwrap();
        assert_eq!(p.check, vec![Resource::Bridge("B".into())]);
        assert!(p.grant.is_empty() && p.claim_bridges.is_empty());
        // Guest-chosen new ids could name another app's resources.
        assert!(plan_raw("a", "POST", "/channels", &q(&[("channelId", "X")]), None).is_err());
        assert!(plan_raw("a", "POST", "/bridges", &q(&[("bridgeId", "B")]), None).is_err());
        assert!(plan_raw("a", "POST", "/channels/X/play/P", &[], None).is_err());
        assert!(plan_raw("a", "POST", "/channels/X/snoop/S", &[], None).is_err());
    }

    #[test]
    fn raw_denials() {
        for (m, path) in [
            ("GET", "/channels"),
            ("GET", "/bridges"),
            ("POST", "/asterisk/modules/res_foo.so"),
            ("GET", "/asterisk/variable"),
            ("GET", "/applications"),
            ("GET", "/applications/other"),
            ("POST", "/events/user/x"),
            ("GET", "/channels/../bridges"),
            ("GET", "/channels/a%2Fb"),
            ("GET", "channels/X"),
            ("DELETE", "/asterisk/info"),
        ] {
            assert!(plan_raw("a", m, path, &[], None).is_err(), "{m} {path}");
        }
        assert!(plan_raw("a", "POST", "/channels", &q(&[("app", "b")]), None).is_err());
        assert!(plan_raw("a", "POST", "/channels", &[], Some(r#"{"channelId":"X"}"#)).is_err());
        assert!(plan_raw("a", "POST", "/channels/X/move", &q(&[("app", "b")]), None).is_err());
        // Guest-chosen new ids could name another app's resources.
        assert!(plan_raw("a", "POST", "/channels", &q(&[("channelId", "X")]), None).is_err());
        assert!(plan_raw("a", "POST", "/bridges", &q(&[("bridgeId", "B")]), None).is_err());
        assert!(plan_raw("a", "POST", "/channels/X/play/P", &[], None).is_err());
        assert!(plan_raw("a", "POST", "/channels/X/snoop/S", &[], None).is_err());
        assert!(plan_raw("a", "GET", "/asterisk/info", &[], None).is_ok());
        assert!(plan_raw("a", "GET", "/applications/a", &[], None).is_ok());
    }

    #[test]
    fn fresh_ids_are_not_prefixes() {
        let a = fresh_id("c");
        let b = fresh_id("c");
        assert_eq!(a.len(), b.len());
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
    }

    #[test]
    fn bridge_claims() {
        let c = BridgeClaims::default();
        assert!(c.claim("conf", "a").is_ok());
        assert!(c.claim("conf", "a").is_ok());
        assert_eq!(c.claim("conf", "b"), Err("a".to_owned()));
        c.release("conf", "b");
        assert_eq!(c.owner("conf").as_deref(), Some("a"));
        c.release("conf", "a");
        assert!(c.claim("conf", "b").is_ok());
    }
}
