// A small React page for the Chromium test (tests/demo/test_react_page.py), bundled there with
// esbuild and served from the demo origin: a Live indicator and a live count of the user's
// thumbnails, both from @pgrelay/react.
import { createElement as h, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { RelayProvider, useRelayStatus, useSubscription } from '@pgrelay/react';

function LiveBadge() {
  const { live, state } = useRelayStatus({ tickMs: 250 });
  return h('span', { id: 'live', 'data-live': String(live), 'data-state': state,
    style: { color: live ? 'green' : 'grey' } }, live ? 'Live' : 'Not live');
}

function Count() {
  const [ids, setIds] = useState([]);
  useSubscription('thumbnails', { ops: ['INSERT'] }, {
    onEvent: (event) => setIds((seen) => [...seen, event.row.id]),
  });
  return h('output', { id: 'count', 'data-ids': JSON.stringify(ids) }, String(ids.length));
}

/** Renders the page into a new element of the document, with this token. */
export function mount(token) {
  const node = document.createElement('div');
  node.id = 'react-root';
  document.body.prepend(node);
  const options = { url: location.origin, token: () => token };
  createRoot(node).render(h(RelayProvider, { options }, h(LiveBadge), h(Count)));
}
