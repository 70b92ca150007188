// app.js: the pushsvc chat page.
//
// Security rule for this file: text that comes from users or the server (names, messages, room
// names, error sentences) is only ever put on the page with textContent / createTextNode /
// attribute setters. Never innerHTML, insertAdjacentHTML or document.write.

import { PushClient } from "./pushclient.js";

const ROOM_RE = /^[a-z0-9][a-z0-9-]{0,63}$/;
const DEFAULT_ROOM = "general";
const LATEST_LIMIT = 50;
const CATCHUP_LIMIT = 200;
const MAX_TEXT = 2000;
const MAX_NAME = 32;
const TYPING_SEND_EVERY = 2000; // ms between two client-typing events from this page
const TYPING_SHOW_FOR = 3000; // ms a "... is typing" hint lasts without a new event
const GROUP_WINDOW = 5 * 60 * 1000; // consecutive messages by one author within this are grouped
const ROOMS_REFRESH = 30000;
const REQUEST_TIMEOUT = 15000;

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
  messages: $("messages"),
  messageList: $("message-list"),
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
  client: null,
  connLabel: "connecting",
  retryAt: 0,
  countdown: null,

  room: null,
  channel: null,
  gen: 0, // bumped on every room switch; late answers for an older room are dropped
  messages: new Map(), // id -> message, for the current room
  maxId: 0,
  loadedLatest: false,
  needLatest: false,
  needCatchUp: false,
  syncedId: 0, // every message with an id up to this one is in `messages`
  syncGen: null, // the room generation whose sync loop is running, if any
  syncFailures: 0,
  syncRetryTimer: null,

  typers: new Map(), // user_id -> { name, timer }
  lastTypingSent: 0,
  sending: false,
  unseen: 0, // messages that arrived while the tab was hidden
  newBelow: 0, // messages that arrived while the user was scrolled up

  rooms: [],
  errorSource: null,
  roomsTimer: null,
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
  enterChat(session);
}

function bootFailed(message) {
  ui.loadingText.textContent = message;
  ui.bootRetry.hidden = false;
  ui.bootRetry.focus();
}

function websocketURL(config) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = config.ws_path || `/app/${encodeURIComponent(config.app_key)}`;
  return `${scheme}//${location.host}${path}?protocol=7&client=js&version=8.4.0&flash=false`;
}

function enterChat(session) {
  state.me = session;
  ui.meName.textContent = session.name;
  showView("chat");

  state.client = new PushClient({
    url: websocketURL(state.config),
    authEndpoint: "/api/pusher/auth",
    activityTimeout: state.config.activity_timeout || 120,
    onState: onConnectionState,
  });
  state.client.bind("error", onClientError);
  state.client.connect();

  if (navigator.clipboard && window.isSecureContext) ui.copyLink.hidden = false;

  openRoom(roomFromHash());
  refreshRooms();
  state.roomsTimer = setInterval(() => {
    if (!document.hidden) refreshRooms();
  }, ROOMS_REFRESH);
  updateComposer();
  focusComposerSoftly();
}

// ---------------------------------------------------------------------------------------------
// Connection state

const STATE_LABELS = {
  initialized: "connecting",
  connecting: "connecting",
  connected: "connected",
  reconnecting: "reconnecting",
  failed: "offline",
  disconnected: "offline",
};

function onConnectionState(clientState, info) {
  const label = STATE_LABELS[clientState] || "offline";
  state.connLabel = label;
  ui.connState.textContent = label;
  ui.connState.dataset.state = label;
  ui.chatView.dataset.conn = label;
  clearInterval(state.countdown);
  state.countdown = null;

  if (clientState === "connected") {
    ui.connDetail.hidden = true;
    clearError("connection");
    return;
  }
  clearTypers();
  if (clientState === "reconnecting") {
    state.retryAt = Date.now() + (info.delay || 0);
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
  } else if (clientState === "failed") {
    const reason = info.reason ? ` (${info.reason})` : "";
    ui.connDetailText.textContent = `The server refused the live connection, code ${info.code}${reason}. New messages will not appear by themselves.`;
    ui.connRetry.textContent = "Try again";
    ui.connDetail.hidden = false;
  } else if (clientState === "disconnected") {
    ui.connDetailText.textContent = "Disconnected.";
    ui.connRetry.textContent = "Connect";
    ui.connDetail.hidden = false;
  } else {
    ui.connDetail.hidden = true;
  }
}

