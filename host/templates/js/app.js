// {{name}}: a ledge function in JavaScript. GET answers with a greeting; POST counts visits
// with wasi:keyvalue's atomic increment (one serializable transaction on the function's store).
import { open } from 'wasi:keyvalue/store@0.2.0-draft2';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft2';

const GREETING = 'Hello from {{name}}';

addEventListener('fetch', (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  if (request.method === 'POST') {
    const visits = increment(open('default'), 'visits', 1n);
    return new Response(`visit ${visits}\n`);
  }
  const url = new URL(request.url);
  return new Response(`${GREETING}! You asked for ${url.pathname}${url.search}\n`);
}
