// The patient's page: a stand-in for the headset. Threads, a message box with an optional
// body-map region, replies streaming in, a push-to-talk microphone, and everything the
// patient's other devices write, live.
import { Conversation } from "./conversation.js";
import { Recorder } from "./recorder.js";
import { bodyMap } from "./regions.js";

/**
 * @param {import("./client/index.js").PainarClient} client connected with a patient token
 * @param {HTMLElement} section
 * @param {(message: string) => void} alert
 */
export function patientView(client, section, alert) {
  const patientId = client.session.patient_id;
  const conversation = new Conversation(section.querySelector("[data-conversation]"), client.feed, {
    viewer: "patient",
  });
  conversation.el.composerSlot.replaceChildren(document.getElementById("composer-template").content.cloneNode(true));
  const form = section.querySelector("[data-composer]");
  const text = form.querySelector("#message");
  const region = form.querySelector("#region");
  const microphone = form.querySelector("[data-microphone]");
  const voiceStatus = form.querySelector("[data-voice-status]");
  const clearRegion = bodyMap(region, form.querySelector("[data-body-map]"));
  const intensity = form.querySelector("#intensity");
  for (let n = 0; n <= 10; n++) intensity.append(new Option(String(n), String(n)));
  intensity.value = "5";
  const recorder = new Recorder(client, (status) => (voiceStatus.textContent = status));

  // The client's own replica takes this patient's sync frames; the rest is shown here.
  client.on("*", (frame) => {
    if (frame.type === "session.ready") conversation.clearStreams();
    else if (frame.patient_id === patientId && !frame.type.startsWith("sync.")) conversation.take(frame);
    if (frame.type === "audio.transcript") {
      voiceStatus.textContent = frame.text ? `Heard: “${frame.text}”` : "Heard nothing: try again";
    }
  });

  const threadForWriting = () => {
    const current = conversation.currentThread();
    if (current) return current;
    const fresh = crypto.randomUUID(); // an id the gateway does not know starts a thread
    conversation.select(fresh);
    return fresh;
  };

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = text.value.trim();
    if (!message) return;
    const threadId = threadForWriting();
    const reply = client.chat({ threadId, text: message, ...(region.value ? { svgPath: region.value } : {}) });
    text.value = "";
    clearRegion();
    reply.responseId.catch((error) => {
      if (!text.value) text.value = message; // not stored: give it back to resend
      alert(`Not sent: ${error.message}`);
    });
  });

  // A pain report: the number on the 0-10 scale and, when marked, where (the body map).
  form.querySelector("[data-report-pain]").addEventListener("click", () => {
    const id = crypto.randomUUID();
    const data = { intensity: Number(intensity.value) };
    if (region.value) {
      data.svg_path = region.value;
      data.region = region.selectedOptions[0].text;
    }
    const thread = conversation.currentThread();
    if (thread && client.replica.threads.has(thread)) data.thread_id = thread;
    client
      .push([{ mutation_id: `pain-${id}`, entity: "pain_report", op: "upsert", id, data }])
      .then((ack) => {
        const [rejected] = ack.rejected;
        if (rejected) alert(`Pain report not recorded: ${rejected.message}`);
      })
      .catch((error) => alert(`Pain report not recorded: ${error.message}`));
  });

  form.querySelector("[data-new-thread]").addEventListener("click", () => {
    conversation.select(crypto.randomUUID());
    text.focus();
  });

  microphone.addEventListener("click", async () => {
    const recording = recorder.active;
    microphone.disabled = true;
    try {
      if (recording) {
        setMicrophone(false);
        await recorder.stop();
      } else {
        await recorder.start(threadForWriting());
        setMicrophone(true);
      }
    } catch (error) {
      setMicrophone(false);
      voiceStatus.textContent = "";
      alert(`Voice: ${error.message}`);
    } finally {
      microphone.disabled = false;
    }
  });

  function setMicrophone(on) {
    microphone.setAttribute("aria-pressed", String(on));
    microphone.textContent = on ? "Stop speaking" : "Start speaking";
  }
}
