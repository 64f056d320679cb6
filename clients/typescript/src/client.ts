// PainarClient: one device's connection to PainAR Gateway (docs/protocol.md). It
// authenticates with the in-band `auth` frame (which browsers need), matches answers to
// requests by `id` -> `ref`, keeps a local replica current (pull on ready, deltas in
// version order, pull on a gap or `sync.version`), and reconnects with backoff and
// jitter, resending what was not answered under the same ids. It never retries a token
// the gateway refused (4401, 4403) or a socket closed for a client bug (1008).
import type {
  Ack,
  Change,
  ChatDelta,
  ChatDone,
  ChatResume,
  ClientFrame,
  Mutation,
  ServerFrame,
  SessionReady,
  SyncAck,
  SyncChanges,
} from "./protocol.js";
import { Replica, ReplicaFeed } from "./replica.js";
import { audioFrame } from "./audio.js";

export type FrameType = ServerFrame["type"];
export type FrameOf<T extends FrameType> = Extract<ServerFrame, { type: T }>;

/** What the client needs of a WebSocket: the browser's, or `ws`'s under Node. */
export interface SocketLike {
  binaryType: string;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type SocketConstructor = new (url: string, protocols?: string | string[]) => SocketLike;

/** A browser window's network events (absent under Node). */
interface NetworkEvents {
  addEventListener(type: "online" | "offline", listener: () => void): void;
  removeEventListener(type: "online" | "offline", listener: () => void): void;
  navigator?: { onLine?: boolean };
}

export interface ClientOptions {
  /** `ws(s)://host/v1/ws`; several are tried in turn when reconnecting. */
  url: string | string[];
  /** The JWT, or a function that returns a fresh one for each connection. */
  token: string | (() => string | Promise<string>);
  /** The device's id, when the token names one (used as a prefix of generated ids). */
  deviceId?: string;
  /** The WebSocket class; the global one by default (browsers, Node 22+). */
  WebSocket?: SocketConstructor;
  /** Reconnect after a drop (default true). */
  reconnect?: boolean;
  /** Backoff between reconnects: doubles from initialMs up to maxMs, with jitter. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** How long a request waits for its answer (default 15 s). */
  requestTimeoutMs?: number;
}

export type State = "connecting" | "open" | "reconnecting" | "closed";

/** An `error` frame answering a request, or a close the client will not retry. */
export class GatewayError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable = false,
    readonly closeCode?: number,
  ) {
    super(message);
    this.name = "GatewayError";
  }
}

/** Closes after which reconnecting as is cannot help. */
const FATAL_CLOSES = new Set([1008, 4401, 4403]);
const PROTOCOL = "painar.v1";

interface Pending {
  frame: ClientFrame;
  answers: ReadonlySet<string>;
  resolve(frame: ServerFrame): void;
  reject(error: unknown): void;
  timer: ReturnType<typeof setTimeout>;
  resend: boolean;
}

type Handler = (frame: ServerFrame) => void;

export class PainarClient {
  /** A patient session's own threads and messages (clinicians: see `ReplicaFeed`). */
  readonly feed = new ReplicaFeed((since) => this.pull(since));
  readonly replica: Replica = this.feed.replica;
  /** The latest `session.ready`. */
  session: SessionReady | null = null;
  state: State = "closed";
  /** Connections opened so far (reconnects included). */
  connections = 0;

  private readonly options: ClientOptions;
  private readonly urls: string[];
  private readonly Socket: SocketConstructor;
  private socket: SocketLike | null = null;
  private urlIndex = 0;
  private attempt = 0;
  private closing = false;
  private sequence = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly stateHandlers = new Set<(state: State, detail?: unknown) => void>();
  private firstReady: { resolve(f: SessionReady): void; reject(e: unknown): void } | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private nextDelayMs: number | null = null;
  private network: NetworkEvents | null = null; // browsers: the window's online/offline
  private readonly wentOffline = () => this.dropForOffline();
  private readonly cameOnline = () => this.reconnectNow();

