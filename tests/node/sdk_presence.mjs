// Presence and private channels with the official PieSocket JavaScript client
// (piesocket-js 5.1.0) against a piewire server over wss://; prints what
// happened as JSON lines.
//
// Usage: node sdk_presence.mjs '{"host": "127.0.0.1:PORT", "apiKey": ...,
//          "apiSecret": ..., "channel": "private-...", "timeoutMs": ...,
//          "clients": {"A": OPTIONS, "B": OPTIONS, "C": OPTIONS}}'
//
// Each client is its own PieSocket instance with presence on and the options
// given (userId, and authEndpoint/authHeaders or jwt). A and B must join; C
// must be refused. Every wait is bounded by timeoutMs; the script exits 0 only
// when every step completed, and asserts nothing beyond what it must wait for.
//
// Records, one JSON object a line, each with a "kind":
//   socket    {client, url}          a WebSocket the SDK opened
//   frame     {client, text}         every frame one of those sockets received
//   endpoint  {client, url, uuid}    the channel subscribe() resolved with
//   event     {client, event, data, members}  a listen() callback for a
//                                    system:member_* event, and the SDK's
//                                    channel.members when it ran
//   members   {client, step, uuid, members, byUuid, current}  the SDK's
//                                    channel.members, getMemberByUUID() of
//                                    each uuid seen so far, getCurrentMember()
//   close     {client, code, shouldReconnect, sameSocket, sockets}
//                                    the SDK's close callback, with whether
//                                    the SDK is about to reconnect, whether it
//                                    still holds the socket that closed, and
//                                    how many sockets it has opened so far
//   error     {client, message}      the SDK's error callback
//   rest      {status, body}         the reply to a REST call of the script
//   roster    {status, body}         GET /api/channels/CHANNEL/members
//   sockets   {client, count}        sockets the SDK opened, at the end
//   step      {name}                 a step completed
//   failed    {step, message}        a step did not complete in time
//   done      {}                     every step completed

import {WebSocket} from 'ws';
import XMLHttpRequest from 'xhr2';
import {
  emit,
  httpsJson as httpsJsonTo,
  runSteps,
  StepFailed,
  waitFor,
  wakeWaiters,
  withTimeout,
} from './harness.mjs';

const config = JSON.parse(process.argv[2]);
const {host, apiKey, apiSecret, channel, timeoutMs} = config;
const clientOptions = config.clients;
const names = Object.keys(clientOptions);

function httpsJson(method, path, body, headers = {}) {
  return httpsJsonTo(host, timeoutMs, method, path, body, headers);
}

// Every socket the SDK opens, by client; a client is known by the `user`
// parameter the SDK writes into its connect URL.
const sockets = Object.fromEntries(names.map((name) => [name, []]));

function clientOf(url) {
  const user = new URL(url).searchParams.get('user');
  const name = names.find((n) => clientOptions[n].userId === user);
  if (name === undefined) {
    throw new Error(`a socket for an unknown user: ${url}`);
  }
  return name;
}

// Records frames before the SDK's own handler sees them, so nothing that
// arrives before subscribe() resolves is missed.
class RecordingWebSocket extends WebSocket {
  constructor(url, ...rest) {
    super(url, ...rest);
    const client = clientOf(String(url));
    sockets[client].push(this);
    emit({kind: 'socket', client, url: String(url)});
    this.addEventListener('message', (e) => {
      const text = typeof e.data === 'string' ?
        e.data : Buffer.from(e.data).toString('utf8');
      emit({kind: 'frame', client, text});
      // The SDK's handler runs after this listener: check waits after it.
      queueMicrotask(wakeWaiters);
    });
  }
}

// Node has no XMLHttpRequest, which the SDK's authEndpoint flow uses; xhr2
// provides one, but its send() takes only text and bytes. A browser sends a
// FormData body as multipart/form-data, so encode it the same way first.
class BrowserXMLHttpRequest extends XMLHttpRequest {
  send(body) {
    if (!(body instanceof FormData)) {
      return super.send(body);
    }
    const encoded = new Response(body);
    encoded.arrayBuffer().then((bytes) => {
      this.setRequestHeader('Content-Type', encoded.headers.get('content-type'));
      super.send(Buffer.from(bytes));
    }).catch((exc) => {
      emit({kind: 'failed', step: 'xhr', message: String(exc && exc.message)});
    });
  }
}

// piesocket-js reads the global WebSocket when it is first imported.
globalThis.WebSocket = RecordingWebSocket;
globalThis.XMLHttpRequest = BrowserXMLHttpRequest;
const {default: PieSocket} = await import('piesocket-js');

const MEMBER_EVENTS = [
  'system:member_list',
  'system:member_joined',
  'system:member_left',
];
const clients = {};
const knownUuids = [];

