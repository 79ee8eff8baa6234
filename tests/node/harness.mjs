// Shared pieces of the scripts that drive piesocket-js against piewire:
// JSON-line records, bounded waits, steps, and HTTPS calls to the server.

import https from 'node:https';

export function emit(record) {
  process.stdout.write(JSON.stringify(record) + '\n');
}

export class StepFailed extends Error {}

export function withTimeout(promise, timeoutMs) {
  let timer;
  const expiry = new Promise((resolve, reject) => {
    timer = setTimeout(
        () => reject(new StepFailed(`no result within ${timeoutMs} ms`)),
        timeoutMs,
    );
  });
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
}

// Resolves once check() is true; checked on every wakeWaiters() call.
const waiters = new Set();

export function waitFor(check) {
  if (check()) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    waiters.add({check, resolve});
  });
}

export function wakeWaiters() {
  for (const waiter of [...waiters]) {
    if (waiter.check()) {
      waiters.delete(waiter);
      waiter.resolve();
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Runs [name, run] steps in order, each bounded by timeoutMs, and records a
// "step" for each one done, or a "failed" and stops. True when all passed.
export async function runSteps(steps, timeoutMs) {
  for (const [name, run] of steps) {
    try {
      await withTimeout(run(), timeoutMs);
      emit({kind: 'step', name});
    } catch (exc) {
      emit({kind: 'failed', step: name, message: String(exc && exc.message || exc)});
      return false;
    }
  }
  return true;
}

// An HTTPS request to HOST:PORT; resolves with the status and the parsed
// JSON body (or the text when it is not JSON).
export function httpsJson(host, timeoutMs, method, path, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const [hostname, port] = host.split(':');
    const request = https.request(
        {
          method,
          hostname,
          port: Number(port),
          path,
          headers: {
            ...headers,
            ...(payload === undefined ? {} : {
              'Content-Type': 'application/json',
              'Content-Length': Buffer.byteLength(payload),
            }),
          },
          timeout: timeoutMs,
        },
        (response) => {
          const chunks = [];
          response.on('data', (chunk) => chunks.push(chunk));
          response.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
              resolve({status: response.statusCode, body: JSON.parse(text)});
            } catch (exc) {
              resolve({status: response.statusCode, body: text});
            }
          });
          response.on('error', reject);
        },
    );
    request.on('timeout', () => request.destroy(new Error('request timed out')));
    request.on('error', reject);
    request.end(payload);
  });
}
