/** An error reported by the relay or by the client; `code` is short and stable. */
export class RelayError extends Error {
  constructor(code, message, { reason, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'RelayError';
    this.code = code;
    if (reason !== undefined) this.reason = reason;
  }
}
