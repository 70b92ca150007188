// pushclient.js: a small client for the Pusher Channels protocol v7 (what pushsvc speaks).
//
//   const client = new PushClient({ url, authEndpoint, onState });
//   client.connect();
//   const channel = client.subscribe("presence-room-general");
//   channel.bind("message", (data, meta) => { ... });
//   channel.bind("pusher:subscription_succeeded", (members, info) => { /* refetch what you missed */ });
//   channel.trigger("client-typing", { name: "Ann" });
//
// States (reported through onState(state, info) and the "state" event):
//   "connecting"    first attempt (or after connect() is called again)
//   "connected"     pusher:connection_established received; info = { socketId }
//   "reconnecting"  waiting to try again; info = { delay (ms), attempt, code, reason }
//   "failed"        the server refused us (close code 4000-4099); info = { code, reason }: no retry
//   "disconnected"  disconnect() was called
//
// The client reconnects with exponential back-off and jitter, keeps the connection alive with
// pusher:ping / pusher:pong, answers the server's pings, and on every (re)connect resubscribes every
// channel, asking authEndpoint to sign private- and presence- subscriptions.

const PROTOCOL_PREFIXES_NEEDING_AUTH = ["private-", "presence-"];

/** A tiny event emitter: bind(event, cb), unbind(event, cb), emit(event, ...args). */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  bind(event, callback) {
    if (typeof callback !== "function") throw new TypeError("callback must be a function");
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(callback);
    return this;
  }

  unbind(event, callback) {
    if (event === undefined) {
      this._handlers.clear();
    } else if (callback === undefined) {
      this._handlers.delete(event);
    } else {
      const set = this._handlers.get(event);
      if (set) set.delete(callback);
    }
    return this;
  }

  emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const callback of [...set]) {
      try {
        callback(...args);
      } catch (e) {
        // One faulty handler must not break the connection or the other handlers.
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}

/** Server-to-client `data` is usually a JSON-encoded string: decode it, keep anything else as is. */
function decodeData(data) {
  if (typeof data !== "string") return data;
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

function needsAuth(name) {
  return PROTOCOL_PREFIXES_NEEDING_AUTH.some((prefix) => name.startsWith(prefix));
}

/** One subscription. Created by PushClient.subscribe(); survives reconnects. */
export class Channel extends Emitter {
  constructor(name, client) {
    super();
    this.name = name;
    this.client = client;
    this.subscribed = false;
    this.subscriptionCount = 0; // how many times the subscription succeeded (1 = first time)
    this.isPresence = name.startsWith("presence-");
    this.isPrivate = name.startsWith("private-") || this.isPresence;
    /** Presence only: user_id -> user_info, one entry per user however many connections. */
    this.members = new Map();
    /** Presence only: { id, info } of this page's user, from the auth reply's channel_data. */
    this.me = null;
    this._pending = false; // a pusher:subscribe (or its authorization) is in flight
  }

  /** Send a client event (name starting "client-") to the other subscribers. Returns true if sent. */
  trigger(event, data) {
    if (!event.startsWith("client-")) {
      throw new Error(`client events must start with "client-": ${event}`);
    }
    if (!this.isPrivate || !this.subscribed) return false;
    return this.client._send({ event, channel: this.name, data: data === undefined ? {} : data });
  }

  /** Forget the channel: unsubscribe and drop its handlers. */
  unsubscribe() {
    this.client.unsubscribe(this.name);
  }

  _reset() {
    this.subscribed = false;
    this._pending = false;
  }

  _handle(event, data, frame) {
    switch (event) {
      case "pusher_internal:subscription_succeeded": {
        this._pending = false;
        this.subscribed = true;
        this.subscriptionCount += 1;
        if (this.isPresence) {
          const presence = (data && data.presence) || {};
          const hash = presence.hash || {};
          this.members = new Map(Object.entries(hash));
          if (this.me && !this.members.has(this.me.id)) this.members.set(this.me.id, this.me.info);
        }
        const info = { resubscribed: this.subscriptionCount > 1, count: this.subscriptionCount };
        this.emit("pusher:subscription_succeeded", this.isPresence ? this.members : data, info);
        this.client._emit("subscribed", this, info);
        return;
      }
      case "pusher:subscription_error":
        this._pending = false;
        this.subscribed = false;
        this.emit("pusher:subscription_error", data);
        this.client._emit("error", { type: "SubscriptionError", channel: this.name, data });
        return;
      case "pusher_internal:member_added": {
        if (!this.isPresence || !data || data.user_id === undefined) return;
        const id = String(data.user_id);
        const info = data.user_info === undefined ? {} : data.user_info;
        this.members.set(id, info);
        this.emit("pusher:member_added", { id, info });
        return;
      }
      case "pusher_internal:member_removed": {
        if (!this.isPresence || !data || data.user_id === undefined) return;
        const id = String(data.user_id);
        const info = this.members.get(id);
        if (this.me && id === this.me.id) return; // our own user stays while this page is here
        if (this.members.delete(id)) this.emit("pusher:member_removed", { id, info });
        return;
      }
      default: {
        const meta = {};
        if (frame.user_id !== undefined) meta.user_id = String(frame.user_id);
        this.emit(event, data, meta);
      }
    }
  }
}

export class PushClient {
  /**
   * @param {object} options
   * @param {string} options.url             ws(s)://host/app/KEY?protocol=7&client=js&version=8.4.0&flash=false
   * @param {string} [options.authEndpoint]  POSTed socket_id + channel_name (form-encoded) for private-/presence-
   * @param {function} [options.onState]     onState(state, info)
   * @param {number} [options.activityTimeout=120]  seconds; replaced by the server's value on connect
   * @param {number} [options.pongTimeout=30000]    ms to wait for pusher:pong before reconnecting
   * @param {number} [options.connectTimeout=10000] ms to wait for pusher:connection_established
   * @param {number} [options.baseDelay=1000]       ms, first back-off step
   * @param {number} [options.maxDelay=30000]       ms, back-off cap
   * Injectable for tests: WebSocket, fetch, random, setTimeout, clearTimeout, now.
   */
  constructor(options) {
    if (!options || !options.url) throw new TypeError("PushClient needs a url");
    this.url = options.url;
    this.authEndpoint = options.authEndpoint || null;
    this.onState = options.onState || null;
    this.activityTimeout = (options.activityTimeout || 120) * 1000;
    this.pongTimeout = options.pongTimeout ?? 30000;
    this.connectTimeout = options.connectTimeout ?? 10000;
    this.baseDelay = options.baseDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30000;
    this.stableAfter = options.stableAfter ?? 10000; // a connection this old resets the back-off
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._fetch = options.fetch || ((...args) => globalThis.fetch(...args));
    this._random = options.random || Math.random;
    this._setTimeout = options.setTimeout || ((fn, ms) => globalThis.setTimeout(fn, ms));
    this._clearTimeout = options.clearTimeout || ((id) => globalThis.clearTimeout(id));
    this._now = options.now || (() => Date.now());

    this.state = "initialized";
    this.socketId = null;
    this.channels = new Map();
    this.lastError = null;

    this._events = new Emitter();
    this._ws = null;
    this._attempt = 0; // consecutive failed/short-lived connections, drives the back-off
    this._connectedAt = 0;
    this._retryTimer = null;
    this._retryAt = 0;
    this._activityTimer = null;
    this._pongTimer = null;
    this._connectTimer = null;
    this._wanted = false; // connect() called and not disconnect()
  }

  // ---- public API ---------------------------------------------------------------------------

  /** Open the connection (again). Safe to call when already connected. */
  connect() {
    this._wanted = true;
    if (this._ws) return;
    this._cancelRetry();
    if (this.state !== "reconnecting") this._setState("connecting", {});
    this._open();
  }

  /** Close for good (until connect() is called again). Channels are kept for the next connect(). */
  disconnect() {
    this._wanted = false;
    this._cancelRetry();
    this._dropSocket(1000, "client disconnect");
    this._attempt = 0;
    this._setState("disconnected", {});
  }

  /** While waiting to reconnect (or failed), try right now. While connected, check with a ping. */
  retryNow() {
    if (!this._wanted && this.state !== "failed") return;
    if (this.state === "connected") {
      this._sendPing();
      return;
    }
    if (this._ws) return; // an attempt is already under way
    this._wanted = true;
    this._cancelRetry();
    this._open();
  }

  /** Subscribe (or return the existing subscription). */
  subscribe(name) {
    let channel = this.channels.get(name);
    if (channel) return channel;
    channel = new Channel(name, this);
    this.channels.set(name, channel);
    if (this.state === "connected") this._subscribe(channel);
    return channel;
  }

  unsubscribe(name) {
    const channel = this.channels.get(name);
    if (!channel) return;
    this.channels.delete(name);
    if ((channel.subscribed || channel._pending) && this.state === "connected") {
      this._send({ event: "pusher:unsubscribe", data: { channel: name } });
    }
    channel._reset();
    channel.unbind();
  }

  channel(name) {
    return this.channels.get(name) || null;
  }

  /**
   * Client-wide events:
   *   "state" (state, info)                   every state change (also given to onState)
   *   "subscribed" (channel, {resubscribed, count})   after every successful (re)subscription
   *   "error" (error)                         pusher:error frames, auth failures, refused connections
   *   "message" (frame)                       every decoded frame (debugging)
   */
  bind(event, callback) {
    this._events.bind(event, callback);
    return this;
  }

  unbind(event, callback) {
    this._events.unbind(event, callback);
    return this;
  }

  // ---- connection ---------------------------------------------------------------------------

  _open() {
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch (e) {
      this.lastError = { type: "WebSocketError", error: String(e) };
      this._events.emit("error", this.lastError);
      this._scheduleReconnect("backoff", 1006, String(e));
      return;
    }
    this._ws = ws;
    ws.onmessage = (ev) => this._onMessage(ws, ev);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows
    this._clearTimer("_connectTimer");
    this._connectTimer = this._setTimeout(() => {
      this._connectTimer = null;
      if (this._ws !== ws || this.state === "connected") return;
      this._dropSocket(0, "", true);
      this._scheduleReconnect("backoff", 1006, "no handshake");
    }, this.connectTimeout);
  }

  /** Detach and close the current socket without reacting to its close event. */
  _dropSocket(code, reason, abnormal = false) {
    const ws = this._ws;
    this._ws = null;
    this._clearTimer("_connectTimer");
    this._clearTimer("_activityTimer");
    this._clearTimer("_pongTimer");
    this.socketId = null;
    for (const channel of this.channels.values()) channel._reset();
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
    ws.onopen = null;
    try {
      // Browsers only let us send 1000 or 3000-4999; "abnormal" drops just close quietly.
      if (abnormal) ws.close();
      else ws.close(code, reason);
    } catch {
      /* already closed */
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._noteConnectionEnded();
    this._dropSocket(code, reason);
    code = code || 1006;
    if (code >= 4000 && code <= 4099) {
      // The server refused us for good (unknown app, over quota, unauthorized...): do not retry.
      this._wanted = false;
      this.lastError = { type: "ConnectionRefused", code, reason: reason || "" };
      this._events.emit("error", this.lastError);
      this._setState("failed", { code, reason: reason || "" });
      return;
    }
    if (!this._wanted) return;
    if (code >= 4200 && code <= 4299) this._scheduleReconnect("now", code, reason);
    else this._scheduleReconnect("backoff", code, reason);
  }

  /** A connection that lasted a while resets the back-off; one that died young does not. */
  _noteConnectionEnded() {
    if (this._connectedAt && this._now() - this._connectedAt >= this.stableAfter) this._attempt = 0;
    this._connectedAt = 0;
  }

  /** "now": reconnect at once (unless it keeps happening); "backoff": exponential with jitter. */
  _scheduleReconnect(kind, code, reason) {
    if (!this._wanted) return;
    this._cancelRetry();
    let delay;
    if (kind === "now" && this._attempt === 0) {
      delay = Math.floor(this._random() * 250); // spread a whole node's clients a little
    } else {
      delay = this._backoffDelay(this._attempt);
    }
    this._attempt += 1;
    this._retryAt = this._now() + delay;
    this._setState("reconnecting", { delay, attempt: this._attempt, code, reason: reason || "" });
    this._retryTimer = this._setTimeout(() => {
      this._retryTimer = null;
      if (this._wanted && !this._ws) this._open();
    }, delay);
  }

  /** Exponential back-off with "equal jitter": half fixed, half random, capped. */
  _backoffDelay(attempt) {
    const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** Math.min(attempt, 20));
    return Math.round(ceiling / 2 + this._random() * (ceiling / 2));
  }

  _cancelRetry() {
    if (this._retryTimer !== null) {
      this._clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
  }

  _clearTimer(name) {
    if (this[name] !== null) {
      this._clearTimeout(this[name]);
      this[name] = null;
    }
  }

  _setState(state, info) {
    const previous = this.state;
    this.state = state;
    if (previous === state && state !== "reconnecting") return;
    if (this.onState) {
      try {
        this.onState(state, info || {});
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
    this._events.emit("state", state, info || {});
  }

  _emit(event, ...args) {
    this._events.emit(event, ...args);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // ---- keep-alive ---------------------------------------------------------------------------

  /** Anything received proves the connection alive: restart the inactivity timer. */
  _resetActivity() {
    this._clearTimer("_pongTimer");
    this._clearTimer("_activityTimer");
    if (this.state !== "connected") return;
    this._activityTimer = this._setTimeout(() => {
      this._activityTimer = null;
      this._sendPing();
    }, this.activityTimeout);
  }

  _sendPing() {
    if (!this._send({ event: "pusher:ping", data: {} })) return;
    if (this._pongTimer !== null) return;
    const ws = this._ws;
    this._pongTimer = this._setTimeout(() => {
      this._pongTimer = null;
      if (this._ws !== ws) return;
      // No pong: the connection is dead even if the browser has not noticed.
      this._noteConnectionEnded();
      this._dropSocket(0, "", true);
      this._scheduleReconnect("backoff", 4201, "no pong");
    }, this.pongTimeout);
  }

  // ---- frames -------------------------------------------------------------------------------

  _onMessage(ws, ev) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return; // not JSON: ignore
    }
    if (!frame || typeof frame !== "object" || typeof frame.event !== "string") return;
    const data = decodeData(frame.data);
    this._resetActivity();
    this._events.emit("message", { ...frame, data });

    switch (frame.event) {
      case "pusher:connection_established":
        this._onEstablished(data);
        return;
      case "pusher:ping":
        this._send({ event: "pusher:pong", data: {} });
        return;
      case "pusher:pong":
        return; // _resetActivity already cleared the pong timer
      case "pusher:error":
        this.lastError = { type: "PusherError", ...(data && typeof data === "object" ? data : { message: data }) };
        this._events.emit("error", this.lastError);
        return;
      default:
        break;
    }
    if (typeof frame.channel === "string") {
      const channel = this.channels.get(frame.channel);
      if (channel) channel._handle(frame.event, data, frame);
    }
  }

  _onEstablished(data) {
    if (!data || typeof data.socket_id !== "string") return;
    this._clearTimer("_connectTimer");
    this.socketId = data.socket_id;
    if (typeof data.activity_timeout === "number" && data.activity_timeout > 0) {
      // Ping a little before the server would give up on us (pusher-js uses the smaller of both).
      this.activityTimeout = Math.min(this.activityTimeout, data.activity_timeout * 1000);
    }
    this._connectedAt = this._now();
    this._setState("connected", { socketId: this.socketId });
    this._resetActivity();
    for (const channel of this.channels.values()) this._subscribe(channel);
  }

  // ---- subscriptions ------------------------------------------------------------------------

  async _subscribe(channel) {
    if (channel._pending || channel.subscribed) return;
    channel._pending = true;
    const socketId = this.socketId;
    const data = { channel: channel.name };
    if (needsAuth(channel.name)) {
      let auth;
      try {
        auth = await this._authorize(socketId, channel.name);
      } catch (error) {
        if (this.socketId !== socketId || this.channels.get(channel.name) !== channel) return;
        channel._pending = false;
        channel.emit("pusher:subscription_error", error);
        this._events.emit("error", { type: "AuthError", channel: channel.name, ...error });
        // Server trouble or a network blip: try again while this connection lasts.
        // A 4xx (no session, forbidden) will not fix itself: leave it to the app.
        if (!(error.status >= 400 && error.status < 500)) {
          const delay = this._backoffDelay(2);
          this._setTimeout(() => {
            if (this.socketId === socketId && this.channels.get(channel.name) === channel) {
              this._subscribe(channel);
            }
          }, delay);
        }
        return;
      }
      // The socket changed (or the channel was dropped) while we waited: the new socket's
      // connection_established resubscribes with a fresh signature.
      if (this.socketId !== socketId || this.channels.get(channel.name) !== channel) return;
      data.auth = auth.auth;
      if (auth.channel_data !== undefined) {
        data.channel_data = auth.channel_data;
        const decoded = decodeData(auth.channel_data);
        if (decoded && decoded.user_id !== undefined) {
          channel.me = { id: String(decoded.user_id), info: decoded.user_info === undefined ? {} : decoded.user_info };
        }
      }
    }
    if (!this._send({ event: "pusher:subscribe", data })) channel._pending = false;
  }

  async _authorize(socketId, channelName) {
    if (!this.authEndpoint) {
      throw { type: "AuthError", status: 0, error: "No authEndpoint configured for " + channelName };
    }
    const body = new URLSearchParams({ socket_id: socketId, channel_name: channelName }).toString();
    let response;
    try {
      response = await this._fetch(this.authEndpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
        body,
      });
    } catch (e) {
      throw { type: "AuthError", status: 0, error: "Could not reach the server: " + String(e) };
    }
    let json = null;
    try {
      json = await response.json();
    } catch {
      json = null;
    }
    if (!response.ok || !json || typeof json.auth !== "string") {
      const message = json && typeof json.error === "string" ? json.error : `authorization failed (HTTP ${response.status})`;
      throw { type: "AuthError", status: response.status, error: message };
    }
    return json;
  }
}

export default PushClient;
