// `conference-js`: the seed's conference app in JavaScript, plus DTMF `*` to toggle mute.
//
// Every caller joins one cluster-wide conference, the mixing bridge `conf`:
//
// * on start: get-or-create the mixing bridge `conf`, then answer the call
//   (ARI: `get-or-create-bridge("conf", mixing)`, then `answer(<channel>)`);
// * on up: add the call's channel to `conf` (ARI: `bridge-add("conf", <channel>)`);
// * on DTMF `*`: toggle mute of the caller's audio into the conference
//   (ARI: `mute(<channel>, inbound)`, next time `unmute(<channel>, inbound)`).
//
// Nothing else sends a request. A failed request is logged; in on start a failed
// get-or-create stops there (the call is not answered).
//
// The host makes one instance of this module per call, so the module-level `muted` below is
// the state of one call, never shared between calls.
//
// Build: `bash plugins/build.sh` (componentize-js, pinned in package.json / package-lock.json).

import { answer, bridgeAdd, getOrCreateBridge, mute, unmute } from 'stasis:app/ari@0.1.0';
import { log } from 'stasis:app/log@0.1.0';

const BRIDGE = 'conf';
const MUTE_KEY = '*';

// Whether this call's caller is muted (one instance per call: per-call state).
let muted = false;

// Runs one ARI import; a failure (a thrown `ari-error`, e.g. `{ tag: 'not-found', val: '…' }`
// in `e.payload`) is logged and reported as `false`.
function attempt(what, f) {
  try {
    f();
    return true;
  } catch (e) {
    const err = e && e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e);
    log('warn', `${what} failed: ${err}`);
    return false;
  }
}

export const callbacks = {
  onStart(ctx) {
    if (!attempt('get-or-create-bridge', () => getOrCreateBridge(BRIDGE, 'mixing'))) return;
    attempt('answer', () => answer(ctx.channel.id));
  },

  onUp(ctx) {
    attempt('bridge-add', () => bridgeAdd(BRIDGE, ctx.channel.id));
  },

  onDtmf(ctx, digit, _durationMs) {
    if (digit !== MUTE_KEY) return;
    const id = ctx.channel.id;
    const ok = muted
      ? attempt('unmute', () => unmute(id, 'inbound'))
      : attempt('mute', () => mute(id, 'inbound'));
    if (ok) {
      muted = !muted;
      log('info', muted ? 'muted' : 'unmuted');
    }
  },

  onPlaybackFinished(_ctx, _playback) {},
  onEnd(_ctx) {},
  onEvent(_ctx, _kind, _json) {},
  onNode(_ctx, _event) {},
};
