/**
 * The leader tab's tokens: the socket it runs for the group is its user's, so it sends its own
 * provider's token while that names the group's user, and otherwise borrows one from the
 * followers (the first valid answer within BORROW_MS). A follower lends its provider's token
 * when it names the group's user and has not expired.
 */

import { RelayError } from './errors.js';
import { tokenExpiry, tokenSubject } from './token.js';

/** How long a leader without a token of its own waits for a follower to lend one. */
export const BORROW_MS = 2_000;

/**
 * The token side of one tab in its group. `token` is the tab's provider, `user()` the group's
 * user, `closed()` whether the tab's client is closed; `ask(n)` asks the followers for a token
 * (request n), `post(message)` posts on the group's control channel.
 */
export function tokenLending({ token, user, member, now, timer, closed, ask, post }) {
  const borrowing = new Map(); // n -> accept(token)
  let borrowSeq = 0;

  /** A token of the group's user: this tab's own, else one a follower lends. */
  async function leaderToken() {
    let problem;
    try {
      const value = await token();
      if (tokenSubject(value) === user()) return value;
      problem = new RelayError('token_user_changed', 'the token provider returned a token of another user than the one this tab shares a socket for');
    } catch (err) {
      problem = err;
    }
    const borrowed = await borrow();
    if (borrowed !== null) return borrowed;
    throw problem;
  }

  function borrow() {
    if (closed()) return Promise.resolve(null);
    return new Promise((resolve) => {
      const n = ++borrowSeq;
      const wait = timer();
      const finish = (value) => {
        wait.clear();
        borrowing.delete(n);
        resolve(value);
      };
      borrowing.set(n, (value) => {
        if (usable(value)) finish(value);
      });
      wait.set(BORROW_MS, () => finish(null));
      ask(n);
    });
  }

  function usable(value) {
    if (typeof value !== 'string' || tokenSubject(value) !== user()) return false;
    const exp = tokenExpiry(value);
    return exp === null || exp > now();
  }

  /** Answers request n of member `to` with this tab's token, if it is usable. */
  async function lend(to, n) {
    try {
      const value = await token();
      if (!closed() && usable(value)) post({ t: 'token', from: member, to, n, token: value });
    } catch {
      // nothing to lend
    }
  }

  return {
    leaderToken,
    lend,
    /** A follower's answer to request n. */
    received(n, value) {
      borrowing.get(n)?.(value);
    },
    /** The tab closes: every borrow still waiting gets nothing. */
    cancel() {
      for (const accept of borrowing.values()) accept(null);
    },
  };
}
