// A channel server written the way the `ws` README shows broadcasting:
// a Map from channel to the Set of its sockets, every message sent to every
// other member with `client.send()`. Same URLs as piewire,
// /v3/CHANNEL?api_key=KEY, and no key check. `ws` comes from tests/node.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(new URL('../../tests/node/package.json', import.meta.url));
const { WebSocketServer, WebSocket } = require('ws');

const { values } = parseArgs({
  options: { host: { type: 'string', default: '127.0.0.1' }, port: { type: 'string', default: '8082' } },
});

const channels = new Map();
const wss = new WebSocketServer({ host: values.host, port: Number(values.port), backlog: 4096, maxPayload: 65536 });

wss.on('connection', (ws, req) => {
  const path = new URL(req.url, 'http://localhost').pathname.replace(/\/+$/, '');
  const channel = path.slice(path.lastIndexOf('/') + 1);
  let members = channels.get(channel);
  if (!members) {
    members = new Set();
    channels.set(channel, members);
  }
  members.add(ws);
  ws.on('message', (data, isBinary) => {
    for (const client of members) {
      if (client !== ws && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    }
  });
  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0) channels.delete(channel);
  });
  ws.on('error', () => {});
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
  });
}
