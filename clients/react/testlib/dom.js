// A DOM for the component tests (happy-dom), registered before React loads. Node's own timers,
// fetch, WebSocket and BroadcastChannel stay: the client under test uses them.
import { GlobalRegistrator } from '@happy-dom/global-registrator';

const keep = { setTimeout, clearTimeout, setInterval, clearInterval, queueMicrotask, BroadcastChannel };
GlobalRegistrator.register({ url: 'http://localhost/' });
Object.assign(globalThis, keep);
globalThis.IS_REACT_ACT_ENVIRONMENT = true;
