// A TCP proxy in front of the relay, for drops the tests cause: `close()` ends every proxied
// connection as a server closing it would (FIN), `cut()` destroys them as a lost network does
// (RST), and while `down` new connections are refused at once.
import net from 'node:net';

export async function tcpProxy(target) {
  const upstream = new URL(target);
  const pairs = new Set();
  const proxy = { down: false, accepted: 0 };
  const server = net.createServer((client) => {
    if (proxy.down) {
      client.destroy();
      return;
    }
    proxy.accepted += 1;
    const relay = net.connect(Number(upstream.port), upstream.hostname);
    const pair = [client, relay];
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      relay.destroy();
    };
    client.on('error', drop).on('close', drop);
    relay.on('error', drop).on('close', drop);
    client.pipe(relay);
    relay.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  proxy.close = () => {
    for (const [client, relay] of pairs) {
      client.end();
      relay.end();
    }
  };
  proxy.cut = () => {
    for (const [client, relay] of pairs) {
      client.resetAndDestroy();
      relay.destroy();
    }
  };
  proxy.stop = () => {
    proxy.cut();
    return new Promise((resolve) => server.close(resolve));
  };
  return proxy;
}
