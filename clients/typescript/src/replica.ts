// A device's local copy of the patient's threads and messages, fed only by changes
// (sync.delta, sync.changes) in version order: what the protocol's sync loop keeps.
import type { Change } from "./protocol.js";

export interface Entity {
  id: string;
  version: number;
  data: Record<string, unknown>;
}

export class Replica {
  /** The last version applied; changes at or below it are skipped. */
  applied = 0;
  readonly threads = new Map<string, Entity>();
  readonly messages = new Map<string, Entity>();

  /** Apply one change (upsert replaces the entity's fields; delete removes it). */
  apply(change: Change): boolean {
    if (change.version <= this.applied) return false;
    const table = change.entity === "thread" ? this.threads : this.messages;
    if (change.op === "delete") {
      table.delete(change.id);
      if (change.entity === "thread") {
        for (const [id, message] of this.messages) {
          if (message.data["thread_id"] === change.id) this.messages.delete(id);
        }
      }
    } else {
      table.set(change.id, { id: change.id, version: change.version, data: { ...(change.data ?? {}) } });
    }
    this.applied = change.version;
    return true;
  }

  /** A plain, comparable picture: entity id -> data, sorted by id. */
  snapshot(): { threads: Record<string, unknown>; messages: Record<string, unknown> } {
    const plain = (table: Map<string, Entity>) =>
      Object.fromEntries([...table.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, e]) => [id, e.data]));
    return { threads: plain(this.threads), messages: plain(this.messages) };
  }
}