async function subscribe(name) {
  const pie = new PieSocket({
    clusterId: 'piewire',
    clusterDomain: host,
    apiKey,
    presence: 1,
    ...clientOptions[name],
  });
  const state = {pie, room: null, events: [], closed: false, heard: []};
  clients[name] = state;
  const room = await pie.subscribe(channel);
  const socket = room.connection;
  state.room = room;
  knownUuids.push(room.uuid);
  emit({kind: 'endpoint', client: name, url: room.endpoint, uuid: room.uuid});
  room.on('close', (e) => {
    // The SDK has already reconnected, or not, when this callback runs.
    emit({
      kind: 'close',
      client: name,
      code: e.code,
      shouldReconnect: room.shouldReconnect,
      sameSocket: room.connection === socket,
      sockets: sockets[name].length,
    });
    state.closed = true;
    wakeWaiters();
  });
  room.on('error', (e) => {
    emit({kind: 'error', client: name, message: String(e.message ?? e.type)});
  });
  for (const event of MEMBER_EVENTS) {
    room.listen(event, (data) => {
      emit({kind: 'event', client: name, event, data, members: room.members});
      state.events.push({event, data});
      wakeWaiters();
    });
  }
  room.listen('after', (data) => {
    state.heard.push(data);
    wakeWaiters();
  });
}

function snapshot(name, step) {
  const {room} = clients[name];
  emit({
    kind: 'members',
    client: name,
    step,
    uuid: room.uuid,
    members: room.members,
    byUuid: Object.fromEntries(
        knownUuids.map((uuid) => [uuid, room.getMemberByUUID(uuid)]),
    ),
    current: room.getCurrentMember(),
  });
}

function lists(name, uuids) {
  const members = clients[name].room.members;
  return members.length === uuids.length &&
    uuids.every((uuid) => members.some((m) => m.uuid === uuid));
}

function heardEvent(name, event, uuid) {
  return clients[name].events.some(
      (e) => e.event === event && e.data?.member?.uuid === uuid,
  );
}

async function roster() {
  const reply = await httpsJson(
      'GET',
      `/api/channels/${channel}/members`,
      undefined,
      {key: apiKey, secret: apiSecret},
  );
  emit({kind: 'roster', status: reply.status, body: reply.body});
}

const steps = [
  ['a-joins', async () => {
    await subscribe('A');
    await waitFor(() => lists('A', [clients.A.room.uuid]));
    snapshot('A', 'alone');
  }],
  ['b-joins', async () => {
    await subscribe('B');
    const both = [clients.A.room.uuid, clients.B.room.uuid];
    await waitFor(() => lists('A', both) && lists('B', both) &&
      heardEvent('A', 'system:member_joined', clients.B.room.uuid));
    snapshot('A', 'together');
    snapshot('B', 'together');
  }],
  ['b-leaves', async () => {
    clients.B.pie.unsubscribe(channel);
    const uuidB = clients.B.room.uuid;
    await waitFor(() => clients.B.closed &&
      lists('A', [clients.A.room.uuid]) &&
      heardEvent('A', 'system:member_left', uuidB));
    snapshot('A', 'after-leave');
  }],
  ['c-refused', async () => {
    await subscribe('C');
    await waitFor(() => clients.C.closed);
  }],
  // A REST publish that A receives after anything C could have caused.
  ['after', async () => {
    const reply = await httpsJson('POST', '/api/publish', {
      key: apiKey,
      secret: apiSecret,
      channelId: channel,
      message: {event: 'after', data: {tag: 'X1'}},
    });
    emit({kind: 'rest', status: reply.status, body: reply.body});
    if (reply.status !== 200) {
      throw new StepFailed(`REST publish answered ${reply.status}`);
    }
    await waitFor(() => clients.A.heard.some((data) => data?.tag === 'X1'));
    snapshot('A', 'after');
    await roster();
  }],
  ['a-leaves', async () => {
    clients.A.pie.unsubscribe(channel);
    await waitFor(() => clients.A.closed);
  }],
];

let failed = !(await runSteps(steps, timeoutMs));
if (!failed) {
  emit({kind: 'done'});
}
for (const name of names) {
  emit({kind: 'sockets', client: name, count: sockets[name].length});
}
const open = Object.values(clients).filter((state) => !state.closed);
for (const {pie} of open) {
  pie.unsubscribe(channel);
}
try {
  await withTimeout(
      waitFor(() => open.every((state) => state.closed)),
      timeoutMs,
  );
} catch (exc) {
  emit({kind: 'failed', step: 'close', message: String(exc.message)});
  failed = true;
}
process.exit(failed ? 1 : 0);
