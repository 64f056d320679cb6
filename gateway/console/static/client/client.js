import { ReplicaFeed } from "./replica.js";
import { audioFrame } from "./audio.js";
/** An `error` frame answering a request, or a close the client will not retry. */
export class GatewayError extends Error {
    code;
    retryable;
    closeCode;
    constructor(code, message, retryable = false, closeCode) {
        super(message);
        this.code = code;
        this.retryable = retryable;
        this.closeCode = closeCode;
        this.name = "GatewayError";
    }
}
/** Closes after which reconnecting as is cannot help. */
const FATAL_CLOSES = new Set([1008, 4401, 4403]);
const PROTOCOL = "painar.v1";
export class PainarClient {
    /** A patient session's own threads and messages (clinicians: see `ReplicaFeed`). */
    feed = new ReplicaFeed((since) => this.pull(since));
    replica = this.feed.replica;
    /** The latest `session.ready`. */
    session = null;
    state = "closed";
    /** Connections opened so far (reconnects included). */
    connections = 0;
    options;
    urls;
    Socket;
    socket = null;
    urlIndex = 0;
    attempt = 0;
    closing = false;
    sequence = 0;
    pending = new Map();
    handlers = new Map();
    stateHandlers = new Set();
    firstReady = null;
    retryTimer = null;
    nextDelayMs = null;
    network = null; // browsers: the window's online/offline
    wentOffline = () => this.dropForOffline();
    cameOnline = () => this.reconnectNow();
    constructor(options) {
        this.options = options;
        this.urls = Array.isArray(options.url) ? [...options.url] : [options.url];
        const Socket = options.WebSocket ?? globalThis.WebSocket;
        if (!Socket)
            throw new Error("no WebSocket: pass options.WebSocket (e.g. the `ws` package's)");
        this.Socket = Socket;
        const events = globalThis;
        if (typeof events.addEventListener === "function")
            this.network = events;
    }
    /** Open the socket; resolves with the first `session.ready`. */
    connect() {
        this.closing = false;
        this.network?.addEventListener("offline", this.wentOffline);
        this.network?.addEventListener("online", this.cameOnline);
        return new Promise((resolve, reject) => {
            this.firstReady = { resolve, reject };
            void this.open();
        });
    }
    /** Stop: close the socket, reconnect no more, fail what waits for an answer. */
    close() {
        this.closing = true;
        this.network?.removeEventListener("offline", this.wentOffline);
        this.network?.removeEventListener("online", this.cameOnline);
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.socket?.close(1000, "client closed");
        this.failPending(new GatewayError("closed", "the client was closed"));
        this.setState("closed");
    }
    /** Every frame of `type` (or `*` for all), live; returns the unsubscribe function. */
    on(type, handler) {
        const set = this.handlers.get(type) ?? new Set();
        set.add(handler);
        this.handlers.set(type, set);
        return () => set.delete(handler);
    }
    onState(handler) {
        this.stateHandlers.add(handler);
        return () => this.stateHandlers.delete(handler);
    }
    /** Push mutations (give each a stable `mutation_id`); resolves with the `sync.ack`.
     * Resent with the same ids after a reconnect until answered. */
    async push(mutations) {
        const frame = { type: "sync.push", id: this.id(), mutations };
        return (await this.request(frame, ["sync.ack"], true));
    }
    /** One page of changes after `since`; clinicians name the observed patient. */
    async pull(since, limit, patientId) {
        const frame = {
            type: "sync.pull",
            id: this.id(),
            since,
            ...(limit ? { limit } : {}),
            ...(patientId ? { patient_id: patientId } : {}),
        };
        return (await this.request(frame, ["sync.changes"], true));
    }
    /** Clinicians: start watching a patient on their care team (`observe.snapshot`, the
     * patient's live frames and `presence` follow the ack). Not resent after a reconnect:
     * observations belong to a connection, so observe again on each `session.ready`. */
    async observe(patientId) {
        const frame = { type: "observe", id: this.id(), patient_id: patientId };
        return (await this.request(frame, ["ack"]));
    }
    async unobserve(patientId) {
        const frame = { type: "unobserve", id: this.id(), patient_id: patientId };
        return (await this.request(frame, ["ack"]));
    }
    /** Send a message and stream its reply: the deltas (and a `chat.resume` after a
     * reconnect mid-reply), ending with `chat.done`. Resent after a reconnect under the
     * same `clientMessageId` (one is made when not given). */
    chat(message) {
        const clientMessageId = message.clientMessageId ?? this.id("m");
        const frame = {
            type: "chat.send",
            id: this.id(),
            thread_id: message.threadId,
            text: message.text,
            client_message_id: clientMessageId,
            ...(message.svgPath ? { svg_path: message.svgPath } : {}),
        };
        return new ChatStream(this, frame);
    }
    /** Stop a reply; the ack's `stopped` says whether one was streaming. */
    async cancel(responseId) {
        const frame = { type: "chat.cancel", id: this.id(), response_id: responseId };
        return (await this.request(frame, ["ack"], true));
    }
    /** Open an audio stream (its chunks then go by `sendAudio`); resolves with the ack. */
    async startAudio(stream) {
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
        };
        return (await this.request(frame, ["ack"]));
    }
    /** End an audio stream: its transcript (and, with `respond`, a reply) follows. */
    async commitAudio(streamId) {
        const frame = { type: "audio.commit", id: this.id(), stream_id: streamId };
        return (await this.request(frame, ["ack"]));
    }
    /** One chunk of an open audio stream, as a binary frame. */
    sendAudio(streamId, seq, audio) {
        this.requireOpen().send(audioFrame(streamId, seq, audio));
    }
    /** Send a frame as is (audio.start, observe, ...); answered frames come to `on`. */
    send(frame) {
        this.requireOpen().send(JSON.stringify(frame));
    }
    /** Send a frame with an `id` and wait for its answer (`ref`), or its error. */
    request(frame, answers, resend = false) {
        const id = frame.id ?? this.id();
        const framed = { ...frame, id };
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.pending.delete(id);
                reject(new GatewayError("timeout", `no answer to ${framed.type} within the time allowed`, true));
            }, this.options.requestTimeoutMs ?? 15_000);
            this.pending.set(id, { frame: framed, answers: new Set(answers), resolve, reject, timer, resend });
            if (this.state === "open" && this.socket)
                this.socket.send(JSON.stringify(framed));
            // Otherwise sent once the connection is (re)established.
        });
    }
    // ---- connection ------------------------------------------------------------------
    async open() {
        if (this.closing)
            return;
        this.setState(this.connections === 0 ? "connecting" : "reconnecting");
        if (this.network?.navigator?.onLine === false)
            return; // "online" reconnects
        let token;
        try {
            token = typeof this.options.token === "function" ? await this.options.token() : this.options.token;
        }
        catch (error) {
            this.scheduleReconnect(error);
            return;
        }
        const url = this.urls[this.urlIndex % this.urls.length];
        const socket = new this.Socket(url, PROTOCOL);
        this.socket = socket;
        this.connections += 1;
        socket.binaryType = "arraybuffer";
        socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token }));
        socket.onmessage = (event) => {
            if (typeof event.data === "string")
                this.receive(JSON.parse(event.data));
        };
        socket.onerror = () => undefined; // a close follows; handled there
        socket.onclose = (event) => {
            if (this.socket !== socket)
                return;
            this.socket = null;
            this.onClosed(event.code, event.reason);
        };
    }
    onClosed(code, reason) {
        if (this.closing)
            return;
        if (FATAL_CLOSES.has(code)) {
            const error = new GatewayError(code === 4401 ? "unauthenticated" : code === 4403 ? "forbidden" : "policy", `the gateway closed the socket (${code} ${reason}); not retrying`, false, code);
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
    scheduleReconnect(detail) {
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
    dropForOffline() {
        const socket = this.socket;
        if (this.closing || !socket)
            return;
        this.socket = null; // its close event, whenever it comes, is no longer ours
        socket.close(1000, "offline");
        this.onClosed(1006, "offline");
    }
    /** Back online: reconnect at once instead of waiting out the backoff. */
    reconnectNow() {
        if (this.closing || this.state !== "reconnecting" || this.socket)
            return;
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.attempt = 0;
        void this.open();
    }
    setState(state, detail) {
        this.state = state;
        for (const handler of this.stateHandlers)
            handler(state, detail);
    }
    requireOpen() {
        if (this.state !== "open" || !this.socket)
            throw new GatewayError("closed", "not connected", true);
        return this.socket;
    }
    failPending(error) {
        for (const [id, pending] of this.pending) {
            clearTimeout(pending.timer);
            pending.reject(error);
            this.pending.delete(id);
        }
    }
    // ---- frames ----------------------------------------------------------------------
    receive(frame) {
        switch (frame.type) {
            case "session.ready":
                this.onReady(frame);
                break;
            case "reconnect":
                this.nextDelayMs = frame.after_ms;
                break;
            case "sync.delta":
                if (this.ownPatient(frame.patient_id))
                    this.feed.delta(frame);
                break;
            case "sync.version":
                if (this.ownPatient(frame.patient_id))
                    this.feed.version(frame.version);
                break;
            case "sync.changes":
                break; // applied by the feed, which asked for them
        }
        const ref = frame.ref ?? (frame.type === "error" ? frame.error.ref : undefined);
        if (ref !== undefined && ref !== null) {
            const pending = this.pending.get(ref);
            if (pending?.resend && frame.type === "error" && frame.error.code === "rate_limited") {
                this.sendAgainLater(pending); // refused unprocessed as too fast: the same frame, later
            }
            else if (pending && (pending.answers.has(frame.type) || frame.type === "error")) {
                this.pending.delete(ref);
                clearTimeout(pending.timer);
                if (frame.type === "error") {
                    const body = frame.error;
                    pending.reject(new GatewayError(body.code, body.message, body.retryable ?? false));
                }
                else {
                    pending.resolve(frame);
                }
            }
        }
        for (const type of [frame.type, "*"]) {
            for (const handler of this.handlers.get(type) ?? [])
                handler(frame);
        }
    }
    /** A pause of one to one and a half seconds (the limit's window, spread out), then the
     * request as it was, same id; a reconnect meanwhile resends it anyway. */
    sendAgainLater(pending) {
        const id = pending.frame.id ?? "";
        setTimeout(() => {
            if (this.pending.get(id) === pending && this.state === "open")
                this.socket?.send(JSON.stringify(pending.frame));
        }, 1000 + Math.random() * 500);
    }
    onReady(frame) {
        this.session = frame;
        this.attempt = 0;
        // Resend what was not answered, under the same ids: the gateway knows replays. Before
        // the state changes, so what its handlers send goes on this connection unharmed.
        for (const [id, pending] of this.pending) {
            if (pending.resend)
                this.socket?.send(JSON.stringify(pending.frame));
            else {
                this.pending.delete(id);
                clearTimeout(pending.timer);
                pending.reject(new GatewayError("closed", "the connection was lost before the answer", true));
            }
        }
        this.setState("open");
        if (frame.role === "patient")
            this.feed.version(frame.sync_version ?? 0, true);
        this.firstReady?.resolve(frame);
        this.firstReady = null;
    }
    /** Sync frames of the session's own patient feed its replica; an observing
     * clinician's (which name observed patients) are the console's to route. */
    ownPatient(patientId) {
        return this.session?.role === "patient" && patientId === this.session.patient_id;
    }
    /** @internal */
    id(prefix = "c") {
        this.sequence += 1;
        const device = this.options.deviceId ? `${this.options.deviceId}-` : "";
        return `${prefix}-${device}${Date.now().toString(36)}-${this.sequence}`;
    }
}
/** A reply streaming in: `for await (const frame of client.chat(...))`. */
export class ChatStream {
    /** The reply's id, from the `ack` (undefined when no reply follows: a replay of an
     * answered message). */
    responseId;
    frames = [];
    wake = null;
    ended = false;
    failure = null;
    id;
    messageId; // the stored user message, from chat.message
    patientId = "";
    sent;
    unsubscribe;
    constructor(client, frame) {
        this.sent = frame;
        this.unsubscribe = client.on("*", (f) => this.take(f));
        this.responseId = client.request(frame, ["ack"], true).then((ack) => {
            this.id = ack.response_id ?? undefined;
            if (this.id === undefined)
                this.finish();
            this.frames.splice(0, this.frames.length, ...this.frames.filter((f) => f.response_id === this.id));
            this.wake?.();
            return this.id;
        }, (error) => {
            this.failure = error;
            this.finish();
            throw error;
        });
        this.responseId.catch(() => undefined);
    }
    take(frame) {
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
        if (frame.type !== "chat.delta" && frame.type !== "chat.resume" && frame.type !== "chat.done")
            return;
        if (this.id !== undefined && frame.response_id !== this.id)
            return;
        this.frames.push(frame); // before the ack only when the ack is late: filtered then
        if (frame.type === "chat.done" && frame.response_id === this.id)
            this.finish();
        this.wake?.();
    }
    /** A reply that ended while the socket was down sends no chat.done to this client; its
     * stored message (which answers ours) ends the stream instead. */
    storedReply(changes) {
        if (this.ended || this.id === undefined || this.messageId === undefined)
            return;
        for (const change of changes) {
            const data = change.data ?? {};
            if (change.entity !== "message" || data["reply_to"] !== this.messageId || !data["finish_reason"])
                continue;
            this.frames.push({
                type: "chat.done",
                patient_id: this.patientId,
                thread_id: this.sent.thread_id,
                response_id: this.id,
                message_id: change.id,
                finish_reason: data["finish_reason"],
            });
            this.finish();
            return;
        }
    }
    finish() {
        this.ended = true;
        this.unsubscribe();
        this.wake?.();
    }
    async *[Symbol.asyncIterator]() {
        await this.responseId.catch(() => undefined);
        while (true) {
            const frame = this.frames.shift();
            if (frame) {
                yield frame;
                if (frame.type === "chat.done")
                    return;
                continue;
            }
            if (this.failure)
                throw this.failure;
            if (this.ended)
                return;
            await new Promise((resolve) => (this.wake = resolve));
            this.wake = null;
        }
    }
    /** The whole reply's text and its done frame. */
    async text() {
        let text = "";
        let done = null;
        for await (const frame of this) {
            if (frame.type === "chat.delta")
                text += frame.delta;
            else if (frame.type === "chat.resume")
                text = frame.text;
            else
                done = frame;
        }
        return { text, done };
    }
}
