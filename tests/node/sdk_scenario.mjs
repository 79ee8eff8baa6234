// Drives the official PieSocket JavaScript client (piesocket-js 5.1.0) against
// a piewire server over wss:// and prints what happened as JSON lines.
//
// Usage: node sdk_scenario.mjs '{"host": "127.0.0.1:PORT", "apiKey": ...,
//          "apiSecret": ..., "channel": ..., "timeoutMs": ...}'
//
// The server's certificate must be trusted by Node, e.g. through
// NODE_EXTRA_CA_CERTS. Every wait is bounded by timeoutMs; the script exits 0
// only when every step completed. It asserts nothing beyond what it must wait
// for: the caller checks the printed records.
//
// Records, one JSON object a line, each with a "kind":
//   endpoint  {client, url}              the URL the SDK connected to
//   frame     {client, text}             every frame the SDK's socket received
//   event     {client, event, data, meta, hasMeta}  what a listen() callback got
//   close     {client, code}             a socket of the SDK closed
//   error     {client, message}          a socket of the SDK reported an error
//   rest      {status, body}             the reply to a REST call of the script
//   step      {name}                     a step completed
//   failed    {step, message}            a step did not complete in time
//   done      {}                         every step completed

import {WebSocket} from 'ws';
import {
  emit,
  httpsJson as httpsJsonTo,
  runSteps,
  StepFailed,
  waitFor,
  wakeWaiters,
  withTimeout,
} from './harness.mjs';

// piesocket-js reads the global WebSocket when it is first imported.
globalThis.WebSocket = WebSocket;
const {default: PieSocket} = await import('piesocket-js');

const config = JSON.parse(process.argv[2]);
const {host, apiKey, apiSecret, channel, timeoutMs} = config;

function httpsJson(method, path, body, headers = {}) {
  return httpsJsonTo(host, timeoutMs, method, path, body, headers);
}

async function restPublish(message) {
  const reply = await httpsJson('POST', '/api/publish', {
    key: apiKey,
    secret: apiSecret,
    channelId: channel,
    message,
  });
  emit({kind: 'rest', status: reply.status, body: reply.body});
  if (reply.status !== 200) {
    throw new StepFailed(`REST publish answered ${reply.status}`);
  }
}

// Each client is its own PieSocket instance, as on separate pages.
const clientOptions = {
  A: {},
  B: {notifySelf: false},
  C: {notifySelf: true},
  D: {notifySelf: 1},
};
const clients = {};
const received = {};
const closed = new Set();
const listened = ['chat', 'marker', 'rest', 'rest-text', 'end'];

async function subscribe(name) {
  const pie = new PieSocket({
    clusterId: 'piewire',
    clusterDomain: host,
    apiKey,
    ...clientOptions[name],
  });
  received[name] = [];
  const room = await pie.subscribe(channel);
  emit({kind: 'endpoint', client: name, url: room.endpoint});
  room.on('message', (e) => {
    const text = typeof e.data === 'string' ? e.data : e.data.toString('utf8');
    emit({kind: 'frame', client: name, text});
  });
  room.on('close', (e) => {
    emit({kind: 'close', client: name, code: e.code});
    closed.add(name);
    wakeWaiters();
  });
  room.on('error', (e) => emit({kind: 'error', client: name, message: e.message}));
  for (const event of listened) {
    room.listen(event, (data, meta) => {
      received[name].push({event, data});
      emit({
        kind: 'event',
        client: name,
        event,
        data,
        meta: meta === undefined ? null : meta,
        hasMeta: meta !== undefined,
      });
      wakeWaiters();
    });
  }
  clients[name] = {pie, room};
}

function got(name, event, tag) {
  return received[name].some((m) => m.event === event && m.data?.tag === tag);
}

function allGot(names, event, tag) {
  return waitFor(() => names.every((name) => got(name, event, tag)));
}

async function channelConnections() {
  const reply = await httpsJson('GET', '/api/connections', undefined, {
    key: apiKey,
    secret: apiSecret,
  });
  if (reply.status !== 200) {
    throw new StepFailed(`GET /api/connections answered ${reply.status}`);
  }
  const entry = reply.body.channels.find((c) => String(c.channel) === channel);
  return entry ? entry.connections : 0;
}

async function allJoined(count) {
  // A socket reports "open" once the upgrade is answered; wait until the
  // server also counts every client as a member before anyone publishes.
  for (;;) {
    if ((await channelConnections()) === count) {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const everyone = Object.keys(clientOptions);
const steps = [
  ['subscribe', () => Promise.all(everyone.map(subscribe))],
  ['joined', () => allJoined(everyone.length)],
  ['publish-notify-off', async () => {
    await clients.A.room.publish('chat', {tag: 'A1', text: 'from A'}, {by: 'A'});
    await allGot(['B', 'C', 'D'], 'chat', 'A1');
  }],
  // B's marker reaches A behind anything A's own publish could have sent it.
  ['marker', async () => {
    await clients.B.room.publish('marker', {tag: 'B1'}, {by: 'B'});
    await allGot(['A', 'C', 'D'], 'marker', 'B1');
  }],
  ['publish-notify-true', async () => {
    await clients.C.room.publish('chat', {tag: 'C1', text: 'from C'}, {by: 'C'});
    await allGot(everyone, 'chat', 'C1');
  }],
  ['publish-notify-1', async () => {
    await clients.D.room.publish('chat', {tag: 'D1', text: 'from D'});
    await allGot(everyone, 'chat', 'D1');
  }],
  ['rest-json', async () => {
    await restPublish({event: 'rest', data: {tag: 'R1'}, meta: {by: 'rest'}});
    await allGot(everyone, 'rest', 'R1');
  }],
  ['rest-string', async () => {
    await restPublish('{"event":"rest-text","data":{"tag":"R2"}}');
    await allGot(everyone, 'rest-text', 'R2');
  }],
  ['end', async () => {
    await restPublish({event: 'end', data: {tag: 'E1'}});
    await allGot(everyone, 'end', 'E1');
  }],
];

let failed = !(await runSteps(steps, timeoutMs));
if (!failed) {
  emit({kind: 'done'});
}
for (const {pie} of Object.values(clients)) {
  pie.unsubscribe(channel);
}
try {
  await withTimeout(
      waitFor(() => closed.size === Object.keys(clients).length),
      timeoutMs,
  );
} catch (exc) {
  emit({kind: 'failed', step: 'close', message: String(exc.message)});
  failed = true;
}
process.exit(failed ? 1 : 0);
