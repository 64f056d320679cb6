// The console's entry: a token pasted into the form opens the socket (the token goes in
// the first frame, never in a URL); the session's role picks the view.
import { PainarClient } from "./client/index.js";
import { clinicianView } from "./clinician.js";
import { patientView } from "./patient.js";

const STATES = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Connection lost: reconnecting…",
  closed: "Not connected",
};

const alertBox = document.getElementById("alert");
const connection = document.getElementById("connection");
const disconnect = document.getElementById("disconnect");
const signIn = document.getElementById("sign-in");
const form = document.getElementById("connect-form");

function alert(message) {
  alertBox.textContent = message;
}

function socketUrl() {
  const url = new URL("/v1/ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = form.elements.token.value.trim();
  if (!token) return;
  alert("");
  const client = new PainarClient({ url: socketUrl(), token, backoff: { initialMs: 250, maxMs: 5000 } });
  client.onState((state) => {
    connection.textContent = STATES[state];
    connection.dataset.state = state;
  });
  // Errors that answer no request of ours: a refused token, an ended observation…
  client.on("error", (frame) => {
    if (!frame.error.ref && !frame.error.patient_id) alert(frame.error.message);
  });
  let ready;
  try {
    ready = await client.connect();
  } catch (error) {
    if (!alertBox.textContent) alert(error.message);
    return;
  }
  form.elements.token.value = "";
  signIn.hidden = true;
  disconnect.hidden = false;
  disconnect.addEventListener("click", () => {
    client.close();
    location.reload(); // back to the sign-in form, nothing of the session kept
  });
  const section = document.getElementById(`${ready.role}-view`);
  section.hidden = false;
  if (ready.role === "patient") patientView(client, section, alert);
  else clinicianView(client, section, token, alert);
  section.querySelector("h2").focus();
});