  constructor(options: ClientOptions) {
    this.options = options;
    this.urls = Array.isArray(options.url) ? [...options.url] : [options.url];
    const Socket = options.WebSocket ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (!Socket) throw new Error("no WebSocket: pass options.WebSocket (e.g. the `ws` package's)");
    this.Socket = Socket;
    const events = globalThis as unknown as Partial<NetworkEvents>;
    if (typeof events.addEventListener === "function") this.network = events as NetworkEvents;
  }

  /** Open the socket; resolves with the first `session.ready`. */
  connect(): Promise<SessionReady> {
    this.closing = false;
    this.network?.addEventListener("offline", this.wentOffline);
    this.network?.addEventListener("online", this.cameOnline);
    return new Promise((resolve, reject) => {
      this.firstReady = { resolve, reject };
      void this.open();
    });
  }

  /** Stop: close the socket, reconnect no more, fail what waits for an answer. */
  close(): void {
    this.closing = true;
    this.network?.removeEventListener("offline", this.wentOffline);
    this.network?.removeEventListener("online", this.cameOnline);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.socket?.close(1000, "client closed");
    this.failPending(new GatewayError("closed", "the client was closed"));
    this.setState("closed");
  }

  /** Every frame of `type` (or `*` for all), live; returns the unsubscribe function. */
  on<T extends FrameType>(type: T | "*", handler: (frame: FrameOf<T>) => void): () => void {
    const set = this.handlers.get(type) ?? new Set<Handler>();
    set.add(handler as Handler);
    this.handlers.set(type, set);
    return () => set.delete(handler as Handler);
  }

  onState(handler: (state: State, detail?: unknown) => void): () => void {
    this.stateHandlers.add(handler);
    return () => this.stateHandlers.delete(handler);
  }

  /** Push mutations (give each a stable `mutation_id`); resolves with the `sync.ack`.
   * Resent with the same ids after a reconnect until answered. */
  async push(mutations: Mutation[]): Promise<SyncAck> {
    const frame = { type: "sync.push", id: this.id(), mutations } as ClientFrame;
    return (await this.request(frame, ["sync.ack"], true)) as SyncAck;
  }

  /** One page of changes after `since`; clinicians name the observed patient. */
  async pull(since: number, limit?: number, patientId?: string): Promise<SyncChanges> {
    const frame = {
      type: "sync.pull",
      id: this.id(),
      since,
      ...(limit ? { limit } : {}),
      ...(patientId ? { patient_id: patientId } : {}),
    } as ClientFrame;
    return (await this.request(frame, ["sync.changes"], true)) as SyncChanges;
  }

  /** Clinicians: start watching a patient on their care team (`observe.snapshot`, the
   * patient's live frames and `presence` follow the ack). Not resent after a reconnect:
   * observations belong to a connection, so observe again on each `session.ready`. */
  async observe(patientId: string): Promise<Ack> {
    const frame = { type: "observe", id: this.id(), patient_id: patientId } as ClientFrame;
    return (await this.request(frame, ["ack"])) as Ack;
  }

  async unobserve(patientId: string): Promise<Ack> {
    const frame = { type: "unobserve", id: this.id(), patient_id: patientId } as ClientFrame;
    return (await this.request(frame, ["ack"])) as Ack;
  }

  /** Send a message and stream its reply: the deltas (and a `chat.resume` after a
   * reconnect mid-reply), ending with `chat.done`. Resent after a reconnect under the
   * same `clientMessageId` (one is made when not given). */
  chat(message: { threadId: string; text: string; clientMessageId?: string; svgPath?: string }): ChatStream {
    const clientMessageId = message.clientMessageId ?? this.id("m");
    const frame = {
      type: "chat.send",
      id: this.id(),
      thread_id: message.threadId,
      text: message.text,
      client_message_id: clientMessageId,
      ...(message.svgPath ? { svg_path: message.svgPath } : {}),
    } as ClientFrame;
    return new ChatStream(this, frame);
  }

  /** Stop a reply; the ack's `stopped` says whether one was streaming. */
  async cancel(responseId: string): Promise<Ack> {
    const frame = { type: "chat.cancel", id: this.id(), response_id: responseId } as ClientFrame;
    return (await this.request(frame, ["ack"], true)) as Ack;
  }

