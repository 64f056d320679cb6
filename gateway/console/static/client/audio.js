// The binary audio frame: 16 bytes stream_id (the UUID's bytes in network order), 4 bytes
// seq (unsigned 32-bit, big-endian), then the audio bytes (docs/protocol.md).
export function uuidBytes(uuid) {
    const hex = uuid.replaceAll("-", "");
    if (!/^[0-9a-fA-F]{32}$/.test(hex))
        throw new Error(`not a UUID: ${uuid}`);
    const bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++)
        bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    return bytes;
}
export function audioFrame(streamId, seq, audio) {
    if (!Number.isInteger(seq) || seq < 0 || seq > 0xffffffff)
        throw new Error(`seq out of range: ${seq}`);
    const frame = new Uint8Array(20 + audio.length);
    frame.set(uuidBytes(streamId), 0);
    new DataView(frame.buffer).setUint32(16, seq, false);
    frame.set(audio, 20);
    return frame;
}
