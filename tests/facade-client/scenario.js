// A real ARI client library (Asterisk's own `ari-client` for Node.js, pinned in
// package.json / package-lock.json) against the stasis-host ARI facade.
//
// Env: FACADE_URL (http://127.0.0.1:PORT), FACADE_USER, FACADE_PASS, SIM_CONTROL
// (the simulated cluster's /_sim control URL), INBOUND_NODE (where the inbound call lands),
// APP (the app name), EXTEN (routes to Stasis(APP) on every node).
// Prints one JSON summary line; exits 0 when the scenario behaved.
'use strict';
const ari = require('ari-client');
const http = require('http');

const env = (k) => { const v = process.env[k]; if (!v) { throw new Error(`missing ${k}`); } return v; };
const FACADE_URL = env('FACADE_URL');
const APP = env('APP');
const summary = { started: [], answered: [], played: [], ended: [], asterisk_ids: {}, originated: null, errors: [] };

function fail(why) {
  summary.errors.push(String(why && why.stack || why));
  console.log(JSON.stringify(summary));
  process.exit(1);
}
setTimeout(() => fail('scenario timed out'), 20000).unref();

function post(url, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(url, { method: 'POST', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) } }, (res) => {
      let text = '';
      res.on('data', (c) => { text += c; });
      res.on('end', () => (res.statusCode < 300 ? resolve(JSON.parse(text || '{}')) : reject(new Error(`${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(data);
  });
}

async function main() {
  const client = await ari.connect(FACADE_URL, env('FACADE_USER'), env('FACADE_PASS'));
  const inbound = new Set();
  const done = new Set();
  let expected = 2; // the inbound call and the originated one

  client.on('StasisStart', async (event, channel) => {
    try {
      summary.started.push(channel.id);
      summary.asterisk_ids[channel.id] = event.asterisk_id;
      await channel.answer();
      summary.answered.push(channel.id);
      const playback = client.Playback();
      playback.once('PlaybackFinished', async (ev, finished) => {
        summary.played.push({ channel: channel.id, playback: finished.id, state: finished.state });
        await channel.hangup();
      });
      await channel.play({ media: 'sound:hello-world' }, playback);
    } catch (e) { fail(e); }
  });
  client.on('StasisEnd', (event, channel) => {
    summary.ended.push(channel.id);
    done.add(channel.id);
    if (done.size >= expected) {
      client.stop();
      console.log(JSON.stringify(summary));
      process.exit(summary.errors.length ? 1 : 0);
    }
  });

  await client.start(APP);
  // The app exists on every node once start() returns: the facade waits for it.
  const list = await client.applications.list();
  if (!list.some((a) => a.name === APP)) { fail(`app ${APP} not in GET /applications`); }

  const call = await post(`${env('SIM_CONTROL')}/nodes/${env('INBOUND_NODE')}/calls`,
    { caller_name: 'Alice', caller_number: '1001', exten: env('EXTEN') });
  inbound.add(call.channel_id);
  summary.inbound = call.channel_id;

  const outbound = client.Channel();
  const created = await outbound.originate({ endpoint: 'Local/9001@default', app: APP, appArgs: 'dialed' });
  summary.originated = created.id;
  // Errors pass through as Asterisk words them.
  try {
    await client.channels.get({ channelId: 'no-such-channel' });
    fail('GET of an unknown channel succeeded');
  } catch (e) {
    summary.not_found = e.message;
  }
}

main().catch(fail);
