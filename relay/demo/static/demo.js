// The pgrelay demo page: a public share gallery and its owner's live dashboard.
//
// The dashboard fetches its rows once the relay has confirmed both subscriptions (data fetched
// earlier could predate the stream), holds the events that arrive while the fetch is in flight
// and applies them after it: each event carries the row's values, so applying them in order
// over the snapshot ends at the current state. Later changes are patched into the page in place.

import { createClient } from '/client.js';

const MAX_GENERATIONS = 20;
const STATE_LABELS = {
  connecting: 'Connecting',
  live: 'Live',
  polling: 'Live (polling)',
  reconnecting: 'Reconnecting',
  offline: 'Offline',
  closed: 'Offline',
};

const TAB_LABELS = {
  leader: 'this tab, shared',
  follower: 'another tab’s',
  solo: 'this tab’s own',
  joining: 'joining',
};

const $ = (selector) => document.querySelector(selector);
const token = new URLSearchParams(location.search).get('token');

// -- small DOM helpers -------------------------------------------------------------------------

function h(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A colour field standing in for a picture; a real image only from this origin or data:. */
function art(seed, url) {
  const node = h('span', 'art');
  node.style.setProperty('--h', String((Number(seed) * 67) % 360));
  if (url && isLocalImage(url)) {
    const img = h('img');
    img.alt = '';
    img.src = url;
    node.append(img);
  }
  return node;
}

function isLocalImage(url) {
  if (/^data:image\//i.test(url)) return true;
  try {
    return new URL(url, location.href).origin === location.origin;
  } catch {
    return false;
  }
}

/** Restarts a CSS animation class on an element. */
function flash(node, className) {
  node.classList.remove(className);
  void node.offsetWidth;
  node.classList.add(className);
}

let toastTimer = 0;
function toast(message) {
  const node = $('#toast');
  node.textContent = message;
  node.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => node.classList.remove('show'), 2200);
}

function showNotice(title, text) {
  $('#app').hidden = true;
  for (const chip of ['#user', '#tab', '#latency', '#status']) $(chip).hidden = true;
  const notice = $('#notice');
  notice.querySelector('.title').textContent = title;
  notice.querySelector('.text').textContent = text;
  notice.hidden = false;
}

function showState(state) {
  const node = $('#status');
  node.dataset.state = state;
  node.querySelector('.label').textContent = STATE_LABELS[state] ?? state;
}

/** Which tab holds the websocket, and how old the last event is (the Live indicator's title). */
function showSharing() {
  if (!client) return;
  const role = client.tabRole;
  const node = $('#tab');
  node.hidden = role === 'closed';
  node.dataset.role = role;
  node.querySelector('b').textContent = TAB_LABELS[role] ?? role;
  const at = client.lastEventAt;
  $('#status').title = at === null
    ? 'No event yet'
    : `Last event ${Math.max(0, Math.round((Date.now() - at) / 1000))} s ago`;
}

function showLatency(event) {
  const ms = Math.max(0, Date.now() - Date.parse(event.ts));
  if (!Number.isFinite(ms)) return;
  const node = $('#latency');
  node.dataset.ms = String(ms);
  node.dataset.speed = ms < 150 ? 'fast' : ms < 1000 ? 'ok' : 'slow';
  node.querySelector('.v').textContent = ms < 10000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// -- dashboard: share clicks -------------------------------------------------------------------

const thumbnails = new Map(); // id -> <li>

function upsertThumbnail(row) {
  const id = String(row.id);
  let item = thumbnails.get(id);
  if (!item) {
    item = h('li', 'thumb');
    item.dataset.thumbnailId = id;
    const what = h('div', 'what');
    what.append(h('div', 'title'), h('div', 'project'));
    const clicks = h('div', 'clicks');
    clicks.append(h('span', 'count'), h('span', 'unit', 'share clicks'));
    item.append(art(id), what, clicks);
    const list = $('#thumbnails');
    const next = [...list.children].find((li) => Number(li.dataset.thumbnailId) > Number(id));
    list.insertBefore(item, next ?? null);
    thumbnails.set(id, item);
  }
  item.querySelector('.title').textContent = row.title ?? '';
  item.querySelector('.project').textContent = row.project_id ?? '';
  const count = String(row.share_click_count ?? 0);
  if (item.dataset.count !== count) {
    const changed = item.dataset.count !== undefined;
    item.dataset.count = count;
    const countNode = item.querySelector('.count');
    countNode.dataset.count = count;
    countNode.textContent = count;
    if (changed) flash(item, 'bump');
  }
}

function removeThumbnail(id) {
  thumbnails.get(String(id))?.remove();
  thumbnails.delete(String(id));
}

// -- dashboard: generations --------------------------------------------------------------------

const generations = new Map(); // id -> <li>

function upsertGeneration(row, { animate }) {
  const id = String(row.id);
  let item = generations.get(id);
  const list = $('#generations');
  if (!item) {
    const oldest = list.lastElementChild;
    if (generations.size >= MAX_GENERATIONS && Number(oldest.dataset.generationId) > row.id) return;
    item = h('li', 'gen');
    item.dataset.generationId = id;
    item.dataset.url = '';
    const what = h('div', 'what');
    what.append(h('div', 'shot-id'), h('div', 'detail'));
    item.append(art(id), what, h('span', 'pill'));
    const next = [...list.children].find((li) => Number(li.dataset.generationId) < Number(id));
    list.insertBefore(item, next ?? null);
    generations.set(id, item);
    if (animate) flash(item, 'enter');
    while (generations.size > MAX_GENERATIONS) {
      const last = list.lastElementChild;
      generations.delete(last.dataset.generationId);
      last.remove();
    }
  }
  item.dataset.status = row.status;
  item.querySelector('.shot-id').textContent = row.shot_id ?? `generation ${id}`;
  const at = row.created_at ? new Date(row.created_at).toLocaleTimeString() : '';
  item.querySelector('.detail').textContent = [row.project_id, at].filter(Boolean).join(' · ');
  const pill = item.querySelector('.pill');
  pill.dataset.status = row.status;
  pill.textContent = row.status;
  if (row.url !== undefined && item.dataset.url !== (row.url ?? '')) {
    item.dataset.url = row.url ?? '';
    item.querySelector('.art').replaceWith(art(id, row.url));
  }
  $('#generations-empty').hidden = generations.size > 0;
}

// -- the stream --------------------------------------------------------------------------------

let loaded = false;
let loading = false;
let loadAgain = false;
let held = [];
let received = 0;

function onEvent(event) {
  received += 1;
  $('#event-count').textContent = String(received);
  $('#dashboard').dataset.events = String(received);
  if (!loaded || loading) {
    held.push(event);
    return;
  }
  apply(event);
  showLatency(event);
}

function apply(event) {
  if (!event.row) {
    loadState(); // over the size cap: the row is refetched
    return;
  }
  if (event.table === 'thumbnails') {
    if (event.op === 'DELETE') removeThumbnail(event.pk.id);
    else upsertThumbnail(event.row);
    if (event.op !== 'UPDATE' || event.changed.includes('title')) loadGallery();
  } else if (event.table === 'generations' && event.op !== 'DELETE') {
    upsertGeneration(event.row, { animate: event.op === 'INSERT' });
  }
}

let user = null;

async function loadState() {
  if (loading) {
    loadAgain = true;
    return;
  }
  loading = true;
  try {
    const response = await fetch('/demo/state', {
      headers: { Authorization: `Bearer ${token}` },
      cache: 'no-store',
    });
    if (response.status === 401) {
      refused();
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const state = await response.json();
    if (user === null) {
      user = state.user;
      const chip = $('#user');
      chip.querySelector('b').textContent = user;
      chip.hidden = false;
      document.querySelector('#gallery .owner').textContent = user;
      document.title = `pgrelay · ${user}`;
    }
    const ids = new Set(state.thumbnails.map((row) => String(row.id)));
    for (const id of [...thumbnails.keys()]) if (!ids.has(id)) removeThumbnail(id);
    state.thumbnails.forEach(upsertThumbnail);
    [...state.generations].reverse().forEach((row) => upsertGeneration(row, { animate: false }));
    loaded = true;
  } catch (error) {
    toast('The dashboard could not load its rows; retrying…');
    setTimeout(loadState, 2000);
  } finally {
    loading = false;
  }
  if (!loaded) return;
  const pending = held;
  held = [];
  pending.forEach(apply);
  if (pending.length) showLatency(pending[pending.length - 1]);
  loadGallery();
  if (loadAgain) {
    loadAgain = false;
    loadState();
  }
}

function refused() {
  // After the client's own handling of the refusal: closing from inside its onError would
  // leave it re-arming a reconnect.
  setTimeout(() => client?.close(), 0);
  showNotice(
    'This link’s token was refused',
    'It has expired or belongs to another demo run. Open a fresh link printed by:',
  );
}

// -- the public gallery ------------------------------------------------------------------------

const shots = new Map(); // id -> <button>

async function loadGallery() {
  if (user === null) return;
  try {
    const response = await fetch(`/demo/gallery?owner=${encodeURIComponent(user)}`, {
      cache: 'no-store',
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const gallery = await response.json();
    const grid = $('#gallery-grid');
    const ids = new Set(gallery.thumbnails.map((row) => String(row.id)));
    for (const [id, node] of shots) {
      if (!ids.has(id)) {
        node.remove();
        shots.delete(id);
      }
    }
    for (const row of gallery.thumbnails) {
      const id = String(row.id);
      let card = shots.get(id);
      if (!card) {
        card = h('button', 'shot');
        card.type = 'button';
        card.dataset.galleryId = id;
        const picture = art(id);
        picture.append(h('span', 'ripple'));
        const caption = h('span', 'caption');
        caption.append(h('span', 'title'), h('span', 'cta', 'Open ↗'));
        card.append(picture, caption);
        card.addEventListener('click', () => recordClick(card));
        grid.append(card);
        shots.set(id, card);
      }
      card.querySelector('.title').textContent = row.title;
      card.setAttribute('aria-label', `Open “${row.title}”`);
    }
    $('#gallery-empty').hidden = shots.size > 0;
  } catch {
    toast('The gallery could not load.');
  }
}

async function recordClick(card) {
  flash(card, 'pressed');
  const started = performance.now();
  try {
    const response = await fetch(`/demo/click?id=${card.dataset.galleryId}`, { method: 'POST' });
    const took = Math.round(performance.now() - started);
    if (response.ok) toast(`Share click recorded (${took} ms). Watch the dashboard.`);
    else toast(response.status === 404 ? 'That picture is gone.' : `Click failed: HTTP ${response.status}`);
  } catch {
    toast('Click failed: the relay is unreachable.');
  }
}

// -- start -------------------------------------------------------------------------------------

let client = null;

if (!token) {
  showState('closed');
  showNotice(
    'Open this page with a demo link',
    'The page needs a token in its address (?token=…) to know whose dashboard to show. Run:',
  );
} else {
  $('#app').hidden = false;
  // Tabs of one user share one websocket (the client's default where the browser has Web Locks
  // and BroadcastChannel): open this link twice and the relay sees one connection.
  client = createClient({
    url: location.origin,
    token: () => token,
    onState: (state) => {
      showState(state);
      showSharing();
    },
    onError: (error) => {
      if (error.code === 'auth_refused') refused();
    },
  });
  showState(client.state);
  showSharing();
  setInterval(showSharing, 1000);
  const confirmed = new Set();
  const subscribed = (table) => () => {
    if (confirmed.has(table)) return;
    confirmed.add(table);
    if (confirmed.size === 2) loadState();
  };
  const handlers = (table) => ({
    onEvent,
    onSubscribed: subscribed(table),
    onReset: () => loadState(), // events were lost: refetch, then patch on
    onError: (error) => toast(`Subscription to ${table} failed: ${error.code}`),
  });
  client.subscribe('thumbnails', { ops: ['INSERT', 'UPDATE', 'DELETE'] }, handlers('thumbnails'));
  client.subscribe('generations', { ops: ['INSERT', 'UPDATE'] }, handlers('generations'));
  // Show the rows even while the relay is unreachable; they are fetched again once it confirms.
  setTimeout(() => {
    if (!loaded && confirmed.size < 2) loadState();
  }, 3000);
}