function onClientError(error) {
  if (!error) return;
  if (error.type === "AuthError" && error.channel === channelName(state.room)) {
    if (error.status === 401 || error.status === 403) {
      showNameForm({ message: "Your session has ended. Pick your name again to keep chatting." });
    }
  } else if (error.type === "PusherError" && error.code === 4301) {
    // Typing hints over the rate limit: harmless, the next one will get through.
  }
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

  state.gen += 1;
  state.room = room;
  state.messages = new Map();
  state.maxId = 0;
  state.loadedLatest = false;
  state.needLatest = false;
  state.needCatchUp = false;
  state.syncedId = 0;
  state.syncFailures = 0;
  clearTimeout(state.syncRetryTimer);
  state.newBelow = 0;
  state.unseen = 0;
  state.lastTypingSent = 0;
  clearTypers();
  clearError("sync");
  ui.messageList.replaceChildren();
  ui.emptyState.hidden = true;
  ui.jump.hidden = true;
  ui.messages.setAttribute("aria-busy", "true");

  ui.roomName.textContent = room;
  ui.messages.setAttribute("aria-label", `Messages in #${room}`);
  ui.messageLabel.textContent = `Message #${room}`;
  ui.messageInput.placeholder = `Message #${room}`;
  updateTitle();
  renderRooms();

  const channel = client.subscribe(channelName(room));
  state.channel = channel;
  channel.bind("message", onLiveMessage);
  channel.bind("pusher:subscription_succeeded", () => {
    clearError("subscribe");
    renderOnline();
    // Subscribed (again): fetch whatever was posted while we were not listening.
    requestSync({ catchUp: true });
  });
  channel.bind("pusher:subscription_error", (error) => {
    const status = error && error.status;
    if (status === 401 || status === 403) return; // onClientError sends the user to the name form
    const detail = error && error.error ? ` ${error.error}` : "";
    showError(`Could not join the live updates of #${room}; retrying.${detail}`, "subscribe");
  });
  channel.bind("pusher:member_added", () => renderOnline());
  channel.bind("pusher:member_removed", ({ id }) => {
    removeTyper(id);
    renderOnline();
  });
  channel.bind("client-typing", onTyping);
  renderOnline();

  requestSync({ latest: true });
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
  if (!state.room || !state.maxId || document.hidden) return;
  const seen = seenMap();
  if ((seen[state.room] || 0) >= state.maxId) return;
  seen[state.room] = state.maxId;
  storageSet("pushsvc.seen", seen);
  const entry = state.rooms.find((r) => r.name === state.room);
  if (entry && entry.last_id < state.maxId) entry.last_id = state.maxId;
  renderRooms();
}

function renderRooms() {
  const seen = seenMap();
  const rooms = [...state.rooms];
  if (state.room && !rooms.some((r) => r.name === state.room)) {
    rooms.unshift({ name: state.room, last_id: state.maxId });
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
      a.classList.add("unread");
      a.append(el("span", "visually-hidden", " (new messages)"));
    }
    a.addEventListener("click", () => closeSidebar());
    li.append(a);
    return li;
  });
  ui.rooms.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------------------
// Messages: never miss, never duplicate

// The rule: subscribe first, then fetch. Whatever was posted before the subscription succeeded
// comes from GET .../messages, whatever after arrives live; the Map by id drops duplicates.
//
// state.syncedId is the highest id up to which we are sure to hold every message (ids are
// consecutive within a room). Live messages extend it only when they follow on from it; a live
// message beyond it means we missed something, and a catch-up from syncedId fetches it. After every
// (re)subscription a catch-up runs too. If ids ever had holes this only costs extra fetches.

function requestSync({ latest = false, catchUp = false } = {}) {
  if (latest) state.needLatest = true;
  if (catchUp) state.needCatchUp = true;
  if (state.syncGen !== state.gen) runSync();
}

function syncPending() {
  return state.needLatest || state.needCatchUp;
}

function advanceSynced(upTo) {
  if (upTo > state.syncedId) state.syncedId = upTo;
  while (state.messages.has(state.syncedId + 1)) state.syncedId += 1;
}

