// Chooses the knowledge collections a conversation or an assistant draws on: every
// collection the person can read, as checkboxes. Where the server has no knowledge bases
// (Postgres without pgvector) it says so instead.

import { useEffect, useState } from "react";
import { Code, ConnectError, describeError, type knowledge } from "@llmesh/client";
import { api } from "../api";
import { Link } from "../router";

/** At most this many per conversation or assistant (the server's limit). */
const MAX = 20;

export function CollectionPicker({ value, onChange, disabled }: { value: string[]; onChange: (ids: string[]) => void; disabled?: boolean }) {
  const [collections, setCollections] = useState<knowledge.Collection[]>();
  const [error, setError] = useState<string>();
  // A choice shows at once; `value` catches up when the owner has saved it (a
  // conversation's update is a round trip to the server).
  const [chosen, setChosen] = useState(value);
  useEffect(() => setChosen(value), [value]);
  useEffect(() => {
    api.knowledge
      .listCollections({})
      .then((r) => setCollections(r.collections))
      .catch((err) => setError(err instanceof ConnectError && err.code === Code.FailedPrecondition ? err.rawMessage : describeError(err)));
  }, []);
  if (error) return <p className="muted">{error}</p>;
  if (!collections) return <p className="muted">Loading collections…</p>;
  // Attached collections no longer readable (unshared, deleted) stay listed so they can be removed.
  const gone = chosen.filter((id) => !collections.some((c) => c.id === id));
  if (collections.length === 0 && gone.length === 0) {
    return (
      <p className="muted">
        No collections yet. <Link to="/knowledge">Add documents under Knowledge</Link>, then attach them here.
      </p>
    );
  }
  const toggle = (id: string, on: boolean) => {
    const next = on ? [...chosen, id] : chosen.filter((v) => v !== id);
    setChosen(next);
    onChange(next);
  };
  return (
    <fieldset className="collection-picker" disabled={disabled}>
      <legend>Knowledge</legend>
      {collections.map((c) => (
        <label key={c.id} className="row">
          <input
            type="checkbox"
            checked={chosen.includes(c.id)}
            disabled={!chosen.includes(c.id) && chosen.length >= MAX}
            onChange={(e) => toggle(c.id, e.target.checked)}
          />
          {c.name}
          <span className="muted">
            {c.documents} {c.documents === 1 ? "document" : "documents"}
            {!c.writable && " · shared with you"}
          </span>
        </label>
      ))}
      {gone.map((id) => (
        <label key={id} className="row">
          <input type="checkbox" checked onChange={() => toggle(id, false)} />
          <span className="muted">a collection you can no longer read</span>
        </label>
      ))}
    </fieldset>
  );
}
