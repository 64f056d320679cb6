export class Replica {
    /** The last version applied; changes at or below it are skipped. */
    applied = 0;
    threads = new Map();
    messages = new Map();
    painReports = new Map();
    /** Apply one change (upsert replaces the entity's fields; delete removes it). */
    apply(change) {
        if (change.version <= this.applied)
            return false;
        const tables = { thread: this.threads, message: this.messages, pain_report: this.painReports };
        const table = tables[change.entity];
        if (change.op === "delete") {
            table.delete(change.id);
            if (change.entity === "thread") {
                for (const [id, message] of this.messages) {
                    if (message.data["thread_id"] === change.id)
                        this.messages.delete(id);
                }
            }
        }
        else {
            table.set(change.id, { id: change.id, version: change.version, data: { ...(change.data ?? {}) } });
        }
        this.applied = change.version;
        return true;
    }
    /** A plain, comparable picture: entity id -> data, sorted by id. */
    snapshot() {
        const plain = (table) => Object.fromEntries([...table.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([id, e]) => [id, e.data]));
        return { threads: plain(this.threads), messages: plain(this.messages), painReports: plain(this.painReports) };
    }
}
/** One patient's replica kept current: live deltas apply in version order; a gap, a
 * `sync.version` above what was applied, or a (re)connect pulls until caught up, and the
 * deltas that arrive meanwhile are replayed after. A device has one for its patient; a
 * clinician's console one per observed patient. */
export class ReplicaFeed {
    pull;
    replica = new Replica();
    pulling = false;
    held = [];
    /** Called after changes were applied (live or pulled). */
    onChange = null;
    constructor(pull) {
        this.pull = pull;
    }
    /** A live `sync.delta` of this patient. */
    delta(delta) {
        if (this.pulling) {
            this.held.push(delta);
            return;
        }
        const replica = this.replica;
        if (delta.version <= replica.applied)
            return;
        const first = delta.changes[0];
        if (first && first.version > replica.applied + 1) {
            this.held.push(delta); // a gap: what is missing comes from a pull
            this.catchUp();
            return;
        }
        for (const change of delta.changes)
            replica.apply(change);
        this.onChange?.();
    }
    /** The patient's latest version as the gateway says it (`session.ready`,
     * `observe.snapshot`, `sync.version`); `restart` after a new connection, whose earlier
     * pull (if any) is answered there or not at all. */
    version(version, restart = false) {
        if (restart)
            this.pulling = false;
        if (version > this.replica.applied)
            this.catchUp();
    }
    /** Pull from the replica's version until the gateway has nothing more, then replay
     * the deltas that arrived meanwhile. */
    catchUp() {
        if (this.pulling)
            return;
        this.pulling = true;
        const step = async () => {
            const page = await this.pull(this.replica.applied);
            for (const change of page.changes)
                this.replica.apply(change);
            this.onChange?.();
            if (page.has_more)
                return step();
        };
        step()
            .then(() => {
            this.pulling = false;
            for (const delta of this.held.splice(0))
                this.delta(delta);
        })
            .catch(() => {
            this.pulling = false; // the next ready or sync.version pulls again
        });
    }
}