  /** Open an audio stream (its chunks then go by `sendAudio`); resolves with the ack. */
  async startAudio(stream: {
    streamId: string;
    threadId: string;
    format: "pcm16" | "wav" | "webm" | "ogg" | "mp3" | "m4a";
    sampleRate?: number;
    language?: string;
    respond?: boolean;
    turnDetection?: "manual" | "server_vad";
    silenceMs?: number;
  }): Promise<Ack> {
    const frame = {
      type: "audio.start",
      id: this.id(),
      stream_id: stream.streamId,
      thread_id: stream.threadId,
      format: stream.format,
      ...(stream.sampleRate !== undefined ? { sample_rate: stream.sampleRate } : {}),
      ...(stream.language !== undefined ? { language: stream.language } : {}),
      ...(stream.respond !== undefined ? { respond: stream.respond } : {}),
      ...(stream.turnDetection !== undefined ? { turn_detection: stream.turnDetection } : {}),
      ...(stream.silenceMs !== undefined ? { silence_ms: stream.silenceMs } : {}),
    } as ClientFrame;
    return (await this.request(frame, ["ack"])) as Ack;
  }

  /** End an audio stream: its transcript (and, with `respond`, a reply) follows. */
  async commitAudio(streamId: string): Promise<Ack> {
    const frame = { type: "audio.commit", id: this.id(), stream_id: streamId } as ClientFrame;
    return (await this.request(frame, ["ack"])) as Ack;
  }

  /** One chunk of an open audio stream, as a binary frame. */
  sendAudio(streamId: string, seq: number, audio: Uint8Array): void {
    this.requireOpen().send(audioFrame(streamId, seq, audio));
  }

  /** Send a frame as is (audio.start, observe, ...); answered frames come to `on`. */
  send(frame: ClientFrame): void {
    this.requireOpen().send(JSON.stringify(frame));
  }

