/**
 * One socket per browser: what the tabs of one user say to each other, without any I/O.
 *
 * Each client in a tab is a member of its user's group (one group per relay and user `sub`).
 * The member holding the group's Web Lock is the leader: it alone runs a websocket client and
 * carries every member's subscriptions on it, one relay subscription per member subscription.
 * The others are followers: they send their subscriptions to the leader over the group's
 * BroadcastChannel and get their events back on a channel of their own.
 *
 * The one rule that makes a change of leader exact: a follower resumes each subscription with
 * a new leader from the cursor of the last event it handed to its app, and from the moment it
 * hears of the new leader it ignores anything the old one still sends. So nothing is lost
 * (the relay replays after that cursor), nothing is repeated (what the old leader sent after
 * that cursor is ignored), and each event goes only to the member that subscribed to it.
 *
 * Leaders are numbered: a new leader's term is its clock when the lock was granted, and more
 * than any term it has heard of. A follower takes a leader whose term is higher than any it
 * knows, so an announcement the old leader sent just before it died, delivered late, cannot
 * take a follower back to it.
 *
 * TabCore takes what happens (the app subscribes, a message arrives, the lock is granted, the
 * websocket client reports) and returns actions for the shell (shared.js) to carry out:
 *   { type: 'post', to: null | member, message }   on the group channel, or a member's own
 *   { type: 'connect' } / { type: 'disconnect' }   the leader's websocket client
 *   { type: 'inner-subscribe', key, spec, since } / { type: 'inner-unsubscribe', key }
 *   { type: 'watch', member } / { type: 'unwatch', member }   tell when that member is gone
 *   { type: 'deliver', id, kind, payload }         to the app's handlers of subscription `id`
 *   { type: 'state', state }                       what this tab shows (connection state)
 *   { type: 'wake' }                               the websocket client: retry now
 *   { type: 'lend-token', to, n } / { type: 'token', n, token }   a leader without a token
 *
 * Messages name their sender (`from`) and, unless meant for everyone, their receiver (`to`):
 *   group channel   hello, leader {term, state}, state {state}, resign, sub {id, spec, since},
 *                   unsub {id}, wake, token? {n}, token {n, token}
 *   member channel  event {id, event}, subscribed {id, cursor}, reset {id, reason, cursor},
 *                   error {id, code, message}
 */

/** Bumped when the messages change: tabs of another version are in another group. */
export const PROTOCOL = 1;

const RELAYED = new Set(['event', 'subscribed', 'reset', 'error']);

/** The name of a group's lock and channel: the relay's websocket URL and the user. */
export function groupName(wsUrl, user) {
  return `pgrelay/${PROTOCOL} ${wsUrl} ${encodeURIComponent(user)}`;
}

/** The name of a member's own lock (held for its life) and channel. */
export function memberName(group, member) {
  return `${group} #${member}`;
}

export class TabCore {
  constructor(member) {
    this.member = member;
    this.role = 'follower'; // 'leader' once the lock is granted; 'closed'
    this.leader = null; // the member this one follows; itself once it leads
    this.term = 0; // the highest leader term heard of (this member's own once it leads)
    this.state = 'connecting';
    this.everLive = false;
    /** This member's subscriptions: id -> { id, spec, cursor }. */
    this.subs = new Map();
    /** The leader's relay subscriptions: key -> { member, id }. */
    this.routes = new Map();
    /** The leader's followers: member -> how many subscriptions it has. */
    this.members = new Map();
  }

  /** Joining the group: the leader, if there is one, answers with its name. */
  start() {
    return [this.post(null, { t: 'hello' })];
  }

  /** The app subscribes: spec is { table, schema?, filter?, ops?, coalesceMs? }. */
  subscribe(id, spec, cursor = null) {
    if (this.role === 'closed') return [];
    const sub = { id, spec, cursor };
    this.subs.set(id, sub);
    if (this.role === 'leader') return this.route(this.member, id, spec, cursor);
    return this.leader === null ? [] : [this.offer(sub)];
  }

  unsubscribe(id) {
    if (!this.subs.delete(id)) return [];
    if (this.role === 'leader') return this.unroute(key(this.member, id));
    return this.leader === null ? [] : [this.post(null, { t: 'unsub', to: this.leader, id })];
  }

  /** The group's lock was granted at `now` (ms): this member leads from now on. */
  lead(now) {
    if (this.role !== 'follower') return [];
    this.role = 'leader';
    this.leader = this.member;
    this.term = Math.max(now, this.term + 1);
    const actions = [{ type: 'connect' }];
    for (const sub of this.subs.values()) {
      actions.push(...this.route(this.member, sub.id, sub.spec, sub.cursor));
    }
    actions.push(this.announce());
    return actions;
  }

  /** A message from another member, on the group channel or this member's own. */
  receive(message) {
    if (message === null || typeof message !== 'object') return [];
    const { t, from, to } = message;
    if (typeof t !== 'string' || typeof from !== 'string' || from === this.member) return [];
    if (to !== undefined && to !== this.member) return [];
    if (this.role === 'leader') return this.receiveAsLeader(message);
    if (this.role !== 'follower') return [];
    if (RELAYED.has(t)) return from === this.leader ? this.local(message.id, t, message) : [];
    switch (t) {
      case 'leader':
        if (from === this.leader) return this.setState(message.state);
        if (!(typeof message.term === 'number' && message.term > this.term)) return [];
        this.leader = from;
        this.term = message.term;
        return [...this.setState(message.state), ...[...this.subs.values()].map((s) => this.offer(s))];
      case 'state':
        return from === this.leader ? this.setState(message.state) : [];
      case 'resign':
        if (from !== this.leader) return [];
        this.leader = null;
        return this.setState(this.waiting());
      case 'token?':
        return from === this.leader ? [{ type: 'lend-token', to: from, n: message.n }] : [];
      default:
        return [];
    }
  }

