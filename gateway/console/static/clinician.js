// The clinician's page: the patients on their care team, and a read-only pane for each one
// observed (several at once), kept current live and caught up after a reconnect.
import { ReplicaFeed } from "./client/index.js";
import { Conversation } from "./conversation.js";

/**
 * @param {import("./client/index.js").PainarClient} client connected with a clinician token
 * @param {HTMLElement} section
 * @param {string} token for the care-team list (sent as a header, never in a URL)
 * @param {(message: string) => void} alert
 */
export function clinicianView(client, section, token, alert) {
  const panes = new Map(); // patient_id -> { element, conversation, feed }
  const paneList = section.querySelector("#panes");
  const team = section.querySelector("#team");
  const observeForm = section.querySelector("#observe-form");
  const observeId = observeForm.querySelector("#observe-id");

  async function listTeam() {
    const response = await fetch("/v1/care-team", { headers: { Authorization: `Bearer ${token}` } });
    const body = await response.json();
    if (!response.ok) {
      alert(`Care team: ${body.error?.message ?? response.status}`);
      return;
    }
    if (body.patients.length === 0) {
      const li = document.createElement("li");
      li.textContent = "No patient on your care team yet.";
      team.replaceChildren(li);
      return;
    }
    team.replaceChildren(
      ...body.patients.map((grant) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = `Observe patient ${short(grant.patient_id)}`;
        button.dataset.patientId = grant.patient_id;
        button.addEventListener("click", () => observe(grant.patient_id));
        const until = document.createElement("span");
        until.className = "hint";
        until.textContent = grant.expires_at ? ` until ${new Date(grant.expires_at).toLocaleString()}` : "";
        li.append(button, until);
        return li;
      }),
    );
  }

  function observe(patientId) {
    const existing = panes.get(patientId);
    if (existing) {
      existing.element.querySelector("h3").focus();
      return;
    }
    const element = document.createElement("section");
    element.className = "pane";
    element.dataset.patientId = patientId;
    const heading = document.createElement("h3");
    heading.id = `pane-${patientId}`;
    heading.tabIndex = -1;
    heading.textContent = `Patient ${short(patientId)}`;
    heading.title = patientId;
    element.setAttribute("aria-labelledby", heading.id);
    const stop = document.createElement("button");
    stop.type = "button";
    stop.textContent = "Stop observing";
    stop.setAttribute("aria-describedby", heading.id);
    const body = document.createElement("div");
    element.append(heading, stop, body);
    paneList.append(element);
    const feed = new ReplicaFeed((since) => client.pull(since, undefined, patientId));
    const conversation = new Conversation(body, feed, { viewer: "clinician" });
    const pane = { element, conversation, feed };
    panes.set(patientId, pane);
    stop.addEventListener("click", () => {
      close(patientId);
      client.unobserve(patientId).catch(() => undefined); // the socket's end unobserves too
    });
    start(patientId, pane);
  }

  function start(patientId, pane) {
    client.observe(patientId).catch((error) => {
      if (panes.get(patientId) !== pane) return;
      close(patientId);
      alert(`Cannot observe patient ${patientId}: ${error.message}`);
    });
  }

  function close(patientId) {
    panes.get(patientId)?.element.remove();
    panes.delete(patientId);
  }

  client.on("*", (frame) => {
    if (frame.type === "error" && frame.error.patient_id && !frame.error.ref) {
      // The grant was revoked or ran out: the gateway ended the observation.
      close(frame.error.patient_id);
      alert(`Observation of patient ${frame.error.patient_id} ended: ${frame.error.message}`);
      return;
    }
    const pane = frame.patient_id ? panes.get(frame.patient_id) : undefined;
    if (!pane) return;
    if (frame.type === "observe.snapshot") {
      pane.conversation.clearStreams(); // chat.resume frames follow for what still streams
      pane.feed.version(frame.sync_version, true);
    } else {
      pane.conversation.take(frame);
    }
  });

  // Observations belong to a connection: after a reconnect, observe again; each snapshot
  // then pulls what changed meanwhile into the pane's replica (nothing twice).
  let connections = client.connections;
  client.onState((state) => {
    if (state !== "open" || client.connections === connections) return;
    connections = client.connections;
    for (const [patientId, pane] of panes) start(patientId, pane);
  });

  observeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const patientId = observeId.value.trim().toLowerCase();
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(patientId)) {
      alert("Patient ID: must be a UUID such as 3f2b9c1e-…");
      return;
    }
    observeId.value = "";
    observe(patientId);
  });

  listTeam().catch((error) => alert(`Care team: ${error.message}`));
}

function short(uuid) {
  return uuid.slice(0, 8);
}
