// Unit tests of web/sync.js, the chat's never-miss, never-twice sync: `node --test tests/js/`.
// A fake server answers the fetches when the test says so, so every interleaving of live
// messages, fetch answers and (re)subscriptions is played out deterministically.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

// web/ has no package.json saying "type": "module" (the browser loads the file as a module), and
// Node only guesses the type of a .js file since 20.19/22.7: load its text as a module instead.
const source = readFileSync(new URL("../../web/sync.js", import.meta.url), "utf8");
const { RoomSync, validMessage, retryDelay, CATCHUP_LIMIT } = await import(
  "data:text/javascript;base64," + Buffer.from(source).toString("base64")
);

const tick = () => new Promise((resolve) => setImmediate(resolve));

/** The room as the server holds it, and the fetches the page has made and not yet had answered. */
class FakeServer {
  constructor(room = "general") {
    this.room = room;
    this.stored = [];
    this.requests = [];
  }

  post(text) {
    const message = { id: this.stored.length + 1, room: this.room, author: "ann", text };
    this.stored.push(message);
    return message;
  }

  fetchMessages = ({ after, limit }) =>
    new Promise((resolve, reject) => this.requests.push({ after, limit, resolve, reject }));

  answer(request) {
    const { after, limit } = request;
    const messages =
      after === undefined
        ? this.stored.slice(-limit)
        : this.stored.filter((m) => m.id > after).slice(0, limit);
    request.resolve({ messages: messages.map((m) => ({ ...m })) });
  }

  /** Answer the oldest open fetch with what is stored now. */
  async answerNext() {
    const request = this.requests.shift();
    assert.ok(request, "a fetch was expected");
    this.answer(request);
    await tick();
    return request;
  }

  async answerAll() {
    while (this.requests.length) await this.answerNext();
  }

  async failNext(error = new Error("HTTP 503")) {
    const request = this.requests.shift();
    assert.ok(request, "a fetch was expected");
    request.reject(error);
    await tick();
    return request;
  }
}

/** What the page shows: a list kept sorted by inserting each added message where it belongs. */
function makeSync(server, options = {}) {
  const shown = [];
  const timers = [];
  const events = [];
  const sync = new RoomSync({
    room: server.room,
    fetchMessages: server.fetchMessages,
    onAdded: (messages, { initial }) => {
      for (const m of messages) {
        assert.ok(!shown.some((s) => s.id === m.id), `message ${m.id} shown twice`);
        let i = shown.length;
        while (i > 0 && shown[i - 1].id > m.id) i -= 1;
        shown.splice(i, 0, m);
      }
      events.push({ added: messages.map((m) => m.id), initial });
    },
    onLatest: () => events.push("latest"),
    onSynced: () => events.push("synced"),
    onError: (error, delay) => events.push({ error: error.message, delay }),
    setTimer: (f, ms) => {
      const timer = { f, ms, cleared: false };
      timers.push(timer);
      return timer;
    },
    clearTimer: (timer) => {
      if (timer) timer.cleared = true;
    },
    random: () => 0.5,
    ...options,
  });
  return { sync, shown, timers, events, ids: () => shown.map((m) => m.id) };
}

const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("the latest page is shown once, in order, marked initial", async () => {
  const server = new FakeServer();
  for (let i = 0; i < 5; i++) server.post(`m${i}`);
  const { sync, ids, events } = makeSync(server);
  sync.start();
  assert.deepEqual(server.requests.map((r) => r.after), [undefined]);
  await server.answerNext();
  assert.deepEqual(ids(), [1, 2, 3, 4, 5]);
  assert.deepEqual(events, [{ added: [1, 2, 3, 4, 5], initial: true }, "latest", "synced"]);
  assert.equal(sync.syncedId, 5);
  assert.equal(server.requests.length, 0);
});

test("a live message that is also in the fetched page is shown once", async () => {
  const server = new FakeServer();
  server.post("one");
  const { sync, ids } = makeSync(server);
  sync.start();
  const two = server.post("two");
  assert.equal(sync.live(two), true); // arrives live before the fetch answers
  await server.answerNext(); // the page holds 1 and 2
  assert.equal(sync.live({ ...two }), false); // and again, live
  await server.answerAll();
  assert.deepEqual(ids(), [1, 2]);
});

