// The search page: one form, one POST to /v1/indexes/{name}/search, results drawn with DOM
// calls (textContent only, so document text is never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { auth: false, rerank: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    if (response.status === 401) { $("key-label").hidden = false; }
    const message = body && body.error ? body.error.message : response.statusText;
    throw new Error(response.status + ": " + message);
  }
  return body;
}

async function loadIndexes() {
  try {
    const info = await api("/v1/indexes");
    state.auth = info.auth;
    state.rerank = info.rerank;
    $("key-label").hidden = !info.auth;
    const select = $("index");
    select.textContent = "";
    for (const ix of info.indexes) {
      const option = document.createElement("option");
      option.value = ix.name;
      option.textContent = ix.name + " (v" + ix.version + ", " + ix.docs + " docs)";
      select.appendChild(option);
    }
    $("rerank").disabled = !info.rerank;
    $("rerank").checked = Boolean(info.rerank);
    $("rerank-model").textContent = info.rerank ? "(" + info.rerank.split("/").pop() + ")" : "(no reranker)";
    setStatus("");
  } catch (e) {
    setStatus("Could not list indexes: " + e.message + (state.auth ? "" : " (enter the API key)"), true);
    $("key-label").hidden = false;
  }
}

// the snippet with each [start, end) highlight wrapped in <mark>
function snippetNode(snippet, highlights) {
  const p = document.createElement("p");
  p.className = "snippet";
  let at = 0;
  for (const [start, end] of highlights) {
    if (start < at) continue;
    p.appendChild(document.createTextNode(snippet.slice(at, start)));
    const mark = document.createElement("mark");
    mark.textContent = snippet.slice(start, end);
    p.appendChild(mark);
    at = end;
  }
  p.appendChild(document.createTextNode(snippet.slice(at)));
  return p;
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  return Number.isInteger(x) ? String(x) : x.toFixed(4);
}

function hitNode(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  li.dataset.docId = hit.doc_id;
  const h2 = document.createElement("h2");
  h2.textContent = hit.title || hit.doc_id;
  const id = document.createElement("span");
  id.className = "doc-id";
  id.textContent = hit.doc_id;
  h2.appendChild(id);
  li.appendChild(h2);
  li.appendChild(snippetNode(hit.snippet, hit.highlights));
  const scores = document.createElement("div");
  scores.className = "scores";
  for (const [stage, value] of Object.entries(hit.scores)) {
    const s = document.createElement("span");
    s.className = "score-" + stage;
    s.textContent = stage + " " + fmt(value);
    scores.appendChild(s);
  }
  li.appendChild(scores);
  return li;
}

function showTimings(answer) {
  const box = $("timings");
  box.textContent = "";
  const parts = [["total", answer.took_ms]].concat(Object.entries(answer.timings));
  for (const [stage, ms] of parts) {
    const s = document.createElement("span");
    s.className = "time-" + stage;
    s.textContent = stage + " " + ms.toFixed(1) + " ms";
    box.appendChild(s);
  }
  const v = document.createElement("span");
  v.textContent = "version " + answer.version + " · batch of " + answer.batch;
  box.appendChild(v);
  box.hidden = false;
}

async function search(event) {
  if (event) event.preventDefault();
  const query = $("query").value;
  if (!query.trim()) return;
  const body = {
    query: query,
    k: Math.max(1, Math.min(100, parseInt($("k").value, 10) || 10)),
    retriever: $("retriever").value,
    rerank: $("rerank").checked && !$("rerank").disabled,
  };
  setStatus("Searching…");
  try {
    const answer = await api("/v1/indexes/" + encodeURIComponent($("index").value) + "/search", {
      method: "POST",
      body: JSON.stringify(body),
    });
    const list = $("results");
    list.textContent = "";
    for (const hit of answer.hits) list.appendChild(hitNode(hit));
    showTimings(answer);
    const how = body.rerank ? "reranked" : "not reranked";
    setStatus(answer.hits.length + " results from " + answer.index + " (" + how + ")");
    document.body.dataset.rerank = String(body.rerank);
  } catch (e) {
    setStatus(e.message, true);
  }
}

$("search-form").addEventListener("submit", search);
$("rerank").addEventListener("change", () => { if ($("query").value.trim()) search(); });
$("retriever").addEventListener("change", () => { if ($("query").value.trim()) search(); });
$("api-key").addEventListener("change", loadIndexes);
loadIndexes();
