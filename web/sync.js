// sync.js: the chat's never-miss, never-twice message sync for one room. Pure: no DOM, no fetch,
// no timers of its own (all three are passed in), so tests/js/sync.test.mjs drives it with fakes.
//
// The rule: subscribe first, then fetch. Whatever was posted before the subscription succeeded
// comes from GET .../messages, whatever after arrives live; the Map by id drops duplicates.
//
// `syncedId` is the highest id up to which every message is held (ids are consecutive within a
// room). A live message extends it only when it follows on from it; a live message beyond it means
// something was missed, and a catch-up (`?after=syncedId`) fetches the gap. After every
// (re)subscription a catch-up runs too. If ids ever had holes this only costs extra fetches.
//
//   const sync = new RoomSync({ room, fetchMessages, onAdded, onSynced, onError, setTimer, clearTimer });
//   sync.start();                // load the latest page
//   sync.subscribed();           // the live channel is (re)subscribed: catch up
//   sync.live(message);          // a live or just-posted message
//   sync.close();                // the room was left: late answers are dropped
//   sync.addOlder(messages);     // an older page (?before=minId): returns those new to the room
//   sync.update(message);        // an edit or delete of a held message: true if it replaced one
//
// fetchMessages({ after, limit }) returns a Promise of the server's answer ({ messages: [...] },
// ascending ids; `after` is undefined for the latest page). onAdded(messages, { initial }) gets
// the messages that are new to the room, ascending, each exactly once; onLatest() runs once the
// latest page is in, onSynced() whenever nothing is left to fetch, onError(error, delayMs) when a
// fetch failed and will be tried again after delayMs.

export const LATEST_LIMIT = 50;
export const CATCHUP_LIMIT = 200;
const MAX_RETRY_MS = 30000;

/** A message the page can show: an object with a safe integer id and a text, of this room. */
export function validMessage(m, room) {
  return (
    !!m &&
    typeof m === "object" &&
    Number.isSafeInteger(m.id) &&
    typeof m.text === "string" &&
    (m.room === undefined || m.room === room)
  );
}

/** The pause before retry number `failures` (1, 2, ...): doubling from ~1-2 s up to 30 s, jittered. */
export function retryDelay(failures, random = Math.random) {
  return Math.min(MAX_RETRY_MS, 1000 * 2 ** Math.min(failures, 5)) * (0.5 + random() / 2);
}

export class RoomSync {
  constructor({
    room,
    fetchMessages,
    onAdded = () => {},
    onLatest = () => {},
    onSynced = () => {},
    onError = () => {},
    setTimer = (f, ms) => setTimeout(f, ms),
    clearTimer = (t) => clearTimeout(t),
    random = Math.random,
    latestLimit = LATEST_LIMIT,
    catchUpLimit = CATCHUP_LIMIT,
  }) {
    this.room = room;
    this._fetch = fetchMessages;
    this._onAdded = onAdded;
    this._onLatest = onLatest;
    this._onSynced = onSynced;
    this._onError = onError;
    this._setTimer = setTimer;
    this._clearTimer = clearTimer;
    this._random = random;
    this._latestLimit = latestLimit;
    this._catchUpLimit = catchUpLimit;

    this.messages = new Map(); // id -> message
    this.maxId = 0;
    this.syncedId = 0; // every message with an id up to this one is in `messages`
    this.loadedLatest = false;
    this.failures = 0;
    this.closed = false;
    this._needLatest = false;
    this._needCatchUp = false;
    this._running = false;
    this._retryTimer = null;
  }

  /** Load the latest page (the room was just opened). */
  start() {
    this._request({ latest: true });
  }

  /** The live channel is subscribed (again): fetch whatever was posted while not listening. */
  subscribed() {
    this._request({ catchUp: true });
  }

  /** A live (or just-posted) message: add it, and fetch the gap if it does not follow on. */
  live(message) {
    if (this.closed || !validMessage(message, this.room)) return false;
    const added = this._add([message], false);
    this._advance(0);
    if (this.loadedLatest && this.maxId > this.syncedId) this._request({ catchUp: true });
    return added > 0;
  }

  /** Stop: drop answers still on their way and any retry. */
  close() {
    this.closed = true;
    this._clearTimer(this._retryTimer);
    this._retryTimer = null;
  }

