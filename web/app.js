// app.js: the pushsvc chat page.
//
// Security rule for this file: text that comes from users or the server (names, messages, room
// names, error sentences) is only ever put on the page with textContent / createTextNode /
// attribute setters. Never innerHTML, insertAdjacentHTML or document.write.
//
// The live connection is the official pusher-js (web/vendor/pusher.min.js, loaded by index.html
// before this module, so `Pusher` is a global); the never-miss message sync is web/sync.js.

import { RoomSync } from "./sync.js";

const ROOM_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
const DEFAULT_ROOM = "general";
const MAX_TEXT = 2000;
const MAX_NAME = 32;
const TYPING_SEND_EVERY = 2000; // ms between two client-typing events from this page
const TYPING_SHOW_FOR = 3000; // ms a "... is typing" hint lasts without a new event
const GROUP_WINDOW = 5 * 60 * 1000; // consecutive messages by one author within this are grouped
const REQUEST_TIMEOUT = 15000;
const LOBBY_CHANNEL = "private-chat-lobby"; // new rooms and room activity (unread marks)
const OLDER_LIMIT = 50; // messages per page when scrolling back
const OUTBOX_KEY = "pushsvc.outbox";
const OUTBOX_MAX = 200; // messages kept unsent; beyond that the composer refuses more

const $ = (id) => document.getElementById(id);

const ui = {
  errorBar: $("error-bar"),
  error: $("error"),
  errorDismiss: $("error-dismiss"),
  loadingView: $("loading-view"),
  loadingText: $("loading-text"),
  bootRetry: $("boot-retry"),
  nameView: $("name-view"),
  nameForm: $("name-form"),
  nameInput: $("name-input"),
  nameSubmit: $("name-submit"),
  nameCancel: $("name-cancel"),
  chatView: $("chat-view"),
  sidebar: $("sidebar"),
  sidebarToggle: $("sidebar-toggle"),
  backdrop: $("sidebar-backdrop"),
  roomName: $("room-name"),
  copyLink: $("copy-link"),
  connState: $("conn-state"),
  connDetail: $("conn-detail"),
  connDetailText: $("conn-detail-text"),
  connRetry: $("conn-retry"),
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  roomError: $("room-error"),
  rooms: $("rooms"),
  online: $("online"),
  onlineCount: $("online-count"),
  meName: $("me-name"),
  changeName: $("change-name"),
  signOut: $("sign-out"),
  messages: $("messages"),
  messageList: $("message-list"),
  outboxList: $("outbox-list"),
  beginning: $("beginning"),
  editBar: $("edit-bar"),
  editCancel: $("edit-cancel"),
  emptyState: $("empty-state"),
  jump: $("jump"),
  typing: $("typing"),
  composer: $("composer"),
  messageInput: $("message-input"),
  messageLabel: $("message-label"),
  send: $("send"),
  charCount: $("char-count"),
};

const state = {
  config: null,
  me: null, // { user_id, name }
  client: null, // the Pusher client, while the chat is shown
  connLabel: "connecting",
  everConnected: false,
  refused: null, // { code, message } when the server closed with 4000-4099 (no automatic retry)
  restarting: false, // retryNow() is cycling the connection: its "disconnected" is not news
  retryAt: 0,
  countdown: null,
  authFailures: 0,
  authRetryTimer: null,

  room: null,
  channel: null,
  gen: 0, // bumped on every room switch; late answers for an older room are dropped
  sync: null, // the RoomSync of the current room (web/sync.js)

  typers: new Map(), // user_id -> { name, timer }
  lastTypingSent: 0,
  unseen: 0, // messages that arrived while the tab was hidden
  newBelow: 0, // messages that arrived while the user was scrolled up

  rooms: [],
  errorSource: null,
  lobby: null,

  loadingOlder: false,
  atBeginning: false, // the current room's message 1 is shown
  editing: null, // { room, id } while the composer edits one's own message
  outbox: [], // [{ client_id, room, text, state: "sending" | "retrying", error }], oldest first
  flushing: false,
  outboxFailures: 0,
  outboxTimer: null,
};

// ---------------------------------------------------------------------------------------------
// Small helpers

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body, timeout = REQUEST_TIMEOUT } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeout);
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  try {
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal: controller.signal,
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message =
        data && typeof data.error === "string" && data.error
          ? data.error
          : `The server answered with an error (HTTP ${response.status}). Please try again.`;
      throw new ApiError(response.status, message);
    }
    return data || {};
  } catch (e) {
    if (e instanceof ApiError) throw e;
    if (e && e.name === "AbortError") {
      throw new ApiError(0, "The server took too long to answer. Please try again.");
    }
    throw new ApiError(0, "Could not reach the server. Check your connection and try again.");
  } finally {
    clearTimeout(timer);
  }
}

