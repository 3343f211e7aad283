"""`conference-py`: the seed's conference app in Python, plus DTMF `*` to toggle mute.

Every caller joins one cluster-wide conference, the mixing bridge `conf`:

* **on start**: get-or-create the mixing bridge `conf`, then answer the call
  (ARI: `get-or-create-bridge("conf", mixing)`, then `answer(<channel>)`);
* **on up**: add the call's channel to `conf` (ARI: `bridge-add("conf", <channel>)`);
* **on DTMF `*`**: toggle mute of the caller's audio into the conference
  (ARI: `mute(<channel>, inbound)`, next time `unmute(<channel>, inbound)`).

Nothing else sends a request. A failed request is logged; in on start a failed get-or-create
stops there (the call is not answered).

The host makes one instance of this module per call, so the module-level `muted` below is
the state of one call, never shared between calls.

Build: `bash plugins/build.sh` (componentize-py, pinned in requirements.txt).
"""

from wit_world import exports
from wit_world.imports import ari, log, types
from componentize_py_types import Err

BRIDGE = "conf"
MUTE_KEY = "*"

# Whether this call's caller is muted (one instance per call: per-call state).
muted = False


def _failed(what: str, err: Err) -> None:
    log.log(log.Level.WARN, f"{what} failed: {err.value}")


class Callbacks(exports.Callbacks):
    def on_start(self, ctx: types.CallContext) -> None:
        try:
            ari.get_or_create_bridge(BRIDGE, types.BridgeType.MIXING)
        except Err as e:
            _failed("get-or-create-bridge", e)
            return
        try:
            ari.answer(ctx.channel.id)
        except Err as e:
            _failed("answer", e)

    def on_up(self, ctx: types.CallContext) -> None:
        try:
            ari.bridge_add(BRIDGE, ctx.channel.id)
        except Err as e:
            _failed("bridge-add", e)

    def on_dtmf(self, ctx: types.CallContext, digit: str, duration_ms: int) -> None:
        global muted
        if digit != MUTE_KEY:
            return
        try:
            if muted:
                ari.unmute(ctx.channel.id, ari.MuteDirection.INBOUND)
            else:
                ari.mute(ctx.channel.id, ari.MuteDirection.INBOUND)
        except Err as e:
            _failed("unmute" if muted else "mute", e)
            return
        muted = not muted
        log.log(log.Level.INFO, "muted" if muted else "unmuted")

    def on_playback_finished(self, ctx: types.CallContext, playback: types.Playback) -> None:
        pass

    def on_end(self, ctx: types.CallContext) -> None:
        pass

    def on_event(self, ctx: types.CallContext, kind: str, json: str) -> None:
        pass

    def on_node(self, ctx: types.CallContext, event: types.NodeEvent) -> None:
        pass