  /** The lowest id held (0 when none): the page before it is ?before=minId. */
  get minId() {
    let min = 0;
    for (const id of this.messages.keys()) if (min === 0 || id < min) min = id;
    return min;
  }

  /**
   * An older page (scrolling back): keeps the ones new to the room and returns them, ascending.
   * It does not call onAdded (the page puts them above what it shows) nor move syncedId.
   */
  addOlder(list) {
    if (this.closed || !Array.isArray(list)) return [];
    const added = [];
    for (const message of list) {
      if (!validMessage(message, this.room) || this.messages.has(message.id)) continue;
      this.messages.set(message.id, message);
      if (message.id > this.maxId) this.maxId = message.id;
      added.push(message);
    }
    this._advance(0);
    return added.sort((a, b) => a.id - b.id);
  }

  /** A held message changed (edited or deleted): replace it. False when it is not held. */
  update(message) {
    if (this.closed || !validMessage(message, this.room) || !this.messages.has(message.id)) {
      return false;
    }
    this.messages.set(message.id, message);
    return true;
  }

  /** The messages held, ascending by id. */
  sorted() {
    return [...this.messages.values()].sort((a, b) => a.id - b.id);
  }

  /** True while a fetch is wanted or running. */
  get pending() {
    return this._needLatest || this._needCatchUp || this._running;
  }

  _request({ latest = false, catchUp = false }) {
    if (this.closed) return;
    if (latest) this._needLatest = true;
    if (catchUp) this._needCatchUp = true;
    if (this._running) return;
    // A new reason to sync (a resubscription after an outage, say) does not wait for a retry.
    this._clearTimer(this._retryTimer);
    this._retryTimer = null;
    this._run();
  }

  _add(list, initial) {
    const added = [];
    for (const message of list) {
      if (!validMessage(message, this.room) || this.messages.has(message.id)) continue;
      this.messages.set(message.id, message);
      if (message.id > this.maxId) this.maxId = message.id;
      added.push(message);
    }
    if (added.length) {
      added.sort((a, b) => a.id - b.id);
      this._onAdded(added, { initial });
    }
    return added.length;
  }

  _advance(upTo) {
    if (upTo > this.syncedId) this.syncedId = upTo;
    while (this.messages.has(this.syncedId + 1)) this.syncedId += 1;
  }

  _batch(data) {
    return data && Array.isArray(data.messages) ? data.messages : [];
  }

  async _run() {
    this._running = true;
    try {
      while (!this.closed && (this._needLatest || this._needCatchUp)) {
        if (this._needLatest || !this.loadedLatest) {
          this._needLatest = false;
          let data;
          try {
            data = await this._fetch({ after: undefined, limit: this._latestLimit });
          } catch (e) {
            this._needLatest = true;
            throw e;
          }
          if (this.closed) return;
          const batch = this._batch(data);
          const initial = !this.loadedLatest;
          this.loadedLatest = true;
          this._add(batch, initial);
          const last = batch[batch.length - 1];
          this._advance(last && Number.isSafeInteger(last.id) ? last.id : 0);
          this._onLatest();
          // Anything live beyond what is now held complete? Catch up (this also covers a
          // subscription that succeeded while this answer was on its way).
          if (this.maxId > this.syncedId) this._needCatchUp = true;
          continue;
        }
        this._needCatchUp = false;
        let after = this.syncedId;
        try {
          for (;;) {
            const data = await this._fetch({ after, limit: this._catchUpLimit });
            if (this.closed) return;
            const batch = this._batch(data);
            this._add(batch, false);
            const last = batch[batch.length - 1];
            if (last && Number.isSafeInteger(last.id)) this._advance(last.id);
            if (batch.length < this._catchUpLimit || !last || !(last.id > after)) break;
            after = last.id;
          }
        } catch (e) {
          this._needCatchUp = true;
          throw e;
        }
      }
      if (!this.closed) {
        this.failures = 0;
        this._onSynced();
      }
    } catch (e) {
      if (this.closed) return;
      // Keep what is pending and try again after a growing pause.
      this.failures += 1;
      const delay = retryDelay(this.failures, this._random);
      this._onError(e, delay);
      this._retryTimer = this._setTimer(() => {
        this._retryTimer = null;
        this._request({});
      }, delay);
    } finally {
      this._running = false;
    }
  }
}
