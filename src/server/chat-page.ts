/**
 * The chat page `internvl serve` shows at `/`: one static HTML document with its script inline, talking
 * to the server's own OpenAI API (/v1/models, streamed /v1/chat/completions). Image upload or paste,
 * multi-turn history kept in the page, a stop button (aborts the request, which stops generation on
 * the server) and a tile-budget setting (image_url.max_dynamic_patch). Until the first token arrives
 * the answer shows "working…" with the seconds waited (reading an image can take a while on a CPU);
 * an answer with no visible text says so and why it ended.
 */
import type { ServerResponse } from 'node:http';

export const CHAT_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>InternVL chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f8fb; }
  header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; padding: .6rem 1rem; background: #fff; border-bottom: 1px solid #dde3ea; }
  header h1 { font-size: 1.05rem; margin: 0 1rem 0 0; }
  header label { font-size: .85rem; color: #4a5563; }
  header input { width: 5rem; }
  header input#api-key { width: 10rem; }
  #model-status { color: #a33; font-size: .85rem; }
  main { max-width: 50rem; margin: 0 auto; padding: 1rem 1rem 12rem; }
  .msg { margin: .6rem 0; padding: .6rem .8rem; border-radius: 10px; white-space: pre-wrap; overflow-wrap: anywhere; }
  .user { background: #dcebff; margin-left: 15%; }
  .assistant { background: #fff; border: 1px solid #dde3ea; margin-right: 15%; }
  .error { background: #ffe4e4; }
  .pending .text, .empty-answer .text { color: #6b7583; font-style: italic; }
  main:empty::before { content: 'Ask a question below, and attach or paste an image to ask about it. Answers stream here as they are generated; the first one waits for the model to read the image.'; display: block; margin-top: 3rem; text-align: center; color: #6b7583; }
  .msg img { display: block; max-width: 14rem; max-height: 10rem; margin-bottom: .4rem; border-radius: 6px; }
  footer { position: fixed; bottom: 0; left: 0; right: 0; background: #fff; border-top: 1px solid #dde3ea; padding: .6rem 1rem; }
  footer .row { max-width: 50rem; margin: 0 auto; display: flex; gap: .5rem; align-items: flex-end; }
  textarea { flex: 1; min-height: 3.2rem; font: inherit; padding: .4rem; }
  #attachment { max-width: 50rem; margin: 0 auto .4rem; font-size: .85rem; color: #4a5563; }
  #attachment img { max-height: 3rem; vertical-align: middle; margin-right: .5rem; }
  button { font: inherit; padding: .4rem .9rem; }
</style>
</head>
<body>
<header>
  <h1>InternVL chat <span id="model-name"></span></h1>
  <span id="model-status" role="status"></span>
  <label>Tile budget <input id="max-tiles" type="number" min="1" max="40" value="6"></label>
  <label>Max tokens <input id="max-tokens" type="number" min="1" value="512"></label>
  <label>Temperature <input id="temperature" type="number" min="0" max="2" step="0.1" value="0"></label>
  <label>API key <input id="api-key" type="password" autocomplete="off"></label>
  <button id="new-chat" type="button">New chat</button>
</header>
<main id="messages"></main>
<footer>
  <div id="attachment"></div>
  <div class="row">
    <input id="image" type="file" accept="image/*" title="Attach an image (or paste one)">
    <textarea id="input" placeholder="Ask something; paste or attach an image. Enter sends, Shift+Enter is a new line."></textarea>
    <button id="send" type="button">Send</button>
    <button id="stop" type="button" disabled>Stop</button>
  </div>
</footer>
<script type="module">
const $ = (id) => document.getElementById(id);
const messagesEl = $('messages');
const input = $('input');
const send = $('send');
const stop = $('stop');
const attachmentEl = $('attachment');
const apiKey = $('api-key');
apiKey.value = localStorage.getItem('internvl-api-key') ?? '';
apiKey.addEventListener('change', () => {
  localStorage.setItem('internvl-api-key', apiKey.value);
  loadModel();
});

/** The conversation in OpenAI message form, as sent with every request. */
const history = [];
let attached = null;
let running = null;
let model = null;

const headers = () => ({
  'content-type': 'application/json',
  ...(apiKey.value ? { authorization: 'Bearer ' + apiKey.value } : {}),
});

async function loadModel() {
  try {
    const res = await fetch('/v1/models', { headers: headers() });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error?.message ?? res.statusText);
    model = body.data[0].id;
    $('model-name').textContent = '· ' + model;
    $('model-status').textContent = '';
  } catch (err) {
    $('model-status').textContent = 'Cannot list models: ' + err.message;
  }
}

function addMessage(role, text, imageUrl) {
  const el = document.createElement('div');
  el.className = 'msg ' + role;
  el.dataset.role = role;
  if (imageUrl) {
    const img = document.createElement('img');
    img.src = imageUrl;
    img.alt = 'attached image';
    el.append(img);
  }
  const body = document.createElement('span');
  body.className = 'text';
  body.textContent = text;
  el.append(body);
  messagesEl.append(el);
  el.scrollIntoView({ block: 'end' });
  return body;
}

function attach(file) {
  if (!file || !file.type.startsWith('image/')) return;
  const reader = new FileReader();
  reader.onload = () => {
    attached = { url: reader.result, name: file.name || 'pasted image' };
    attachmentEl.replaceChildren();
    const img = document.createElement('img');
    img.src = attached.url;
    img.alt = '';
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.textContent = 'Remove';
    remove.onclick = () => {
      attached = null;
      attachmentEl.replaceChildren();
      $('image').value = '';
    };
    attachmentEl.append(img, attached.name + ' ', remove);
  };
  reader.readAsDataURL(file);
}

$('image').addEventListener('change', (e) => attach(e.target.files[0]));
document.addEventListener('paste', (e) => {
  const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith('image/'));
  if (file) {
    e.preventDefault();
    attach(file);
  }
});
input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    sendMessage();
  }
});
send.addEventListener('click', () => sendMessage());
stop.addEventListener('click', () => running?.abort());
$('new-chat').addEventListener('click', () => {
  running?.abort();
  history.length = 0;
  messagesEl.replaceChildren();
});

async function sendMessage() {
  const text = input.value.trim();
  if (running || (!text && !attached)) return;
  if (!model) await loadModel();
  if (!model) return;
  const content = [];
  if (attached) {
    const tiles = Number($('max-tiles').value) || undefined;
    content.push({ type: 'image_url', image_url: { url: attached.url, ...(tiles ? { max_dynamic_patch: tiles } : {}) } });
  }
  content.push({ type: 'text', text });
  addMessage('user', text, attached?.url);
  history.push({ role: 'user', content });
  attached = null;
  attachmentEl.replaceChildren();
  $('image').value = '';
  input.value = '';

  const out = addMessage('assistant', 'working…');
  const bubble = out.parentElement;
  bubble.dataset.done = 'false';
  bubble.classList.add('pending');
  const started = performance.now();
  const waiting = setInterval(() => {
    out.textContent = 'working… ' + Math.round((performance.now() - started) / 1000) + ' s';
  }, 1000);
  let finishReason = null;
  running = new AbortController();
  send.disabled = true;
  stop.disabled = false;
  let answer = '';
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: headers(),
      signal: running.signal,
      body: JSON.stringify({
        model,
        messages: history,
        stream: true,
        max_tokens: Number($('max-tokens').value) || 512,
        temperature: Number($('temperature').value) || 0,
      }),
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({}));
      throw new Error(body.error?.message ?? 'HTTP ' + res.status);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffered = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffered.indexOf('\\n\\n')) !== -1) {
        const event = buffered.slice(0, cut);
        buffered = buffered.slice(cut + 2);
        if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
        const data = JSON.parse(event.slice(6));
        if (data.error) throw new Error(data.error.message);
        const choice = data.choices?.[0];
        if (choice?.finish_reason) finishReason = choice.finish_reason;
        const delta = choice?.delta?.content ?? '';
        if (!delta) continue;
        if (!answer) {
          clearInterval(waiting);
          bubble.classList.remove('pending');
        }
        answer += delta;
        out.textContent = answer;
      }
    }
    bubble.dataset.finish = 'stop';
    if (!answer.trim()) {
      bubble.classList.add('empty-answer');
      out.textContent = '(no visible text: the model ended its answer' +
        (finishReason === 'length' ? ' at the max-tokens limit' : '') + ' without printable characters)';
    }
  } catch (err) {
    if (err.name === 'AbortError') {
      bubble.dataset.finish = 'abort';
      if (!answer) out.textContent = '(stopped)';
    } else {
      bubble.classList.add('error');
      out.textContent = answer + (answer ? '\\n' : '') + 'Error: ' + err.message;
      bubble.dataset.finish = 'error';
    }
  } finally {
    clearInterval(waiting);
    bubble.classList.remove('pending');
    history.push({ role: 'assistant', content: answer });
    bubble.dataset.done = 'true';
    running = null;
    send.disabled = false;
    stop.disabled = true;
    input.focus();
  }
}

loadModel();
</script>
</body>
</html>
`;

/** Answers GET / with the chat page. */
export function sendChatPage(res: ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(CHAT_PAGE_HTML),
    'cache-control': 'no-cache',
  });
  res.end(CHAT_PAGE_HTML);
}