test("a gap in the live messages is fetched with ?after= the last complete id", async () => {
  const server = new FakeServer();
  server.post("one");
  const { sync, ids } = makeSync(server);
  sync.start();
  await server.answerNext();
  server.post("two"); // missed: never arrives live
  server.post("three");
  const four = server.post("four");
  sync.live(four);
  assert.deepEqual(ids(), [1, 4]);
  assert.deepEqual(server.requests.map((r) => r.after), [1]);
  await server.answerNext();
  assert.deepEqual(ids(), [1, 2, 3, 4]);
  assert.equal(sync.syncedId, 4);
  assert.equal(server.requests.length, 0);
});

test("live messages that arrive out of order are shown in order, without a fetch", async () => {
  const server = new FakeServer();
  const { sync, ids } = makeSync(server);
  sync.start();
  await server.answerNext();
  const [one, two, three] = [server.post("a"), server.post("b"), server.post("c")];
  sync.live(one);
  sync.live(three); // 2 is late: a catch-up starts...
  sync.live(two); // ...and 2 arrives while it is on its way
  assert.deepEqual(ids(), [1, 2, 3]);
  assert.equal(sync.syncedId, 3);
  await server.answerAll();
  assert.deepEqual(ids(), [1, 2, 3]);
});

test("a reconnect fetches everything posted meanwhile, page by page", async () => {
  const server = new FakeServer();
  server.post("before");
  const { sync, ids, events } = makeSync(server, { catchUpLimit: 3 });
  sync.start();
  await server.answerNext();
  sync.subscribed();
  await server.answerAll();
  for (let i = 0; i < 7; i++) server.post(`while away ${i}`); // the connection was cut
  events.length = 0;
  sync.subscribed(); // resubscribed after the reconnect
  await server.answerNext();
  await server.answerNext();
  await server.answerNext();
  assert.equal(server.requests.length, 0);
  assert.deepEqual(ids(), range(1, 8));
  assert.deepEqual(events.at(-1), "synced");
});

test("the fetches after a reconnect ask from the last complete id, not the newest shown", async () => {
  const server = new FakeServer();
  const { sync, ids } = makeSync(server);
  sync.start();
  await server.answerNext();
  server.post("1");
  server.post("2");
  const three = server.post("3");
  sync.live(three); // a catch-up from 0 starts; the connection is cut before it is answered
  await server.failNext();
  sync.subscribed(); // reconnected: does not wait for the retry timer
  assert.deepEqual(server.requests.map((r) => r.after), [0]);
  await server.answerAll();
  assert.deepEqual(ids(), [1, 2, 3]);
});

test("a subscription that succeeds while the latest page is on its way still catches up", async () => {
  const server = new FakeServer();
  server.post("one");
  const { sync, ids } = makeSync(server);
  sync.start();
  sync.subscribed();
  const two = server.post("two"); // posted after the latest page was read...
  const latest = server.requests.shift();
  latest.resolve({ messages: [{ ...server.stored[0] }] }); // ...which holds only 1
  await tick();
  sync.live(server.post("three"));
  await server.answerAll();
  assert.deepEqual(ids(), [1, two.id, 3]);
});

test("a failed fetch is retried after a growing pause and shows nothing twice", async () => {
  const server = new FakeServer();
  server.post("one");
  const { sync, ids, timers, events } = makeSync(server);
  sync.start();
  await server.failNext();
  assert.deepEqual(events, [{ error: "HTTP 503", delay: 1500 }]);
  assert.equal(timers.length, 1);
  assert.equal(timers[0].ms, 1500);
  timers[0].f();
  await server.failNext();
  assert.equal(timers[1].ms, 3000);
  timers[1].f();
  await server.answerNext();
  assert.deepEqual(ids(), [1]);
  assert.equal(sync.failures, 0);
  assert.equal(events.at(-1), "synced");
});

test("after close, late answers and retries are dropped", async () => {
  const server = new FakeServer();
  server.post("one");
  const { sync, ids, timers } = makeSync(server);
  sync.start();
  sync.close();
  await server.answerNext();
  assert.deepEqual(ids(), []);
  assert.equal(sync.live(server.post("two")), false);
  sync.subscribed();
  assert.equal(server.requests.length, 0);
  assert.equal(timers.length, 0);
});

