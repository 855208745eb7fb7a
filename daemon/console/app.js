// Tern web console: a single page over the operator API (POST /api/v1/<Method>).
//
// Served by ternd under a strict Content-Security-Policy: everything here is built
// with createElement and textContent, listeners are attached with addEventListener,
// and nothing is fetched from anywhere but the daemon itself.
'use strict';

(() => {
  // ---------------------------------------------------------------------------------
  // State

  /** The console session: {operator, role, csrfToken}, or null before login. */
  let session = null;
  /** Functions that stop the current view's timers and streams. */
  let teardown = [];
  /** The banner's source, so a poll that recovers clears only its own error. */
  let bannerSource = null;
  /** The highest event seq any stream has seen (0: none yet). */
  let latestSeq = 0;

  const POLL_MS = 2000;
  const HEALTH_EVENTS = new Set(['health', 'system.health']);
  const MAX_EVENTS = 500;

  const app = document.getElementById('app');

  // ---------------------------------------------------------------------------------
  // DOM helpers

  /**
   * Builds an element. `props`: `class`, `text`, `on<event>` (a function), anything
   * else as an attribute (true sets it empty; false, null and undefined skip it).
   */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key === 'text') el.textContent = String(value);
        else if (key === 'value') el.value = value;
        else if (key.startsWith('on') && typeof value === 'function') {
          el.addEventListener(key.slice(2), value);
        } else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    append(el, ...children);
    return el;
  }

  function append(el, ...children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof window.Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  }

  function replace(el, ...children) {
    clear(el);
    return append(el, ...children);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------------------------
  // Formatting

  const num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));
  const pad = (n) => String(n).padStart(2, '0');

  function fmtTime(ms) {
    ms = num(ms);
    if (!ms) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtRelative(ms) {
    ms = num(ms);
    if (!ms) return 'never';
    const diff = Date.now() - ms;
    const s = Math.round(Math.abs(diff) / 1000);
    let text;
    if (s < 60) text = `${s} s`;
    else if (s < 3600) text = `${Math.floor(s / 60)} min`;
    else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
    else text = `${Math.floor(s / 86400)} d`;
    return diff >= 0 ? `${text} ago` : `in ${text}`;
  }

  function fmtDuration(ms) {
    ms = Math.max(0, Math.round(num(ms)));
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const s = Math.floor(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtBytes(n) {
    n = num(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  }

  /** `NODE_STATE_ONLINE` -> `online`. */
  function enumName(value, prefix) {
    const s = String(value ?? '');
    return (s.startsWith(prefix) ? s.slice(prefix.length) : s).toLowerCase().replace(/_/g, ' ') || 'unknown';
  }

  const nodeState = (v) => enumName(v, 'NODE_STATE_');
  const callState = (v) => enumName(v, 'CALL_STATE_');
  const pairState = (v) => enumName(v, 'PAIR_STATE_');
  const roleName = (v) => enumName(v, 'ROLE_');

  const BADGE_TONES = {
    online: 'good', succeeded: 'good', completed: 'good', approved: 'good', paired: 'good', live: 'good', yes: 'good',
    offline: 'muted', expired: 'muted', cancelled: 'muted', unknown: 'muted', connecting: 'muted', no: 'muted',
    pending: 'warn', 'timed out': 'warn', lost: 'warn', undeliverable: 'warn', reconnecting: 'warn', viewer: 'muted',
    revoked: 'bad', failed: 'bad', rejected: 'bad', admin: 'info',
  };

  function badge(text, testid) {
    const tone = BADGE_TONES[text] || 'muted';
    return h('span', { class: `badge badge-${tone}`, 'data-testid': testid, 'data-value': text, text });
  }

  function relTime(ms, testid) {
    return h('time', {
      class: 'rel-time', 'data-ms': String(num(ms)), 'data-testid': testid,
      title: fmtTime(ms), text: fmtRelative(ms),
    });
  }

  /** Keeps every relative time on the page current. */
  setInterval(() => {
    for (const el of document.querySelectorAll('time.rel-time')) {
      el.textContent = fmtRelative(el.getAttribute('data-ms'));
    }
  }, 1000);

  // ---------------------------------------------------------------------------------
  // Bytes and base64

  function bytesToBase64(bytes) {
    let bin = '';
    for (let i = 0; i < bytes.length; i += 0x8000) {
      bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(bin);
  }

  function base64ToBytes(b64) {
    const bin = atob(String(b64 || '').replace(/\s+/g, ''));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
    return out;
  }

  /**
   * A body as something to show: `{kind: 'json', value, text}` for JSON (pretty-printed
   * in `text`), `{kind: 'text', text}` for UTF-8, `{kind: 'binary', text}` otherwise.
   */
  function decodeBody(b64, contentType) {
    let bytes;
    try { bytes = base64ToBytes(b64); } catch { return { kind: 'binary', text: String(b64) }; }
    if (bytes.length === 0) return { kind: 'text', text: '' };
    let text;
    try { text = new TextDecoder('utf-8', { fatal: true }).decode(bytes); } catch {
      return { kind: 'binary', text: `${bytes.length} bytes (binary), base64: ${bytesToBase64(bytes)}` };
    }
    if (/json/i.test(contentType || '') || /^\s*[[{"]/.test(text)) {
      try {
        const value = JSON.parse(text);
        return { kind: 'json', value, text: JSON.stringify(value, null, 2) };
      } catch { /* shown as text */ }
    }
    return { kind: 'text', text };
  }

  function compactBody(decoded) {
    const text = decoded.kind === 'json' ? JSON.stringify(decoded.value) : decoded.text;
    return text.length > 240 ? `${text.slice(0, 240)}…` : text;
  }

  // ---------------------------------------------------------------------------------
  // Errors

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** Reads an error answer: `{code, message}` as the API sends it, or the plain text. */
  async function readError(res) {
    const text = await res.text().catch(() => '');
    let code = '';
    let message = '';
    try {
      const body = JSON.parse(text);
      code = body.code === undefined ? '' : String(body.code);
      message = body.message ? String(body.message) : '';
    } catch {
      message = text.trim().slice(0, 500);
    }
    code = code.replace(/^ERROR_CODE_/, '');
    if (!code) code = res.status === 401 ? 'UNAUTHENTICATED' : `HTTP ${res.status}`;
    if (!message) message = `${res.status} ${res.statusText || 'error'}`.trim();
    return new ApiError(res.status, code, message);
  }

  function networkError(e) {
    return new ApiError(0, 'UNAVAILABLE', `cannot reach the daemon (${e.message || e})`);
  }

  function showError(err, source = 'action', context = '') {
    const banner = document.getElementById('banner');
    const code = err && err.code ? String(err.code) : 'ERROR';
    const message = err && err.message ? String(err.message) : String(err);
    banner.querySelector('.banner-code').textContent = code;
    banner.querySelector('.banner-message').textContent = context ? `${context}: ${message}` : message;
    banner.hidden = false;
    bannerSource = source;
  }

  function clearError(source) {
    if (source !== undefined && source !== bannerSource) return;
    const banner = document.getElementById('banner');
    banner.hidden = true;
    bannerSource = null;
  }

  document.querySelector('#banner .banner-close').addEventListener('click', () => clearError());

  // ---------------------------------------------------------------------------------
  // The API

  function headers() {
    const out = { 'Content-Type': 'application/json', Accept: 'application/json' };
    if (session && session.csrfToken) out['X-Tern-CSRF'] = session.csrfToken;
    return out;
  }

  async function post(path, body, signal) {
    let res;
    try {
      res = await fetch(path, {
        method: 'POST',
        credentials: 'same-origin',
        headers: headers(),
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw networkError(e);
    }
    if (!res.ok) {
      const err = await readError(res);
      if (res.status === 401 && session) sessionLost(err);
      throw err;
    }
    return res;
  }

  async function api(method, body = {}, signal) {
    const res = await post(`/api/v1/${method}`, body, signal);
    const text = await res.text();
    return text ? JSON.parse(text) : {};
  }

  /** Every node, page by page. */
  async function listAllNodes() {
    const nodes = [];
    let after = '';
    for (let page = 0; page < 100; page += 1) {
      const req = { limit: 1000 };
      if (after) req.after = after;
      const list = await api('ListNodes', req);
      nodes.push(...(list.nodes || []));
      after = list.nextAfter || '';
      if (!after) break;
    }
    return nodes;
  }

  /**
   * Follows the event stream (`Events` with `follow`), reconnecting from the next seq
   * when it breaks. Returns a function that stops it.
   */
  function followEvents(filter, onEvent, onState) {
    const controller = new AbortController();
    let stopped = false;
    let next = num(filter.fromSeq);
    const source = `stream:${filter.node || '*'}`;
    (async () => {
      let attempt = 0;
      while (!stopped) {
        onState(attempt === 0 ? 'connecting' : 'reconnecting');
        try {
          const req = { fromSeq: String(next), follow: true };
          if (filter.node) req.node = filter.node;
          const res = await post('/api/v1/Events', req, controller.signal);
          onState('live');
          clearError(source);
          attempt = 0;
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += decoder.decode(value, { stream: true });
            let nl;
            while ((nl = buffer.indexOf('\n')) >= 0) {
              const line = buffer.slice(0, nl).trim();
              buffer = buffer.slice(nl + 1);
              if (!line) continue;
              let ev;
              try { ev = JSON.parse(line); } catch { continue; }
              if (ev.code !== undefined && ev.message !== undefined && ev.seq === undefined) {
                throw new ApiError(200, String(ev.code).replace(/^ERROR_CODE_/, ''), ev.message);
              }
              const seq = num(ev.seq);
              if (seq >= next) next = seq + 1;
              if (seq > latestSeq) latestSeq = seq;
              onEvent(ev);
            }
          }
        } catch (e) {
          if (stopped || e.name === 'AbortError') return;
          if (e instanceof ApiError && e.status === 401) return;
          showError(e, source, 'Event stream');
        }
        attempt += 1;
        if (!stopped) {
          onState('reconnecting');
          await sleep(Math.min(10000, 1000 * attempt));
        }
      }
    })();
    return () => { stopped = true; controller.abort(); };
  }

  /** Runs `fn` now and every `ms` while the view lasts (never two at once). */
  function every(ms, fn) {
    let busy = false;
    let stopped = false;
    const tick = async () => {
      if (busy || stopped) return;
      busy = true;
      try { await fn(); } finally { busy = false; }
    };
    tick();
    const id = setInterval(tick, ms);
    teardown.push(() => { stopped = true; clearInterval(id); });
    return tick;
  }

  const isAdmin = () => session && String(session.role).toUpperCase().includes('ADMIN');

  /** Admin-only controls are shown disabled to viewers. */
  function adminOnly(el) {
    if (!isAdmin()) {
      el.disabled = true;
      el.title = 'Needs the admin role';
    }
    return el;
  }

  // ---------------------------------------------------------------------------------
  // Session

  function sessionLost(err) {
    session = null;
    route();
    showError(err, 'session', 'Signed out');
  }

  async function loadSession() {
    let res;
    try {
      res = await fetch('/console/session', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    } catch (e) {
      session = null;
      route();
      showError(networkError(e), 'session');
      return;
    }
    if (res.ok) {
      session = await res.json();
    } else {
      session = null;
      if (res.status !== 401) showError(await readError(res), 'session', 'Session');
    }
    route();
  }

  const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/;
  const PEM_KEY = /-----BEGIN PRIVATE KEY-----([\s\S]*?)-----END PRIVATE KEY-----/;

  async function login(file) {
    const text = await file.text();
    const cert = text.match(PEM_CERT);
    if (!cert) throw new ApiError(0, 'INVALID_ARGUMENT', 'the file holds no certificate (-----BEGIN CERTIFICATE-----)');
    const key = text.match(PEM_KEY);
    if (!key) {
      const other = /-----BEGIN (EC |ENCRYPTED )?PRIVATE KEY-----/.test(text)
        ? 'its private key is not an unencrypted PKCS#8 key (-----BEGIN PRIVATE KEY-----)'
        : 'the file holds no private key (-----BEGIN PRIVATE KEY-----)';
      throw new ApiError(0, 'INVALID_ARGUMENT', other);
    }
    if (!window.crypto || !window.crypto.subtle) {
      throw new ApiError(0, 'UNAVAILABLE', 'this browser offers no WebCrypto here (the page must be served over HTTPS)');
    }
    let privateKey;
    try {
      privateKey = await crypto.subtle.importKey(
        'pkcs8', base64ToBytes(key[1]), { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign'],
      );
    } catch (e) {
      throw new ApiError(0, 'INVALID_ARGUMENT', `the private key is not an ECDSA P-256 key (${e.message || e.name})`);
    }
    const { challenge } = await (await post('/console/challenge')).json();
    const signed = new TextEncoder().encode(`tern-console-login\n${challenge}`);
    const signature = new Uint8Array(
      await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, privateKey, signed),
    );
    const res = await post('/console/login', {
      certificatePem: cert[0],
      challenge,
      signature: bytesToBase64(signature),
    });
    session = await res.json();
  }

  async function logout() {
    try {
      await post('/console/logout', {});
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 401)) {
        showError(e, 'action', 'Sign out');
        return;
      }
    }
    session = null;
    if (location.hash !== '#/nodes') history.replaceState(null, '', '#/nodes');
    route();
  }

  // ---------------------------------------------------------------------------------
  // Layout and routing

  const NAV = [
    ['nodes', 'Nodes', '#/nodes'],
    ['events', 'Events', '#/events'],
    ['pairing', 'Pairing', '#/pairing'],
    ['posture', 'Posture', '#/posture'],
  ];

  let shell = null;

  function renderShell() {
    const nav = h('nav', { class: 'nav', 'aria-label': 'Sections' },
      NAV.map(([key, label, href]) => h('a', { href, class: 'nav-link', 'data-nav': key, 'data-testid': `nav-${key}`, text: label })));
    const main = h('main', { class: 'main', id: 'view', 'data-testid': 'view' });
    const side = h('aside', { class: 'sidebar' },
      h('div', { class: 'brand' }, h('span', { class: 'brand-mark', text: 'T' }), h('span', { class: 'brand-name', text: 'Tern' })),
      nav,
      h('div', { class: 'who' },
        h('div', { class: 'who-name', 'data-testid': 'operator-name', text: session.operator || '' }),
        h('div', { class: 'who-role' }, badge(roleName(session.role), 'operator-role')),
        h('button', { type: 'button', class: 'btn btn-ghost btn-small', 'data-testid': 'logout', onclick: logout, text: 'Sign out' })));
    replace(app, h('div', { class: 'layout' }, side, main));
    shell = { main, nav, operator: session.operator };
  }

  function route() {
    for (const stop of teardown.splice(0)) {
      try { stop(); } catch { /* already stopped */ }
    }
    if (!session) {
      shell = null;
      renderLogin();
      return;
    }
    if (!shell || !document.body.contains(shell.main) || shell.operator !== session.operator) {
      clearError('session');
      renderShell();
    }
    const hash = location.hash || '#/nodes';
    const [path, query] = hash.slice(1).split('?');
    const params = new URLSearchParams(query || '');
    let key = 'nodes';
    let view;
    const nodeMatch = path.match(/^\/node\/(.+)$/);
    if (nodeMatch) {
      view = () => renderNode(decodeURIComponent(nodeMatch[1]));
    } else if (path === '/events') {
      key = 'events';
      view = () => renderEvents(params);
    } else if (path === '/pairing') {
      key = 'pairing';
      view = renderPairing;
    } else if (path === '/posture') {
      key = 'posture';
      view = renderPosture;
    } else {
      view = renderInventory;
    }
    for (const link of shell.nav.querySelectorAll('a')) {
      link.classList.toggle('active', link.getAttribute('data-nav') === key);
    }
    clear(shell.main);
    shell.main.setAttribute('data-view', nodeMatch ? 'node' : key);
    view();
  }

  window.addEventListener('hashchange', route);

  function pageHeader(title, subtitle, ...actions) {
    return h('header', { class: 'page-header' },
      h('div', null, h('h1', { text: title }), subtitle ? h('p', { class: 'subtitle' }, subtitle) : null),
      actions.length ? h('div', { class: 'page-actions' }, actions) : null);
  }

  function card(title, ...children) {
    return h('section', { class: 'card' }, title ? h('h2', { class: 'card-title', text: title }) : null, children);
  }

  function table(columns, testid) {
    const tbody = h('tbody', { 'data-testid': testid });
    const el = h('table', { class: 'table' },
      h('thead', null, h('tr', null, columns.map((c) => h('th', { text: c })))),
      tbody);
    return { el, tbody };
  }

  function emptyRow(tbody, columns, text) {
    replace(tbody, h('tr', { class: 'empty' }, h('td', { colspan: columns, text })));
  }

  function field(label, value, testid) {
    return h('div', { class: 'field' },
      h('dt', { text: label }),
      h('dd', { 'data-testid': testid }, value));
  }

  // ---------------------------------------------------------------------------------
  // Login

  function renderLogin() {
    const input = h('input', { type: 'file', id: 'identity-file', accept: '.identity,.pem,.txt,text/plain,application/x-pem-file', 'data-testid': 'login-file' });
    const button = h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'login-submit', text: 'Sign in' });
    const status = h('p', { class: 'login-status', 'data-testid': 'login-status' });
    const form = h('form', { class: 'login-form', novalidate: true },
      h('label', { for: 'identity-file', class: 'label', text: 'Operator identity file' }),
      input,
      h('p', { class: 'hint' },
        'The file ', h('code', { text: 'ternd operator add' }),
        ' wrote: your certificate and private key. The key stays in this page; only a signature is sent.'),
      button, status);
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const file = input.files && input.files[0];
      if (!file) {
        showError(new ApiError(0, 'INVALID_ARGUMENT', 'choose your identity file first'), 'login', 'Sign in');
        return;
      }
      button.disabled = true;
      status.textContent = 'Signing in…';
      try {
        await login(file);
        input.value = '';
        clearError();
        route();
      } catch (err) {
        status.textContent = '';
        showError(err, 'login', 'Sign in');
      } finally {
        button.disabled = false;
      }
    });
    replace(app, h('div', { class: 'login', 'data-testid': 'login' },
      h('div', { class: 'login-card' },
        h('div', { class: 'brand brand-large' }, h('span', { class: 'brand-mark', text: 'T' }), h('span', { class: 'brand-name', text: 'Tern' })),
        h('h1', { text: 'Operator console' }),
        form)));
  }

  // ---------------------------------------------------------------------------------
  // Inventory (#/nodes)

  function capabilityChips(capabilities) {
    const caps = capabilities || [];
    if (!caps.length) return h('span', { class: 'muted', text: '—' });
    return h('div', { class: 'chips' }, caps.map((c) => h('span', {
      class: 'chip', 'data-testid': 'capability', title: `version ${c.version || 0}${c.needsApproval ? ', needs local approval' : ''}`,
      text: c.name,
    })));
  }

  function nodeHref(id) {
    return `#/node/${encodeURIComponent(id)}`;
  }

  function renderInventory() {
    const summary = h('span', { 'data-testid': 'node-summary', text: 'Loading…' });
    const columns = ['Node', 'State', 'Trust', 'Transport', 'Address', 'Platform', 'Last seen', 'Capabilities'];
    const { el, tbody } = table(columns, 'node-rows');
    append(shell.main,
      pageHeader('Nodes', summary, h('a', { class: 'btn btn-primary', href: '#/pairing', 'data-testid': 'pair-new-node', text: 'Pair a node' })),
      card(null, h('div', { class: 'table-wrap' }, el)));

    const refresh = every(POLL_MS, async () => {
      let nodes;
      try {
        nodes = await listAllNodes();
        clearError('poll:nodes');
      } catch (e) {
        if (e.name !== 'AbortError') showError(e, 'poll:nodes', 'Nodes');
        return;
      }
      const counts = { online: 0, offline: 0, revoked: 0 };
      for (const n of nodes) counts[nodeState(n.state)] = (counts[nodeState(n.state)] || 0) + 1;
      summary.textContent = `${nodes.length} node${nodes.length === 1 ? '' : 's'}: ${counts.online} online, ${counts.offline} offline, ${counts.revoked} revoked`;
      if (!nodes.length) {
        emptyRow(tbody, columns.length, 'No nodes yet. Pair one from the Pairing page.');
        return;
      }
      replace(tbody, nodes.map((n) => {
        const state = nodeState(n.state);
        const row = h('tr', { class: 'clickable', 'data-testid': 'node-row', 'data-node-id': n.id, 'data-state': state },
          h('td', { class: 'nowrap' }, h('a', { href: nodeHref(n.id), class: 'mono strong', 'data-testid': 'node-link', text: n.id })),
          h('td', null, badge(state, 'node-state')),
          h('td', null, badge(state === 'revoked' ? 'revoked' : 'paired', 'node-trust')),
          h('td', { 'data-testid': 'node-transport', text: n.transport || '—' }),
          h('td', { class: 'mono', text: n.address || '—' }),
          h('td', { class: 'nowrap', text: n.platform || '—' }),
          h('td', { class: 'nowrap' }, relTime(n.lastSeenMs, 'node-last-seen')),
          h('td', null, capabilityChips(n.capabilities)));
        row.addEventListener('click', (e) => {
          if (e.target.closest('a')) return;
          location.hash = nodeHref(n.id);
        });
        return row;
      }));
    });

    // An event is a sign that something changed: refresh soon after it. (Only new
    // events matter here: start after the last one seen, if any was.)
    let pending = null;
    teardown.push(() => clearTimeout(pending));
    teardown.push(followEvents({ fromSeq: latestSeq ? latestSeq + 1 : 0 }, () => {
      if (pending) return;
      pending = setTimeout(() => { pending = null; refresh(); }, 300);
    }, () => {}));
  }

  // ---------------------------------------------------------------------------------
  // One node (#/node/<id>)

  function renderHealthFigures(target, health, atMs) {
    const figures = [];
    const fig = (key, label, value, detail) => figures.push(h('div', { class: 'figure', 'data-testid': 'health-figure', 'data-figure': key },
      h('div', { class: 'figure-label', text: label }),
      h('div', { class: 'figure-value', text: value }),
      detail ? h('div', { class: 'figure-detail', text: detail }) : null));
    if (health && typeof health === 'object') {
      if (health.hostname) fig('hostname', 'Host name', health.hostname);
      if (health.uptime_s !== undefined) fig('uptime', 'Uptime', fmtDuration(num(health.uptime_s) * 1000));
      if (health.load) {
        fig('load', 'Load average',
          [health.load.one, health.load.five, health.load.fifteen].map((v) => num(v).toFixed(2)).join('  '), '1, 5 and 15 min');
      }
      if (health.memory) {
        const total = num(health.memory.total_bytes);
        const avail = num(health.memory.available_bytes);
        const used = total ? Math.round(((total - avail) / total) * 100) : 0;
        fig('memory', 'Memory used', `${used} %`, `${fmtBytes(avail)} free of ${fmtBytes(total)}`);
      }
      if (health.disk) {
        const total = num(health.disk.total_bytes);
        const avail = num(health.disk.available_bytes);
        const used = total ? Math.round(((total - avail) / total) * 100) : 0;
        fig('disk', `Disk ${health.disk.path || ''}`.trim(), `${used} % used`, `${fmtBytes(avail)} free of ${fmtBytes(total)}`);
      }
      if (health.static_ram) fig('static_ram', 'Static RAM', fmtBytes(health.static_ram.used_bytes), `${fmtBytes(health.static_ram.free_bytes)} free`);
      if (health.heap) fig('heap', 'Heap', fmtBytes(health.heap.used_bytes), `${fmtBytes(health.heap.free_bytes)} free`);
      if (health.stack) fig('stack', 'Stack high water', fmtBytes(health.stack.high_water_bytes), `of ${fmtBytes(health.stack.size_bytes)}`);
    }
    if (!figures.length) {
      figures.push(h('div', { class: 'figure', 'data-testid': 'health-figure', 'data-figure': 'raw' },
        h('div', { class: 'figure-label', text: 'Report' }),
        h('pre', { class: 'figure-raw', text: JSON.stringify(health, null, 2) })));
    }
    replace(target,
      h('div', { class: 'figures' }, figures),
      h('p', { class: 'hint' }, 'Reported ', relTime(atMs, 'health-updated'), ` (${fmtTime(atMs)})`));
  }

  function renderNode(id) {
    let node = null;
    let revoking = false;

    const title = h('span', { class: 'mono', 'data-testid': 'node-id', text: id });
    const stateSlot = h('span', { class: 'title-badge' });
    const revokeButton = adminOnly(h('button', { type: 'button', class: 'btn btn-danger', 'data-testid': 'revoke-button', text: 'Revoke…' }));
    const header = pageHeader('Node', null, h('a', { class: 'btn btn-ghost', href: `#/events?node=${encodeURIComponent(id)}`, text: 'Events' }), revokeButton);
    replace(header.querySelector('h1'), 'Node ', title, stateSlot);

    // Revocation: an inline confirmation step.
    const reason = h('input', { type: 'text', class: 'input', 'data-testid': 'revoke-reason', value: 'revoked from the console', 'aria-label': 'Reason' });
    const confirmButton = h('button', { type: 'button', class: 'btn btn-danger', 'data-testid': 'revoke-confirm', text: 'Revoke' });
    const cancelButton = h('button', { type: 'button', class: 'btn btn-ghost', 'data-testid': 'revoke-cancel', text: 'Cancel' });
    const confirmBox = h('div', { class: 'confirm', role: 'alertdialog', 'data-testid': 'revoke-dialog', hidden: true },
      h('p', { class: 'confirm-text' }, 'Really revoke ', h('strong', { class: 'mono', text: id }),
        '? Its connections close now and it cannot connect again until it is paired anew.'),
      h('div', { class: 'confirm-row' }, h('label', { class: 'label', text: 'Reason' }), reason),
      h('div', { class: 'confirm-row' }, confirmButton, cancelButton));
    const revokeResult = h('p', { class: 'notice', 'data-testid': 'revoke-result', hidden: true });
    revokeButton.addEventListener('click', () => { confirmBox.hidden = false; reason.focus(); });
    cancelButton.addEventListener('click', () => { confirmBox.hidden = true; });
    confirmButton.addEventListener('click', async () => {
      if (revoking) return;
      revoking = true;
      confirmButton.disabled = true;
      try {
        const r = await api('Revoke', { node: id, reason: reason.value });
        confirmBox.hidden = true;
        revokeResult.hidden = false;
        revokeResult.textContent = `Revoked at ${fmtTime(r.revokedAtMs)}; ${num(r.connectionsClosed)} connection(s) closed.`;
        clearError('action');
        refreshNode();
      } catch (e) {
        showError(e, 'action', 'Revoke');
      } finally {
        revoking = false;
        confirmButton.disabled = false;
      }
    });

    const details = h('dl', { class: 'fields', 'data-testid': 'node-details' });
    const caps = table(['Capability', 'Version', 'Input', 'Output', 'Local approval'], 'capability-rows');
    const healthBody = h('div', { 'data-testid': 'health-panel' }, h('p', { class: 'muted', text: 'No health report yet.' }));

    // Calls.
    const capInput = h('input', { type: 'text', class: 'input', list: 'capability-list', 'data-testid': 'call-capability', value: '', placeholder: 'echo', 'aria-label': 'Capability' });
    const capList = h('datalist', { id: 'capability-list' });
    const callInput = h('textarea', { class: 'input textarea mono', rows: 4, spellcheck: 'false', 'data-testid': 'call-input', 'aria-label': 'Input (JSON)' });
    callInput.value = '{}';
    const callButton = adminOnly(h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'call-submit', text: 'Call' }));
    const callResult = h('div', { class: 'call-result', 'data-testid': 'call-result' },
      h('p', { class: 'muted', text: 'The result of a call shows here.' }));
    const callForm = h('form', { class: 'call-form' },
      h('div', { class: 'form-row' }, h('label', { class: 'label', text: 'Capability' }), capInput, capList),
      h('div', { class: 'form-row' }, h('label', { class: 'label', text: 'Input (JSON)' }), callInput),
      h('div', { class: 'form-row form-actions' }, callButton));
    const calls = table(['Call', 'Capability', 'Outcome', 'Created', 'Duration', 'Message'], 'call-rows');

    callForm.addEventListener('submit', async (e) => {
      e.preventDefault();
      const capability = capInput.value.trim();
      if (!capability) {
        replace(callResult, h('p', { class: 'error-text', 'data-testid': 'call-input-error', text: 'Name the capability to call.' }));
        return;
      }
      const text = callInput.value.trim() || '{}';
      try {
        JSON.parse(text);
      } catch (err) {
        replace(callResult, h('p', { class: 'error-text', 'data-testid': 'call-input-error', text: `The input is not valid JSON: ${err.message}` }));
        return;
      }
      callButton.disabled = true;
      replace(callResult, h('p', { class: 'muted', 'data-testid': 'call-running', text: `Calling ${capability}…` }));
      try {
        const r = await api('Call', {
          node: id, capability, input: bytesToBase64(new TextEncoder().encode(text)), contentType: 'application/json', timeoutMs: 0,
        });
        showCallResult(r, capability);
        clearError('action');
        if (capability === 'system.health' && callState(r.state) === 'succeeded') {
          const out = decodeBody(r.output, r.contentType);
          if (out.kind === 'json') renderHealthFigures(healthBody, out.value, num(r.updatedAtMs) || Date.now());
        }
      } catch (err) {
        clear(callResult);
        showError(err, 'action', `Call ${capability}`);
      } finally {
        callButton.disabled = !isAdmin();
        refreshCalls();
      }
    });

    function showCallResult(r, capability) {
      const state = callState(r.state);
      const out = decodeBody(r.output, r.contentType);
      const took = num(r.updatedAtMs) && num(r.createdAtMs) ? fmtDuration(num(r.updatedAtMs) - num(r.createdAtMs)) : null;
      replace(callResult,
        h('div', { class: 'call-summary' },
          badge(state, 'call-state'),
          h('span', { class: 'mono', text: `${capability} · call ${r.callId}` }),
          took ? h('span', { class: 'muted', text: `took ${took}` }) : null),
        r.message ? h('p', { class: state === 'succeeded' ? 'muted' : 'error-text', 'data-testid': 'call-message', text: r.message }) : null,
        h('pre', { class: 'output', 'data-testid': 'call-output', 'data-kind': out.kind, text: out.text || '(no output)' }));
    }

    const eventsList = h('ul', { class: 'event-mini', 'data-testid': 'node-events' }, h('li', { class: 'muted', text: 'No events yet.' }));
    const recent = [];

    append(shell.main,
      header,
      confirmBox,
      revokeResult,
      h('div', { class: 'grid-2' },
        card('Details', details),
        card('Health', healthBody)),
      card('Call a capability', h('div', { class: 'call-grid' }, callForm, callResult)),
      card('Recent calls', h('div', { class: 'table-wrap' }, calls.el)),
      h('div', { class: 'grid-2' },
        card('Capabilities', h('div', { class: 'table-wrap' }, caps.el)),
        card('Recent events', eventsList)));

    const refreshNode = every(POLL_MS, async () => {
      try {
        node = await api('ShowNode', { id });
        clearError('poll:node');
      } catch (e) {
        showError(e, 'poll:node', `Node ${id}`);
        if (e.code === 'NOT_FOUND') replace(stateSlot, badge('unknown', 'node-state'));
        return;
      }
      const state = nodeState(node.state);
      replace(stateSlot, badge(state, 'node-state'));
      revokeButton.hidden = state === 'revoked';
      if (state === 'revoked') confirmBox.hidden = true;
      replace(details,
        field('State', badge(state), 'detail-state'),
        field('Trust', badge(state === 'revoked' ? 'revoked' : 'paired'), 'detail-trust'),
        field('Transport', node.transport || '—', 'detail-transport'),
        field('Address', h('span', { class: 'mono', text: node.address || '—' }), 'detail-address'),
        field('Platform', node.platform || '—', 'detail-platform'),
        field('Last seen', [relTime(node.lastSeenMs), num(node.lastSeenMs) ? ` (${fmtTime(node.lastSeenMs)})` : ''], 'detail-last-seen'),
        field('Certificate', h('span', { class: 'mono break', text: node.certificateFingerprint || '—' }), 'detail-fingerprint'),
        field('Certificate expires', [fmtTime(node.certificateNotAfterMs), ' (', relTime(node.certificateNotAfterMs), ')'], 'detail-not-after'));
      const capabilities = node.capabilities || [];
      if (!capabilities.length) emptyRow(caps.tbody, 5, 'None known.');
      else {
        replace(caps.tbody, capabilities.map((c) => h('tr', { 'data-testid': 'capability-row', 'data-capability': c.name },
          h('td', { class: 'mono strong', text: c.name }),
          h('td', { text: c.version || 0 }),
          h('td', { class: 'mono', text: c.inputContentType || '—' }),
          h('td', { class: 'mono', text: c.outputContentType || '—' }),
          h('td', { text: c.needsApproval ? 'required' : 'no' }))));
      }
      replace(capList, capabilities.map((c) => h('option', { value: c.name })));
      if (!capInput.value && capabilities.length) {
        const echo = capabilities.find((c) => c.name === 'echo');
        capInput.value = (echo || capabilities[0]).name;
      }
    });

    const refreshCalls = every(5000, async () => {
      let list;
      try {
        list = await api('ListCalls', { node: id, limit: 20 });
        clearError('poll:calls');
      } catch (e) {
        showError(e, 'poll:calls', 'Recent calls');
        return;
      }
      const rows = list.calls || [];
      if (!rows.length) {
        emptyRow(calls.tbody, 6, 'No calls yet.');
        return;
      }
      replace(calls.tbody, rows.map((c) => {
        const created = num(c.createdAtMs);
        const updated = num(c.updatedAtMs);
        const state = callState(c.state);
        return h('tr', { 'data-testid': 'call-row', 'data-call-id': c.callId, 'data-state': state },
          h('td', { class: 'mono', text: c.callId }),
          h('td', { class: 'mono', text: c.capability || '—' }),
          h('td', null, badge(state)),
          h('td', null, relTime(created)),
          h('td', { text: created && updated && state !== 'pending' ? fmtDuration(updated - created) : '—' }),
          h('td', { class: 'message-cell', text: (c.message || '') + (num(c.timedOutAtMs) ? ` (answered after the deadline, ${fmtTime(c.timedOutAtMs)})` : '') }));
      }));
    });

    teardown.push(followEvents({ node: id }, (ev) => {
      const decoded = decodeBody(ev.body, ev.contentType);
      if (HEALTH_EVENTS.has(ev.name) && decoded.kind === 'json') {
        renderHealthFigures(healthBody, decoded.value, num(ev.atMs));
      }
      recent.unshift({ ev, decoded });
      recent.length = Math.min(recent.length, 10);
      replace(eventsList, recent.map(({ ev: e, decoded: d }) => h('li', { 'data-testid': 'node-event', 'data-event-name': e.name },
        h('span', { class: 'mono strong', text: e.name }),
        h('span', { class: 'muted' }, ' ', relTime(e.atMs)),
        h('div', { class: 'mono small truncate', text: compactBody(d) }))));
    }, () => {}));
  }

  // ---------------------------------------------------------------------------------
  // Events (#/events)

  function renderEvents(params) {
    const nodeFilter = params.get('node') || '';
    const nodeSelect = h('select', { class: 'input', 'data-testid': 'event-filter-node', 'aria-label': 'Node' },
      h('option', { value: '', text: 'All nodes' }));
    if (nodeFilter) nodeSelect.append(h('option', { value: nodeFilter, text: nodeFilter }));
    nodeSelect.value = nodeFilter;
    const nameInput = h('input', { type: 'search', class: 'input', placeholder: 'Filter by name', 'data-testid': 'event-filter-name', 'aria-label': 'Name contains' });
    const streamState = h('span', { class: 'stream-state' }, badge('connecting', 'event-stream-state'));
    const counter = h('span', { class: 'muted', 'data-testid': 'event-count', text: '' });
    const columns = ['Seq', 'Time', 'Node', 'Name', 'Body'];
    const { el, tbody } = table(columns, 'event-rows');
    const events = [];

    append(shell.main,
      pageHeader('Events', 'Stored events, then new ones as nodes send them.', streamState),
      card(null,
        h('div', { class: 'toolbar' },
          h('label', { class: 'label-inline' }, 'Node ', nodeSelect),
          h('label', { class: 'label-inline' }, 'Name ', nameInput),
          counter),
        h('div', { class: 'table-wrap' }, el)));

    const matches = (e) => !nameInput.value || e.ev.name.toLowerCase().includes(nameInput.value.trim().toLowerCase());

    function rowFor({ ev, decoded }) {
      return h('tr', { 'data-testid': 'event-row', 'data-event-name': ev.name, 'data-seq': String(ev.seq), 'data-node-id': ev.node },
        h('td', { class: 'mono', text: ev.seq }),
        h('td', { title: fmtTime(ev.atMs) }, relTime(ev.atMs)),
        h('td', null, h('a', { href: nodeHref(ev.node), class: 'mono', text: ev.node })),
        h('td', null, h('span', { class: 'chip', text: ev.name })),
        h('td', { class: 'mono small body-cell', text: compactBody(decoded) }));
    }

    function updateCounter() {
      const shown = events.filter(matches).length;
      counter.textContent = `${shown} shown of ${events.length} received`;
    }

    function renderAll() {
      const shown = events.filter(matches);
      if (!shown.length) emptyRow(tbody, columns.length, events.length ? 'No event matches the filter.' : 'No events yet.');
      else replace(tbody, shown.map(rowFor));
      updateCounter();
    }

    let stopStream = null;
    function start(node) {
      if (stopStream) stopStream();
      events.length = 0;
      renderAll();
      stopStream = followEvents({ node }, (ev) => {
        const item = { ev, decoded: decodeBody(ev.body, ev.contentType) };
        events.unshift(item);
        if (events.length > MAX_EVENTS) events.length = MAX_EVENTS;
        if (matches(item)) {
          const first = tbody.firstElementChild;
          if (first && first.classList.contains('empty')) clear(tbody);
          tbody.prepend(rowFor(item));
          while (tbody.children.length > MAX_EVENTS) tbody.lastElementChild.remove();
        }
        updateCounter();
      }, (state) => replace(streamState, badge(state, 'event-stream-state')));
    }
    teardown.push(() => { if (stopStream) stopStream(); });

    nameInput.addEventListener('input', renderAll);
    nodeSelect.addEventListener('change', () => {
      const node = nodeSelect.value;
      history.replaceState(null, '', node ? `#/events?node=${encodeURIComponent(node)}` : '#/events');
      start(node);
    });

    listAllNodes().then((nodes) => {
      for (const n of nodes) {
        if (n.id !== nodeFilter) nodeSelect.append(h('option', { value: n.id, text: n.id }));
      }
    }).catch((e) => showError(e, 'poll:nodes', 'Nodes'));
    start(nodeFilter);
  }

  // ---------------------------------------------------------------------------------
  // Pairing (#/pairing)

  function renderPairing() {
    const ttl = h('input', { type: 'number', class: 'input', min: 30, max: 86400, placeholder: 'policy default', 'data-testid': 'pair-ttl', 'aria-label': 'Lifetime in seconds' });
    const device = h('input', { type: 'text', class: 'input', placeholder: 'chosen by the daemon', 'data-testid': 'pair-device', 'aria-label': 'Device id' });
    const approval = h('select', { class: 'input', 'data-testid': 'pair-approval', 'aria-label': 'Approval' },
      h('option', { value: '', text: 'Policy default' }),
      h('option', { value: 'yes', text: 'Required' }),
      h('option', { value: 'no', text: 'Not required' }));
    const create = adminOnly(h('button', { type: 'submit', class: 'btn btn-primary', 'data-testid': 'pair-create', text: 'Create pairing code' }));
    const result = h('div', { class: 'pair-result', 'data-testid': 'pair-result', hidden: true });
    const form = h('form', { class: 'pair-form' },
      h('div', { class: 'form-grid' },
        h('div', { class: 'form-row' }, h('label', { class: 'label', text: 'Lifetime (seconds)' }), ttl),
        h('div', { class: 'form-row' }, h('label', { class: 'label', text: 'Device id' }), device),
        h('div', { class: 'form-row' }, h('label', { class: 'label', text: 'Operator approval' }), approval)),
      h('div', { class: 'form-actions' }, create));
    const pendingTable = table(['Code id', 'Device', 'Requested', 'Expires', ''], 'pending-rows');
    const allTable = table(['Code id', 'State', 'Device', 'Created', 'Expires', 'Approval', 'Used'], 'pair-rows');
    let qrUrl = null;
    teardown.push(() => { if (qrUrl) URL.revokeObjectURL(qrUrl); });

    append(shell.main,
      pageHeader('Pairing', 'Mint a one-time code for a new node, and decide on pairings that wait for approval.'),
      card('New pairing code', form, result),
      card('Waiting for a decision', h('div', { class: 'table-wrap' }, pendingTable.el)),
      card('Codes', h('div', { class: 'table-wrap' }, allTable.el)));

    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const req = { ttlSeconds: ttl.value ? Number(ttl.value) : 0, deviceId: device.value.trim() };
      if (approval.value) req.requireApproval = approval.value === 'yes';
      create.disabled = true;
      try {
        const code = await api('CreatePairCode', req);
        clearError('action');
        showCode(code);
        refresh();
      } catch (err) {
        showError(err, 'action', 'Create pairing code');
      } finally {
        create.disabled = !isAdmin();
      }
    });

    function showCode(code) {
      const img = h('img', { class: 'qr', alt: 'QR code of the pairing URI', 'data-testid': 'pair-qr', width: 220, height: 220 });
      const qrBox = h('div', { class: 'qr-box' }, h('p', { class: 'muted', text: 'Drawing the QR code…' }));
      replace(result,
        h('div', { class: 'pair-code-row' },
          h('div', null,
            h('div', { class: 'label', text: 'Pairing code' }),
            h('div', { class: 'pair-code mono', 'data-testid': 'pair-code', text: code.code }),
            h('dl', { class: 'fields fields-compact' },
              field('URI', h('span', { class: 'mono break', text: code.uri }), 'pair-uri'),
              field('Code id', String(code.codeId ?? 0), 'pair-code-id'),
              field('Device id', h('span', { class: 'mono', text: code.deviceId }), 'pair-device-id'),
              field('Expires', [fmtTime(code.expiresAtMs), ' (', relTime(code.expiresAtMs), ')'], 'pair-expires'),
              field('Approval', code.approvalRequired ? 'required before the node gets its certificate' : 'not required', 'pair-approval-required')),
            h('p', { class: 'hint' }, 'On the node: ',
              h('code', { text: `ternd node run --daemon <daemon address> --code ${code.code}` }),
              '. The code is shown only once.')),
          qrBox));
      result.hidden = false;
      post('/console/qr', { text: code.uri })
        .then((res) => res.blob())
        .then((blob) => {
          if (qrUrl) URL.revokeObjectURL(qrUrl);
          qrUrl = URL.createObjectURL(blob);
          img.src = qrUrl;
          replace(qrBox, img);
        })
        .catch((err) => {
          replace(qrBox, h('p', { class: 'error-text', text: 'No QR code.' }));
          showError(err, 'action', 'QR code');
        });
    }

    async function decide(method, codeId, label) {
      try {
        await api(method, { codeId });
        clearError('action');
      } catch (err) {
        showError(err, 'action', `${label} pairing ${codeId}`);
      }
      refresh();
    }

    const refresh = every(POLL_MS, async () => {
      let list;
      try {
        list = await api('ListPairings', {});
        clearError('poll:pairings');
      } catch (err) {
        showError(err, 'poll:pairings', 'Pairings');
        return;
      }
      const records = (list.records || []).slice().sort((a, b) => num(b.createdAtMs) - num(a.createdAtMs));
      const waiting = records.filter((r) => r.awaitingDecision);
      if (!waiting.length) emptyRow(pendingTable.tbody, 5, 'No pairing waits for a decision.');
      else {
        replace(pendingTable.tbody, waiting.map((r) => h('tr', { 'data-testid': 'pending-row', 'data-code-id': r.codeId ?? 0 },
          h('td', { class: 'mono', text: r.codeId ?? 0 }),
          h('td', { class: 'mono', text: r.deviceId || '—' }),
          h('td', null, relTime(r.createdAtMs)),
          h('td', null, relTime(r.expiresAtMs)),
          h('td', { class: 'actions' },
            adminOnly(h('button', { type: 'button', class: 'btn btn-primary btn-small', 'data-testid': 'pair-approve', 'data-code-id': r.codeId ?? 0, text: 'Approve', onclick: () => decide('ApprovePairing', r.codeId ?? 0, 'Approve') })),
            adminOnly(h('button', { type: 'button', class: 'btn btn-danger btn-small', 'data-testid': 'pair-reject', 'data-code-id': r.codeId ?? 0, text: 'Reject', onclick: () => decide('RejectPairing', r.codeId ?? 0, 'Reject') }))))));
      }
      if (!records.length) emptyRow(allTable.tbody, 7, 'No pairing codes.');
      else {
        replace(allTable.tbody, records.map((r) => h('tr', { 'data-testid': 'pair-row', 'data-code-id': r.codeId ?? 0, 'data-state': pairState(r.state) },
          h('td', { class: 'mono', text: r.codeId ?? 0 }),
          h('td', null, badge(pairState(r.state))),
          h('td', { class: 'mono', text: r.deviceId || '—' }),
          h('td', { title: fmtTime(r.createdAtMs) }, relTime(r.createdAtMs)),
          h('td', { title: fmtTime(r.expiresAtMs) }, relTime(r.expiresAtMs)),
          h('td', { text: r.approvalRequired ? 'required' : 'no' }),
          h('td', { text: r.used ? 'yes' : 'no' }))));
      }
    });
  }

  // ---------------------------------------------------------------------------------
  // Posture (#/posture)

  function renderPosture() {
    const whoBody = h('dl', { class: 'fields', 'data-testid': 'whoami' });
    const daemonBody = h('dl', { class: 'fields', 'data-testid': 'posture-daemon' });
    const listenBody = h('dl', { class: 'fields', 'data-testid': 'posture-listeners' });
    const trustBody = h('dl', { class: 'fields', 'data-testid': 'posture-trust' });
    const countsBody = h('div', { class: 'figures', 'data-testid': 'posture-counts' });
    append(shell.main,
      pageHeader('Posture', 'How this daemon is exposed and what it trusts.'),
      h('div', { class: 'grid-2' }, card('Nodes', countsBody), card('You', whoBody)),
      h('div', { class: 'grid-2' }, card('Listeners', listenBody), card('Trust', trustBody)),
      card('Daemon', daemonBody));

    const list = (items, testid) => (items && items.length
      ? h('ul', { class: 'plain-list', 'data-testid': testid }, items.map((a) => h('li', { class: 'mono', text: a })))
      : h('span', { class: 'muted', 'data-testid': testid, text: 'none' }));

    every(5000, async () => {
      let status;
      let who;
      try {
        [status, who] = await Promise.all([api('Status', {}), api('WhoAmI', {})]);
        clearError('poll:status');
      } catch (err) {
        showError(err, 'poll:status', 'Status');
        return;
      }
      const counts = status.nodes || {};
      const ca = status.ca || {};
      const pairing = status.pairing || {};
      replace(countsBody,
        ['paired', 'online', 'revoked'].map((k) => h('div', { class: 'figure', 'data-testid': `posture-${k}`, 'data-value': String(num(counts[k])) },
          h('div', { class: 'figure-label', text: k[0].toUpperCase() + k.slice(1) }),
          h('div', { class: 'figure-value', text: String(num(counts[k])) }))));
      replace(whoBody,
        field('Operator', who.name || '—', 'whoami-name'),
        field('Role', badge(roleName(who.role)), 'whoami-role'),
        field('Signed in via', who.via || '—', 'whoami-via'));
      replace(listenBody,
        field('Node plane', list(status.listenAddresses, 'posture-listen')),
        field('Operator API', list(status.operatorAddresses, 'posture-operator-listen')),
        field('Node mTLS', badge(status.mtlsEnforced ? 'enforced' : 'not enforced'), 'posture-mtls'));
      replace(trustBody,
        field('CA fingerprint (SHA-256)', h('span', { class: 'mono break', text: ca.fingerprintSha256 || '—' }), 'posture-ca-fingerprint'),
        field('CA expires', [fmtTime(ca.notAfterMs), ' (', relTime(ca.notAfterMs), ')'], 'posture-ca-not-after'),
        field('Pairing code lifetime', fmtDuration(num(pairing.defaultTtlSeconds) * 1000), 'posture-pairing-ttl'),
        field('Pairing approval', pairing.approvalRequired ? 'required by default' : 'not required by default', 'posture-pairing-approval'));
      replace(daemonBody,
        field('Daemon id', h('span', { class: 'mono', text: status.daemonId || '—' }), 'posture-daemon-id'),
        field('Software version', status.softwareVersion || '—', 'posture-version'),
        field('Started', [fmtTime(status.startedAtMs), ' (', relTime(status.startedAtMs), ')'], 'posture-started'),
        field('Store', h('span', { class: 'mono break', text: status.store || '—' }), 'posture-store'));
    });
  }

  BADGE_TONES.enforced = 'good';
  BADGE_TONES['not enforced'] = 'bad';

  loadSession();
})();
