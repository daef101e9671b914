/** An error reported by the relay or by the client; `code` is short and stable. */
export class RelayError extends Error {
  constructor(code, message, { reason, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'RelayError';
    this.code = code;
    if (reason !== undefined) this.reason = reason;
  }
}

/**
 * A caller of app callbacks for one client: an exception in a callback never breaks the client;
 * it is reported to `onError` as `callback_failed` (or to the console if `onError` throws too,
 * or is itself the callback that threw).
 */
export function callbackCaller(onError) {
  return function call(fn, arg) {
    if (typeof fn !== 'function') return;
    try {
      fn(arg);
    } catch (err) {
      if (typeof onError === 'function' && fn !== onError) {
        try {
          onError(new RelayError('callback_failed', 'a callback threw', { cause: err }));
          return;
        } catch {
          // fall through to the console
        }
      }
      console.error('pgrelay: a callback threw', err);
    }
  };
}