async function runSync() {
  const gen = state.gen;
  state.syncGen = gen;
  clearTimeout(state.syncRetryTimer);
  const room = state.room;
  const base = `/api/rooms/${encodeURIComponent(room)}/messages`;
  try {
    while (gen === state.gen && syncPending()) {
      if (state.needLatest || !state.loadedLatest) {
        state.needLatest = false;
        let data;
        try {
          data = await api(`${base}?limit=${LATEST_LIMIT}`);
        } catch (e) {
          if (gen === state.gen) state.needLatest = true;
          throw e;
        }
        if (gen !== state.gen) return;
        const batch = Array.isArray(data.messages) ? data.messages : [];
        addMessages(batch, { initial: !state.loadedLatest });
        state.loadedLatest = true;
        const last = batch[batch.length - 1];
        advanceSynced(last && Number.isSafeInteger(last.id) ? last.id : 0);
        ui.messages.removeAttribute("aria-busy");
        // Anything live beyond what we now hold complete? Catch up (also covers a subscription
        // that succeeded while this answer was on its way).
        if (state.maxId > state.syncedId) state.needCatchUp = true;
        continue;
      }
      state.needCatchUp = false;
      let after = state.syncedId;
      try {
        for (;;) {
          const data = await api(`${base}?after=${after}&limit=${CATCHUP_LIMIT}`);
          if (gen !== state.gen) return;
          const batch = Array.isArray(data.messages) ? data.messages : [];
          addMessages(batch);
          const last = batch[batch.length - 1];
          if (last && Number.isSafeInteger(last.id)) advanceSynced(last.id);
          if (batch.length < CATCHUP_LIMIT || !last || !(last.id > after)) break;
          after = last.id;
        }
      } catch (e) {
        if (gen === state.gen) state.needCatchUp = true;
        throw e;
      }
    }
    if (gen === state.gen) {
      state.syncFailures = 0;
      clearError("sync");
    }
  } catch (e) {
    if (gen !== state.gen) return;
    // Keep what is pending and try again with a growing pause.
    state.syncFailures += 1;
    const delay = Math.min(30000, 1000 * 2 ** Math.min(state.syncFailures, 5)) * (0.5 + Math.random() / 2);
    showError(`Could not load the messages of #${room}. ${e.message} Retrying…`, "sync");
    state.syncRetryTimer = setTimeout(() => {
      if (gen === state.gen && syncPending() && state.syncGen !== gen) runSync();
    }, delay);
  } finally {
    if (state.syncGen === gen) state.syncGen = null;
  }
}

function validMessage(m) {
  return (
    m &&
    typeof m === "object" &&
    Number.isSafeInteger(m.id) &&
    typeof m.text === "string" &&
    (m.room === undefined || m.room === state.room)
  );
}

/** Merge messages into the Map and the DOM, sorted by id, skipping ids already shown. */
function addMessages(list, { initial = false, own = false } = {}) {
  if (!Array.isArray(list) || list.length === 0) {
    updateEmptyState();
    return 0;
  }
  const stick = initial || own || isNearBottom();
  const previousMax = state.maxId;
  let added = 0;
  let newer = 0;
  for (const message of list) {
    if (!validMessage(message) || state.messages.has(message.id)) continue;
    state.messages.set(message.id, message);
    insertMessageNode(renderMessage(message));
    if (message.id > state.maxId) state.maxId = message.id;
    if (message.id > previousMax) newer += 1;
    added += 1;
  }
  if (!added) return 0;
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
  return added;
}

/** After a live or just-posted message: if it does not follow on from what we hold, fetch the gap. */
function checkForGap() {
  advanceSynced(0);
  if (state.loadedLatest && state.maxId > state.syncedId) requestSync({ catchUp: true });
}

