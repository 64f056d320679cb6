export { PainarClient, ChatStream, GatewayError } from "./client.js";
export { Replica, ReplicaFeed } from "./replica.js";
export { audioFrame, uuidBytes } from "./audio.js";
