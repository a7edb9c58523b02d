/* The chat page: streamed answers rendered as Markdown, saved conversations, a browser tool, images.
 *
 * Model text reaches the DOM two ways only: as textContent, or as the HTML the server's sanitizer
 * returned (POST /api/markdown, streaming/markdown.py). Nothing else is assigned to innerHTML.
 */
"use strict";
(() => {
  const app = document.getElementById("chat-app");
  if (!app) return;

  const readJson = (id) => {
    const element = document.getElementById(id);
    return element ? JSON.parse(element.textContent) : null;
  };
  const ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000";
  const URLS = {
    stream: app.dataset.streamUrl,
    markdown: app.dataset.markdownUrl,
    chat: app.dataset.chatUrl,
    conversations: app.dataset.conversationsUrl,
    page: (id) => app.dataset.conversationPageUrl.replace(ID_PLACEHOLDER, id),
    api: (id) => app.dataset.conversationApiUrl.replace(ID_PLACEHOLDER, id),
  };
  const LOGIN_URL = readJson("login-url");
  const SAVE_CONVERSATIONS = readJson("save-conversations") === true;
  const MAX_IMAGES = readJson("max-images") || 0;
  const MAX_IMAGE_URL_BYTES = readJson("max-image-url-bytes") || 0;
  const MAX_TOOL_ROUNDS = 3;
  const RENDER_INTERVAL_MS = 150;
  const MARKDOWN_BATCH = 200;
  const BUSY_RETRIES = 20;
  const BUSY_WAIT_MS = 150;
  const LOCAL_TIME_TOOL = {
    type: "function",
    function: {
      name: "get_local_time",
      description: "The user's current local date, time and time zone, read from their browser.",
      parameters: {
        type: "object",
        properties: {
          timezone: {
            type: "string",
            description: "An IANA time zone such as Europe/Paris; leave it out for the user's own.",
          },
        },
      },
    },
  };

  const conversationEl = document.getElementById("conversation");
  const form = document.getElementById("composer");
  const prompt = document.getElementById("prompt");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const attachButton = document.getElementById("attach");
  const imageInput = document.getElementById("image-input");
  const attachmentsEl = document.getElementById("attachments");
  const attachmentStatus = document.getElementById("attachment-status");
  const modelSelect = document.getElementById("model");
  const toolCheckbox = document.getElementById("local-time-tool");
  const statusEl = document.getElementById("status");
  const chatTitle = document.getElementById("chat-title");
  const listEl = document.getElementById("conversation-list");
  const noConversations = document.getElementById("no-conversations");
  const listStatus = document.getElementById("list-status");
  const panel = document.getElementById("conversations-panel");
  const panelToggle = document.getElementById("toggle-conversations");
  const newChatButton = document.getElementById("new-chat");

  const state = {
    conversationId: null,
    // The conversation as the API takes it: sent whole when the site saves nothing.
    history: [],
    controller: null,
    attachments: [],
    conversations: readJson("conversations-data") || [],
    renaming: false,
  };

  class ChatError extends Error {}

  const sleep = (ms, signal) => new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : form.querySelector("[name=csrfmiddlewaretoken]").value;
  }

  function jsonHeaders() {
    return { "Content-Type": "application/json", "X-CSRFToken": csrfToken() };
  }

  async function errorFromResponse(response) {
    let message = `The server answered with HTTP ${response.status}.`;
    let code = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        if (body.error.message) message = body.error.message;
        code = body.error.code || null;
      }
    } catch (_) { /* not JSON: keep the status line */ }
    let error;
    if (response.status === 401) error = new ChatError("You are not logged in (your session may have ended). Log in again to keep chatting.");
    else if (response.status === 403) error = new ChatError("The page's security token is out of date. Reload the page and try again.");
    else if (response.status === 429 || response.status === 503) error = new ChatError(`${message} Please try again in a moment.`);
    else error = new ChatError(message);
    error.status = response.status;
    error.code = code;
    return error;
  }

  // --- Markdown, rendered by the server ----------------------------------------------------------

  async function fetchMarkdown(texts) {
    const response = await fetch(URLS.markdown, {
      method: "POST",
      credentials: "same-origin",
      headers: jsonHeaders(),
      body: JSON.stringify({ texts }),
    });
    if (!response.ok) throw await errorFromResponse(response);
    return (await response.json()).html;
  }

  /* The HTML of many texts, in as few requests as the endpoint's bounds allow (a batch it refuses
   * as too large is split in two); null for a text that could not be rendered. */
  async function renderMany(texts) {
    const html = new Array(texts.length).fill(null);
    const render = async (start, end) => {
      try {
        const rendered = await fetchMarkdown(texts.slice(start, end));
        rendered.forEach((item, offset) => { html[start + offset] = item; });
      } catch (error) {
        if ((error.status === 400 || error.status === 413) && end - start > 1) {
          const middle = start + Math.floor((end - start) / 2);
          await render(start, middle);
          await render(middle, end);
        }
      }
    };
    for (let start = 0; start < texts.length; start += MARKDOWN_BATCH) {
      await render(start, Math.min(start + MARKDOWN_BATCH, texts.length));
    }
    return html;
  }

  function addCopyButtons(container) {
    for (const pre of container.querySelectorAll("pre")) {
      if (pre.parentElement.classList.contains("code-block")) continue;
      const block = document.createElement("div");
      block.className = "code-block";
      const bar = document.createElement("div");
      bar.className = "code-bar";
      const code = pre.querySelector("code");
      const language = code && [...code.classList].find((name) => name.startsWith("language-"));
      const label = document.createElement("span");
      label.className = "code-language";
      label.textContent = language ? language.slice("language-".length) : "code";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", `Copy ${label.textContent} code`);
      const status = document.createElement("span");
      status.className = "copy-status";
      status.setAttribute("role", "status");
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(pre.textContent);
          status.textContent = "Copied to the clipboard.";
        } catch (_) {
          status.textContent = "Could not copy: select the code and copy it yourself.";
        }
        setTimeout(() => { status.textContent = ""; }, 4000);
      });
      bar.append(label, status, button);
      pre.replaceWith(block);
      block.append(bar, pre);
    }
  }

  /* An answer's text shown as Markdown while it streams: the last rendered HTML of the text so far,
   * then the part not rendered yet as plain text. At most one render request is in flight, about
   * every RENDER_INTERVAL_MS. */
  class LiveMarkdown {
    constructor(element) {
      this.element = element;
      this.text = "";
      this.renderedLength = 0;
      this.tail = document.createElement("span");
      this.tail.className = "tail";
      this.element.append(this.tail);
      this.inFlight = null;
      this.timer = null;
      this.lastRequestAt = 0;
      this.ended = false;
    }

    append(piece) {
      this.text += piece;
      this.showTail();
      this.schedule();
    }

    showTail() {
      this.tail.textContent = this.text.slice(this.renderedLength);
      if (this.tail.textContent && !this.tail.isConnected) lastTextBlock(this.element).append(this.tail);
    }

    schedule() {
      if (this.ended || this.inFlight || this.timer) return;
      const wait = Math.max(0, this.lastRequestAt + RENDER_INTERVAL_MS - performance.now());
      this.timer = setTimeout(() => {
        this.timer = null;
        this.inFlight = this.renderSoFar().finally(() => {
          this.inFlight = null;
          if (this.text.trimEnd().length > this.renderedLength) this.schedule();
        });
      }, wait);
    }

    async renderSoFar() {
      // Trailing spaces are left to the tail: Markdown drops them, and the next word follows them.
      const snapshot = this.text.trimEnd();
      if (this.ended || snapshot.length <= this.renderedLength) return;
      this.lastRequestAt = performance.now();
      let html;
      try {
        [html] = await fetchMarkdown([snapshot]);
      } catch (_) {
        return; // the plain text stays; the final render tries again
      }
      if (this.ended) return;
      this.show(html, snapshot.length);
    }

    show(html, renderedLength) {
      this.element.innerHTML = html; // the sanitizer's output (streaming/markdown.py)
      this.renderedLength = renderedLength;
      this.showTail();
    }

    /* The final render of the whole text (plain text where it cannot be rendered). */
    async finish() {
      this.ended = true;
      clearTimeout(this.timer);
      this.timer = null;
      if (this.inFlight) await this.inFlight;
      if (!this.text) {
        this.element.replaceChildren();
        return;
      }
      let html = null;
      try {
        [html] = await fetchMarkdown([this.text]);
      } catch (_) { /* shown as plain text below */ }
      if (html === null) {
        this.element.classList.add("plain");
        this.element.textContent = this.text;
        return;
      }
      this.element.innerHTML = html; // the sanitizer's output
      addCopyButtons(this.element);
    }
  }

  /* Where the not-yet-rendered tail continues the rendered text: inside its last paragraph, list
   * item or code block, rather than on a line of its own after it. */
  function lastTextBlock(container) {
    let block = container;
    for (;;) {
      const last = block.lastElementChild;
      if (!last || !/^(P|UL|OL|LI|BLOCKQUOTE|PRE|CODE|H[1-6])$/.test(last.tagName)) return block;
      block = last;
    }
  }

  // --- Messages in the page ----------------------------------------------------------------------

  function contentParts(content) {
    if (typeof content === "string") return { text: content, images: [] };
    if (!Array.isArray(content)) return { text: "", images: [] };
    const texts = content.filter((part) => part && part.type === "text").map((part) => part.text);
    const images = content
      .filter((part) => part && part.type === "image_url" && part.image_url)
      .map((part) => part.image_url.url);
    return { text: texts.join("\n"), images };
  }

  function addUserMessage(content) {
    const { text, images } = contentParts(content);
    const element = document.createElement("article");
    element.className = "message user";
    element.setAttribute("aria-label", "You");
    const textEl = document.createElement("span");
    textEl.className = "text";
    textEl.textContent = text;
    element.append(textEl);
    if (images.length) {
      const gallery = document.createElement("div");
      gallery.className = "images";
      images.forEach((url, index) => {
        const image = document.createElement("img");
        image.src = url;
        image.alt = `Image ${index + 1} of ${images.length} you sent`;
        gallery.append(image);
      });
      element.append(gallery);
    }
    conversationEl.append(element);
    element.scrollIntoView({ block: "end" });
    return element;
  }

  class AnswerView {
    constructor() {
      this.element = document.createElement("article");
      this.element.className = "message assistant";
      this.element.setAttribute("aria-label", "Answer");
      this.textEl = document.createElement("div");
      this.textEl.className = "text";
      this.element.append(this.textEl);
      this.toolCalls = new Map();
      conversationEl.append(this.element);
      this.element.scrollIntoView({ block: "end" });
    }

    live() {
      this.markdown = new LiveMarkdown(this.textEl);
      return this.markdown;
    }

    toolCall(key) {
      if (!this.toolCalls.has(key)) {
        const view = new ToolCallView();
        this.element.insertBefore(view.element, this.metaAnchor());
        this.toolCalls.set(key, view);
      }
      return this.toolCalls.get(key);
    }

    metaAnchor() {
      return this.element.querySelector(".meta") || null;
    }

    note(text, { isError = false, className = "" } = {}) {
      const meta = document.createElement("p");
      meta.className = `meta ${isError ? "error" : "muted"} ${className}`.trim();
      meta.textContent = text;
      this.element.append(meta);
      return meta;
    }
  }

  class ToolCallView {
    constructor() {
      this.element = document.createElement("div");
      this.element.className = "tool-call";
      this.element.setAttribute("role", "group");
      const head = document.createElement("p");
      head.className = "tool-head";
      this.nameEl = document.createElement("code");
      head.append("Tool call: ", this.nameEl);
      const args = document.createElement("p");
      this.argumentsEl = document.createElement("code");
      this.argumentsEl.className = "tool-arguments";
      args.append("Arguments: ", this.argumentsEl);
      this.resultRow = document.createElement("p");
      this.resultRow.className = "tool-result";
      this.resultRow.hidden = true;
      this.resultEl = document.createElement("code");
      this.resultRow.append("Result: ", this.resultEl);
      this.element.append(head, args, this.resultRow);
      this.setName("");
    }

    setName(name) {
      this.nameEl.textContent = name || "…";
      this.element.setAttribute("aria-label", `Tool call: ${name || "unnamed tool"}`);
    }

    setArguments(text) {
      this.argumentsEl.textContent = text || "{}";
    }

    setResult(text, { pending = false } = {}) {
      this.resultRow.hidden = false;
      this.resultRow.classList.toggle("muted", pending);
      this.resultEl.textContent = text;
    }
  }

  function showHistoryOmitted(count) {
    const note = document.createElement("p");
    note.className = "history-note";
    note.setAttribute("role", "status");
    note.textContent = `${count} earlier message${count === 1 ? " was" : "s were"} left out to fit the model's input limit.`;
    conversationEl.append(note);
  }

  // --- The local-time tool, run in this browser --------------------------------------------------

  function runTool(call) {
    if (call.function.name !== LOCAL_TIME_TOOL.function.name) {
      return `This page has no tool named "${call.function.name}".`;
    }
    let args = {};
    try {
      args = JSON.parse(call.function.arguments || "{}") || {};
    } catch (_) { /* no usable arguments: the user's own time zone */ }
    const ownZone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    let zone = ownZone;
    let unknown = null;
    const asked = typeof args.timezone === "string" ? args.timezone.trim() : "";
    if (asked && asked !== ownZone) {
      try {
        new Intl.DateTimeFormat("en", { timeZone: asked });
        zone = asked;
      } catch (_) {
        unknown = asked;
      }
    }
    const now = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long", timeZone: zone }).format(new Date());
    const where = zone === ownZone ? `the user's time zone, ${zone}` : `time zone ${zone}`;
    return `${unknown ? `"${unknown}" is not a time zone; the user's local time instead: ` : ""}${now} (${where})`;
  }

  // --- The stream --------------------------------------------------------------------------------

  /* Reads NDJSON chat-completion chunks: content pieces to onText, tool-call fragments to onToolCall. */
  async function readAnswer(body, { onText, onToolCall }) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", usage = null, finished = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (const line of lines) {
        if (!line.trim()) continue;
        const chunk = JSON.parse(line);
        if (chunk.error) throw new ChatError(chunk.error.message || "The model stopped with an error.");
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          if (delta.content) onText(delta.content);
          for (const fragment of delta.tool_calls || []) onToolCall(fragment);
          if (choice.finish_reason) finished = choice.finish_reason;
        }
      }
    }
    if (!finished) throw new ChatError("The answer was cut off before it finished.");
    return { usage, finished };
  }

  async function openStream(payload, signal) {
    for (let attempt = 0; ; attempt += 1) {
      const response = await fetch(URLS.stream, {
        method: "POST",
        credentials: "same-origin",
        headers: { ...jsonHeaders(), "Accept": "application/x-ndjson" },
        body: JSON.stringify(payload),
        signal,
      });
      if (response.ok) return response;
      const error = await errorFromResponse(response);
      // The previous answer in this conversation is still being saved: wait for it briefly.
      if (error.code === "conversation_busy" && attempt < BUSY_RETRIES) {
        await sleep(BUSY_WAIT_MS, signal);
        continue;
      }
      throw error;
    }
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    statusEl.textContent = busy ? "Answering…" : "";
    conversationEl.setAttribute("aria-busy", busy ? "true" : "false");
  }

  /* One request and its streamed answer. Returns what the page does next. */
  async function streamAnswer(newMessages, { tools, toolChoice, signal }) {
    const payload = SAVE_CONVERSATIONS
      ? { conversation: state.conversationId || "new", messages: newMessages }
      : { messages: [...state.history, ...newMessages] };
    if (modelSelect) payload.model = modelSelect.value;
    if (tools) {
      payload.tools = [LOCAL_TIME_TOOL];
      if (toolChoice) payload.tool_choice = toolChoice;
    }
    const view = new AnswerView();
    view.element.classList.add("streaming");
    const live = view.live();
    const calls = [];
    try {
      const response = await openStream(payload, signal);
      adoptConversation(response.headers.get("Chatproxy-Conversation"));
      const omitted = Number(response.headers.get("Chatproxy-History-Omitted") || 0);
      if (omitted > 0) {
        showHistoryOmitted(omitted);
        conversationEl.append(view.element);
      }
      const { usage, finished } = await readAnswer(response.body, {
        onText: (piece) => live.append(piece),
        onToolCall: (fragment) => {
          const index = fragment.index ?? 0;
          const call = calls[index] || (calls[index] = { id: "", type: "function", function: { name: "", arguments: "" } });
          if (fragment.id) call.id = fragment.id;
          if (fragment.function && fragment.function.name) call.function.name = fragment.function.name;
          if (fragment.function && fragment.function.arguments) call.function.arguments += fragment.function.arguments;
          const callView = view.toolCall(index);
          callView.setName(call.function.name);
          callView.setArguments(call.function.arguments);
        },
      });
      await live.finish();
      const usageText = usage
        ? `${usage.total_tokens} tokens (prompt ${usage.prompt_tokens}, answer ${usage.completion_tokens})`
        : "token usage not reported";
      view.note(finished === "length" ? `Stopped at the length limit · ${usageText}` : usageText, { className: "usage" });
      const message = { role: "assistant", content: live.text || null };
      const made = calls.filter(Boolean);
      if (made.length) message.tool_calls = made;
      return { kind: finished === "tool_calls" && made.length ? "tool_calls" : "answered", message, view };
    } catch (error) {
      await live.finish();
      if (error.name === "AbortError") {
        view.note("Stopped.");
        return { kind: "stopped", message: live.text ? { role: "assistant", content: live.text } : null, view };
      }
      const text = error instanceof ChatError ? error.message
        : error instanceof TypeError ? "Could not reach the server. Check your connection and try again."
        : "Something went wrong reading the answer.";
      const meta = view.note(text, { isError: true });
      meta.setAttribute("role", "alert");
      if (/log in/i.test(text)) {
        const link = document.createElement("a");
        link.href = LOGIN_URL;
        link.textContent = " Log in";
        meta.append(link);
      }
      return { kind: "failed", message: null, view };
    } finally {
      view.element.classList.remove("streaming");
    }
  }

  /* A user's message and the answers it leads to: each tool round runs the tool here and sends its
   * result, up to MAX_TOOL_ROUNDS rounds. */
  async function converse(userMessage, { text, images }) {
    const controller = new AbortController();
    state.controller = controller;
    const tools = toolCheckbox.checked;
    setBusy(true);
    try {
      let newMessages = [userMessage];
      for (let round = 0; ; round += 1) {
        const outcome = await streamAnswer(newMessages, {
          tools,
          toolChoice: tools && round >= MAX_TOOL_ROUNDS ? "none" : null,
          signal: controller.signal,
        });
        if (outcome.kind === "failed") {
          if (round === 0) {
            if (!prompt.value) prompt.value = text;
            if (!state.attachments.length) restoreAttachments(images);
          } else {
            state.history.push(...newMessages);
          }
          return;
        }
        if (outcome.kind === "stopped") {
          if (outcome.message || round > 0) state.history.push(...newMessages);
          if (outcome.message) state.history.push(outcome.message);
          return;
        }
        state.history.push(...newMessages, outcome.message);
        if (outcome.kind !== "tool_calls") return;
        if (round >= MAX_TOOL_ROUNDS) {
          outcome.view.note(`The model asked for more than ${MAX_TOOL_ROUNDS} tool rounds; the page stopped there.`);
          return;
        }
        newMessages = outcome.message.tool_calls.map((call, index) => {
          const result = runTool(call);
          outcome.view.toolCall(index).setResult(result);
          return { role: "tool", tool_call_id: call.id, content: result };
        });
      }
    } finally {
      state.controller = null;
      setBusy(false);
      if (SAVE_CONVERSATIONS) refreshConversations();
    }
  }

  function adoptConversation(id) {
    if (!SAVE_CONVERSATIONS || !id || state.conversationId === id) return;
    state.conversationId = id;
    history.pushState({ conversation: id }, "", URLS.page(id));
    refreshConversations();
  }

  // --- Saved conversations: the list, and one restored -------------------------------------------

  async function refreshConversations() {
    if (!listEl) return;
    try {
      const response = await fetch(URLS.conversations, { credentials: "same-origin", headers: { "Accept": "application/json" } });
      if (!response.ok) return;
      state.conversations = (await response.json()).data;
      renderConversationList();
    } catch (_) { /* the list stays as it was */ }
  }

  // Re-rendered when the list is fetched again (after an answer): the focus stays on the same
  // control of the same conversation, and a rename being typed is not thrown away.
  function renderConversationList() {
    if (!listEl || state.renaming) return;
    const focused = listEl.contains(document.activeElement) ? document.activeElement : null;
    const focusedItem = focused && focused.closest("li");
    const items = state.conversations.map((conversation) => conversationItem(conversation));
    listEl.replaceChildren(...items);
    if (focusedItem && focused.classList.length) {
      const again = listEl.querySelector(`li[data-id="${focusedItem.dataset.id}"] .${focused.classList[0]}`);
      if (again) again.focus();
    }
    noConversations.hidden = state.conversations.length > 0;
    const current = state.conversations.find((conversation) => conversation.id === state.conversationId);
    showTitle(current ? current.title : state.conversationId ? chatTitle.textContent : null);
  }

  function showTitle(title) {
    chatTitle.textContent = title || "New chat";
    document.title = `${title ? `${title} · ` : ""}Chat · chatproxy`;
  }

  function conversationItem(conversation) {
    const item = document.createElement("li");
    item.dataset.id = conversation.id;
    const link = document.createElement("a");
    link.href = URLS.page(conversation.id);
    link.className = "conversation-link";
    link.textContent = conversation.title;
    if (conversation.id === state.conversationId) {
      link.setAttribute("aria-current", "page");
      item.classList.add("current");
    }
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "rename";
    rename.textContent = "Rename";
    rename.setAttribute("aria-label", `Rename “${conversation.title}”`);
    rename.addEventListener("click", () => startRename(item, conversation, rename));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete “${conversation.title}”`);
    remove.addEventListener("click", () => deleteConversation(conversation));
    item.append(link, rename, remove);
    return item;
  }

  function startRename(item, conversation, renameButton) {
    const link = item.querySelector(".conversation-link");
    const input = document.createElement("input");
    input.type = "text";
    input.className = "rename-input";
    input.value = conversation.title;
    input.maxLength = 200;
    input.setAttribute("aria-label", `New title for “${conversation.title}”`);
    let settled = false;
    state.renaming = true;
    const finish = async (save) => {
      if (settled) return;
      settled = true;
      const title = input.value.trim();
      if (save && title && title !== conversation.title) {
        try {
          const response = await fetch(URLS.api(conversation.id), {
            method: "PATCH",
            credentials: "same-origin",
            headers: jsonHeaders(),
            body: JSON.stringify({ title }),
          });
          if (!response.ok) throw await errorFromResponse(response);
          Object.assign(conversation, await response.json());
          listStatus.textContent = `Renamed to “${conversation.title}”.`;
        } catch (error) {
          listStatus.textContent = `Could not rename it: ${error.message}`;
        }
      }
      state.renaming = false;
      renderConversationList();
      const again = listEl.querySelector(`li[data-id="${conversation.id}"] .rename`);
      if (again) again.focus();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        finish(true);
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    link.replaceWith(input);
    renameButton.hidden = true;
    input.focus();
    input.select();
  }

  async function deleteConversation(conversation) {
    if (!window.confirm(`Delete “${conversation.title}” and all its messages? This cannot be undone.`)) return;
    try {
      const response = await fetch(URLS.api(conversation.id), {
        method: "DELETE",
        credentials: "same-origin",
        headers: jsonHeaders(),
      });
      if (!response.ok && response.status !== 404) throw await errorFromResponse(response);
    } catch (error) {
      listStatus.textContent = `Could not delete it: ${error.message}`;
      return;
    }
    state.conversations = state.conversations.filter((item) => item.id !== conversation.id);
    if (conversation.id === state.conversationId) startNewChat();
    renderConversationList();
    listStatus.textContent = `Deleted “${conversation.title}”.`;
    (newChatButton || prompt).focus();
  }

  function startNewChat() {
    if (state.controller) state.controller.abort();
    const wasSaved = state.conversationId !== null;
    state.conversationId = null;
    state.history = [];
    conversationEl.replaceChildren();
    if (wasSaved || location.pathname !== URLS.chat) history.pushState({}, "", URLS.chat);
    renderConversationList();
    prompt.focus();
  }

  /* A saved conversation's messages back in the page; its answers' Markdown in one batched request. */
  async function restoreConversation(conversation) {
    state.conversationId = conversation.id;
    const rendered = [];
    let answer = null;
    for (const message of conversation.messages) {
      if (message.role === "user") {
        answer = null;
        addUserMessage(message.content);
        state.history.push({ role: "user", content: message.content });
      } else if (message.role === "assistant") {
        answer = new AnswerView();
        const { text } = contentParts(message.content);
        answer.textEl.textContent = text;
        if (text) rendered.push({ element: answer.textEl, text });
        (message.tool_calls || []).forEach((call) => {
          const view = answer.toolCall(call.id);
          view.setName(call.function && call.function.name);
          view.setArguments(call.function && call.function.arguments);
        });
        if (message.status === "stopped") answer.note("Stopped.");
        else if (message.status === "failed") answer.note("This answer failed before it finished.", { isError: true });
        if (message.usage) answer.note(`${message.usage.total_tokens} tokens`, { className: "usage" });
        const saved = { role: "assistant", content: text || null };
        if (message.tool_calls) saved.tool_calls = message.tool_calls;
        state.history.push(saved);
      } else if (message.role === "tool") {
        const view = answer && answer.toolCalls.get(message.tool_call_id);
        if (view) view.setResult(contentParts(message.content).text);
        state.history.push({ role: "tool", tool_call_id: message.tool_call_id, content: message.content });
      }
    }
    if (!rendered.length) return;
    const html = await renderMany(rendered.map((item) => item.text));
    rendered.forEach((item, index) => {
      if (html[index] === null) {
        item.element.classList.add("plain");
        return;
      }
      item.element.innerHTML = html[index]; // the sanitizer's output
      addCopyButtons(item.element);
    });
  }

  // --- Images ------------------------------------------------------------------------------------

  const SENDABLE_IMAGE = /^data:image\/(?:png|jpeg|gif|webp);base64,/;

  function readAsDataUrl(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error("not an image"));
      image.src = url;
    });
  }

  /* The image as a data URL the API takes: as it is when it fits, else redrawn smaller as JPEG. */
  async function imageDataUrl(file) {
    const original = await readAsDataUrl(file);
    let image;
    try {
      image = await loadImage(original);
    } catch (_) {
      throw new Error(`“${file.name}” could not be read as an image.`);
    }
    if (SENDABLE_IMAGE.test(original) && original.length <= MAX_IMAGE_URL_BYTES) return original;
    const longest = Math.max(image.naturalWidth, image.naturalHeight) || 1;
    let scale = Math.min(1, 2048 / longest);
    for (let attempt = 0; attempt < 8; attempt += 1) {
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(image.naturalWidth * scale));
      canvas.height = Math.max(1, Math.round(image.naturalHeight * scale));
      const context = canvas.getContext("2d");
      context.fillStyle = "#fff";
      context.fillRect(0, 0, canvas.width, canvas.height);
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      const url = canvas.toDataURL("image/jpeg", 0.85);
      if (url.length <= MAX_IMAGE_URL_BYTES) return url;
      scale *= 0.7;
    }
    throw new Error(`“${file.name}” is too large to attach (over ${Math.round(MAX_IMAGE_URL_BYTES / 1024)} KiB even made smaller).`);
  }

  async function addImages(files) {
    const refusals = [];
    for (const file of files) {
      if (!file.type.startsWith("image/")) {
        refusals.push(`“${file.name}” is not an image.`);
        continue;
      }
      if (state.attachments.length >= MAX_IMAGES) {
        refusals.push(`A message can carry at most ${MAX_IMAGES} image${MAX_IMAGES === 1 ? "" : "s"}.`);
        break;
      }
      try {
        state.attachments.push({ url: await imageDataUrl(file), name: file.name || "pasted image" });
      } catch (error) {
        refusals.push(error.message);
      }
    }
    renderAttachments();
    attachmentStatus.textContent = refusals.join(" ");
    attachmentStatus.classList.toggle("error", refusals.length > 0);
  }

  function restoreAttachments(images) {
    state.attachments = images.slice();
    renderAttachments();
  }

  function renderAttachments() {
    const items = state.attachments.map((attachment, index) => {
      const item = document.createElement("li");
      const image = document.createElement("img");
      image.src = attachment.url;
      image.alt = `Attached: ${attachment.name}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${attachment.name}`);
      remove.addEventListener("click", () => {
        state.attachments.splice(index, 1);
        renderAttachments();
        attachmentStatus.textContent = `Removed ${attachment.name}.`;
        attachmentStatus.classList.remove("error");
        (attachmentsEl.querySelector("button") || attachButton).focus();
      });
      item.append(image, remove);
      return item;
    });
    attachmentsEl.replaceChildren(...items);
    attachmentsEl.hidden = items.length === 0;
  }

  // --- Wiring ------------------------------------------------------------------------------------

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state.controller) return;
    const text = prompt.value.trim();
    const images = state.attachments.slice();
    if (!text && !images.length) {
      statusEl.textContent = "Type a message (or attach an image) first.";
      prompt.focus();
      return;
    }
    const content = images.length
      ? [...(text ? [{ type: "text", text }] : []), ...images.map((image) => ({ type: "image_url", image_url: { url: image.url } }))]
      : text;
    prompt.value = "";
    state.attachments = [];
    renderAttachments();
    attachmentStatus.textContent = "";
    const userMessage = { role: "user", content };
    addUserMessage(content);
    converse(userMessage, { text, images });
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  prompt.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData ? event.clipboardData.items : [])]
      .filter((item) => item.kind === "file" && item.type.startsWith("image/"))
      .map((item) => item.getAsFile())
      .filter(Boolean);
    if (files.length) addImages(files);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) {
      event.preventDefault();
      state.controller.abort();
    }
  });
  stopButton.addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  attachButton.addEventListener("click", () => imageInput.click());
  imageInput.addEventListener("change", () => {
    addImages([...imageInput.files]);
    imageInput.value = "";
  });
  if (newChatButton) newChatButton.addEventListener("click", startNewChat);
  if (panelToggle) {
    panelToggle.addEventListener("click", () => {
      const open = panelToggle.getAttribute("aria-expanded") !== "true";
      panelToggle.setAttribute("aria-expanded", String(open));
      panel.classList.toggle("open", open);
    });
  }
  // Back and forward between conversations: the server renders each URL's conversation.
  window.addEventListener("popstate", () => location.reload());

  const initial = readJson("conversation-data");
  if (initial) state.conversationId = initial.id;
  if (SAVE_CONVERSATIONS) renderConversationList();
  if (initial) restoreConversation(initial);
})();
