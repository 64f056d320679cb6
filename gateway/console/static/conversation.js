// One patient's conversation as a page shows it: the threads and messages of a replica
// kept current by sync (ReplicaFeed), replies streaming in (chat.delta, chat.resume,
// chat.done), voice transcripts and who is connected (presence). The patient's own page
// and each of a clinician's panes are one of these; only the patient's has a composer.
import { regionName } from "./regions.js";

const TRANSCRIPTS_SHOWN = 5;
const PAIN_REPORTS_SHOWN = 10;

export class Conversation {
  /**
   * @param {HTMLElement} root where the conversation template is put
   * @param {import("./client/index.js").ReplicaFeed} feed the patient's replica, kept current
   * @param {{ viewer: "patient" | "clinician", selfDevice?: string }} options
   */
  constructor(root, feed, options) {
    this.feed = feed;
    this.viewer = options.viewer;
    this.selfDevice = options.selfDevice ?? null;
    /** response_id -> { threadId, text, seq, finish, messageId } */
    this.streams = new Map();
    this.transcripts = [];
    this.presence = { devices: [], observers: [] };
    /** The thread shown; null shows the most recently active one. */
    this.threadId = null;
    this.draftThreadId = null; // a new thread the patient has not written to yet
    this.onThreadChange = null;

    const template = document.getElementById("conversation-template");
    root.replaceChildren(template.content.cloneNode(true));
    this.root = root;
    this.el = {
      presence: root.querySelector("[data-presence]"),
      threads: root.querySelector("[data-threads]"),
      threadTitle: root.querySelector("[data-thread-title]"),
      messages: root.querySelector("[data-messages]"),
      transcripts: root.querySelector("[data-transcripts]"),
      painReports: root.querySelector("[data-pain-reports]"),
      composerSlot: root.querySelector("[data-composer-slot]"),
    };
    this.threadsShown = "";
    this.scheduled = false;
    feed.onChange = () => this.render();
    this.render();
  }

  /** A live frame of this patient. */
  take(frame) {
    switch (frame.type) {
      case "chat.delta": {
        const stream = this.stream(frame.response_id, frame.thread_id);
        if (frame.seq <= stream.seq) return; // already in the text (a resume covered it)
        stream.text += frame.delta;
        stream.seq = frame.seq;
        break;
      }
      case "chat.resume": {
        const stream = this.stream(frame.response_id, frame.thread_id);
        stream.text = frame.text;
        stream.seq = frame.seq;
        break;
      }
      case "chat.done": {
        const stream = this.stream(frame.response_id, frame.thread_id);
        stream.finish = frame.finish_reason;
        stream.messageId = frame.message_id;
        break;
      }
      case "audio.transcript":
        this.transcripts.unshift({ text: frame.text, threadId: frame.thread_id });
        this.transcripts.length = Math.min(this.transcripts.length, TRANSCRIPTS_SHOWN);
        break;
      case "presence":
        this.presence = { devices: frame.devices, observers: frame.observers };
        break;
      case "sync.delta":
        this.feed.delta(frame);
        return; // the feed says when it applied something
      case "sync.version":
        this.feed.version(frame.version);
        return;
      default:
        return;
    }
    this.render();
  }

  /** A new connection or observation: replies still streaming are announced again by
   * chat.resume (with their text so far), finished ones come with the catch-up. */
  clearStreams() {
    this.streams.clear();
    this.render();
  }

  stream(responseId, threadId) {
    let stream = this.streams.get(responseId);
    if (!stream) {
      stream = { threadId, text: "", seq: -1, finish: null, messageId: null };
      this.streams.set(responseId, stream);
    }
    return stream;
  }

  /** Show a thread (an id the server does not know yet is a new, empty one). */
  select(threadId) {
    this.threadId = threadId;
    this.render();
    this.onThreadChange?.(threadId);
  }

  /** The thread shown: the chosen one, else the one most recently written to. */
  currentThread() {
    if (this.threadId) return this.threadId;
    let latest = null;
    for (const message of this.feed.replica.messages.values()) {
      if (!latest || String(message.data.created_at) > String(latest.data.created_at)) latest = message;
    }
    if (latest) return String(latest.data.thread_id);
    const first = this.feed.replica.threads.keys().next();
    return first.done ? null : first.value;
  }

