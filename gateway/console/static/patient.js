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
