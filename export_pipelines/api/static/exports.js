// The exports page (docs/api.md, "The exports page"): plain JavaScript, no build step, no framework.
// Everything goes through the /v1 API of the service that served this page, with the API key the
// user signed in with. API data is only ever put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "export_pipelines.api_key";
  const PAGE_SIZE = 10;
  // A browser opens about 6 HTTP/1.1 connections per origin and every EventSource holds one:
  // stream at most 3 exports at once so requests and downloads still get a connection; the
  // others are polled until a stream is free.
  const MAX_STREAMS = 3;
  const POLL_MS = 4000;
  const ACTIVE = new Set(["pending", "queued", "running"]);
  const FINAL_EVENTS = ["succeeded", "failed", "canceled"];

  const $ = (id) => document.getElementById(id);
  const state = {
    key: null,
    resources: [],
    nextCursor: null,
    rows: new Map(), // export id -> {tr, cells, doc, filesShownFor}
    streams: new Map(), // export id -> EventSource (null while its token is being fetched)
    waiting: [], // export ids waiting for a stream slot (polled meanwhile)
    pollTimer: null,
    destinations: [],
    feeds: new Map(), // feed id -> {feed, last (its newest delivery's status document), tr, cells}
    pausedFrom: new Map(), // feed id -> the frequency it had when paused here (resume's default)
  };
  const SCHEDULES = ["hourly", "daily", "weekly", "monthly"];

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  // --- the API ---------------------------------------------------------------------------------

  async function call(method, path, body, extraHeaders) {
    const headers = { Authorization: `Bearer ${state.key}`, Accept: "application/json", ...extraHeaders };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network", `The service is not reachable (${err.message}).`);
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      const message = error.message || `${response.status} ${response.statusText}`.trim();
      if (response.status === 401) signOut();
      throw new ApiError(response.status, error.code || `http_${response.status}`, message, error.field);
    }
    return data;
  }

  function idempotencyKey() {
    // crypto.randomUUID needs a secure context; getRandomValues works everywhere.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- errors ----------------------------------------------------------------------------------

  function showError(err) {
    // The API's error.message names the field and the allowed values already; a message that
    // does not start with its field gets it in front.
    let text = err && err.message ? err.message : String(err);
    if (err && err.field && !text.startsWith(err.field.split(".").pop())) text = `${err.field}: ${text}`;
    $("error-text").textContent = text;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
    for (const input of document.querySelectorAll("[aria-invalid=true]")) input.removeAttribute("aria-invalid");
  }

  // --- formatting ------------------------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat();

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  // --- signing in and out ----------------------------------------------------------------------

  async function signIn(key) {
    clearError();
    state.key = key;
    let catalog;
    try {
      catalog = await call("GET", "/v1/resources");
    } catch (err) {
      signOut();
      showError(err.status === 401 ? new Error("That API key is unknown or revoked.") : err);
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    $("who").textContent = `Signed in with key ${key.slice(0, 12)}…`;
    fillForm(catalog);
    fillFeedForm(catalog);
    await loadDestinations();
    await loadFeeds();
    await loadExports(true);
  }

  function signOut() {
    stopAllStreams();
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("app").hidden = true;
    $("sign-out").hidden = true;
    $("signin").hidden = false;
    $("who").textContent = "";
    $("api-key").value = "";
    state.feeds.clear();
    $("feed-rows").replaceChildren();
  }

  // --- the request form ------------------------------------------------------------------------

  function fillForm(catalog) {
    state.resources = catalog.data;
    const resource = $("resource");
    resource.replaceChildren(...catalog.data.map((r) => el("option", { value: r.name, text: r.name })));
    const format = $("format");
    format.replaceChildren(...catalog.formats.map((f) => el("option", { value: f, text: f })));
    fillColumns();
  }

  function currentResource() {
    return state.resources.find((r) => r.name === $("resource").value);
  }

  function fillColumns() {
    const spec = currentResource();
    const list = $("column-list");
    if (!spec) {
      list.replaceChildren();
      return;
    }
    list.replaceChildren(
      ...spec.columns.map((name) =>
        el("label", {}, el("input", { type: "checkbox", name: "column", value: name, checked: "" }), name),
      ),
    );
    // Date ranges filter on the resource's time column; without one there is nothing to filter.
    for (const id of ["date-from", "date-to"]) {
      $(id).disabled = !spec.time_column;
      $(id).title = spec.time_column ? `filters ${spec.time_column}` : "this resource has no time column";
    }
  }

  function setAllColumns(checked) {
    for (const box of $("column-list").querySelectorAll("input[type=checkbox]")) box.checked = checked;
  }

  async function submitRequest(event) {
    event.preventDefault();
    clearError();
    const spec = currentResource();
    if (!spec) return;
    const body = { resource: spec.name, format: $("format").value };
    if ($("compression").value) body.compression = $("compression").value;
    const checked = Array.from($("column-list").querySelectorAll("input:checked"), (box) => box.value);
    if (checked.length === 0) {
      showError(new Error(`columns: choose at least one; allowed: ${spec.columns.join(", ")}`));
      return;
    }
    if (checked.length < spec.columns.length) body.columns = checked;
    const filters = {};
    if ($("date-from").value && !$("date-from").disabled) filters.date_from = $("date-from").value;
    if ($("date-to").value && !$("date-to").disabled) filters.date_to = $("date-to").value;
    if (Object.keys(filters).length) body.filters = filters;
    if ($("destination").value) body.destination_id = $("destination").value;
    const button = $("request-submit");
    button.disabled = true;
    try {
      const doc = await call("POST", "/v1/exports", body, { "Idempotency-Key": idempotencyKey() });
      upsertRow(doc, "top");
      $("empty").hidden = true;
      watch(doc.id);
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  // --- destinations (the same verbs as `export-pipelines destinations`) --------------------------

  function where(d) {
    const c = d.config || {};
    if (d.kind === "s3" || d.kind === "gcs") return `${c.bucket}/${c.prefix || ""}`;
    if (d.kind === "azure_blob") return `${c.account_url} ${c.container}/${c.prefix || ""}`;
    if (d.kind === "sftp") return `${c.host}:${c.port || 22}${c.path}`;
    return "our storage, links";
  }

  async function loadDestinations() {
    const list = await call("GET", "/v1/destinations");
    state.destinations = list.data;
    const rows = list.data.map((d) => {
      const result = el("span", { class: "test-result" });
      const test = el("button", { type: "button", class: "secondary", text: "Test" });
      test.addEventListener("click", async () => {
        test.disabled = true;
        result.textContent = "testing…";
        try {
          const answer = await call("POST", `/v1/destinations/${d.id}/test`);
          result.textContent = `${answer.result}: ${answer.message}`;
        } catch (err) {
          result.textContent = "";
          showError(err);
        } finally {
          test.disabled = false;
        }
      });
      const remove = el("button", { type: "button", class: "link", text: "Delete" });
      remove.addEventListener("click", async () => {
        try {
          await call("DELETE", `/v1/destinations/${d.id}`);
          await loadDestinations();
        } catch (err) {
          showError(err);
        }
      });
      return el(
        "tr",
        { "data-id": d.id },
        el("td", { text: d.name }),
        el("td", { text: d.kind }),
        el("td", { text: where(d) }),
        el("td", { text: d.credentials.fingerprint }),
        el("td", {}, test, " ", result),
        el("td", {}, remove),
      );
    });
    $("destination-rows").replaceChildren(...rows);
    // The request form's and the feed form's "Deliver to".
    for (const select of [$("destination"), $("feed-destination")]) {
      const chosen = select.value;
      select.replaceChildren(
        el("option", { value: "", text: "links to download (default)" }),
        ...list.data.map((d) => el("option", { value: d.id, text: `${d.name} (${d.kind})` })),
      );
      if (list.data.some((d) => d.id === chosen)) select.value = chosen;
    }
  }

  function jsonField(id, name) {
    const text = $(id).value.trim();
    if (!text) return {};
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new ApiError(422, "invalid_request", `${name}: not valid JSON`, name);
    }
  }

  async function addDestination(event) {
    event.preventDefault();
    clearError();
    const button = $("destination-submit");
    button.disabled = true;
    try {
      const body = {
        kind: $("destination-kind").value,
        name: $("destination-name").value.trim(),
        config: jsonField("destination-config", "config"),
        credentials: jsonField("destination-credentials", "credentials"),
      };
      await call("POST", "/v1/destinations", body);
      // Write-only: the secret leaves the page once it is stored.
      $("destination-credentials").value = "";
      $("destination-name").value = "";
      await loadDestinations();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  // --- feeds (the same verbs as `export-pipelines feeds` and /v1/feeds) ---------------------------

  // A 422's field, as the API names it, to the form input that holds it.
  const FEED_FIELDS = {
    resource: "feed-resource",
    format: "feed-format",
    frequency: "feed-frequency",
    mode: "feed-mode",
    "notify.webhook_url": "feed-webhook",
    destination_id: "feed-destination",
  };

  function fillFeedForm(catalog) {
    $("feed-resource").replaceChildren(...catalog.data.map((r) => el("option", { value: r.name, text: r.name })));
    $("feed-format").replaceChildren(...catalog.formats.map((f) => el("option", { value: f, text: f })));
  }

  async function loadFeeds() {
    let list;
    try {
      list = await call("GET", "/v1/feeds");
    } catch (err) {
      showError(err);
      return;
    }
    // Each feed's newest delivery (the list of its exports is newest first).
    const lasts = await Promise.all(
      list.data.map((f) =>
        call("GET", `/v1/exports?${new URLSearchParams({ feed_id: f.id, limit: "1" })}`).then(
          (page) => page.data[0] || null,
          () => null,
        ),
      ),
    );
    state.feeds.clear();
    const rows = list.data.map((feed, i) => feedRow(feed, lasts[i]));
    $("feed-rows").replaceChildren(...rows);
    $("feeds-empty").hidden = rows.length > 0;
    for (const last of lasts) if (last && ACTIVE.has(last.status)) watch(last.id);
  }

  function destinationName(id) {
    if (!id) return "links to download";
    const d = state.destinations.find((x) => x.id === id);
    return d ? `${d.name} (${d.kind})` : id;
  }

  function feedRow(feed, last) {
    const cells = {
      resource: el("td", { text: feed.resource }),
      format: el("td", {
        text: feed.compression && feed.compression !== "none" ? `${feed.format} · ${feed.compression}` : feed.format,
      }),
      frequency: el("td", { class: "frequency", text: feed.frequency }),
      mode: el("td", { text: feed.mode }),
      state: el("td", { class: "feed-state" }),
      due: el("td", { class: "when", text: feed.next_due_at ? when(feed.next_due_at) : "—" }),
      // destination_id: one of the tenant's destinations every delivery goes to; without it, links.
      destination: el("td", { text: destinationName(feed.destination_id) }),
      last: el("td", { class: "last-delivery" }),
      actions: el("td", { class: "actions" }),
    };
    const paused = feed.frequency === "manual";
    const stateText = paused ? "paused" : "active";
    cells.state.append(
      el("span", {
        class: `status ${paused ? "canceled" : "succeeded"}`,
        text: stateText,
        title: paused ? "manual: delivers only when you run it" : `delivers ${feed.frequency}`,
      }),
    );
    if (feed.full_refresh_pending) cells.state.append(el("span", { class: "hint", text: " full refresh pending" }));

    const button = (text, cls, onclick) => el("button", { type: "button", class: `small ${cls}`, text, onclick });
    const actions = [
      button("Run now", "run", (e) => runFeed(feed.id, false, e.target)),
      button("Full refresh", "secondary full-refresh", (e) => runFeed(feed.id, true, e.target)),
    ];
    if (paused) {
      const schedule = el(
        "select",
        { class: "resume-frequency", "aria-label": "resume with frequency" },
        ...SCHEDULES.map((f) => el("option", { value: f, text: f })),
      );
      schedule.value = state.pausedFrom.get(feed.id) || "daily";
      actions.push(schedule, button("Resume", "secondary resume", (e) => patchFeed(feed.id, { frequency: schedule.value }, e.target)));
    } else {
      actions.push(
        button("Pause", "secondary pause", (e) => {
          state.pausedFrom.set(feed.id, feed.frequency);
          patchFeed(feed.id, { frequency: "manual" }, e.target);
        }),
      );
    }
    actions.push(button("Delete", "link delete", (e) => deleteFeed(feed.id, e.target)));
    cells.actions.append(...actions);

    const tr = el("tr", { "data-id": feed.id, "data-state": stateText }, ...Object.values(cells));
    const entry = { feed, last: null, tr, cells, lastShown: null };
    state.feeds.set(feed.id, entry);
    renderLast(entry, last);
    return tr;
  }

  function renderLast(entry, doc) {
    if (!doc) {
      entry.cells.last.replaceChildren(el("span", { class: "hint", text: "none yet" }));
      return;
    }
    // A delivery older than the one shown, or an older document of it (a late event), never
    // replaces it.
    const shownDoc = entry.last;
    if (shownDoc && (shownDoc.sequence > doc.sequence || (shownDoc.id === doc.id && shownDoc.updated_at > doc.updated_at)))
      return;
    entry.last = doc;
    entry.tr.dataset.lastStatus = doc.status;
    const shown = `${doc.sequence}:${doc.status}`;
    if (entry.lastShown === shown) return; // progress events: keep the Files button stable
    entry.lastShown = shown;
    const at = doc.completed_at || doc.started_at || doc.created_at;
    const parts = [
      el("span", { class: "sequence", text: `#${doc.sequence}` }),
      " ",
      el("span", { class: `status ${doc.status}`, text: doc.status }),
      " ",
      el("span", { class: "when", text: when(at), title: doc.id }),
    ];
    if (doc.status === "succeeded") {
      const files = el("span", { class: "files" });
      files.append(
        el("button", {
          type: "button",
          class: "small secondary show-files",
          text: "Files",
          onclick: () => feedFiles(doc.id, files),
        }),
      );
      parts.push(" ", files);
    }
    if (doc.error) parts.push(el("span", { class: "row-error", text: doc.error.message }));
    entry.cells.last.replaceChildren(...parts);
  }

  function noteDelivery(doc) {
    const entry = doc.feed_id ? state.feeds.get(doc.feed_id) : null;
    if (entry) renderLast(entry, doc);
  }

  async function feedFiles(id, cell) {
    clearError();
    try {
      const files = await call("GET", `/v1/exports/${id}/files`);
      if (files.data.length === 0) {
        cell.replaceChildren(el("span", { class: "hint", text: "no files" }));
        return;
      }
      cell.replaceChildren(
        ...files.data.map((f) =>
          el("button", {
            type: "button",
            class: "small download",
            "data-number": String(f.number),
            title: `${f.filename} · ${numberFormat.format(f.rows ?? 0)} rows`,
            text: `File ${f.number} (${bytes(f.bytes)})`,
            onclick: (e) => download(id, f.number, e.target),
          }),
        ),
      );
    } catch (err) {
      showError(err);
    }
  }

  async function createFeed(event) {
    event.preventDefault();
    clearError();
    const body = {
      resource: $("feed-resource").value,
      format: $("feed-format").value,
      frequency: $("feed-frequency").value,
      mode: $("feed-mode").value,
    };
    const webhook = $("feed-webhook").value.trim();
    if (webhook) body.notify = { webhook_url: webhook };
    if ($("feed-destination").value) body.destination_id = $("feed-destination").value;
    const button = $("feed-submit");
    button.disabled = true;
    try {
      await call("POST", "/v1/feeds", body);
      $("feed-webhook").value = "";
      await loadFeeds();
    } catch (err) {
      showError(err);
      const input = err.field && FEED_FIELDS[err.field] ? $(FEED_FIELDS[err.field]) : null;
      if (input) input.setAttribute("aria-invalid", "true");
    } finally {
      button.disabled = false;
    }
  }

  async function runFeed(id, fullRefresh, button) {
    clearError();
    button.disabled = true;
    try {
      const doc = await call("POST", `/v1/feeds/${id}/${fullRefresh ? "full-refresh" : "run"}`);
      upsertRow(doc, "top");
      $("empty").hidden = true;
      noteDelivery(doc);
      watch(doc.id);
    } catch (err) {
      showError(err); // 409 delivery_in_progress: one delivery of a feed at a time
    } finally {
      button.disabled = false;
    }
    // The schedule moved on, or a full refresh asked during an active delivery stays pending.
    await loadFeeds();
  }

  async function patchFeed(id, changes, button) {
    clearError();
    button.disabled = true;
    try {
      await call("PATCH", `/v1/feeds/${id}`, changes);
      await loadFeeds();
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  }

  async function deleteFeed(id, button) {
    clearError();
    button.disabled = true;
    try {
      await call("DELETE", `/v1/feeds/${id}`);
      state.pausedFrom.delete(id);
      await loadFeeds();
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  }

  // --- the table -------------------------------------------------------------------------------

  async function loadExports(reset) {
    clearError();
    if (reset) {
      stopAllStreams();
      state.rows.clear();
      state.nextCursor = null;
      $("export-rows").replaceChildren();
    }
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (!reset && state.nextCursor) query.set("cursor", state.nextCursor);
    try {
      const page = await call("GET", `/v1/exports?${query}`);
      for (const doc of page.data) {
        upsertRow(doc, "bottom");
        if (ACTIVE.has(doc.status)) watch(doc.id);
      }
      state.nextCursor = page.next_cursor;
    } catch (err) {
      showError(err);
    }
    $("more").hidden = !state.nextCursor;
    $("empty").hidden = state.rows.size > 0;
  }

  function upsertRow(doc, where) {
    let entry = state.rows.get(doc.id);
    if (!entry) {
      const cells = {
        when: el("td", { class: "when" }),
        resource: el("td"),
        format: el("td"),
        status: el("td"),
        progress: el("td"),
        rows: el("td", { class: "num" }),
        size: el("td", { class: "num" }),
        files: el("td", { class: "files" }),
      };
      const fill = el("div", { class: "fill" });
      const label = el("span", { class: "label" });
      cells.bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, fill, label);
      cells.fill = fill;
      cells.label = label;
      cells.progress.append(cells.bar);
      const tr = el("tr", { "data-id": doc.id }, ...Object.values(cells).filter((c) => c.tagName === "TD"));
      entry = { tr, cells, doc: null, filesShownFor: null };
      state.rows.set(doc.id, entry);
      const body = $("export-rows");
      if (where === "top") body.prepend(tr);
      else body.append(tr);
    }
    render(entry, doc);
    return entry;
  }

  function render(entry, doc) {
    // An older document (a poll answered after a newer event) never overwrites a newer one.
    if (entry.doc && entry.doc.updated_at > doc.updated_at && !doc.files) return;
    entry.doc = doc;
    const { cells, tr } = entry;
    tr.dataset.status = doc.status;
    cells.when.textContent = when(doc.created_at);
    cells.when.title = doc.id;
    cells.resource.textContent = doc.resource;
    cells.format.textContent = doc.compression && doc.compression !== "none" ? `${doc.format} · ${doc.compression}` : doc.format;

    const status = el("span", { class: `status ${doc.status}`, text: doc.status });
    const statusChildren = [status];
    if (doc.error) statusChildren.push(el("span", { class: "row-error", text: doc.error.message }));
    cells.status.replaceChildren(...statusChildren);

    let percent = doc.percent;
    let label;
    if (doc.status === "pending" || doc.status === "queued") {
      percent = 0;
      label = doc.queue_position === null || doc.queue_position === undefined
        ? doc.status
        : `${doc.status} · ${doc.queue_position} ahead`;
    } else if (percent === null || percent === undefined) {
      percent = 0;
      label = doc.status === "running" ? "starting…" : doc.status;
    } else {
      label = `${percent.toFixed(percent < 10 && percent > 0 ? 1 : 0)}%`;
    }
    cells.bar.className = `bar ${doc.status}`;
    cells.bar.setAttribute("aria-valuenow", String(percent));
    cells.fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
    cells.label.textContent = label;

    cells.rows.textContent =
      doc.rows_total === null || doc.rows_total === undefined
        ? numberFormat.format(doc.rows_exported || 0)
        : `${numberFormat.format(doc.rows_exported || 0)} / ${numberFormat.format(doc.rows_total)}`;
    cells.size.textContent = bytes(doc.bytes_written);
    renderFiles(entry, doc);
  }

  function renderFiles(entry, doc) {
    const cell = entry.cells.files;
    const shownFor = doc.status + (doc.files ? ":files" : "");
    if (entry.filesShownFor === shownFor) return; // keep buttons stable while progress updates
    entry.filesShownFor = shownFor;
    if (doc.status === "succeeded") {
      if (doc.files) fileButtons(entry, doc.files);
      else
        cell.replaceChildren(
          el("button", { type: "button", class: "small secondary show-files", text: "Files", onclick: () => showFiles(entry) }),
        );
    } else if (ACTIVE.has(doc.status)) {
      cell.replaceChildren(
        el("button", { type: "button", class: "small secondary cancel", text: "Cancel", onclick: (e) => cancel(doc.id, e.target) }),
      );
    } else if (doc.status === "expired") {
      cell.replaceChildren(el("span", { class: "hint", text: "deleted" }));
    } else {
      cell.replaceChildren();
    }
  }

  function fileButtons(entry, files) {
    const id = entry.doc.id;
    if (files.length === 0) {
      entry.cells.files.replaceChildren(el("span", { class: "hint", text: "no files" }));
      return;
    }
    entry.cells.files.replaceChildren(
      ...files.map((f) =>
        el("button", {
          type: "button",
          class: "small download",
          "data-number": String(f.number),
          title: `${f.filename} · ${numberFormat.format(f.rows ?? 0)} rows`,
          text: files.length === 1 ? `Download (${bytes(f.bytes)})` : `File ${f.number} (${bytes(f.bytes)})`,
          onclick: (e) => download(id, f.number, e.target),
        }),
      ),
    );
  }

  async function showFiles(entry) {
    clearError();
    try {
      const files = await call("GET", `/v1/exports/${entry.doc.id}/files`);
      fileButtons(entry, files.data);
      entry.filesShownFor = "succeeded:files";
    } catch (err) {
      showError(err);
    }
  }

  async function download(id, number, button) {
    // Links are presigned for a limited time: ask for a fresh one at every click, then let the
    // browser fetch the file from storage directly (Content-Disposition: attachment).
    clearError();
    button.disabled = true;
    try {
      const files = await call("GET", `/v1/exports/${id}/files`);
      const file = files.data.find((f) => f.number === number);
      if (!file) throw new Error(`file ${number}: not in this export (it has ${files.data.length})`);
      const link = el("a", { href: file.url, download: file.filename, rel: "noopener" });
      document.body.append(link);
      link.click();
      link.remove();
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
    }
  }

  async function cancel(id, button) {
    clearError();
    button.disabled = true;
    try {
      update(await call("POST", `/v1/exports/${id}/cancel`));
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  }

  function update(doc) {
    const entry = state.rows.get(doc.id);
    if (entry) render(entry, doc);
    noteDelivery(doc);
  }

  // --- live progress: one EventSource per running export -----------------------------------------

  function watch(id) {
    if (state.streams.has(id) || state.waiting.includes(id)) return;
    if (state.streams.size >= MAX_STREAMS) {
      state.waiting.push(id);
      startPolling();
      return;
    }
    openStream(id);
  }

  async function openStream(id) {
    state.streams.set(id, null); // hold the slot while the token is fetched
    let token;
    try {
      // EventSource cannot send Authorization: a short-lived token for this one stream instead.
      token = await call("POST", `/v1/exports/${id}/events/token`);
    } catch (err) {
      if (err.status !== 401) showError(err);
      releaseStream(id);
      return;
    }
    if (!state.streams.has(id)) return; // signed out or reloaded meanwhile
    const source = new EventSource(token.url);
    state.streams.set(id, source);
    const onDocument = (event) => update(JSON.parse(event.data));
    source.addEventListener("progress", onDocument);
    for (const name of FINAL_EVENTS) {
      source.addEventListener(name, (event) => {
        onDocument(event);
        releaseStream(id); // the stream ends at a final event: do not let EventSource reconnect
      });
    }
    source.onerror = () => {
      // CONNECTING: the browser reconnects by itself with Last-Event-ID. CLOSED: it was refused
      // (the token expired, or the export is gone): ask for a new token while it is still active.
      if (source.readyState !== EventSource.CLOSED) return;
      releaseStream(id);
      const entry = state.rows.get(id);
      if (entry && ACTIVE.has(entry.doc.status)) setTimeout(() => watch(id), 2000);
    };
  }

  function releaseStream(id) {
    const source = state.streams.get(id);
    if (source) source.close();
    state.streams.delete(id);
    while (state.waiting.length && state.streams.size < MAX_STREAMS) {
      const next = state.waiting.shift();
      const entry = state.rows.get(next);
      if (entry && ACTIVE.has(entry.doc.status)) openStream(next);
    }
  }

  function stopAllStreams() {
    for (const source of state.streams.values()) if (source) source.close();
    state.streams.clear();
    state.waiting = [];
    if (state.pollTimer) clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  function startPolling() {
    if (state.pollTimer) return;
    state.pollTimer = setInterval(async () => {
      if (!state.waiting.length) {
        clearInterval(state.pollTimer);
        state.pollTimer = null;
        return;
      }
      for (const id of [...state.waiting]) {
        try {
          const doc = await call("GET", `/v1/exports/${id}`);
          update(doc);
          if (!ACTIVE.has(doc.status)) state.waiting = state.waiting.filter((w) => w !== id);
        } catch (err) {
          state.waiting = state.waiting.filter((w) => w !== id);
        }
      }
    }, POLL_MS);
  }

  // --- wiring ----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (key) signIn(key);
    });
    $("sign-out").addEventListener("click", () => {
      clearError();
      signOut();
    });
    $("error-close").addEventListener("click", clearError);
    $("resource").addEventListener("change", fillColumns);
    $("columns-all").addEventListener("click", () => setAllColumns(true));
    $("columns-none").addEventListener("click", () => setAllColumns(false));
    $("request-form").addEventListener("submit", submitRequest);
    $("destination-form").addEventListener("submit", addDestination);
    $("feed-form").addEventListener("submit", createFeed);
    $("feeds-refresh").addEventListener("click", loadFeeds);
    $("refresh").addEventListener("click", () => loadExports(true));
    $("more").addEventListener("click", () => loadExports(false));
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) signIn(saved);
  });
})();