function onLiveMessage(data) {
  if (!validMessage(data)) return;
  addMessages([data]);
  checkForGap();
  for (const [id, typer] of state.typers) {
    if (typer.name === data.author) removeTyper(id);
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

function dayKey(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const dateFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

function renderMessage(message) {
  const author = typeof message.author === "string" && message.author ? message.author : "someone";
  const at = Date.parse(message.created_at);
  const li = el("li", "message");
  li.dataset.id = String(message.id);
  li.dataset.testid = "message";
  li.dataset.author = author;
  li.dataset.at = Number.isFinite(at) ? String(at) : "0";
  if (state.me && author === state.me.name) li.classList.add("mine");

  const avatar = el("span", `avatar ${hueClass(author)}`);
  avatar.dataset.initial = initial(author); // drawn by CSS, so it is not part of the text
  avatar.setAttribute("aria-hidden", "true");

  const body = el("div", "body");
  const meta = el("div", "meta");
  meta.append(el("span", "author", author));
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
  appendLinkified(text, message.text);
  body.append(meta, text);
  li.append(avatar, body);
  return li;
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
  ui.emptyState.hidden = !(state.loadedLatest || state.messages.size) || state.messages.size > 0;
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
  ui.send.disabled = state.sending || !text.trim() || text.length > MAX_TEXT;
  const remaining = MAX_TEXT - text.length;
  ui.charCount.textContent = remaining < 200 ? `${remaining} characters left` : "";
}

function onComposerKeydown(event) {
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

async function sendMessage() {
  const text = ui.messageInput.value;
  if (state.sending || !text.trim()) return;
  if (text.length > MAX_TEXT) {
    showError(`The message is longer than ${MAX_TEXT} characters.`, "send");
    return;
  }
  const room = state.room;
  const gen = state.gen;
  state.sending = true;
  ui.messageInput.disabled = true;
  ui.send.disabled = true;
  ui.composer.setAttribute("aria-busy", "true");
  try {
    const message = await api(`/api/rooms/${encodeURIComponent(room)}/messages`, {
      method: "POST",
      body: { text },
    });
    if (gen === state.gen) {
      addMessages([message], { own: true }); // the live event then dedups
      checkForGap();
    }
    ui.messageInput.value = "";
    state.lastTypingSent = 0;
    clearError("send");
    if (!state.rooms.some((r) => r.name === room)) refreshRooms();
  } catch (e) {
    showError(e.message, "send"); // the text stays in the box
    if (e.status === 401) {
      state.sending = false;
      ui.messageInput.disabled = false;
      showNameForm({ message: `${e.message} Your message is kept.` });
    }
  } finally {
    state.sending = false;
    ui.messageInput.disabled = false;
    ui.composer.removeAttribute("aria-busy");
    autosize();
    updateComposer();
    if (!ui.chatView.hidden) ui.messageInput.focus();
  }
}

// ---------------------------------------------------------------------------------------------
// Presence and typing

function renderOnline() {
  const channel = state.channel;
  const members = channel ? channel.members : new Map();
  const myId = state.me ? String(state.me.user_id) : null;
  const entries = [...members.entries()].map(([id, info]) => ({
    id,
    name: info && typeof info.name === "string" && info.name ? info.name : "someone",
  }));
  entries.sort((a, b) => {
    if (a.id === myId) return -1;
    if (b.id === myId) return 1;
    return a.name.localeCompare(b.name, undefined, { sensitivity: "base" }) || a.id.localeCompare(b.id);
  });
  const items = entries.map(({ id, name }) => {
    const li = el("li", "person");
    li.dataset.userId = id;
    if (id === myId) li.classList.add("me");
    const avatar = el("span", `avatar small ${hueClass(name)}`);
    avatar.dataset.initial = initial(name);
    avatar.setAttribute("aria-hidden", "true");
    li.append(avatar, el("span", "person-name", name));
    if (id === myId) li.title = "you";
    return li;
  });
  ui.online.replaceChildren(...items);
  ui.onlineCount.textContent = String(entries.length);
}

function onTyping(data, meta) {
  const userId = String((meta && meta.user_id) || (data && data.user_id) || "");
  if (!userId || (state.me && userId === String(state.me.user_id))) return;
  const info = state.channel ? state.channel.members.get(userId) : null;
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
  if (state.client && state.client.state === "reconnecting") state.client.retryNow();
}

function wire() {
  ui.errorDismiss.addEventListener("click", () => clearError());
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
    if (!state.client) return;
    if (state.client.state === "disconnected") state.client.connect();
    else state.client.retryNow();
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
    if (state.client) state.client.retryNow();
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