test("invalid and other rooms' messages are ignored", async () => {
  const server = new FakeServer();
  const { sync, ids } = makeSync(server);
  sync.start();
  await server.answerNext();
  assert.equal(sync.live({ id: "1", text: "x" }), false);
  assert.equal(sync.live({ id: 1.5, text: "x" }), false);
  assert.equal(sync.live({ id: 1, text: 7 }), false);
  assert.equal(sync.live({ id: 1, text: "x", room: "other" }), false);
  assert.equal(sync.live(null), false);
  assert.deepEqual(ids(), []);
  assert.equal(validMessage({ id: 1, text: "x" }, "general"), true);
});

test("a random interleaving of posts, drops, duplicates and reconnects ends complete and in order", async () => {
  let seed = 12345;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  for (let round = 0; round < 50; round++) {
    const server = new FakeServer();
    const { sync, ids } = makeSync(server, { catchUpLimit: 4, latestLimit: 1000 });
    for (let i = 0; i < 3; i++) server.post("old");
    sync.start();
    const inFlight = [];
    for (let step = 0; step < 40; step++) {
      const r = random();
      if (r < 0.4) {
        const m = server.post(`m${step}`);
        if (random() < 0.7) inFlight.push(m); // else: lost with the connection
      } else if (r < 0.6 && inFlight.length) {
        const i = Math.floor(random() * inFlight.length); // delivered in any order, maybe twice
        sync.live(inFlight[i]);
        if (random() < 0.5) inFlight.splice(i, 1);
      } else if (r < 0.7) {
        sync.subscribed();
      } else if (server.requests.length) {
        await server.answerNext();
      }
      const shown = ids();
      assert.deepEqual(shown, [...new Set(shown)].sort((a, b) => a - b));
    }
    sync.subscribed(); // the final (re)subscription
    await server.answerAll();
    assert.deepEqual(ids(), range(1, server.stored.length), `round ${round}`);
  }
});

test("retry pauses double up to 30 s", () => {
  assert.equal(retryDelay(1, () => 1), 2000);
  assert.equal(retryDelay(1, () => 0), 1000);
  assert.equal(retryDelay(5, () => 1), 30000);
  assert.equal(retryDelay(50, () => 1), 30000);
  assert.ok(CATCHUP_LIMIT >= 1);
});

test("older pages fill the room back to message 1 with no duplicate, and move nothing else", async () => {
  const server = new FakeServer();
  for (let i = 1; i <= 12; i++) server.post(`m${i}`);
  const { sync, ids, events } = makeSync(server, { latestLimit: 5 });
  sync.start();
  await server.answerNext();
  assert.deepEqual(ids(), range(8, 12));
  assert.equal(sync.minId, 8);
  const held = [];
  while (sync.minId > 1) {
    const before = sync.minId;
    const page = server.stored.filter((m) => m.id < before).slice(-5);
    // The same page twice (a double scroll event) adds nothing the second time.
    const added = sync.addOlder(page.map((m) => ({ ...m })));
    assert.deepEqual(sync.addOlder(page.map((m) => ({ ...m }))), []);
    held.unshift(...added.map((m) => m.id));
  }
  assert.deepEqual(held, range(1, 7));
  assert.deepEqual([...sync.messages.keys()].sort((a, b) => a - b), range(1, 12));
  assert.equal(sync.syncedId, 12);
  assert.equal(events.filter((e) => e.added).length, 1); // onAdded saw only the latest page
  assert.equal(server.requests.length, 0);
});

test("an edit replaces a held message; one not held is ignored", async () => {
  const server = new FakeServer();
  server.post("typo");
  const { sync } = makeSync(server);
  sync.start();
  await server.answerNext();
  assert.equal(sync.update({ id: 1, room: "general", text: "fixed" }), true);
  assert.equal(sync.messages.get(1).text, "fixed");
  assert.equal(sync.update({ id: 9, room: "general", text: "x" }), false);
  assert.equal(sync.update({ id: 1, room: "elsewhere", text: "x" }), false);
  assert.equal(sync.messages.has(9), false);
});
