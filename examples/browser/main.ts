/**
 * The demo page's script: load a web model folder, take an image and a question, stream the answer.
 * Bundled by scripts/browser-demo.ts; `globalThis.internvl` exposes the library and the loaded model.
 */
import * as internvl from '../../src/web/index.js';

const $ = <T>(id: string) => document.getElementById(id) as T;
const status = $<HTMLDivElement>('status');
const progress = $<HTMLProgressElement>('progress');
const answer = $<HTMLDivElement>('answer');
const ask = $<HTMLButtonElement>('ask');
const stop = $<HTMLButtonElement>('stop');
const imageInput = $<HTMLInputElement>('image');
const preview = $<HTMLImageElement>('preview');

const state: { model?: internvl.WebInternVL; image?: internvl.RgbImage; abort?: AbortController } = {};
Object.assign(globalThis, { internvl, demo: state });

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function load(): Promise<void> {
  const provider = $<HTMLSelectElement>('provider').value as internvl.WebExecutionProvider;
  ask.disabled = true;
  await state.model?.close();
  state.model = undefined;
  status.textContent = 'Loading…';
  const t0 = performance.now();
  try {
    const model = await internvl.WebInternVL.load(new URL($<HTMLInputElement>('model-url').value, location.href).href, {
      executionProvider: provider,
      wasmPaths: new URL('./ort/', location.href).href,
      xgrammarUrl: new URL('./xgrammar/index.js', location.href).href,
      onProgress: (p) => {
        progress.max = p.total;
        progress.value = p.loaded;
        status.textContent = `${p.file}: ${mib(p.loaded)} of ${mib(p.total)} (${mib(p.fromCache)} from the cache)`;
        status.dataset.bytes = `${p.loaded}/${p.total}`;
        status.dataset.fromCache = String(p.fromCache);
      },
    });
    state.model = model;
    status.textContent =
      `${model.manifest.name} on ${provider}` +
      `${provider === 'wasm' ? ` (${internvl.defaultWasmThreads()} thread(s))` : ''}, ` +
      `loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`;
    status.dataset.ready = 'true';
    ask.disabled = false;
  } catch (err) {
    status.textContent = `Load failed: ${(err as Error).message}`;
    status.dataset.ready = 'error';
  }
}

imageInput.addEventListener('change', async () => {
  const file = imageInput.files?.[0];
  state.image = undefined;
  preview.hidden = true;
  if (!file) return;
  try {
    state.image = await internvl.decodeImage(file, { label: file.name });
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
  } catch (err) {
    answer.textContent = `Image: ${(err as Error).message}`;
  }
});

async function run(): Promise<void> {
  const model = state.model;
  if (!model) return;
  const abort = new AbortController();
  state.abort = abort;
  ask.disabled = true;
  stop.disabled = false;
  answer.textContent = '';
  answer.dataset.done = 'false';
  try {
    const schemaText = $<HTMLTextAreaElement>('json-schema').value.trim();
    const responseFormat: internvl.ResponseFormat | undefined = schemaText
      ? { type: 'json_schema', jsonSchema: JSON.parse(schemaText) as Record<string, unknown> }
      : undefined;
    const turn = model.chat(
      {
        question: $<HTMLTextAreaElement>('question').value,
        image: state.image,
        maxTiles: Number($<HTMLInputElement>('max-tiles').value) || 6,
      },
      { maxNewTokens: Number($<HTMLInputElement>('max-new-tokens').value) || 64, responseFormat },
      abort.signal,
    );
    for (;;) {
      const next = await turn.next();
      if (next.done) {
        answer.dataset.tokenIds = JSON.stringify(next.value.tokenIds);
        answer.dataset.finishReason = next.value.finishReason;
        break;
      }
      answer.textContent += next.value.text;
    }
  } catch (err) {
    answer.textContent = `Error: ${(err as Error).message}`;
  } finally {
    answer.dataset.done = 'true';
    ask.disabled = false;
    stop.disabled = true;
  }
}

$<HTMLButtonElement>('load').addEventListener('click', () => void load());
ask.addEventListener('click', () => void run());
stop.addEventListener('click', () => state.abort?.abort());