  receiveAsLeader(message) {
    const { t, from } = message;
    switch (t) {
      case 'hello':
        return [this.announce()];
      case 'sub':
        if (message.to !== this.member || !validSpec(message.spec)) return [];
        return this.route(from, message.id, message.spec, message.since ?? null);
      case 'unsub':
        return message.to === this.member ? this.unroute(key(from, message.id)) : [];
      case 'wake':
        return message.to === this.member ? [{ type: 'wake' }] : [];
      case 'token':
        return message.to === this.member ? [{ type: 'token', n: message.n, token: message.token }] : [];
      default:
        return [];
    }
  }

  /** The leader's websocket client reports on relay subscription `key`: kind is event
   * ({event}), subscribed ({cursor}), reset ({reason, cursor}) or error ({code, message}). */
  relay(routeKey, kind, payload) {
    const route = this.routes.get(routeKey);
    if (route === undefined || this.role !== 'leader') return [];
    const actions = kind === 'error' ? this.forget(routeKey) : [];
    if (route.member === this.member) return [...actions, ...this.local(route.id, kind, payload)];
    const message = { t: kind, to: route.member, id: route.id, ...payload };
    return [...actions, this.post(route.member, message)];
  }

  /** The leader's websocket client changed state. */
  innerState(state) {
    if (this.role !== 'leader') return [];
    const actions = this.setState(state);
    return actions.length ? [...actions, this.post(null, { t: 'state', state })] : [];
  }

  /** A follower's own lock was released: it closed or crashed. Its subscriptions end. */
  memberGone(member) {
    if (this.role !== 'leader') return [];
    const actions = [];
    for (const [routeKey, route] of this.routes) {
      if (route.member === member) actions.push(...this.unroute(routeKey));
    }
    if (this.members.delete(member)) actions.push({ type: 'unwatch', member });
    return actions;
  }

  /** The app asks to retry now: the leader's client does. */
  wake() {
    if (this.role === 'leader') return [{ type: 'wake' }];
    return this.leader === null ? [] : [this.post(null, { t: 'wake', to: this.leader })];
  }

  /** A leader whose own token provider failed asks its followers for one. */
  askToken(n) {
    return this.role === 'leader' ? [this.post(null, { t: 'token?', n })] : [];
  }

  close() {
    if (this.role === 'closed') return [];
    const actions = this.role === 'leader'
      ? [this.post(null, { t: 'resign' }), { type: 'disconnect' }]
      : [];
    actions.push(...this.setState('closed'));
    this.role = 'closed';
    this.subs.clear();
    this.routes.clear();
    this.members.clear();
    return actions;
  }

  // -- internals ----------------------------------------------------------------------------

  announce() {
    return this.post(null, { t: 'leader', term: this.term, state: this.state });
  }

  post(to, message) {
    return { type: 'post', to, message: { ...message, from: this.member } };
  }

  offer(sub) {
    return this.post(null, { t: 'sub', to: this.leader, id: sub.id, spec: sub.spec, since: sub.cursor });
  }

  /** Carries a member's subscription on the leader's socket (again, if it was already). */
  route(member, id, spec, since) {
    const routeKey = key(member, id);
    const actions = this.routes.has(routeKey) ? this.unroute(routeKey) : [];
    this.routes.set(routeKey, { member, id });
    if (member !== this.member) {
      const count = this.members.get(member);
      if (count === undefined) actions.push({ type: 'watch', member });
      this.members.set(member, (count ?? 0) + 1);
    }
    actions.push({ type: 'inner-subscribe', key: routeKey, spec, since });
    return actions;
  }

  unroute(routeKey) {
    if (!this.routes.has(routeKey)) return [];
    return [...this.forget(routeKey), { type: 'inner-unsubscribe', key: routeKey }];
  }

  /** Drops a route from the tables (its relay subscription ended or is being ended). */
  forget(routeKey) {
    const route = this.routes.get(routeKey);
    this.routes.delete(routeKey);
    if (route === undefined || route.member === this.member) return [];
    const count = this.members.get(route.member) - 1;
    if (count > 0) {
      this.members.set(route.member, count);
      return [];
    }
    this.members.delete(route.member);
    return [{ type: 'unwatch', member: route.member }];
  }

  /** Hands something to this member's app, moving the subscription's cursor on. */
  local(id, kind, payload) {
    const sub = this.subs.get(id);
    if (sub === undefined) return [];
    let out;
    if (kind === 'event') {
      if (typeof payload.event?.cursor === 'string') sub.cursor = payload.event.cursor;
      out = { event: payload.event };
    } else if (kind === 'subscribed') {
      if (typeof payload.cursor === 'string') sub.cursor = payload.cursor;
      out = { cursor: payload.cursor };
    } else if (kind === 'reset') {
      if (typeof payload.cursor === 'string') sub.cursor = payload.cursor;
      out = { reason: payload.reason, cursor: payload.cursor };
    } else {
      this.subs.delete(id);
      out = { code: payload.code, message: payload.message };
    }
    return [{ type: 'deliver', id, kind, payload: out }];
  }

  setState(state) {
    if (typeof state !== 'string' || state === this.state || this.role === 'closed') return [];
    this.state = state;
    if (state === 'live' || state === 'polling') this.everLive = true;
    return [{ type: 'state', state }];
  }

  waiting() {
    return this.everLive ? 'reconnecting' : 'connecting';
  }
}

function key(member, id) {
  return `${member} ${id}`;
}

function validSpec(spec) {
  return spec !== null && typeof spec === 'object' && typeof spec.table === 'string' && spec.table !== '';
}
