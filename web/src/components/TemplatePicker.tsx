// Inserting a prompt template: pick one, fill its {{variables}} in a form, and the
// server renders the text into the composer.

import { useEffect, useState, type FormEvent } from "react";
import type { chat } from "@llmesh/client";
import { api } from "../api";
import { useApp } from "../app";
import { Link } from "../router";

export function TemplatePicker({ onClose, onInsert }: { onClose: () => void; onInsert: (text: string) => void }) {
  const { report } = useApp();
  const [templates, setTemplates] = useState<chat.Template[]>();
  const [filter, setFilter] = useState("");
  const [chosen, setChosen] = useState<chat.Template>();
  const [values, setValues] = useState<Record<string, string>>({});
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api.chat
      .listTemplates({})
      .then((r) => setTemplates(r.templates))
      .catch((err) => {
        report(err);
        setTemplates([]);
      });
  }, [report]);

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);

  async function insert(e?: FormEvent) {
    e?.preventDefault();
    if (!chosen) return;
    setBusy(true);
    try {
      const res = await api.chat.renderTemplate({ id: chosen.id, values });
      onInsert(res.text);
    } catch (err) {
      report(err);
    } finally {
      setBusy(false);
    }
  }

  const shown = (templates ?? []).filter((t) => `${t.name} ${t.category}`.toLowerCase().includes(filter.toLowerCase()));
  return (
    <div className="modal-back" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div className="modal" role="dialog" aria-modal="true" aria-label="Insert a template">
        {!chosen ? (
          <>
            <h2>Insert a template</h2>
            <input autoFocus placeholder="Filter templates" aria-label="Filter templates" value={filter} onChange={(e) => setFilter(e.target.value)} />
            <div style={{ marginTop: "0.75rem", display: "flex", flexDirection: "column", gap: "0.25rem" }}>
              {templates === undefined && <p className="muted">Loading…</p>}
              {templates?.length === 0 && (
                <p className="muted">
                  No templates yet. Create them in <Link to="/settings#templates" onClick={onClose}>Settings → Templates</Link>.
                </p>
              )}
              {shown.map((t) => (
                <button
                  key={t.id}
                  type="button"
                  style={{ textAlign: "left" }}
                  onClick={() => {
                    setChosen(t);
                    setValues(Object.fromEntries(t.variables.map((v) => [v, ""])));
                  }}
                >
                  <strong>{t.name}</strong> {t.category && <span className="badge">{t.category}</span>}
                  <div className="muted" style={{ fontSize: "0.85rem", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }}>
                    {t.body}
                  </div>
                </button>
              ))}
            </div>
            <div className="row end" style={{ marginTop: "1rem" }}>
              <button type="button" onClick={onClose}>
                Cancel
              </button>
            </div>
          </>
        ) : (
          <form onSubmit={insert}>
            <h2>{chosen.name}</h2>
            <p className="muted" style={{ whiteSpace: "pre-wrap", fontSize: "0.9rem" }}>
              {chosen.body}
            </p>
            {chosen.variables.map((v, i) => (
              <label key={v}>
                {v}
                <textarea
                  rows={2}
                  autoFocus={i === 0}
                  required
                  value={values[v] ?? ""}
                  onChange={(e) => setValues((cur) => ({ ...cur, [v]: e.target.value }))}
                />
              </label>
            ))}
            <div className="row end">
              <button type="button" onClick={() => setChosen(undefined)}>
                Back
              </button>
              <button type="submit" className="primary" disabled={busy}>
                Insert
              </button>
            </div>
          </form>
        )}
      </div>
    </div>
  );
}
