// Lens upload page, progressive enhancement of the server-rendered form.
//
// Without this script the page still works: the form posts to `/` and the
// server renders the result. With it: drag-and-drop, paste, a local preview,
// `fetch` to /predict without reloading, labelled top-5 bars, lazy label
// autocomplete for feedback and a status strip.
//
// Data from the user or the server only ever reaches the DOM through
// `textContent`, attribute setters or `new Option`, never `innerHTML`: the
// page runs under a CSP without 'unsafe-inline' and file names are hostile.
'use strict';

(() => {
  const PREDICT_URL = '/predict?top_k=5';
  const STATUS_EVERY_MS = 5000;
  const ALLOWED_NAME = /\.(png|jpe?g|gif)$/i;
  const DEFAULT_RETRY_S = 1;
  const MAX_RETRY_S = 30;

  const $ = (id) => document.getElementById(id);
  const uploadForm = $('upload-form');
  const fileInput = $('file');
  const dropZone = $('drop-zone');
  const preview = $('preview');
  const previewImg = $('preview-img');
  const previewName = $('preview-name');
  const resultSection = $('result');
  const messageArea = $('message');

  let previewUrl = null;
  // Bumped for every new image, so late answers for an older one are dropped.
  let generation = 0;

  /** Creates an element with a class and optional text (as text, never HTML). */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- Messages ----------------------------------------------------------

  /** Shows one message; kind is 'info' or 'error'. */
  function showMessage(kind, text) {
    const p = el('p', `message ${kind}`, text);
    p.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    messageArea.replaceChildren(p);
  }

  function clearMessage() {
    messageArea.replaceChildren();
  }

  // ---- Choosing an image -------------------------------------------------

  function enhanceUploadForm() {
    document.documentElement.classList.add('js');
    for (const span of uploadForm.querySelectorAll('.js-only')) span.hidden = false;
    $('upload-button').hidden = true;

    // The zone is the one keyboard stop; the native input stays for
    // assistive technology and for tests, but out of the tab order.
    fileInput.classList.add('visually-hidden');
    fileInput.tabIndex = -1;
    dropZone.tabIndex = 0;
    dropZone.setAttribute('role', 'button');
    dropZone.setAttribute('aria-label', 'Choose an image, drop one here or paste it');
    dropZone.setAttribute('aria-describedby', 'file-hint');

    dropZone.addEventListener('click', (e) => {
      if (e.target === fileInput || e.target.closest('label')) return;
      fileInput.click();
    });
    dropZone.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        fileInput.click();
      }
    });
    fileInput.addEventListener('change', () => {
      if (fileInput.files && fileInput.files[0]) handleFile(fileInput.files[0]);
    });
    uploadForm.addEventListener('submit', (e) => {
      e.preventDefault();
      if (fileInput.files && fileInput.files[0]) handleFile(fileInput.files[0]);
      else showMessage('error', 'Choose an image first.');
    });

    for (const type of ['dragenter', 'dragover']) {
      dropZone.addEventListener(type, (e) => {
        e.preventDefault();
        dropZone.classList.add('dragging');
      });
    }
    for (const type of ['dragleave', 'dragend']) {
      dropZone.addEventListener(type, () => dropZone.classList.remove('dragging'));
    }
    dropZone.addEventListener('drop', (e) => {
      e.preventDefault();
      dropZone.classList.remove('dragging');
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) handleFile(file);
    });
    // A file dropped beside the zone must not make the browser navigate to it.
    document.addEventListener('dragover', (e) => e.preventDefault());
    document.addEventListener('drop', (e) => {
      if (!dropZone.contains(e.target)) e.preventDefault();
    });

    document.addEventListener('paste', (e) => {
      const items = e.clipboardData ? Array.from(e.clipboardData.files) : [];
      const file = items.find((f) => f.type.startsWith('image/')) || items[0];
      if (file) {
        e.preventDefault();
        handleFile(file);
      }
    });
  }

  /** Checks, previews and classifies one file. */
  function handleFile(file) {
    generation += 1;
    resultSection.replaceChildren();
    if (!ALLOWED_NAME.test(file.name)) {
      hidePreview();
      showMessage('error',
        `"${file.name}" is not a PNG, JPEG or GIF image. Choose a file ending in .png, .jpg, .jpeg or .gif.`);
      return;
    }
    showPreview(file);
    predict(file, generation, true);
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    previewImg.src = previewUrl;
    previewImg.alt = 'Preview of the chosen image';
    previewName.textContent = file.name;
    preview.hidden = false;
  }

  // A file the browser cannot draw (not really an image) gets no broken preview.
  previewImg.addEventListener('error', () => { if (previewImg.getAttribute('src')) preview.hidden = true; });

  function hidePreview() {
    preview.hidden = true;
    previewImg.removeAttribute('src');
    previewName.textContent = '';
  }

  // ---- Prediction --------------------------------------------------------

  /** Seconds to wait from a Retry-After header (delta-seconds or HTTP date). */
  function retryAfterSeconds(header) {
    if (!header) return DEFAULT_RETRY_S;
    let s = Number(header);
    if (!Number.isFinite(s)) s = (Date.parse(header) - Date.now()) / 1000;
    if (!Number.isFinite(s)) return DEFAULT_RETRY_S;
    return Math.min(MAX_RETRY_S, Math.max(0, Math.ceil(s)));
  }

  /** The server's `error` text, if the body is the JSON error shape. */
  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && typeof body.error === 'string') return body.error;
    } catch (_) { /* not JSON */ }
    return '';
  }

  async function predict(file, gen, mayRetry) {
    showMessage('info', `Classifying ${file.name}…`);
    resultSection.setAttribute('aria-busy', 'true');
    const body = new FormData();
    body.append('file', file, file.name);
    const started = performance.now();
    let resp;
    try {
      resp = await fetch(PREDICT_URL, {
        method: 'POST', body, headers: { Accept: 'application/json' },
      });
    } catch (err) {
      if (gen === generation) fail(`Could not reach Lens (${err.message}). Check your connection and try again.`);
      return;
    }
    if (gen !== generation) return;

    if (resp.status === 429) {
      const wait = retryAfterSeconds(resp.headers.get('Retry-After'));
      if (mayRetry) {
        showMessage('info', `Busy, retrying in ${wait} s`);
        setTimeout(() => { if (gen === generation) predict(file, gen, false); }, wait * 1000);
      } else {
        fail(`Lens is still busy. Please try again in ${wait} s.`);
      }
      return;
    }
    if (resp.status === 413) {
      const detail = await errorText(resp);
      fail(`This file is too large for Lens${detail ? ` (${detail})` : ''}. Choose a smaller image.`);
      return;
    }
    if (!resp.ok) {
      const detail = await errorText(resp) || `HTTP ${resp.status}`;
      fail(`Lens could not classify "${file.name}": ${detail}`);
      return;
    }
    let data;
    try {
      data = await resp.json();
    } catch (_) {
      fail('Lens sent an answer this page cannot read. Please try again.');
      return;
    }
    const answer = await normalize(data, file, performance.now() - started);
    if (gen !== generation) return;
    resultSection.removeAttribute('aria-busy');
    clearMessage();
    renderResult(answer, file);
  }

  function fail(text) {
    resultSection.removeAttribute('aria-busy');
    showMessage('error', text);
  }

  /** Reads the /predict answer into {top, cached, elapsedMs, sha256}. */
  async function normalize(data, file, clientMs) {
    let top = data.top_k || data.predictions || data.top || [];
    if (!Array.isArray(top)) top = [];
    top = top.filter((c) => c && typeof c.label === 'string')
      .map((c) => ({ label: c.label, score: Number(c.score) || 0 }));
    if (top.length === 0 && typeof data.prediction === 'string') {
      top = [{ label: data.prediction, score: Number(data.score) || 0 }];
    }
    let elapsedMs = Number(data.elapsed_ms ?? data.time_ms ?? data.took_ms);
    if (!Number.isFinite(elapsedMs) && Number.isFinite(Number(data.elapsed_s))) {
      elapsedMs = Number(data.elapsed_s) * 1000;
    }
    if (!Number.isFinite(elapsedMs)) elapsedMs = clientMs;
    const cached = Boolean(data.cached ?? data.cache_hit ?? false);
    const sha256 = typeof data.sha256 === 'string' ? data.sha256 : await sha256Hex(file);
    return { top, cached, elapsedMs, sha256 };
  }

  async function sha256Hex(file) {
    if (!(window.crypto && crypto.subtle)) return '';
    const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Builds the same structure the server renders for a no-JS result. */
  function renderResult(answer, file) {
    const nodes = [el('h2', '', 'Result')];
    nodes[0].id = 'result-heading';
    const best = answer.top[0];
    if (!best) {
      nodes.push(el('p', 'prediction', 'No prediction.'));
      resultSection.replaceChildren(...nodes);
      return;
    }
    const prediction = el('p', 'prediction', 'Predicted class: ');
    prediction.append(el('strong', '', best.label));
    nodes.push(prediction, el('p', 'score', `Score: ${best.score.toFixed(4)}`));

    const bars = el('ol', 'bars');
    bars.setAttribute('aria-label', 'Top classes');
    answer.top.forEach((c, i) => {
      const li = el('li', 'bar');
      const label = el('span', 'bar-label', c.label);
      label.id = `bar-${i}`;
      const meter = el('meter', '', c.score.toFixed(4));
      meter.min = 0;
      meter.max = 1;
      meter.value = c.score;
      meter.setAttribute('aria-labelledby', label.id);
      li.append(label, meter, el('span', 'bar-score', c.score.toFixed(4)));
      bars.append(li);
    });
    nodes.push(bars);
    const source = answer.cached ? 'from the cache' : 'computed now';
    nodes.push(el('p', 'timing', `Took ${answer.elapsedMs.toFixed(1)} ms, ${source}.`));

    const report = JSON.stringify({
      sha256: answer.sha256, prediction: best.label, score: best.score, filename: file.name,
    });
    nodes.push(feedbackForm(report));
    resultSection.replaceChildren(...nodes);
    enhanceFeedback($('feedback-form'), file);
  }

  // ---- Feedback ----------------------------------------------------------

  /** The same form the server renders, filled with `report`. */
  function feedbackForm(report) {
    const form = el('form', 'feedback');
    form.id = 'feedback-form';
    form.method = 'post';
    form.action = '/feedback';
    const hidden = el('input');
    hidden.type = 'hidden';
    hidden.name = 'report';
    hidden.value = report;
    const fields = el('div', 'feedback-fields');
    fields.id = 'feedback-fields';
    const label = el('label', '', 'Correct label');
    label.htmlFor = 'correct-label';
    const input = el('input');
    input.type = 'text';
    input.id = 'correct-label';
    input.name = 'correct_label';
    input.setAttribute('list', 'label-list');
    input.autocomplete = 'off';
    input.maxLength = 200;
    const list = el('datalist');
    list.id = 'label-list';
    fields.append(label, input, list);
    const button = el('button', '', 'Report incorrect answer');
    button.type = 'submit';
    button.id = 'feedback-button';
    form.append(hidden, fields, button);
    return form;
  }

  let labelsLoaded = null;

  /** Fills the datalist from GET /api/labels, once, when first needed. */
  function loadLabels() {
    if (!labelsLoaded) {
      labelsLoaded = fetch('/api/labels', { headers: { Accept: 'application/json' } })
        .then((r) => (r.ok ? r.json() : []))
        .then((labels) => (Array.isArray(labels) ? labels.filter((l) => typeof l === 'string') : []))
        .catch(() => { labelsLoaded = null; return []; });
    }
    labelsLoaded.then((labels) => {
      const list = $('label-list');
      if (list && list.options.length === 0) {
        list.replaceChildren(...labels.map((l) => new Option(l, l)));
      }
    });
  }

  /** "Report incorrect answer" first opens the field, then sends the report. */
  function enhanceFeedback(form, file) {
    if (!form) return;
    const fields = form.querySelector('.feedback-fields');
    const input = form.querySelector('input[name="correct_label"]');
    const button = form.querySelector('button[type="submit"]');
    form.noValidate = true;
    fields.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    button.setAttribute('aria-controls', fields.id);
    const status = el('p', 'feedback-status');
    status.setAttribute('role', 'status');
    form.append(status);

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      if (fields.hidden) {
        fields.hidden = false;
        button.textContent = 'Send report';
        button.setAttribute('aria-expanded', 'true');
        input.focus();
        loadLabels();
        return;
      }
      const label = input.value.trim();
      if (!label) {
        status.textContent = 'Type or pick the correct label first.';
        status.className = 'feedback-status error';
        input.focus();
        return;
      }
      const body = new FormData(form);
      body.set('correct_label', label);
      if (file) body.append('file', file, file.name);
      button.disabled = true;
      status.className = 'feedback-status';
      status.textContent = 'Sending…';
      try {
        const resp = await fetch('/feedback', {
          method: 'POST', body, headers: { Accept: 'application/json' },
        });
        const data = await resp.json().catch(() => ({}));
        if (!resp.ok || !data.success) {
          throw new Error(data.error || `HTTP ${resp.status}`);
        }
        status.textContent = data.note
          ? `Thanks — report #${data.id} saved, but ${data.note}`
          : `Thanks — report #${data.id} saved`;
        status.className = 'feedback-status info';
        input.readOnly = true;
        button.hidden = true;
      } catch (err) {
        status.textContent = `Could not save the report: ${err.message}`;
        status.className = 'feedback-status error';
        button.disabled = false;
      }
    });
  }

  // ---- Status strip ------------------------------------------------------

  async function refreshStatus() {
    const queue = $('status-queue');
    const workers = $('status-workers');
    try {
      const resp = await fetch('/api/status', { headers: { Accept: 'application/json' } });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const s = await resp.json();
      if (typeof s.model === 'string') $('status-model').textContent = s.model;
      queue.textContent = s.ready === false ? 'Loading…' : `Queue: ${Number(s.queue_depth) || 0}`;
      workers.textContent = `Workers: ${Number(s.workers) || 0}`;
      queue.hidden = false;
      workers.hidden = false;
      queue.classList.toggle('warn', s.ready === false);
    } catch (_) {
      queue.textContent = 'Status unavailable';
      queue.hidden = false;
      workers.hidden = true;
    }
  }

  function startStatus() {
    refreshStatus();
    setInterval(() => { if (!document.hidden) refreshStatus(); }, STATUS_EVERY_MS);
  }

  enhanceUploadForm();
  // A server-rendered result (no file to re-attach: the server kept it).
  enhanceFeedback($('feedback-form'), null);
  startStatus();
})();
