// Checks webhook requests with the official Node SDK, for tests/test_webhooks.py.
// Reads one JSON object on stdin: {appId, key, secret, requests: [{headers, body}]} (header names
// lower-case, body the raw string); prints a JSON list: isValid() of each, and its events.
'use strict';
const Pusher = require('pusher');

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const opts = JSON.parse(input);
  const pusher = new Pusher({ appId: opts.appId, key: opts.key, secret: opts.secret });
  const out = opts.requests.map((r) => {
    const hook = pusher.webhook({ headers: r.headers, rawBody: r.body });
    const valid = hook.isValid();
    return { valid, events: valid ? hook.getEvents() : null };
  });
  process.stdout.write(JSON.stringify(out) + '\n');
});