  render() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  draw() {
    const replica = this.feed.replica;
    const current = this.currentThread();
    this.drawPresence();
    this.drawThreads(current);
    const thread = current ? replica.threads.get(current) : null;
    this.el.threadTitle.textContent = thread
      ? String(thread.data.title || "Untitled thread")
      : current ? "New thread" : "No thread yet";

    const messages = [...replica.messages.values()]
      .filter((m) => m.data.thread_id === current)
      .sort((a, b) => String(a.data.created_at).localeCompare(String(b.data.created_at)) || a.id.localeCompare(b.id));
    const items = messages.map((m) => this.messageItem(m.id, m.data, "stored"));
    for (const [responseId, stream] of this.streams) {
      if (stream.threadId !== current) continue;
      if (stream.messageId && replica.messages.has(stream.messageId)) {
        this.streams.delete(responseId); // stored now: shown above
        continue;
      }
      const data = { role: "assistant", content: stream.text, finish_reason: stream.finish };
      items.push(this.messageItem(responseId, data, stream.finish ? "done" : "streaming"));
    }
    this.el.messages.replaceChildren(...items);

    this.el.painReports.replaceChildren(
      ...[...replica.painReports.values()]
        .sort((a, b) => String(b.data.recorded_at).localeCompare(String(a.data.recorded_at)))
        .slice(0, PAIN_REPORTS_SHOWN)
        .map((report) => {
          const li = document.createElement("li");
          li.dataset.id = report.id;
          const where = report.data.region ?? (report.data.svg_path ? regionName(report.data.svg_path) : null);
          const when = new Date(String(report.data.recorded_at)).toLocaleString();
          li.textContent = `${report.data.intensity}/10${where ? ` · ${where}` : ""} · ${when}`;
          return li;
        }),
    );

    this.el.transcripts.replaceChildren(
      ...this.transcripts.map((t) => {
        const li = document.createElement("li");
        li.textContent = t.text === "" ? "(nothing was said)" : t.text;
        return li;
      }),
    );
  }

  drawPresence() {
    const { devices, observers } = this.presence;
    const parts = [];
    parts.push(devices.length ? `Devices connected: ${devices.join(", ")}` : "No device connected");
    if (observers.length) {
      const who = observers.map((o) => `clinician ${o.clinician_id.slice(0, 8)}`);
      parts.push(`Observed by: ${who.join(", ")}`);
    } else {
      parts.push("Not observed");
    }
    const text = parts.join(" · ");
    if (this.el.presence.textContent !== text) this.el.presence.textContent = text;
  }

  drawThreads(current) {
    const threads = [...this.feed.replica.threads.values()].sort((a, b) =>
      String(b.data.updated_at ?? "").localeCompare(String(a.data.updated_at ?? "")),
    );
    const listed = threads.map((t) => [t.id, String(t.data.title || "Untitled thread")]);
    if (current && !this.feed.replica.threads.has(current)) listed.unshift([current, "New thread"]);
    // Rebuilt only when something changed, so a focused button keeps its focus.
    const shown = JSON.stringify([listed, current]);
    if (shown === this.threadsShown) return;
    this.threadsShown = shown;
    this.el.threads.replaceChildren(
      ...listed.map(([id, title]) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = title;
        button.dataset.threadId = id;
        if (id === current) button.setAttribute("aria-current", "true");
        button.addEventListener("click", () => this.select(id));
        li.append(button);
        return li;
      }),
    );
  }

  messageItem(id, data, state) {
    const li = document.createElement("li");
    li.className = `message ${data.role}`;
    li.dataset.id = id;
    li.dataset.role = String(data.role);
    li.dataset.state = state;
    if (state === "streaming") li.setAttribute("aria-busy", "true");
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = data.role === "assistant" ? "Assistant" : this.viewer === "patient" ? "You" : "Patient";
    const meta = [];
    if (data.source === "voice") meta.push("by voice");
    if (data.svg_path) meta.push(`at ${regionName(data.svg_path)}`);
    if (state === "streaming") meta.push("writing…");
    if (data.finish_reason && data.finish_reason !== "stop") meta.push(`(${data.finish_reason})`);
    if (meta.length) who.textContent += ` · ${meta.join(" · ")}`;
    const body = document.createElement("p");
    body.className = "content";
    body.textContent = String(data.content ?? "");
    li.append(who, body);
    return li;
  }
}
