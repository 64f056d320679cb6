// Against real gateways: tests/test_typescript_client.py starts two gateway processes
// (PostgreSQL, Redis and a stand-in model server behind them) and runs these with
// PAINAR_GATEWAYS (their two socket URLs), PAINAR_SECRET (to sign tokens) and
// PAINAR_DRAIN_PID (the first process, which the last test drains). In file order.
import { createHmac, randomUUID } from "node:crypto";
import { strict as assert } from "node:assert";
import { test } from "node:test";
import WebSocket from "ws";

import { GatewayError, PainarClient, type SocketConstructor } from "../src/index.js";
import type { Mutation } from "../src/index.js";

const [A, B] = (process.env.PAINAR_GATEWAYS ?? "").split(",") as [string, string];
const SECRET = process.env.PAINAR_SECRET ?? "";
const WAIT_MS = 15_000;

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

function token(patientId: string, deviceId: string): string {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub: patientId, role: "patient", patient_id: patientId, device_id: deviceId };
  const payload = base64url(JSON.stringify({ ...claims, aud: "painar-gateway", iat: now, exp: now + 600 }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

function device(url: string | string[], patientId: string, deviceId: string): PainarClient {
  return new PainarClient({
    url,
    token: token(patientId, deviceId),
    deviceId,
    WebSocket: WebSocket as unknown as SocketConstructor,
    backoff: { initialMs: 50, maxMs: 500 },
  });
}

async function until(what: string, check: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function thread(id: string, title: string): Mutation {
  return { mutation_id: `t-${id}`, entity: "thread", op: "upsert", id, data: { title } };
}

function message(threadId: string, n: number): Mutation {
  const id = randomUUID();
  return {
    mutation_id: `m-${id}`,
    entity: "message",
    op: "upsert",
    id,
    data: { thread_id: threadId, role: "user", content: `note ${n}` },
  };
}

test("a refused token is not retried", async () => {
  const client = new PainarClient({
    url: A,
    token: "not-a-jwt",
    WebSocket: WebSocket as unknown as SocketConstructor,
    backoff: { initialMs: 10, maxMs: 20 },
  });
  await assert.rejects(client.connect(), (error: unknown) => {
    assert.ok(error instanceof GatewayError);
    assert.equal(error.code, "unauthenticated");
    assert.equal(error.closeCode, 4401);
    return true;
  });
  await new Promise((resolve) => setTimeout(resolve, 300)); // many backoffs' worth
  assert.equal(client.connections, 1);
  assert.equal(client.state, "closed");
});

test("two devices converge after one is cut off mid-stream", async () => {
  const patient = randomUUID();
  const threadId = randomUUID();
  const headset = device(A, patient, "headset");
  const phone = device(B, patient, "phone");
  try {
    await headset.connect();
    await phone.connect();
    await headset.push([thread(threadId, "knee")]);
    let last = 0;
    for (let n = 0; n < 30; n++) {
      if (n === 10) {
        // The phone's connection drops without a close frame, as on a lost network.
        (phone as unknown as { socket: WebSocket }).socket.terminate();
      }
      const ack = await headset.push([message(threadId, n)]);
      assert.deepEqual(ack.rejected, []);
      last = ack.version;
    }
    await until("both replicas to reach the last version", () =>
      headset.replica.applied === last && phone.replica.applied === last,
    );
    assert.ok(phone.connections >= 2, "the phone reconnected");
    assert.deepEqual(phone.replica.snapshot(), headset.replica.snapshot());
    assert.equal(phone.replica.messages.size, 30);
  } finally {
    headset.close();
    phone.close();
  }
});

test("a reply streams to the sender and to the patient's other device", async () => {
  const patient = randomUUID();
  const headset = device(A, patient, "headset");
  const phone = device(B, patient, "phone");
  try {
    await headset.connect();
    await phone.connect();
    const seen: string[] = [];
    let doneOnPhone = false;
    phone.on("chat.delta", (frame) => seen.push(frame.delta));
    phone.on("chat.done", () => (doneOnPhone = true));
    const stream = headset.chat({ threadId: randomUUID(), text: "my knee hurts" });
    const { text, done } = await stream.text();
    assert.ok(text.length > 0);
    assert.equal(done?.finish_reason, "stop");
    assert.equal(done?.response_id, await stream.responseId);
    await until("the phone to see the reply end", () => doneOnPhone);
    assert.equal(seen.join(""), text);
    const cancelled = await headset.cancel(done!.response_id);
    assert.equal(cancelled.stopped, false); // it had ended
  } finally {
    headset.close();
    phone.close();
  }
});

for (const when of ["while it still streams", "after it was stored"] as const) {
  test(`a reply cut off mid-stream still ends, reconnecting ${when}`, async () => {
    const patient = randomUUID();
    // The phone sees the reply end; the headset's next connection can wait for that.
    let replyEnded = (): void => undefined;
    const ended = new Promise<void>((resolve) => (replyEnded = resolve));
    let cut = false;
    const headset = new PainarClient({
      url: A,
      token: async () => {
        if (cut && when === "after it was stored") await ended;
        return token(patient, "headset");
      },
      WebSocket: WebSocket as unknown as SocketConstructor,
      backoff: { initialMs: 20, maxMs: 100 },
    });
    const phone = device(B, patient, "phone");
    phone.on("chat.done", () => replyEnded());
    try {
      await headset.connect();
      await phone.connect();
      const stream = headset.chat({ threadId: randomUUID(), text: "tell me about pacing" });
      const frames = stream[Symbol.asyncIterator]();
      const first = await frames.next();
      assert.equal(first.value?.type, "chat.delta");
      cut = true;
      (headset as unknown as { socket: WebSocket }).socket.terminate();
      // Still streaming: chat.resume, then the rest. Stored: no chat.done comes to this
      // client, and the stored reply (from the catch-up pull) ends the stream.
      let last = first.value;
      for (let next = await frames.next(); !next.done; next = await frames.next()) last = next.value;
      assert.equal(last?.type, "chat.done");
      assert.equal(last?.type === "chat.done" && last.finish_reason, "stop");
      assert.equal(last?.response_id, await stream.responseId);
      assert.ok(headset.connections >= 2);
    } finally {
      headset.close();
      phone.close();
    }
  });
}

test("a drain moves the client to the other process without losing a change", async () => {
  const patient = randomUUID();
  const threadId = randomUUID();
  const headset = device([A, B], patient, "headset"); // A first, then B
  const phone = device(B, patient, "phone");
  const states: string[] = [];
  headset.onState((state) => states.push(state));
  try {
    await headset.connect();
    await phone.connect();
    let last = (await phone.push([thread(threadId, "hip")])).version;
    const drained = Number(process.env.PAINAR_DRAIN_PID);
    for (let n = 0; n < 40; n++) {
      if (n === 5) process.kill(drained, "SIGTERM"); // process A drains: reconnect, 1012
      last = (await phone.push([message(threadId, n)])).version;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    await until("the headset to catch up on process B", () => headset.replica.applied === last);
    assert.ok(states.includes("reconnecting") && headset.connections >= 2);
    assert.deepEqual(headset.replica.snapshot(), phone.replica.snapshot());
    assert.equal(headset.replica.messages.size, 40);
  } finally {
    headset.close();
    phone.close();
  }
});
