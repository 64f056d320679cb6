export { PainarClient, ChatStream, GatewayError } from "./client.js";
export type { ClientOptions, FrameOf, FrameType, SocketConstructor, SocketLike, State } from "./client.js";
export { Replica, ReplicaFeed } from "./replica.js";
export type { Entity } from "./replica.js";
export { audioFrame, uuidBytes } from "./audio.js";
export type * from "./protocol.js";
