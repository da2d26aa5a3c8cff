// The dashboard's script: follows /emulate/v1/events (server-sent events) and draws the
// emulator's state, the last requests and the live log. Every value from the emulator is put
// in the page as text (textContent), never as HTML.
'use strict';

const SEVERITIES = ['DEFAULT', 'DEBUG', 'INFO', 'NOTICE', 'WARNING', 'ERROR', 'CRITICAL', 'ALERT', 'EMERGENCY'];
const MAX_REQUESTS = 100;
const MAX_LOG = 1000;
const PALETTE = ['#0969da', '#8250df', '#1a7f37', '#bf3989', '#bc4c00', '#1b7c83', '#6e7781', '#9a6700'];

const view = { state: null, requests: [], log: [], pending: false };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    // Through the CSSOM: the page's Content-Security-Policy refuses inline style attributes.
    else if (key === 'style') Object.assign(node.style, value);
    else if (key.startsWith('data-')) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function colour(name) {
  let hash = 0;
  for (const c of name || '') hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function age(seconds) {
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
}

function shortRevision(service, revision) {
  const prefix = `${service}-`;
  return revision && revision.startsWith(prefix) ? revision.slice(prefix.length) : revision;
}

function readiness(ready) {
  if (ready === true) return el('span', { class: 'badge ok', text: 'ready' });
  if (ready === false) return el('span', { class: 'badge fail', text: 'failed' });
  return el('span', { class: 'badge unknown', text: 'not ready' });
}

// The traffic split as a bar: one segment per routed revision, as wide as its share.
function splitBar(service) {
  const bar = el('div', { class: 'split', 'data-split': service.name });
  const shares = new Map();
  for (const target of service.traffic) {
    if (!target.revision || !target.percent) continue;
    shares.set(target.revision, (shares.get(target.revision) || 0) + target.percent);
  }
  for (const [revision, percent] of shares) {
    bar.append(el('div', {
      class: 'segment',
      style: { flex: `0 0 ${percent}%`, background: colour(revision) },
      title: `${revision}: ${percent}%`,
      'data-revision': revision,
      'data-percent': percent,
      text: `${shortRevision(service.name, revision)} ${percent}%`,
    }));
  }
  return bar;
}

function instanceChip(instance) {
  const label = instance.state === 'starting'
    ? 'starting…'
    : `${instance.id} · ${instance.state} · ${instance.inFlight} in flight · ${age(instance.ageSeconds)}`;
  return el('span', { class: 'instance', 'data-state': instance.state, 'data-instance': instance.id, text: label });
}

function revisionRow(service, revision) {
  const instances = revision.instances || [];
  const cold = revision.coldStarts
    ? `${revision.coldStarts} (last ${revision.lastColdStartMs} ms)`
    : '0';
  return el('tr', { 'data-revision': revision.name, 'data-percent': revision.percent || 0 },
    el('td', {}, el('span', { class: 'swatch', style: { background: colour(revision.name) } }),
      el('span', { class: 'mono', text: revision.name })),
    el('td', {}, readiness(revision.ready), revision.message ? el('div', { class: 'muted', text: revision.message }) : null),
    el('td', { class: 'num', text: `${revision.percent || 0}%` }),
    el('td', {}, (revision.tags || []).map((tag) => el('span', { class: 'tag', text: tag }))),
    el('td', {}, instances.length ? instances.map(instanceChip) : el('span', { class: 'muted', text: 'none' })),
    el('td', { class: 'num', text: cold }),
    el('td', { class: 'num', text: revision.requests ?? 0 }));
}

function serviceCard(service) {
  const link = service.url ? el('a', { href: service.url, target: '_blank', rel: 'noopener noreferrer', text: service.url }) : null;
  const tagged = service.traffic.filter((t) => t.tag);
  return el('div', { class: 'card', 'data-service': service.name },
    el('h3', {}, el('span', { text: service.name }), readiness(service.ready), link),
    splitBar(service),
    tagged.length
      ? el('div', { class: 'muted' }, 'tags: ', tagged.map((t) => el('span', {}, el('span', { class: 'tag', text: t.tag }), ' ', t.url ? el('a', { href: t.url, target: '_blank', rel: 'noopener noreferrer', text: t.url }) : '', ' ')))
      : null,
    el('table', { class: 'revisions' },
      el('thead', {}, el('tr', {}, ['revision', 'readiness', 'traffic', 'tags', 'instances', 'cold starts', 'requests'].map((h) => el('th', { text: h })))),
      el('tbody', {}, service.revisions.map((r) => revisionRow(service, r)))));
}

function renderServices() {
  const state = view.state;
  const section = document.getElementById('services');
  document.getElementById('where').textContent = `project ${state.project} · ${state.region} · front end :${state.port}`;
  const cards = state.services.map(serviceCard);
  section.replaceChildren(el('h2', { text: 'Services' }), ...(cards.length ? cards : [el('p', { class: 'muted', text: 'No service yet.' })]));
}

function traceId(entry) {
  const trace = entry.trace || '';
  const slash = trace.lastIndexOf('/');
  return slash >= 0 ? trace.slice(slash + 1) : trace;
}

function pathOf(url) {
  try {
    const parsed = new URL(url);
    return parsed.pathname + parsed.search;
  } catch (_) {
    return url || '';
  }
}

function latencyMs(latency) {
  const seconds = parseFloat(latency || '0');
  return seconds < 0.001 ? `${Math.round(seconds * 1e6)} µs` : `${(seconds * 1000).toFixed(1)} ms`;
}

function requestRow(entry) {
  const http = entry.httpRequest;
  const labels = (entry.resource && entry.resource.labels) || {};
  const trace = traceId(entry);
  const time = (entry.timestamp || '').slice(11, 23);
  return el('tr', { 'data-url': http.requestUrl, 'data-status': http.status },
    el('td', { class: 'mono', text: time }),
    el('td', { text: http.requestMethod }),
    el('td', { class: 'mono', text: pathOf(http.requestUrl), title: http.requestUrl }),
    el('td', { class: `num status-${String(http.status)[0]}`, text: http.status }),
    el('td', { class: 'num', text: latencyMs(http.latency) }),
    el('td', { class: 'mono', text: labels.revision_name || '(front end)' }),
    el('td', { class: 'mono', text: (entry.labels && entry.labels.instanceId) || '' }),
    el('td', { class: 'mono', text: trace.slice(0, 12), title: trace }));
}

function message(entry) {
  if (entry.httpRequest) {
    const http = entry.httpRequest;
    return `${http.requestMethod} ${http.status} ${latencyMs(http.latency)} ${http.requestUrl}`;
  }
  if (entry.textPayload !== undefined) return entry.textPayload;
  const payload = entry.jsonPayload || {};
  return payload.message !== undefined ? String(payload.message) : JSON.stringify(payload);
}

function passes(entry) {
  const wanted = SEVERITIES.indexOf(document.getElementById('severity').value);
  const rank = SEVERITIES.indexOf(entry.severity || 'DEFAULT');
  return (rank < 0 ? 0 : rank) >= wanted;
}

function logLine(entry) {
  const labels = (entry.resource && entry.resource.labels) || {};
  const who = [labels.revision_name, entry.labels && entry.labels.instanceId].filter(Boolean).join('/');
  return el('li', { 'data-severity': entry.severity || 'DEFAULT' },
    el('span', { class: 'who', text: `${(entry.timestamp || '').slice(11, 19)} ` }),
    el('span', { class: 'sev', text: `${entry.severity || 'DEFAULT'} ` }),
    who ? el('span', { class: 'who', text: `${who} ` }) : null,
    message(entry));
}

function renderRequests() {
  const body = document.querySelector('#requests tbody');
  body.replaceChildren(...view.requests.map(requestRow));
  document.getElementById('no-requests').hidden = view.requests.length > 0;
}

function renderLog() {
  const list = document.getElementById('log');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.replaceChildren(...view.log.filter(passes).map(logLine));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function schedule() {
  if (view.pending) return;
  view.pending = true;
  requestAnimationFrame(() => {
    view.pending = false;
    if (view.state) renderServices();
    renderRequests();
    renderLog();
  });
}

function setConnection(state, text) {
  const node = document.getElementById('connection');
  node.dataset.state = state;
  node.textContent = text;
}

function connect() {
  const source = new EventSource('/emulate/v1/events');
  source.addEventListener('open', () => {
    // The stream starts with the state and the recent log: what was kept is replaced.
    view.requests = [];
    view.log = [];
    setConnection('live', 'live');
  });
  source.addEventListener('state', (event) => {
    view.state = JSON.parse(event.data);
    schedule();
  });
  source.addEventListener('log', (event) => {
    const entry = JSON.parse(event.data);
    if (entry.httpRequest) {
      view.requests.unshift(entry);
      view.requests.length = Math.min(view.requests.length, MAX_REQUESTS);
    }
    view.log.push(entry);
    if (view.log.length > MAX_LOG) view.log.splice(0, view.log.length - MAX_LOG);
    schedule();
  });
  source.addEventListener('error', () => {
    setConnection('down', 'disconnected: retrying…');
    // A stale cookie (a restarted emulator) is refused for good: say what to do.
    fetch('/emulate/v1/state', { credentials: 'same-origin' }).then((response) => {
      if (response.status === 401) {
        source.close();
        setConnection('down', 'not signed in: open the Dashboard URL that emulate run printed');
      }
    }).catch(() => {});
  });
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('severity').addEventListener('change', schedule);
  connect();
});
