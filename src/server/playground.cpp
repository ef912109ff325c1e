// The playground page served at / and its icon: a form over this server's own v3 API, for
// trying the server from a browser. It submits with `Prefer: respond-async` and polls, so the
// state and progress show from the first second; it keeps polling through a lost connection
// (the request is kept on the server) and says so; the key stays in the page unless the user
// asks the browser to remember it. Tested in Chromium by tests/browser/playground.mjs.
#include <string>

namespace fluxpipe::server {

const std::string& playground_page() {
  static const std::string page = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fluxpipe playground</title>
<link rel="icon" href="/favicon.svg" type="image/svg+xml">
<style>
body{font:15px system-ui,sans-serif;max-width:56rem;margin:1.5rem auto;padding:0 1rem;color:#222}
label{display:block;margin:.45rem 0}input,textarea{font:inherit;width:100%;box-sizing:border-box}
textarea{height:4.5rem}.row{display:grid;grid-template-columns:repeat(auto-fit,minmax(7rem,1fr));gap:.6rem}
.check{display:flex;gap:.4rem;align-items:center}.check input{width:auto}
button{font:inherit;padding:.45rem 1.2rem;margin:.6rem .4rem .6rem 0}
#banner{display:none;background:#fff3cd;border:1px solid #e0c36a;padding:.5rem .8rem;border-radius:4px}
#status{white-space:pre-wrap;min-height:1.4em}#status.error{color:#a11}
#out img{max-width:48%;margin:.2rem;border:1px solid #ddd}
</style></head>
<body><h1>fluxpipe</h1>
<div id="banner" role="status"></div>
<p>Generate v3 playground: requests go to this server's <code>POST /generate/v3</code>.</p>
<label>API key <input id="key" type="password" autocomplete="off"></label>
<label class="check"><input id="remember" type="checkbox"> remember the key in this browser</label>
<label>Prompt <textarea id="prompt"></textarea></label>
<label>Negative prompt <input id="negative" type="text" placeholder="optional"></label>
<div class="row">
<label>Width <input id="width" type="number" value="1024" min="64" step="16"></label>
<label>Height <input id="height" type="number" value="1024" min="64" step="16"></label>
<label>Steps <input id="steps" type="number" value="4" min="1"></label>
<label>Samples <input id="samples" type="number" value="1" min="1"></label>
<label>Seed <input id="seed" type="number" min="0" placeholder="random"></label>
</div>
<button id="go">Generate</button><button id="stop" disabled>Stop</button>
<div id="status" aria-live="polite"></div><div id="out"></div>
<script>
'use strict';
const $ = id => document.getElementById(id);
const KEY = 'fluxpipe.playground.key';
let running = false, current = null, started = 0, phase = '', lostSince = 0;

function say(text, error) { $('status').textContent = text; $('status').className = error ? 'error' : ''; }
function busy(on) { running = on; $('go').disabled = on; $('stop').disabled = !on; }

// fetch with a time limit; throws on a network failure or timeout, returns {status, body}.
async function call(method, path, body, headers) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 15000);
  try {
    const r = await fetch(path, {method, signal: ctl.signal,
      headers: Object.assign({'API-Key': $('key').value, 'Content-Type': 'application/json'}, headers || {}),
      body: body ? JSON.stringify(body) : undefined});
    let j = {};
    try { j = await r.json(); } catch (e) { j = {status: 'FAILURE', error: 'HTTP ' + r.status}; }
    return {status: r.status, body: j};
  } finally { clearTimeout(timer); }
}

function describe(s) {
  if (s.state === 'running' && s.progress) return `running: step ${s.progress.done} of ${s.progress.total}`;
  if (s.state === 'queued') return 'queued' + (s.queue_position !== undefined ? ` (position ${s.queue_position})` : '');
  return s.state || 'submitted';
}

// The elapsed time ticks between polls, so the page is never still while a job runs.
setInterval(() => {
  if (!running) return;
  const secs = ((Date.now() - started) / 1000).toFixed(0);
  if (lostSince) say(`the server cannot be reached (for ${((Date.now() - lostSince) / 1000).toFixed(0)} s); ` +
                     'retrying every 2 s. The request is kept on the server and continues when it is back.', true);
  else say(`${phase} · ${secs} s`);
}, 250);

async function poll(id) {
  while (running && current === id) {
    let r;
    try {
      r = await call('GET', '/generate/v3/status/' + id);
    } catch (e) {
      if (!lostSince) lostSince = Date.now();
      await new Promise(res => setTimeout(res, 2000));
      continue;
    }
    lostSince = 0;
    if (r.status === 503) { phase = 'the server is busy or restarting; waiting'; await new Promise(res => setTimeout(res, 2000)); continue; }
    const s = r.body;
    if (s.status !== 'PENDING') return s;
    phase = describe(s);
    await new Promise(res => setTimeout(res, 500));
  }
  return null;
}

async function generate() {
  if (running) return;
  busy(true);   // before any await: a double-click sends one job
  $('out').textContent = '';
  started = Date.now(); phase = 'submitting'; lostSince = 0;
  say(phase);
  const body = {prompt: $('prompt').value, width: +$('width').value, height: +$('height').value,
                num_inference_steps: +$('steps').value, samples: +$('samples').value};
  if ($('negative').value) body.negative_prompt = $('negative').value;
  if ($('seed').value !== '') body.seed = +$('seed').value;
  try {
    let r;
    try {
      r = await call('POST', '/generate/v3', body, {'Prefer': 'respond-async'});
    } catch (e) {
      say('the server cannot be reached; nothing was submitted. Try again when it is back.', true);
      return;
    }
    let s = r.body;
    if (s.status === 'PENDING') { current = s.id; phase = describe(s); s = await poll(s.id); }
    if (!s) return;   // stopped
    if (s.status === 'SUCCESS') {
      say(`done in ${((Date.now() - started) / 1000).toFixed(1)} s · seeds ${(s.seeds || []).join(', ')}`);
      for (const u of s.download_urls || []) {
        const img = document.createElement('img');
        img.src = u; img.alt = 'generated image';
        $('out').append(img);
      }
    } else {
      say('failed: ' + (s.error || ('HTTP ' + r.status)), true);
    }
  } catch (e) {
    say('the playground failed: ' + e, true);
  } finally {
    busy(false);
    current = null;
  }
}

$('go').addEventListener('click', generate);
$('stop').addEventListener('click', async () => {
  const id = current;
  current = null;
  busy(false);
  say('stopping…');
  try { if (id) await call('DELETE', '/generate/v3/status/' + id); say('stopped'); }
  catch (e) { say('the server cannot be reached to stop the request', true); }
});
$('remember').addEventListener('change', () => {
  if ($('remember').checked) localStorage.setItem(KEY, $('key').value); else localStorage.removeItem(KEY);
});
$('key').addEventListener('input', () => { if ($('remember').checked) localStorage.setItem(KEY, $('key').value); });
window.addEventListener('unhandledrejection', e => { say('the playground failed: ' + e.reason, true); busy(false); });

(async () => {
  const saved = localStorage.getItem(KEY);
  if (saved !== null) { $('key').value = saved; $('remember').checked = true; }
  try {
    const r = await fetch('/readyz');
    const j = await r.json();
    const model = j.model || '';
    if (/test model|test-double/.test(model)) {
      $('banner').textContent = 'This server runs a random-weight test model (' + model +
                                '): it draws noise, not pictures. Start it with a FLUX.1 model to make images.';
      $('banner').style.display = 'block';
    } else if (!j.ready) {
      $('banner').textContent = 'This server is not ready: ' + (j.reason || 'no model is loaded') + '.';
      $('banner').style.display = 'block';
    }
  } catch (e) { /* the status line says so at the first request */ }
})();
</script></body></html>
)html";
  return page;
}

// A small mark for the browser tab: a blue square with a white "f".
const std::string& favicon_svg() {
  static const std::string svg =
      R"svg(<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#2459c8"/>)svg"
      R"svg(<path d="M12 26V13q0-6 6-6h3v4h-3q-2 0-2 2v2h5v4h-5v7z" fill="#fff"/></svg>)svg";
  return svg;
}

}  // namespace fluxpipe::server