  /** Send a frame with an `id` and wait for its answer (`ref`), or its error. */
  request(frame: ClientFrame, answers: string[], resend = false): Promise<ServerFrame> {
    const id = (frame as { id?: string }).id ?? this.id();
    const framed = { ...frame, id } as ClientFrame;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new GatewayError("timeout", `no answer to ${framed.type} within the time allowed`, true));
      }, this.options.requestTimeoutMs ?? 15_000);
      this.pending.set(id, { frame: framed, answers: new Set(answers), resolve, reject, timer, resend });
      if (this.state === "open" && this.socket) this.socket.send(JSON.stringify(framed));
      // Otherwise sent once the connection is (re)established.
    });
  }

  // ---- connection ------------------------------------------------------------------

  private async open(): Promise<void> {
    if (this.closing) return;
    this.setState(this.connections === 0 ? "connecting" : "reconnecting");
    if (this.network?.navigator?.onLine === false) return; // "online" reconnects
    let token: string;
    try {
      token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
    } catch (error) {
      this.scheduleReconnect(error);
      return;
    }
    const url = this.urls[this.urlIndex % this.urls.length] as string;
    const socket = new this.Socket(url, PROTOCOL);
    this.socket = socket;
    this.connections += 1;
    socket.binaryType = "arraybuffer";
    socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token }));
    socket.onmessage = (event) => {
      if (typeof event.data === "string") this.receive(JSON.parse(event.data) as ServerFrame);
    };
    socket.onerror = () => undefined; // a close follows; handled there
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.onClosed(event.code, event.reason);
    };
  }

  private onClosed(code: number, reason: string): void {
    if (this.closing) return;
    if (FATAL_CLOSES.has(code)) {
      const error = new GatewayError(
        code === 4401 ? "unauthenticated" : code === 4403 ? "forbidden" : "policy",
        `the gateway closed the socket (${code} ${reason}); not retrying`,
        false,
        code,
      );
      this.closing = true;
      this.failPending(error);
      this.firstReady?.reject(error);
      this.firstReady = null;
      this.setState("closed", error);
      return;
    }
    if (this.options.reconnect === false) {
      const error = new GatewayError("closed", `the socket closed (${code})`, true, code);
      this.failPending(error);
      this.firstReady?.reject(error);
      this.setState("closed", error);
      return;
    }
    this.urlIndex += 1; // the next process, when several are known
    this.scheduleReconnect();
  }

  private scheduleReconnect(detail?: unknown): void {
    this.setState("reconnecting", detail);
    const initial = this.options.backoff?.initialMs ?? 250;
    const max = this.options.backoff?.maxMs ?? 10_000;
    const backoff = Math.min(max, initial * 2 ** this.attempt);
    // A drain says when to come back; otherwise full jitter, so that a fleet spreads out.
    const delay = this.nextDelayMs ?? Math.random() * backoff;
    this.nextDelayMs = null;
    this.attempt += 1;
    this.retryTimer = setTimeout(() => void this.open(), delay);
  }

  /** A socket is dead once the device goes offline, often long before it notices (no
   * close may come for a minute): drop it, and wait for the network to come back rather
   * than retrying into nothing. */
  private dropForOffline(): void {
    const socket = this.socket;
    if (this.closing || !socket) return;
    this.socket = null; // its close event, whenever it comes, is no longer ours
    socket.close(1000, "offline");
    this.onClosed(1006, "offline");
  }

  /** Back online: reconnect at once instead of waiting out the backoff. */
  private reconnectNow(): void {
    if (this.closing || this.state !== "reconnecting" || this.socket) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.attempt = 0;
    void this.open();
  }

  private setState(state: State, detail?: unknown): void {
    this.state = state;
    for (const handler of this.stateHandlers) handler(state, detail);
  }

  private requireOpen(): SocketLike {
    if (this.state !== "open" || !this.socket) throw new GatewayError("closed", "not connected", true);
    return this.socket;
  }

  private failPending(error: unknown): void {
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer);
      pending.reject(error);
      this.pending.delete(id);
    }
  }

  // ---- frames ----------------------------------------------------------------------

  private receive(frame: ServerFrame): void {
    switch (frame.type) {
      case "session.ready":
        this.onReady(frame);
        break;
      case "reconnect":
        this.nextDelayMs = frame.after_ms;
        break;
      case "sync.delta":
        if (this.ownPatient(frame.patient_id)) this.feed.delta(frame);
        break;
      case "sync.version":
        if (this.ownPatient(frame.patient_id)) this.feed.version(frame.version);
        break;
      case "sync.changes":
        break; // applied by the feed, which asked for them
    }
    const ref = (frame as { ref?: string }).ref ?? (frame.type === "error" ? frame.error.ref : undefined);
    if (ref !== undefined && ref !== null) {
      const pending = this.pending.get(ref);
      if (pending?.resend && frame.type === "error" && frame.error.code === "rate_limited") {
        this.sendAgainLater(pending); // refused unprocessed as too fast: the same frame, later
      } else if (pending && (pending.answers.has(frame.type) || frame.type === "error")) {
        this.pending.delete(ref);
        clearTimeout(pending.timer);
        if (frame.type === "error") {
          const body = frame.error;
          pending.reject(new GatewayError(body.code, body.message, body.retryable ?? false));
        } else {
          pending.resolve(frame);
        }
      }
    }
    for (const type of [frame.type, "*"]) {
      for (const handler of this.handlers.get(type) ?? []) handler(frame);
    }
  }

  /** A pause of one to one and a half seconds (the limit's window, spread out), then the
   * request as it was, same id; a reconnect meanwhile resends it anyway. */
  private sendAgainLater(pending: Pending): void {
    const id = (pending.frame as { id?: string }).id ?? "";
    setTimeout(() => {
      if (this.pending.get(id) === pending && this.state === "open") this.socket?.send(JSON.stringify(pending.frame));
    }, 1000 + Math.random() * 500);
  }

  private onReady(frame: SessionReady): void {
    this.session = frame;
    this.attempt = 0;
    // Resend what was not answered, under the same ids: the gateway knows replays. Before
    // the state changes, so what its handlers send goes on this connection unharmed.
    for (const [id, pending] of this.pending) {
      if (pending.resend) this.socket?.send(JSON.stringify(pending.frame));
      else {
        this.pending.delete(id);
        clearTimeout(pending.timer);
        pending.reject(new GatewayError("closed", "the connection was lost before the answer", true));
      }
    }
    this.setState("open");
    if (frame.role === "patient") this.feed.version(frame.sync_version ?? 0, true);
    this.firstReady?.resolve(frame);
    this.firstReady = null;
  }

  /** Sync frames of the session's own patient feed its replica; an observing
   * clinician's (which name observed patients) are the console's to route. */
  private ownPatient(patientId: string): boolean {
    return this.session?.role === "patient" && patientId === this.session.patient_id;
  }

  /** @internal */
  id(prefix = "c"): string {
    this.sequence += 1;
    const device = this.options.deviceId ? `${this.options.deviceId}-` : "";
    return `${prefix}-${device}${Date.now().toString(36)}-${this.sequence}`;
  }
}