/** Focus the composer when that will not pop up an on-screen keyboard unasked. */
function focusComposerSoftly() {
  if (window.matchMedia && window.matchMedia("(pointer: fine)").matches) ui.messageInput.focus();
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function codePoints(s) {
  return [...s].length;
}

function hueClass(key) {
  let h = 0;
  for (const ch of String(key)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return "hue-" + (h % 8);
}

function initial(name) {
  const first = [...String(name).trim()][0];
  return first ? first.toUpperCase() : "?";
}

function storageGet(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function storageSet(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    /* private mode or full: not important */
  }
}

// ---------------------------------------------------------------------------------------------
// Errors

function showError(message, source = "general") {
  state.errorSource = source;
  ui.error.textContent = message;
  ui.errorBar.hidden = false;
}

function clearError(source) {
  if (source !== undefined && state.errorSource !== source) return;
  state.errorSource = null;
  ui.error.textContent = "";
  ui.errorBar.hidden = true;
}

// ---------------------------------------------------------------------------------------------
// Views

function showView(name) {
  ui.loadingView.hidden = name !== "loading";
  ui.nameView.hidden = name !== "name";
  ui.chatView.hidden = name !== "chat";
}

function showNameForm({ message, prefill } = {}) {
  showView("name");
  ui.nameCancel.hidden = !state.client;
  if (prefill !== undefined) ui.nameInput.value = prefill;
  if (message) showError(message, "name");
  ui.nameInput.focus();
}

async function onNameSubmit(event) {
  event.preventDefault();
  const name = ui.nameInput.value.trim();
  const length = codePoints(name);
  if (length < 1 || length > MAX_NAME) {
    ui.nameInput.setAttribute("aria-invalid", "true");
    showError(
      length < 1 ? "Please type a name first." : `Names are at most ${MAX_NAME} characters long.`,
      "name",
    );
    ui.nameInput.focus();
    return;
  }
  ui.nameInput.removeAttribute("aria-invalid");
  ui.nameSubmit.disabled = true;
  ui.nameInput.disabled = true;
  try {
    const session = await api("/api/session", { method: "POST", body: { name } });
    clearError();
    if (state.client) {
      // A new name is a new user: subscribe again so the presence list shows it.
      state.me = session;
      ui.meName.textContent = session.name;
      showView("chat");
      openRoom(state.room || roomFromHash(), { force: true });
      flushOutbox({ now: true });
      ui.messageInput.focus();
    } else {
      enterChat(session);
    }
  } catch (e) {
    ui.nameInput.setAttribute("aria-invalid", "true");
    showError(e.message, "name");
  } finally {
    ui.nameSubmit.disabled = false;
    ui.nameInput.disabled = false;
    if (!ui.nameView.hidden) ui.nameInput.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Boot

async function boot() {
  showView("loading");
  ui.bootRetry.hidden = true;
  ui.loadingText.textContent = "Loading…";
  try {
    state.config = await api("/api/config");
  } catch (e) {
    bootFailed(e.message);
    return;
  }
  let session;
  try {
    session = await api("/api/session");
  } catch (e) {
    if (e.status === 401 || e.status === 403) {
      showNameForm();
    } else {
      bootFailed(e.message);
    }
    return;
  }
  if (session.signed_in === false) {
    showNameForm();
    return;
  }
  enterChat(session);
}

function bootFailed(message) {
  ui.loadingText.textContent = message;
  ui.bootRetry.hidden = false;
  ui.bootRetry.focus();
}

/** pusher-js options for this page's own server: same host and port, TLS when the page has it. */
function pusherOptions(config) {
  const secure = location.protocol === "https:";
  const port = Number(location.port) || (secure ? 443 : 80);
  const key = config.app_key;
  const path = typeof config.ws_path === "string" ? config.ws_path : "";
  const suffix = `/app/${key}`;
  const options = {
    cluster: "local", // required by pusher-js, unused when wsHost is given
    wsHost: location.hostname,
    wsPort: port,
    wssPort: port,
    forceTLS: secure,
    enabledTransports: ["ws", "wss"],
    disableStats: true,
    channelAuthorization: { endpoint: "/api/pusher/auth", transport: "ajax" },
  };
  // pusher-js appends /app/KEY itself; a server mounted under a prefix says so in ws_path.
  if (path.endsWith(suffix) && path.length > suffix.length) {
    options.wsPath = path.slice(0, -suffix.length);
  }
  if (Number.isFinite(config.activity_timeout) && config.activity_timeout > 0) {
    options.activityTimeout = config.activity_timeout * 1000;
  }
  return options;
}

function enterChat(session) {
  state.me = session;
  ui.meName.textContent = session.name;
  showView("chat");

  state.everConnected = false;
  state.refused = null;
  const client = new Pusher(state.config.app_key, pusherOptions(state.config));
  state.client = client;
  client.connection.bind("state_change", ({ current }) => {
    if (state.client === client) onConnectionState(current);
  });
  client.connection.bind("connecting_in", (seconds) => {
    if (state.client === client) onConnectingIn(seconds);
  });
  client.connection.bind("error", (error) => {
    if (state.client === client) onConnectionError(error);
  });

  if (navigator.clipboard && window.isSecureContext) ui.copyLink.hidden = false;

  openRoom(roomFromHash());
  subscribeLobby(client);
  refreshRooms();
  loadOutbox();
  flushOutbox();
  updateComposer();
  focusComposerSoftly();
}

/** Leave the chat on this page: close the connection and forget the room and its messages. */
function leaveChat() {
  if (state.sync) state.sync.close();
  state.sync = null;
  if (state.client) state.client.disconnect();
  state.client = null;
  state.channel = null;
  state.room = null;
  state.gen += 1;
  state.me = null;
  state.lobby = null;
  clearInterval(state.countdown);
  clearTimeout(state.authRetryTimer);
  clearTimeout(state.outboxTimer);
  state.countdown = state.authRetryTimer = state.outboxTimer = null;
  state.outbox = [];
  renderOutbox();
  clearTypers();
  ui.messageList.replaceChildren();
  ui.online.replaceChildren();
  ui.onlineCount.textContent = "0";
  ui.meName.textContent = "";
  ui.messageInput.value = "";
  try {
    localStorage.removeItem("pushsvc.seen");
    localStorage.removeItem(OUTBOX_KEY);
  } catch {
    /* nothing stored */
  }
  updateTitle();
}

async function signOut() {
  closeSidebar();
  ui.signOut.disabled = true;
  try {
    await api("/api/session", { method: "DELETE" });
  } catch (e) {
    // 404/405: a server without sign-out; the page forgets the session all the same.
    if (e.status !== 404 && e.status !== 405) {
      showError(`Could not sign out. ${e.message}`, "signout");
      return;
    }
  } finally {
    ui.signOut.disabled = false;
  }
  clearError();
  leaveChat();
  ui.nameInput.value = "";
  showNameForm();
}

// ---------------------------------------------------------------------------------------------
// Connection state

/** The label of the badge for a pusher-js connection state. */
function connectionLabel(clientState) {
  switch (clientState) {
    case "connected":
      return "connected";
    case "initialized":
    case "connecting":
      return state.everConnected ? "reconnecting" : "connecting";
    case "unavailable":
      return "reconnecting";
    default: // "disconnected", "failed"
      return "offline";
  }
}

function setConnLabel(label) {
  state.connLabel = label;
  ui.connState.textContent = label;
  ui.connState.dataset.state = label;
  ui.chatView.dataset.conn = label;
}

function onConnectionState(clientState) {
  if (state.restarting && clientState === "disconnected") return;
  setConnLabel(connectionLabel(clientState));
  clearInterval(state.countdown);
  state.countdown = null;

  if (clientState === "connected") {
    state.everConnected = true;
    state.refused = null;
    ui.connDetail.hidden = true;
    clearError("connection");
    // The server is back: what waits in the outbox goes now, not at its next retry.
    flushOutbox({ now: true });
    return;
  }
  clearTypers();
  if (clientState === "unavailable" || (clientState === "connecting" && state.everConnected)) {
    const tick = () => {
      const seconds = Math.ceil((state.retryAt - Date.now()) / 1000);
      const offline = navigator.onLine === false ? " You seem to be offline." : "";
      ui.connDetailText.textContent =
        seconds > 0
          ? `Connection lost. Retrying in ${seconds} s…${offline}`
          : `Reconnecting…${offline}`;
    };
    tick();
    state.countdown = setInterval(tick, 1000);
    ui.connRetry.textContent = "Retry now";
    ui.connDetail.hidden = false;
  } else if (clientState === "disconnected" && state.refused) {
    const { code, message } = state.refused;
    const reason = message ? ` (${message})` : "";
    ui.connDetailText.textContent = `The server refused the live connection, code ${code}${reason}. New messages will not appear by themselves.`;
    ui.connRetry.textContent = "Try again";
    ui.connDetail.hidden = false;
  } else if (clientState === "disconnected" || clientState === "failed") {
    ui.connDetailText.textContent = "Disconnected.";
    ui.connRetry.textContent = "Connect";
    ui.connDetail.hidden = false;
  } else {
    ui.connDetail.hidden = true;
  }
}

/** pusher-js will try again in `seconds`: show a countdown. */
function onConnectingIn(seconds) {
  state.retryAt = Date.now() + (Number(seconds) || 0) * 1000;
}

function onConnectionError(error) {
  const data = error && error.type === "PusherError" ? error.data : null;
  const code = data && Number(data.code);
  if (code >= 4000 && code < 4100) {
    // pusher-js disconnects for good after these (unknown app, over quota...): say why.
    state.refused = { code, message: typeof data.message === "string" ? data.message : "" };
  }
  // 4301 (typing hints over the rate limit) is harmless: the next one gets through.
}

/** Connect again at once (the "Retry now" button, the tab coming back, the network returning). */
function retryNow() {
  const client = state.client;
  if (!client) return;
  const current = client.connection.state;
  if (current === "connected") {
    retrySubscription();
    return;
  }
  state.refused = null;
  state.restarting = true;
  try {
    client.disconnect(); // aborts a pending retry; channels are kept and resubscribed
  } finally {
    state.restarting = false;
  }
  client.connect();
}

// ---------------------------------------------------------------------------------------------
// Rooms

function channelName(room) {
  return `presence-room-${room}`;
}

function roomFromHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  const raw = (params.get("room") || "").trim();
  if (!raw) {
    history.replaceState(null, "", `#room=${DEFAULT_ROOM}`);
    return DEFAULT_ROOM;
  }
  if (!ROOM_RE.test(raw)) {
    showError(
      `“${raw}” is not a valid room name, so you are in #${DEFAULT_ROOM}. ` +
        "Room names use lower-case letters, digits and “-”.",
      "hash",
    );
    history.replaceState(null, "", `#room=${DEFAULT_ROOM}`);
    return DEFAULT_ROOM;
  }
  return raw;
}

function suggestRoom(raw) {
  return raw
    .toLowerCase()
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .replace(/[^a-z0-9-]+/g, "-")
    .replace(/-{2,}/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 64)
    .replace(/-+$/, "");
}

function onRoomSubmit(event) {
  event.preventDefault();
  const raw = ui.roomInput.value.trim().replace(/^#/, "");
  if (ROOM_RE.test(raw)) {
    ui.roomError.textContent = "";
    ui.roomInput.removeAttribute("aria-invalid");
    ui.roomInput.value = "";
    createRoom(raw);
    goToRoom(raw);
    return;
  }
  let message;
  if (!raw) {
    message = "Type a room name, e.g. “team-chat”.";
  } else if (raw.length > 64) {
    message = "Room names are at most 64 characters long.";
  } else {
    message =
      "Room names use only lower-case letters (a-z), digits and “-”, and start with a letter or digit.";
    const suggestion = suggestRoom(raw);
    if (suggestion && ROOM_RE.test(suggestion)) message += ` Try “${suggestion}”.`;
  }
  ui.roomError.textContent = message;
  ui.roomInput.setAttribute("aria-invalid", "true");
  ui.roomInput.focus();
}

function goToRoom(room) {
  closeSidebar();
  if (room === state.room) {
    ui.messageInput.focus();
    return;
  }
  location.hash = `room=${room}`; // hashchange opens it; the URL stays shareable
}

function onHashChange() {
  if (!state.client) return;
  clearError("hash");
  const room = roomFromHash();
  openRoom(room);
  focusComposerSoftly();
}

function openRoom(room, { force = false } = {}) {
  if (room === state.room && !force) return;
  const client = state.client;
  if (state.channel) client.unsubscribe(state.channel.name);
  if (state.sync) state.sync.close();

  state.gen += 1;
  state.room = room;
  state.authFailures = 0;
  clearTimeout(state.authRetryTimer);
  state.newBelow = 0;
  state.unseen = 0;
  state.lastTypingSent = 0;
  state.loadingOlder = false;
  state.atBeginning = false;
  stopEditing();
  clearTypers();
  clearError("sync");
  clearError("subscribe");
  ui.messageList.replaceChildren();
  ui.beginning.hidden = true;
  ui.emptyState.hidden = true;
  ui.jump.hidden = true;
  ui.messages.setAttribute("aria-busy", "true");

  ui.roomName.textContent = room;
  ui.messages.setAttribute("aria-label", `Messages in #${room}`);
  ui.messageLabel.textContent = `Message #${room}`;
  ui.messageInput.placeholder = `Message #${room}`;

  const sync = new RoomSync({
    room,
    fetchMessages: ({ after, limit }) => {
      const query = after === undefined ? `limit=${limit}` : `after=${after}&limit=${limit}`;
      return api(`/api/rooms/${encodeURIComponent(room)}/messages?${query}`);
    },
    onAdded: (messages, { initial }) => showMessages(messages, { initial }),
    onLatest: () => {
      ui.messages.removeAttribute("aria-busy");
      updateEmptyState();
      if (sync.minId <= 1) showBeginning();
      else if (ui.messages.scrollHeight <= ui.messages.clientHeight) loadOlder();
    },
    onSynced: () => clearError("sync"),
    onError: (e) => showError(`Could not load the messages of #${room}. ${e.message} Retrying…`, "sync"),
  });
  state.sync = sync;
  updateTitle();
  renderRooms();
  renderOutbox();

  const channel = client.subscribe(channelName(room));
  // pusher-js hands back the same object when a room is left and re-entered before its
  // subscription was answered: start from no handlers so none runs twice.
  channel.unbind_all();
  state.channel = channel;
  const current = (f) => (...args) => {
    if (state.sync === sync) f(...args);
  };
  channel.bind("message", current(onLiveMessage));
  channel.bind("message-updated", current(onMessageUpdated));
  let subscriptions = 0;
  channel.bind(
    "pusher:subscription_succeeded",
    current(() => {
      state.authFailures = 0;
      clearError("subscribe");
      renderOnline();
      // Subscribed (again): fetch whatever was posted while we were not listening.
      sync.subscribed();
      // ...and the current text of what is shown, edited or deleted meanwhile.
      subscriptions += 1;
      if (subscriptions > 1) refreshShown(room, sync);
    }),
  );
  channel.bind("pusher:subscription_error", current((error) => onSubscriptionError(room, error)));
  channel.bind("pusher:member_added", current(() => renderOnline()));
  channel.bind(
    "pusher:member_removed",
    current((member) => {
      if (member) removeTyper(String(member.id));
      renderOnline();
    }),
  );
  channel.bind("client-typing", current(onTyping));
  renderOnline();

  sync.start();
}

/**
 * The room's channel could not be joined. A 401/403 from the auth endpoint means the session
 * is gone: back to the name form. Anything else (a 5xx, the network) is tried again after a
 * growing pause, or at once with "Retry now".
 */
function onSubscriptionError(room, error) {
  const status = error && error.status;
  if (status === 401 || status === 403) {
    showNameForm({ message: "Your session has ended. Pick your name again to keep chatting." });
    return;
  }
  state.authFailures += 1;
  const delay = Math.min(30000, 1000 * 2 ** Math.min(state.authFailures, 5)) * (0.5 + Math.random() / 2);
  const detail = error && error.error ? ` ${error.error}` : "";
  showError(`Could not join the live updates of #${room}; retrying.${detail}`, "subscribe");
  clearTimeout(state.authRetryTimer);
  state.authRetryTimer = setTimeout(retrySubscription, delay);
}

/** Ask for the current room's channel again if it is not subscribed (nor on its way). */
function retrySubscription() {
  clearTimeout(state.authRetryTimer);
  state.authRetryTimer = null;
  const client = state.client;
  const channel = state.channel;
  if (!client || !channel || channel.subscribed || channel.subscriptionPending) return;
  if (client.connection.state !== "connected") return; // pusher-js subscribes on connecting
  client.subscribe(channel.name);
}

/** The lobby channel: rooms created and messages posted anywhere, for the room list. */
function subscribeLobby(client) {
  const lobby = client.subscribe(LOBBY_CHANNEL);
  lobby.unbind_all();
  state.lobby = lobby;
  const current = (f) => (...args) => {
    if (state.client === client) f(...args);
  };
  // (Re)subscribed: what happened while not listening comes from the list itself.
  lobby.bind("pusher:subscription_succeeded", current(() => refreshRooms()));
  lobby.bind(
    "room-created",
    current((data) => {
      if (!data || typeof data.name !== "string" || !ROOM_RE.test(data.name)) return;
      if (!state.rooms.some((r) => r.name === data.name)) {
        state.rooms.unshift({ name: data.name, last_id: 0 });
        renderRooms();
      }
    }),
  );
  lobby.bind(
    "room-activity",
    current((data) => {
      if (!data || typeof data.name !== "string" || !ROOM_RE.test(data.name)) return;
      if (!Number.isSafeInteger(data.last_id)) return;
      const entry = state.rooms.find((r) => r.name === data.name);
      const lastId = Math.max(data.last_id, entry ? entry.last_id : 0);
      state.rooms = [{ name: data.name, last_id: lastId }, ...state.rooms.filter((r) => r !== entry)];
      renderRooms();
    }),
  );
}

/** Tell the server (and so every page, through the lobby) about a room this page opens. */
async function createRoom(room) {
  if (state.rooms.some((r) => r.name === room)) return;
  try {
    await api("/api/rooms", { method: "POST", body: { name: room } });
  } catch {
    /* the room still works here; it is listed once it has a message */
  }
}

async function refreshRooms() {
  try {
    const data = await api("/api/rooms");
    const list = Array.isArray(data.rooms) ? data.rooms : [];
    state.rooms = list.filter((r) => r && typeof r.name === "string" && ROOM_RE.test(r.name));
    renderRooms();
  } catch {
    /* the list is a convenience; try again on the next refresh */
  }
}

function seenMap() {
  return storageGet("pushsvc.seen", {});
}

function markSeen() {
  const maxId = currentMaxId();
  if (!state.room || !maxId || document.hidden) return;
  const seen = seenMap();
  if ((seen[state.room] || 0) >= maxId) return;
  seen[state.room] = maxId;
  storageSet("pushsvc.seen", seen);
  const entry = state.rooms.find((r) => r.name === state.room);
  if (entry && entry.last_id < maxId) entry.last_id = maxId;
  renderRooms();
}

function renderRooms() {
  const seen = seenMap();
  const rooms = [...state.rooms];
  if (state.room && !rooms.some((r) => r.name === state.room)) {
    rooms.unshift({ name: state.room, last_id: currentMaxId() });
  }
  const items = rooms.map((r) => {
    const li = el("li");
    li.dataset.room = r.name;
    const a = el("a", "room-link");
    a.href = `#room=${encodeURIComponent(r.name)}`;
    a.append(el("span", "hash", "#"), el("span", "room-label", r.name));
    if (r.name === state.room) {
      a.setAttribute("aria-current", "page");
    } else if (typeof r.last_id === "number" && r.last_id > (seen[r.name] || 0)) {
      // A room never opened here counts everything it has.
      const unread = r.last_id - (seen[r.name] || 0);
      a.classList.add("unread");
      const badge = el("span", "unread-count", unread > 99 ? "99+" : String(unread));
      badge.dataset.testid = "unread";
      badge.setAttribute("aria-hidden", "true");
      a.append(badge, el("span", "visually-hidden", ` (${unread} new messages)`));
    }
    a.addEventListener("click", () => closeSidebar());
    li.append(a);
    return li;
  });
  ui.rooms.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// Messages: web/sync.js decides what is new; this part only shows it

function currentMaxId() {
  return state.sync ? state.sync.maxId : 0;
}

/** Put messages that are new to the room (from state.sync) on the page, sorted by id. */
function showMessages(list, { initial = false, own = false } = {}) {
  const stick = initial || own || isNearBottom();
  let newer = 0;
  const previousMax = ui.messageList.lastElementChild
    ? Number(ui.messageList.lastElementChild.dataset.id)
    : 0;
  for (const message of list) {
    insertMessageNode(renderMessage(message));
    if (message.id > previousMax) newer += 1;
  }
  updateEmptyState();
  if (stick) {
    scrollToBottom();
  } else if (newer) {
    state.newBelow += newer;
    ui.jump.textContent = state.newBelow === 1 ? "1 new message ↓" : `${state.newBelow} new messages ↓`;
    ui.jump.hidden = false;
  }
  if (document.hidden && !initial && newer) {
    state.unseen += newer;
    updateTitle();
  }
  markSeen();
}

function onLiveMessage(data) {
  // Our own message, posted from another tab or answered late: it is no longer waiting.
  if (data && state.me && data.user_id === state.me.user_id) dropFromOutbox(data.client_id);
  if (!state.sync || !state.sync.live(data)) return;
  removeTyper(String(data.user_id));
}

/** A message was edited or deleted: show its current text where it is shown. */
function onMessageUpdated(data) {
  if (!state.sync || !state.sync.update(data)) return;
  const old = ui.messageList.querySelector(`li.message[data-id="${Number(data.id)}"]`);
  if (!old) return;
  const li = renderMessage(state.sync.messages.get(data.id));
  old.replaceWith(li);
  regroup(li);
  if (li.nextElementSibling) regroup(li.nextElementSibling);
  if (state.editing && state.editing.id === data.id && data.deleted) stopEditing();
}

/** After a reconnect: fetch the newest shown messages again, for edits made meanwhile. */
async function refreshShown(room, sync) {
  const maxId = sync.maxId;
  if (!maxId) return;
  try {
    const data = await api(
      `/api/rooms/${encodeURIComponent(room)}/messages?before=${maxId + 1}&limit=200`,
    );
    for (const m of Array.isArray(data.messages) ? data.messages : []) {
      const held = sync.messages.get(m.id);
      if (held && (held.text !== m.text || held.deleted !== m.deleted)) onMessageUpdated(m);
    }
  } catch {
    /* the next reconnect tries again; live edits still arrive */
  }
}

// ---------------------------------------------------------------------------------------------
// Older messages: scrolling up loads the page before the oldest shown

function showBeginning() {
  state.atBeginning = true;
  ui.beginning.textContent = `This is the beginning of #${state.room}.`;
  ui.beginning.hidden = false;
}

async function loadOlder() {
  const sync = state.sync;
  if (!sync || state.loadingOlder || state.atBeginning || !sync.loadedLatest) return;
  const before = sync.minId;
  if (before <= 1) {
    if (before === 1) showBeginning();
    return;
  }
  const room = state.room;
  state.loadingOlder = true;
  ui.messages.classList.add("loading-older");
  try {
    const data = await api(
      `/api/rooms/${encodeURIComponent(room)}/messages?before=${before}&limit=${OLDER_LIMIT}`,
    );
    if (state.sync !== sync) return;
    const list = Array.isArray(data.messages) ? data.messages : [];
    const added = sync.addOlder(list);
    // Keep what the reader looks at where it is: grow the list above it.
    const m = ui.messages;
    const fromBottom = m.scrollHeight - m.scrollTop;
    const first = ui.messageList.firstElementChild;
    if (added.length && (!first || added[added.length - 1].id < Number(first.dataset.id))) {
      // The usual case: all older than what is shown, so one prepend, not a walk per message.
      const nodes = added.map(renderMessage);
      ui.messageList.prepend(...nodes);
      for (const li of nodes) regroup(li);
      if (first) regroup(first);
    } else {
      for (const message of added) insertMessageNode(renderMessage(message));
    }
    m.scrollTop = m.scrollHeight - fromBottom;
    if (list.length < OLDER_LIMIT || sync.minId <= 1) showBeginning();
  } catch (e) {
    showError(`Could not load older messages of #${room}. ${e.message}`, "older");
  } finally {
    if (state.sync === sync) {
      state.loadingOlder = false;
      ui.messages.classList.remove("loading-older");
      // Still at the top (a tall screen, a fast scroll): the next page.
      if (!state.atBeginning && ui.messages.scrollTop < 200) setTimeout(loadOlder, 0);
    }
  }
}

function insertMessageNode(li) {
  const id = Number(li.dataset.id);
  const list = ui.messageList;
  let before = list.lastElementChild;
  while (before && Number(before.dataset.id) > id) before = before.previousElementSibling;
  list.insertBefore(li, before ? before.nextSibling : list.firstChild);
  regroup(li);
  if (li.nextElementSibling) regroup(li.nextElementSibling);
}

/** Visually merge a message into the previous one when the same person wrote both shortly apart. */
function regroup(li) {
  const prev = li.previousElementSibling;
  const grouped =
    !!prev &&
    prev.dataset.author === li.dataset.author &&
    Math.abs(Number(li.dataset.at) - Number(prev.dataset.at)) < GROUP_WINDOW &&
    dayKey(Number(li.dataset.at)) === dayKey(Number(prev.dataset.at));
  li.classList.toggle("continued", grouped);
  const newDay = !prev || dayKey(Number(li.dataset.at)) !== dayKey(Number(prev.dataset.at));
  li.classList.toggle("new-day", newDay && Number(li.dataset.at) > 0);
}

const dayFormat = new Intl.DateTimeFormat(undefined, {
  weekday: "long",
  year: "numeric",
  month: "long",
  day: "numeric",
});

function dayLabel(ms) {
  const today = dayKey(Date.now());
  if (dayKey(ms) === today) return "Today";
  if (dayKey(ms + 86400000) === today) return "Yesterday";
  return dayFormat.format(new Date(ms));
}

function dayKey(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** A short tag that tells apart two people with one name: from the user id, stable. */
function discriminator(userId) {
  return String(userId || "").slice(0, 4);
}

/** The author's name, a "#tag" from her user id, and "(you)" for one's own. */
function appendWho(parent, name, userId, isMe) {
  parent.append(el("span", "author", name));
  const tag = discriminator(userId);
  if (tag) {
    const span = el("span", "disc", `#${tag}`);
    span.title = "Tells apart people with the same name";
    parent.append(span);
  }
  if (isMe) parent.append(el("span", "you", "(you)"));
}

function renderMessage(message) {
  const author = typeof message.author === "string" && message.author ? message.author : "someone";
  const userId = typeof message.user_id === "string" ? message.user_id : "";
  const at = Date.parse(message.created_at);
  const li = el("li", "message");
  li.dataset.id = String(message.id);
  li.dataset.testid = "message";
  li.dataset.author = userId || `name:${author}`; // grouping is by person, not by name
  li.dataset.at = Number.isFinite(at) ? String(at) : "0";
  if (Number.isFinite(at)) li.dataset.day = dayLabel(at);
  const mine = !!(state.me && userId && userId === state.me.user_id);
  if (mine) li.classList.add("mine");

  const avatar = el("span", `avatar ${hueClass(userId || author)}`);
  avatar.dataset.initial = initial(author); // drawn by CSS, so it is not part of the text
  avatar.setAttribute("aria-hidden", "true");

  const body = el("div", "body");
  const meta = el("div", "meta");
  appendWho(meta, author, userId, mine);
  const time = el("time", "time");
  if (Number.isFinite(at)) {
    const date = new Date(at);
    time.dateTime = date.toISOString();
    const today = dayKey(Date.now()) === dayKey(at);
    time.textContent = today ? timeFormat.format(date) : `${dateFormat.format(date)}, ${timeFormat.format(date)}`;
    time.title = fullFormat.format(date);
  }
  meta.append(time);

  const text = el("p", "text");
  if (message.deleted) {
    li.classList.add("deleted");
    text.textContent = "message deleted";
  } else {
    appendLinkified(text, message.text);
    if (message.edited_at) text.append(el("span", "edited", " (edited)"));
  }
  body.append(meta, text);
  if (mine && !message.deleted) body.append(messageActions(message));
  li.append(avatar, body);
  return li;
}

/** Edit and Delete for one's own message. Delete asks once more on the button itself. */
function messageActions(message) {
  const actions = el("div", "actions");
  const edit = el("button", "action edit", "Edit");
  edit.type = "button";
  edit.addEventListener("click", () => startEditing(message));
  const del = el("button", "action delete", "Delete");
  del.type = "button";
  del.addEventListener("click", () => {
    if (del.dataset.confirm !== "yes") {
      del.dataset.confirm = "yes";
      del.textContent = "Delete? Click again";
      setTimeout(() => {
        del.dataset.confirm = "";
        del.textContent = "Delete";
      }, 4000);
      return;
    }
    changeMessage(message, null);
  });
  actions.append(edit, del);
  return actions;
}

function startEditing(message) {
  state.editing = { room: message.room || state.room, id: message.id };
  ui.editBar.hidden = false;
  ui.messageInput.value = message.text;
  autosize();
  updateComposer();
  ui.messageInput.focus();
}

function stopEditing() {
  if (!state.editing) return;
  state.editing = null;
  ui.editBar.hidden = true;
  ui.messageInput.value = "";
  autosize();
  updateComposer();
}

/** PATCH (text) or DELETE (text null) one's own message; the live event updates every page. */
async function changeMessage(message, text) {
  const room = message.room || state.room;
  const path = `/api/rooms/${encodeURIComponent(room)}/messages/${message.id}`;
  try {
    const updated = await api(path, text === null ? { method: "DELETE" } : { method: "PATCH", body: { text } });
    if (room === state.room) onMessageUpdated(updated);
    clearError("edit");
  } catch (e) {
    showError(`Could not ${text === null ? "delete" : "edit"} the message. ${e.message}`, "edit");
  }
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

/** Put the text in `parent`, turning http(s) URLs into links. Text nodes only; no HTML parsing. */
function appendLinkified(parent, text) {
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Leave trailing punctuation outside the link: "see https://x.org/a." -> link is without "."
    const trimmed = url.replace(/[.,;:!?)\]}]+$/, "");
    url = trimmed;
    const start = match.index;
    let href = null;
    try {
      const parsed = new URL(url);
      if (parsed.protocol === "http:" || parsed.protocol === "https:") href = parsed.href;
    } catch {
      href = null;
    }
    if (!href) continue;
    if (start > last) parent.append(document.createTextNode(text.slice(last, start)));
    const a = el("a", null, url);
    a.href = href;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    parent.append(a);
    last = start + url.length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function updateEmptyState() {
  const sync = state.sync;
  ui.emptyState.hidden =
    !sync || !sync.loadedLatest || sync.messages.size > 0 || ui.outboxList.childElementCount > 0;
}

// ---------------------------------------------------------------------------------------------
// Scrolling

function isNearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
}

function scrollToBottom() {
  const m = ui.messages;
  m.scrollTop = m.scrollHeight;
  state.newBelow = 0;
  ui.jump.hidden = true;
}

function onMessagesScroll() {
  if (ui.messages.scrollTop < 200) loadOlder();
  if (isNearBottom()) {
    state.newBelow = 0;
    ui.jump.hidden = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Composer

function autosize() {
  const t = ui.messageInput;
  t.style.height = "auto";
  t.style.height = `${Math.min(t.scrollHeight, 200)}px`;
}

function updateComposer() {
  const text = ui.messageInput.value;
  ui.send.disabled = !text.trim() || text.length > MAX_TEXT;
  const remaining = MAX_TEXT - text.length;
  ui.charCount.textContent = remaining < 200 ? `${remaining} characters left` : "";
}

function onComposerKeydown(event) {
  if (event.key === "Escape" && state.editing) {
    event.preventDefault();
    stopEditing();
    return;
  }
  if (event.key !== "Enter" || event.shiftKey || event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.isComposing || event.keyCode === 229) return; // an IME is composing: Enter picks a word
  event.preventDefault();
  sendMessage();
}

function onComposerInput() {
  autosize();
  updateComposer();
  if (state.errorSource === "send") clearError("send");
  maybeSendTyping();
}

function maybeSendTyping() {
  if (!ui.messageInput.value.trim() || !state.channel || !state.me) return;
  const now = Date.now();
  if (now - state.lastTypingSent < TYPING_SEND_EVERY) return;
  if (state.channel.trigger("client-typing", { name: state.me.name })) state.lastTypingSent = now;
}

function sendMessage() {
  const text = ui.messageInput.value;
  if (!text.trim()) return;
  if (text.length > MAX_TEXT) {
    showError(`The message is longer than ${MAX_TEXT} characters.`, "send");
    return;
  }
  if (state.editing) {
    const { room, id } = state.editing;
    const held = state.sync && state.sync.messages.get(id);
    stopEditing();
    if (held && held.text !== text) changeMessage({ ...held, room }, text);
    return;
  }
  if (state.outbox.length >= OUTBOX_MAX) {
    showError("Too many messages are waiting to be sent; wait until the connection is back.", "send");
    return;
  }
  // The id is made when the message is typed: however often it is sent, it is stored once.
  state.outbox.push({
    client_id: newClientId(),
    user_id: state.me.user_id,
    room: state.room,
    text,
    state: "sending",
  });
  saveOutbox();
  ui.messageInput.value = "";
  state.lastTypingSent = 0;
  clearError("send");
  autosize();
  updateComposer();
  renderOutbox();
  scrollToBottom();
  flushOutbox({ now: true });
}

function newClientId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------------------------------------
// Outbox: typed messages wait here (and in localStorage, across a reload) until stored

/** What this user left unsent (another user's leftovers on a shared browser are dropped). */
function loadOutbox() {
  const stored = storageGet(OUTBOX_KEY, []);
  const me = state.me ? state.me.user_id : null;
  state.outbox = (Array.isArray(stored) ? stored : [])
    .filter(
      (m) =>
        m &&
        m.user_id === me &&
        typeof m.client_id === "string" &&
        typeof m.text === "string" &&
        typeof m.room === "string" &&
        ROOM_RE.test(m.room),
    )
    .slice(0, OUTBOX_MAX)
    .map((m) => ({ ...m, state: "retrying" }));
  saveOutbox();
  renderOutbox();
}

function saveOutbox() {
  storageSet(
    OUTBOX_KEY,
    state.outbox.map(({ client_id, user_id, room, text }) => ({ client_id, user_id, room, text })),
  );
}

function dropFromOutbox(clientId) {
  if (!clientId) return;
  const before = state.outbox.length;
  state.outbox = state.outbox.filter((m) => m.client_id !== clientId);
  if (state.outbox.length !== before) {
    saveOutbox();
    renderOutbox();
  }
}

/**
 * Send what waits, oldest first, one at a time (so they are stored in the order typed). A
 * failure that may pass (no answer, 5xx, 429) leaves it waiting and tries again later, at once
 * when the connection comes back; one the server refuses for good (4xx) is dropped, saying why.
 */
async function flushOutbox({ now = false } = {}) {
  if (now) {
    clearTimeout(state.outboxTimer);
    state.outboxTimer = null;
  } else if (state.outboxTimer) {
    return;
  }
  if (state.flushing || !state.me) return;
  state.flushing = true;
  const me = state.me;
  try {
    while (state.outbox.length && state.me === me) {
      const item = state.outbox[0];
      let message;
      try {
        message = await api(`/api/rooms/${encodeURIComponent(item.room)}/messages`, {
          method: "POST",
          body: { text: item.text, client_id: item.client_id },
        });
      } catch (e) {
        if (state.me !== me) return;
        const passing = e.status === 0 || e.status >= 500 || e.status === 429 || e.status === 408;
        if (e.status === 401) {
          showNameForm({ message: `${e.message} Your unsent messages are kept.` });
          return;
        }
        if (!passing) {
          dropFromOutbox(item.client_id);
          showError(`A message could not be sent: ${e.message}`, "send");
          continue;
        }
        for (const m of state.outbox) m.state = "retrying";
        renderOutbox();
        state.outboxFailures += 1;
        const delay = Math.min(30000, 1000 * 2 ** Math.min(state.outboxFailures, 5));
        showError(
          state.outbox.length === 1
            ? `${e.message} Your message will be sent by itself when the server answers.`
            : `${e.message} ${state.outbox.length} messages will be sent by themselves when the server answers.`,
          "send",
        );
        state.outboxTimer = setTimeout(() => {
          state.outboxTimer = null;
          flushOutbox();
        }, delay);
        return;
      }
      state.outboxFailures = 0;
      dropFromOutbox(item.client_id);
      if (item.room === state.room && state.sync && state.sync.live(message)) scrollToBottom();
      if (!state.rooms.some((r) => r.name === item.room)) refreshRooms();
    }
    if (!state.outbox.length) clearError("send");
  } finally {
    state.flushing = false;
  }
}

/** The current room's waiting messages, below the sent ones. */
function renderOutbox() {
  const items = state.outbox
    .filter((m) => m.room === state.room)
    .map((m) => {
      const li = el("li", "message mine pending");
      li.dataset.clientId = m.client_id;
      const avatar = el("span", `avatar ${hueClass(state.me ? state.me.user_id : "")}`);
      avatar.dataset.initial = initial(state.me ? state.me.name : "?");
      avatar.setAttribute("aria-hidden", "true");
      const body = el("div", "body");
      const meta = el("div", "meta");
      if (state.me) appendWho(meta, state.me.name, state.me.user_id, true);
      const status = el("span", "status", m.state === "sending" ? "sending…" : "not sent, retrying");
      status.dataset.testid = "outbox-status";
      meta.append(status);
      const text = el("p", "text", m.text);
      body.append(meta, text);
      li.append(avatar, body);
      return li;
    });
  ui.outboxList.replaceChildren(...items);
  updateEmptyState();
}

// ---------------------------------------------------------------------------------------------
// Presence and typing

function renderOnline() {
  const channel = state.channel;
  const myId = state.me ? String(state.me.user_id) : null;
  const entries = [];
  // pusher-js's presence members: one per user however many tabs, filled on subscription.
  if (channel && channel.members && channel.subscribed) {
    channel.members.each(({ id, info }) => {
      entries.push({
        id: String(id),
        name: info && typeof info.name === "string" && info.name ? info.name : "someone",
      });
    });
  }
  entries.sort((a, b) => {
    if (a.id === myId) return -1;
    if (b.id === myId) return 1;
    return a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id);
  });
  const items = entries.map(({ id, name }) => {
    const li = el("li", "person");
    li.dataset.userId = id;
    if (id === myId) li.classList.add("me");
    const avatar = el("span", `avatar small ${hueClass(id)}`);
    avatar.dataset.initial = initial(name);
    avatar.setAttribute("aria-hidden", "true");
    const who = el("span", "person-name");
    appendWho(who, name, id, id === myId);
    li.append(avatar, who);
    return li;
  });
  ui.online.replaceChildren(...items);
  ui.onlineCount.textContent = String(entries.length);
}

function onTyping(data, meta) {
  const userId = String((meta && meta.user_id) || (data && data.user_id) || "");
  if (!userId || (state.me && userId === String(state.me.user_id))) return;
  const member = state.channel && state.channel.members ? state.channel.members.get(userId) : null;
  const info = member ? member.info : null;
  const name = (info && typeof info.name === "string" && info.name) || (data && typeof data.name === "string" && data.name);
  if (!name) return;
  const existing = state.typers.get(userId);
  if (existing) clearTimeout(existing.timer);
  const timer = setTimeout(() => removeTyper(userId), TYPING_SHOW_FOR);
  state.typers.set(userId, { name: name.slice(0, 64), timer });
  renderTyping();
}

function removeTyper(userId) {
  const typer = state.typers.get(userId);
  if (!typer) return;
  clearTimeout(typer.timer);
  state.typers.delete(userId);
  renderTyping();
}

function clearTypers() {
  for (const typer of state.typers.values()) clearTimeout(typer.timer);
  state.typers.clear();
  renderTyping();
}

function renderTyping() {
  const names = [...state.typers.values()].map((t) => t.name).sort((a, b) => a.localeCompare(b));
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length === 3) text = `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
  else if (names.length > 3) text = "Several people are typing…";
  ui.typing.textContent = text;
  ui.typing.classList.toggle("active", names.length > 0);
}

// ---------------------------------------------------------------------------------------------
// Page chrome

function updateTitle() {
  const room = state.room ? `#${state.room} · ` : "";
  const unseen = state.unseen ? `(${state.unseen}) ` : "";
  document.title = `${unseen}${room}pushsvc chat`;
}

function openSidebar() {
  ui.chatView.classList.add("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "true");
  ui.backdrop.hidden = false;
  ui.roomInput.focus({ preventScroll: true });
}

function closeSidebar() {
  if (!ui.chatView.classList.contains("sidebar-open")) return;
  ui.chatView.classList.remove("sidebar-open");
  ui.sidebarToggle.setAttribute("aria-expanded", "false");
  ui.backdrop.hidden = true;
}

function toggleSidebar() {
  if (ui.chatView.classList.contains("sidebar-open")) {
    closeSidebar();
    ui.sidebarToggle.focus();
  } else {
    openSidebar();
  }
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText(location.href);
    ui.copyLink.textContent = "Copied!";
  } catch {
    ui.copyLink.textContent = "Copy failed";
  }
  setTimeout(() => {
    ui.copyLink.textContent = "Copy link";
  }, 2000);
}

function onVisibilityChange() {
  if (document.hidden) return;
  state.unseen = 0;
  updateTitle();
  markSeen();
  if (state.client && !["connected", "disconnected"].includes(state.client.connection.state)) retryNow();
}

function wire() {
  ui.errorDismiss.addEventListener("click", () => clearError());
  ui.editCancel.addEventListener("click", () => {
    stopEditing();
    ui.messageInput.focus();
  });
  ui.bootRetry.addEventListener("click", boot);
  ui.nameForm.addEventListener("submit", onNameSubmit);
  ui.nameInput.addEventListener("input", () => {
    ui.nameInput.removeAttribute("aria-invalid");
    if (state.errorSource === "name") clearError("name");
  });
  ui.nameCancel.addEventListener("click", () => {
    clearError("name");
    showView("chat");
    ui.messageInput.focus();
  });
  ui.signOut.addEventListener("click", signOut);
  ui.changeName.addEventListener("click", () => {
    closeSidebar();
    showNameForm({ prefill: state.me ? state.me.name : "" });
    ui.nameInput.select();
  });
  ui.roomForm.addEventListener("submit", onRoomSubmit);
  ui.roomInput.addEventListener("input", () => {
    ui.roomError.textContent = "";
    ui.roomInput.removeAttribute("aria-invalid");
  });
  ui.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  ui.messageInput.addEventListener("keydown", onComposerKeydown);
  ui.messageInput.addEventListener("input", onComposerInput);
  ui.messages.addEventListener("scroll", onMessagesScroll, { passive: true });
  ui.jump.addEventListener("click", () => {
    scrollToBottom();
    ui.messageInput.focus();
  });
  ui.connRetry.addEventListener("click", () => {
    retryNow();
  });
  ui.sidebarToggle.addEventListener("click", toggleSidebar);
  ui.backdrop.addEventListener("click", closeSidebar);
  ui.copyLink.addEventListener("click", copyLink);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && ui.chatView.classList.contains("sidebar-open")) {
      closeSidebar();
      ui.sidebarToggle.focus();
    }
  });
  window.addEventListener("hashchange", onHashChange);
  document.addEventListener("visibilitychange", onVisibilityChange);
  window.addEventListener("online", () => {
    if (state.client && state.client.connection.state !== "disconnected") retryNow();
  });
  window.addEventListener("pagehide", () => {
    // Leave the presence list at once rather than when the server notices the socket is gone.
    if (state.client) state.client.disconnect();
  });
  window.addEventListener("pageshow", (event) => {
    if (event.persisted && state.client) state.client.connect();
  });
}

wire();
boot();
