// facesearch pages: every change goes through the JSON API (/api/v1). One listener per kind of
// event for the whole page (event delegation), so a grid of hundreds of faces stays quick.
"use strict";

(() => {
  const CSRF = document.body.dataset.csrfHeader || "x-facesearch-csrf";
  const API = "/api/v1";

  // -- talking to the API ----------------------------------------------------------------------

  async function call(method, path, body) {
    const init = { method, headers: { [CSRF]: "1", Accept: "application/json" } };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(API + path, init);
    } catch (err) {
      throw new Error("the server cannot be reached (" + err.message + ")");
    }
    if (response.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("log in first");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : "HTTP " + response.status;
      const err = new Error(message);
      err.status = response.status;
      err.code = data && data.error ? data.error.code : "http";
      throw err;
    }
    return data;
  }

  let toastTimer = null;
  function toast(message, kind) {
    const el = document.getElementById("toast");
    if (!el) return;
    el.textContent = message;
    el.className = kind || "info";
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, kind === "error" ? 8000 : 3500);
  }

  async function attempt(work) {
    try {
      return await work();
    } catch (err) {
      toast(err.message, "error");
      return undefined;
    }
  }

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // -- selecting faces ------------------------------------------------------------------------

  function container(el) {
    return el.closest(".cluster, .person-page") || document.body;
  }

  function selectedIds(root) {
    return $$(".face.selected", root).map((b) => Number(b.dataset.faceId));
  }

  function refreshSelection(root) {
    const n = $$(".face.selected", root).length;
    const actions = $(".selection-actions", root);
    if (actions) actions.hidden = n === 0;
    $$(".selection-actions button", root).forEach((b) => {
      if (!b.dataset.label) b.dataset.label = b.textContent;
      b.textContent = n ? b.dataset.label + " (" + n + ")" : b.dataset.label;
    });
  }

  let lastTile = null;
  document.addEventListener("click", (e) => {
    const tile = e.target.closest("button.face");
    if (!tile) return;
    const root = container(tile);
    const on = tile.getAttribute("aria-pressed") !== "true";
    if (e.shiftKey && lastTile && container(lastTile) === root) {
      const tiles = $$(".face", root);
      const [a, b] = [tiles.indexOf(lastTile), tiles.indexOf(tile)].sort((x, y) => x - y);
      tiles.slice(a, b + 1).forEach((t) => setPressed(t, on));
    } else {
      setPressed(tile, on);
    }
    lastTile = tile;
    refreshSelection(root);
  });

  function setPressed(tile, on) {
    tile.setAttribute("aria-pressed", on ? "true" : "false");
    tile.classList.toggle("selected", on);
  }

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      $$(".face.selected").forEach((t) => setPressed(t, false));
      $$(".cluster, .person-page").forEach(refreshSelection);
    }
  });

  function removeTiles(root, ids) {
    const gone = new Set(ids);
    $$(".face", root).forEach((t) => { if (gone.has(Number(t.dataset.faceId))) t.remove(); });
    refreshSelection(root);
  }

  function addName(name) {
    const list = document.getElementById("people-names");
    if (!list || $$("option", list).some((o) => o.value === name)) return;
    const opt = document.createElement("option");
    opt.value = name;
    list.appendChild(opt);
  }

  // -- clusters (flows 1-4) -------------------------------------------------------------------

  function clusterOf(el) {
    const card = el.closest(".cluster");
    return card ? { card, id: Number(card.dataset.clusterId) } : null;
  }

  function setSize(card, size) {
    const el = $(".size", card);
    if (el) el.textContent = String(size);
  }

  function nextCard(card) {
    let next = card.nextElementSibling;
    while (next && !next.classList.contains("cluster")) next = next.nextElementSibling;
    if (!next) {
      next = card.previousElementSibling;
      while (next && !next.classList.contains("cluster")) next = next.previousElementSibling;
    }
    return next;
  }

  function dropCard(card) {
    const next = nextCard(card);
    card.remove();
    if (next) {
      const input = $("input.name", next);
      if (input) input.focus();
    } else if (!$(".cluster")) {
      window.location.reload();  // the next page of groups, or the "none left" message
    }
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form.classList.contains("name-form")) {
      e.preventDefault();
      const c = clusterOf(form);
      const input = $("input.name", form);
      const name = input.value.trim();
      if (!c || !name) return;
      attempt(async () => {
        const out = await call("POST", "/clusters/" + c.id + "/name", { name });
        addName(name);
        toast(out.faces_labelled + " faces are now " + out.person.name);
        if (c.card.dataset.single) {
          window.location.href = "/people/" + out.person.id;
        } else {
          dropCard(c.card);
        }
      });
    } else if (form.id === "rename-form") {
      e.preventDefault();
      renamePerson(form);
    } else if (form.id === "merge-form") {
      e.preventDefault();
      mergePersonInto(form);
    } else if (form.id === "index-form") {
      e.preventDefault();
      startIndex(form);
    }
  });

  document.addEventListener("click", (e) => {
    const button = e.target.closest("button");
    if (!button || button.classList.contains("face")) return;
    const c = clusterOf(button);
    if (c && button.classList.contains("split")) {
      splitOut(c, selectedIds(c.card));
    } else if (c && button.classList.contains("reject")) {
      rejectFromCluster(c, selectedIds(c.card));
    } else if (button.id === "merge-clusters") {
      const ids = $$(".merge-pick:checked").map((i) => Number(i.value));
      attempt(async () => {
        const out = await call("POST", "/clusters/merge", { ids });
        toast("merged into one group of " + out.cluster.size + " faces");
        window.location.reload();
      });
    } else if (button.id === "run-clustering") {
      button.disabled = true;
      attempt(async () => {
        const out = await call("POST", "/cluster", { full: false });
        toast(out.new_faces + " faces placed, " + out.clusters_created + " new groups; "
              + out.unnamed_clusters + " unnamed groups");
        if (location.pathname === "/") setTimeout(() => window.location.reload(), 800);
      }).finally(() => { button.disabled = false; });
    } else if (button.closest(".person-page")) {
      personAction(button);
    } else if (button.id === "merge-a-into-b" || button.id === "merge-b-into-a") {
      const [a, b] = pickedPeople();
      const [from, into] = button.id === "merge-a-into-b" ? [a, b] : [b, a];
      attempt(async () => {
        const out = await call("POST", "/people/" + from.id + "/merge", { into: into.id });
        toast(out.faces_moved + " faces moved to " + out.into.name);
        window.location.reload();
      });
    } else if (button.id === "cancel-job") {
      cancelJob();
    }
  });

  document.addEventListener("change", (e) => {
    if (e.target.classList.contains("merge-pick")) {
      const n = $$(".merge-pick:checked").length;
      const b = document.getElementById("merge-clusters");
      if (b) {
        b.disabled = n < 2;
        b.textContent = n >= 2 ? "Merge " + n + " groups" : "Merge selected groups";
      }
    } else if (e.target.classList.contains("person-pick")) {
      refreshPeopleMerge();
    }
  });

  function splitOut(c, ids) {
    if (!ids.length) return;
    return attempt(async () => {
      const out = await call("POST", "/clusters/" + c.id + "/split", { face_ids: ids });
      removeTiles(c.card, ids);
      toast(ids.length + " faces taken out of the group");
      if (out.cluster) setSize(c.card, out.cluster.size);
      else dropCard(c.card);
      return out;
    });
  }

  function rejectFromCluster(c, ids) {
    const input = $("input.name", c.card);
    const name = input ? input.value.trim() : "";
    if (!ids.length) return;
    if (!name) {
      toast("Type the name these faces are not, then press “Not this person”", "error");
      if (input) input.focus();
      return;
    }
    attempt(async () => {
      const out = await call("POST", "/clusters/" + c.id + "/split", { face_ids: ids });
      for (const id of ids) await call("POST", "/faces/" + id + "/reject", { person: name });
      removeTiles(c.card, ids);
      toast(ids.length + " faces marked as not " + name);
      if (out.cluster) setSize(c.card, out.cluster.size);
      else dropCard(c.card);
    });
  }

  // -- people (flows 4, 5) --------------------------------------------------------------------

  function pickedPeople() {
    return $$(".person-pick:checked").map((i) => {
      const card = i.closest(".person");
      return { id: Number(card.dataset.personId), name: card.dataset.name };
    });
  }

  function refreshPeopleMerge() {
    const bar = document.getElementById("people-merge");
    if (!bar) return;
    const picked = pickedPeople();
    bar.hidden = picked.length !== 2;
    if (picked.length === 2) {
      const [a, b] = picked;
      document.getElementById("merge-a-into-b").textContent = "Merge " + a.name + " into " + b.name;
      document.getElementById("merge-b-into-a").textContent = "Merge " + b.name + " into " + a.name;
    }
  }

  function personPage() {
    const page = $(".person-page");
    return page ? { page, id: Number(page.dataset.personId), name: page.dataset.name } : null;
  }

  function renamePerson(form) {
    const p = personPage();
    const name = $("#person-name", form).value.trim();
    if (!p || !name || name === p.name) return;
    attempt(async () => {
      const out = await call("PATCH", "/people/" + p.id, { name: name });
      p.page.dataset.name = out.name;
      document.title = out.name + " · facesearch";
      toast("renamed to " + out.name);
      window.location.reload();
    });
  }

  function mergePersonInto(form) {
    const p = personPage();
    const into = $("#merge-into", form).value.trim();
    if (!p || !into) return;
    attempt(async () => {
      const out = await call("POST", "/people/" + p.id + "/merge", { into });
      window.location.href = "/people/" + out.into.id;
    });
  }

  function personAction(button) {
    const p = personPage();
    const ids = selectedIds(p.page);
    if (!ids.length) return;
    let each = null;
    let done = "";
    if (button.classList.contains("unassign")) {
      each = (id) => call("POST", "/faces/" + id + "/unassign");
      done = " faces removed from " + p.name;
    } else if (button.classList.contains("reject")) {
      each = (id) => call("POST", "/faces/" + id + "/reject", { person: p.id });
      done = " faces marked as not " + p.name;
    } else if (button.classList.contains("delete")) {
      if (!window.confirm("Delete " + ids.length + " faces for good?")) return;
      each = (id) => call("DELETE", "/faces/" + id);
      done = " faces deleted";
    } else {
      return;
    }
    attempt(async () => {
      const finished = [];
      try {
        for (const id of ids) {
          await each(id);
          finished.push(id);
        }
      } finally {
        removeTiles(p.page, finished);
        const count = document.getElementById("face-count");
        if (count) count.textContent = String(Number(count.textContent) - finished.length);
      }
      toast(finished.length + done);
    });
  }

  // -- suggestions (flow 6) -------------------------------------------------------------------

  const suggestions = { queue: [], skipped: new Set(), current: null, busy: false };

  async function loadSuggestions() {
    const data = await call("GET", "/suggestions?limit=50");
    suggestions.queue = data.items.filter((s) => !suggestions.skipped.has(s.kind + s.id));
    showSuggestion();
  }

  function showSuggestion() {
    const box = document.getElementById("suggestion");
    const none = document.getElementById("no-suggestions");
    const s = suggestions.queue.shift() || null;
    suggestions.current = s;
    box.hidden = !s;
    none.hidden = !!s;
    if (!s) return;
    box.dataset.kind = s.kind;
    box.dataset.id = String(s.id);
    document.getElementById("question").textContent = "Is this " + s.person.name + "?";
    const img = document.getElementById("candidate");
    img.src = API + "/faces/" + s.face_id + "/thumbnail?size=192";
    document.getElementById("candidate-caption").textContent =
      (s.kind === "cluster" ? "a group of faces" : "face " + s.face_id) + " · d " + s.d.toFixed(2);
    const known = document.getElementById("known");
    known.replaceChildren(...s.person_face_ids.map((id) => {
      const im = document.createElement("img");
      im.src = API + "/faces/" + id + "/thumbnail?size=160";
      im.width = 96;
      im.height = 96;
      im.alt = s.person.name;
      return im;
    }));
    document.getElementById("known-caption").textContent = s.person.name;
  }

  async function answer(kind) {
    const s = suggestions.current;
    if (!s || suggestions.busy) return;
    suggestions.busy = true;
    try {
      if (kind === "yes") {
        if (s.kind === "cluster") await call("POST", "/clusters/" + s.id + "/name", { name: s.person.name });
        else await call("POST", "/faces/" + s.id + "/assign", { person: s.person.id });
        toast("yes: " + s.person.name);
      } else if (kind === "no") {
        if (s.kind === "cluster") await call("POST", "/clusters/" + s.id + "/reject", { person: s.person.id });
        else await call("POST", "/faces/" + s.id + "/reject", { person: s.person.id });
        toast("not " + s.person.name);
      } else {
        suggestions.skipped.add(s.kind + s.id);
      }
      if (suggestions.queue.length) showSuggestion();
      else await loadSuggestions();
    } catch (err) {
      toast(err.message, "error");
    } finally {
      suggestions.busy = false;
    }
  }

  function setUpSuggestions() {
    if (!document.getElementById("suggestion")) return;
    document.getElementById("answer-yes").addEventListener("click", () => answer("yes"));
    document.getElementById("answer-no").addEventListener("click", () => answer("no"));
    document.getElementById("answer-skip").addEventListener("click", () => answer("skip"));
    document.addEventListener("keydown", (e) => {
      if (e.target.matches("input, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
      const key = e.key.toLowerCase();
      if (key === "y") answer("yes");
      else if (key === "n") answer("no");
      else if (key === "s" || key === "arrowright") answer("skip");
    });
    attempt(loadSuggestions);
  }

  // -- identify (flow 7) ----------------------------------------------------------------------

  function setUpIdentify() {
    const drop = document.getElementById("drop");
    if (!drop) return;
    const input = document.getElementById("photo-input");
    input.addEventListener("change", () => { if (input.files.length) identify(input.files[0]); });
    drop.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
    });
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer.files[0];
      if (file) identify(file);
    });
  }

  async function identify(file) {
    const form = new FormData();
    form.append("image", file, file.name);
    const result = document.getElementById("result");
    const stage = document.getElementById("stage");
    const img = document.getElementById("photo");
    const list = document.getElementById("faces-found");
    $$(".box", stage).forEach((b) => b.remove());
    list.replaceChildren();
    result.hidden = true;
    result.dataset.state = "busy";
    toast("looking for faces…");
    const out = await attempt(() => call("POST", "/identify", form));
    if (!out) { result.dataset.state = "error"; return; }
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(file);
    await img.decode().catch(() => null);
    const w = img.naturalWidth || 1;
    const h = img.naturalHeight || 1;
    out.faces.forEach((f, i) => {
      const [x1, y1, x2, y2] = f.box;
      const label = (f.person || "unknown") + (f.d === null ? "" : " · d " + f.d.toFixed(2));
      const box = document.createElement("div");
      box.className = "box" + (f.person ? " known" : " unknown");
      box.style.left = (100 * x1 / w) + "%";
      box.style.top = (100 * y1 / h) + "%";
      box.style.width = (100 * (x2 - x1) / w) + "%";
      box.style.height = (100 * (y2 - y1) / h) + "%";
      const tag = document.createElement("span");
      tag.textContent = (i + 1) + ". " + label;
      box.appendChild(tag);
      stage.appendChild(box);
      const li = document.createElement("li");
      li.className = f.person ? "known" : "unknown";
      li.textContent = label;
      list.appendChild(li);
    });
    result.hidden = false;
    result.dataset.state = "done";
    toast(out.faces.length + " faces found");
  }

  // -- indexing (flow 8) ----------------------------------------------------------------------

  const jobState = { id: null, timer: null };

  function startIndex(form) {
    const paths = $("#paths", form).value.split("\n").map((s) => s.trim()).filter(Boolean);
    const labels = $("#labels-folders", form).checked ? "folders" : null;
    if (!paths.length) return;
    attempt(async () => {
      const job = await call("POST", "/jobs/index", { paths, labels });
      watchJob(job);
    });
  }

  function describe(job) {
    const p = job.progress;
    const of = p.total === null ? "" : " of " + p.total;
    let text = p.done + of + " " + p.unit + " · " + p.faces + " faces · " + p.failures + " failed";
    if (job.state === "failed" && job.error) text = "failed: " + job.error.message;
    if (job.state === "done" && job.result) {
      const r = job.result;
      text = "done: " + r.new + " new photos, " + r.updated + " updated, " + r.unchanged
        + " unchanged, " + r.failed + " failed; " + r.faces_added + " faces added";
    }
    if (job.state === "cancelled") text = "cancelled after " + p.done + " " + p.unit + " (kept)";
    return text;
  }

  function watchJob(job) {
    jobState.id = job.id;
    const section = document.getElementById("job");
    section.hidden = false;
    section.dataset.state = job.state;
    document.getElementById("job-title").textContent = "Job " + job.id + ": " + job.kind;
    const bar = document.getElementById("job-progress");
    const total = job.progress.total;
    if (total) {
      bar.max = total;
      bar.value = job.progress.done;
    } else if (job.state === "done") {
      bar.max = 1;
      bar.value = 1;
    } else {
      bar.removeAttribute("value");  // indeterminate until the files are counted
    }
    document.getElementById("job-status").textContent = describe(job);
    showJobRow(job);
    document.getElementById("cancel-job").hidden = !["queued", "running"].includes(job.state);
    clearTimeout(jobState.timer);
    if (["queued", "running"].includes(job.state)) {
      jobState.timer = setTimeout(async () => {
        const next = await attempt(() => call("GET", "/jobs/" + job.id));
        if (next) watchJob(next);
      }, 400);
    } else {
      toast("job " + job.id + " " + job.state, job.state === "failed" ? "error" : "info");
    }
  }

  function showJobRow(job) {
    const body = $("#jobs-table tbody");
    if (!body) return;
    let row = $("tr[data-job-id='" + job.id + "']", body);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.jobId = String(job.id);
      body.prepend(row);
    }
    row.dataset.state = job.state;
    const p = job.progress;
    const what = (job.params.paths || [job.params.model]).join(", ");
    const cells = [job.id, job.kind, job.state,
      p.done + (p.total === null ? "" : " / " + p.total), p.faces, p.failures, what];
    row.replaceChildren(...cells.map((v) => {
      const td = document.createElement("td");
      td.textContent = String(v);
      return td;
    }));
  }

  function cancelJob() {
    if (jobState.id === null) return;
    attempt(async () => {
      await call("DELETE", "/jobs/" + jobState.id);
      toast("cancelling at the next commit…");
    });
  }

  function setUpJobs() {
    const row = $("#jobs-table tr[data-state='running'], #jobs-table tr[data-state='queued']");
    if (row) attempt(async () => watchJob(await call("GET", "/jobs/" + row.dataset.jobId)));
  }

  // -- name completion: every person's name, loaded after the page is shown ----------------

  const MAX_NAMES = 5000;

  async function loadNames() {
    const list = document.getElementById("people-names");
    if (!list) return;
    const page = $(".person-page");
    const self = page ? page.dataset.name : null;
    const names = [];
    let offset = 0;
    while (offset !== null && names.length < MAX_NAMES) {
      const data = await call("GET", "/people?limit=1000&offset=" + offset);
      data.items.forEach((p) => { if (p.name !== self) names.push(p.name); });
      offset = data.next_offset;
    }
    list.replaceChildren(...names.map((n) => {
      const opt = document.createElement("option");
      opt.value = n;
      return opt;
    }));
    list.dataset.loaded = "1";
  }

  attempt(loadNames);
  setUpSuggestions();
  setUpIdentify();
  setUpJobs();
})();
