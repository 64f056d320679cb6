// Push-to-talk: the microphone recorded with MediaRecorder (WebM/Opus, as browsers write
// it) and sent as binary audio frames while it records; stopping commits the stream, and
// the transcript (then the reply) comes to every device of the patient.

const CHUNK_MS = 250; // one binary frame per quarter second (a few hundred bytes of Opus)

export class Recorder {
  /**
   * @param {import("./client/index.js").PainarClient} client
   * @param {(text: string) => void} status shows what the recorder is doing
   */
  constructor(client, status) {
    this.client = client;
    this.status = status;
    this.recording = null;
  }

  get active() {
    return this.recording !== null;
  }

  async start(threadId) {
    if (this.recording) return;
    if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
      throw new Error("this browser cannot record audio");
    }
    const mimeType = "audio/webm;codecs=opus";
    if (!MediaRecorder.isTypeSupported(mimeType)) throw new Error("this browser cannot record WebM/Opus");
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    const streamId = crypto.randomUUID();
    try {
      await this.client.startAudio({ streamId, threadId, format: "webm" });
    } catch (error) {
      for (const track of media.getTracks()) track.stop();
      throw error;
    }
    const recorder = new MediaRecorder(media, { mimeType });
    const recording = { streamId, recorder, media, seq: 0, sends: [], started: performance.now(), timer: 0, lost: null };
    recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size === 0) return;
      const seq = recording.seq++; // numbered in the order recorded, whatever the reads' order
      recording.sends.push(
        event.data.arrayBuffer().then((buffer) => {
          try {
            this.client.sendAudio(streamId, seq, new Uint8Array(buffer));
          } catch (error) {
            recording.lost = error; // the socket dropped: this stream is gone with it
          }
        }),
      );
    });
    recording.timer = setInterval(() => this.showElapsed(recording), 100);
    recorder.start(CHUNK_MS);
    this.recording = recording;
    this.showElapsed(recording);
  }

  showElapsed(recording) {
    const seconds = (performance.now() - recording.started) / 1000;
    this.status(`Recording… ${seconds.toFixed(1)} s`);
  }

  /** Stop recording and commit: resolves once the gateway has started transcribing. */
  async stop() {
    const recording = this.recording;
    if (!recording) return;
    this.recording = null;
    clearInterval(recording.timer);
    const stopped = new Promise((resolve) => recording.recorder.addEventListener("stop", resolve, { once: true }));
    recording.recorder.stop(); // the last dataavailable comes before "stop"
    await stopped;
    for (const track of recording.media.getTracks()) track.stop();
    await Promise.all(recording.sends);
    if (recording.lost) throw new Error("the connection dropped while recording: speak again");
    this.status("Transcribing…");
    await this.client.commitAudio(recording.streamId);
  }
}