/** A reply streaming in: `for await (const frame of client.chat(...))`. */
export class ChatStream implements AsyncIterable<ChatDelta | ChatResume | ChatDone> {
  /** The reply's id, from the `ack` (undefined when no reply follows: a replay of an
   * answered message). */
  readonly responseId: Promise<string | undefined>;
  private readonly frames: Array<ChatDelta | ChatResume | ChatDone> = [];
  private wake: (() => void) | null = null;
  private ended = false;
  private failure: unknown = null;
  private id: string | undefined;
  private messageId: string | undefined; // the stored user message, from chat.message
  private patientId = "";
  private readonly sent: { thread_id: string; text: string };
  private unsubscribe: () => void;

  constructor(client: PainarClient, frame: ClientFrame) {
    this.sent = frame as unknown as { thread_id: string; text: string };
    this.unsubscribe = client.on("*", (f) => this.take(f));
    this.responseId = client.request(frame, ["ack"], true).then(
      (ack) => {
        this.id = (ack as Ack).response_id ?? undefined;
        if (this.id === undefined) this.finish();
        this.frames.splice(0, this.frames.length, ...this.frames.filter((f) => f.response_id === this.id));
        this.wake?.();
        return this.id;
      },
      (error: unknown) => {
        this.failure = error;
        this.finish();
        throw error;
      },
    );
    this.responseId.catch(() => undefined);
  }

  private take(frame: ServerFrame): void {
    if (frame.type === "chat.message") {
      const message = frame.message;
      if (this.messageId === undefined && frame.thread_id === this.sent.thread_id
          && message.role === "user" && message.content === this.sent.text) {
        this.messageId = message.id; // the sender sees it right after the ack
        this.patientId = frame.patient_id;
      }
      return;
    }
    if (frame.type === "sync.delta" || frame.type === "sync.changes") {
      this.storedReply(frame.changes);
      return;
    }
    if (frame.type !== "chat.delta" && frame.type !== "chat.resume" && frame.type !== "chat.done") return;
    if (this.id !== undefined && frame.response_id !== this.id) return;
    this.frames.push(frame); // before the ack only when the ack is late: filtered then
    if (frame.type === "chat.done" && frame.response_id === this.id) this.finish();
    this.wake?.();
  }

  /** A reply that ended while the socket was down sends no chat.done to this client; its
   * stored message (which answers ours) ends the stream instead. */
  private storedReply(changes: Change[]): void {
    if (this.ended || this.id === undefined || this.messageId === undefined) return;
    for (const change of changes) {
      const data = change.data ?? {};
      if (change.entity !== "message" || data["reply_to"] !== this.messageId || !data["finish_reason"]) continue;
      this.frames.push({
        type: "chat.done",
        patient_id: this.patientId,
        thread_id: this.sent.thread_id,
        response_id: this.id,
        message_id: change.id,
        finish_reason: data["finish_reason"] as ChatDone["finish_reason"],
      });
      this.finish();
      return;
    }
  }

  private finish(): void {
    this.ended = true;
    this.unsubscribe();
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ChatDelta | ChatResume | ChatDone> {
    await this.responseId.catch(() => undefined);
    while (true) {
      const frame = this.frames.shift();
      if (frame) {
        yield frame;
        if (frame.type === "chat.done") return;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }

  /** The whole reply's text and its done frame. */
  async text(): Promise<{ text: string; done: ChatDone | null }> {
    let text = "";
    let done: ChatDone | null = null;
    for await (const frame of this) {
      if (frame.type === "chat.delta") text += frame.delta;
      else if (frame.type === "chat.resume") text = frame.text;
      else done = frame;
    }
    return { text, done };
  }
}
