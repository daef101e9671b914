export { createClient, endpoints, RelayError } from './client.js';
export { backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from './backoff.js';
export { createInvalidator, matches } from './invalidate.js';
export { refreshDelay, tokenExpiry, tokenSubject } from './token.js';
export { channelCursors, resumable } from './supabase.js';
