import { lazy, StrictMode, Suspense, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { AppProvider, Notices, ROLE_ADMIN, useApp } from "./app";
import { Link, match, navigate, usePath } from "./router";
import { SignIn } from "./pages/SignIn";
import { ChatPage } from "./pages/Chat";
import "./styles.css";

// Screens other than chat load on first visit, keeping the first page small.
const Settings = lazy(() => import("./pages/Settings"));
const Usage = lazy(() => import("./pages/Usage"));
const Admin = lazy(() => import("./pages/Admin"));
const Sandbox = lazy(() => import("./pages/Sandbox"));
const Knowledge = lazy(() => import("./pages/Knowledge"));
const Docs = lazy(() => import("./pages/Docs"));

function Shell() {
  const { me, loading, signOut } = useApp();
  const path = usePath();
  const [menuOpen, setMenuOpen] = useState(false);

  useEffect(() => setMenuOpen(false), [path]);

  if (loading) return <div className="splash">Loading…</div>;
  // The API reference is public: it documents what the server answers, not anyone's data.
  if (!me && path === "/docs")
    return (
      <Suspense fallback={<div className="splash">Loading…</div>}>
        <Docs />
      </Suspense>
    );
  if (!me) return <SignIn />;

  const isAdmin = me.role === ROLE_ADMIN;
  const chat = match("/c/:id", path);
  const collection = match("/knowledge/:id", path);
  let page: React.ReactNode;
  if (path === "/" || chat) page = <ChatPage conversationId={chat?.id} />;
  else if (path.startsWith("/settings")) page = <Settings />;
  else if (path === "/usage") page = <Usage />;
  else if (path === "/sandbox") page = <Sandbox />;
  else if (path === "/docs") page = <Docs />;
  else if (path === "/knowledge" || collection) page = <Knowledge collectionId={collection?.id} />;
  else if (path.startsWith("/admin") && isAdmin) page = <Admin />;
  else {
    navigate("/", true);
    page = null;
  }
  const nav = [
    { to: "/", label: "Chat", active: path === "/" || !!chat },
    { to: "/knowledge", label: "Knowledge", active: path === "/knowledge" || !!collection },
    { to: "/sandbox", label: "Sandbox", active: path === "/sandbox" },
    { to: "/usage", label: "Usage", active: path === "/usage" },
    { to: "/settings", label: "Settings", active: path.startsWith("/settings") },
    { to: "/docs", label: "API", active: path === "/docs" },
    ...(isAdmin ? [{ to: "/admin", label: "Admin", active: path.startsWith("/admin") }] : []),
  ];
  return (
    <div className="shell">
      <header className="topbar">
        <Link to="/" className="brand">
          <img src="/favicon.svg" alt="" width={24} height={24} />
          <span>llmesh</span>
        </Link>
        <button
          type="button"
          className="menu-btn"
          aria-label="Menu"
          aria-expanded={menuOpen}
          onClick={() => setMenuOpen((o) => !o)}
        >
          ☰
        </button>
        <nav className={menuOpen ? "open" : ""} aria-label="Main">
          {nav.map((n) => (
            <Link key={n.to} to={n.to} className={n.active ? "active" : ""}>
              {n.label}
            </Link>
          ))}
          <span className="who" title={me.email}>
            {me.displayName || me.email}
          </span>
          <button type="button" className="ghost" onClick={() => void signOut()}>
            Sign out
          </button>
        </nav>
      </header>
      <Suspense fallback={<div className="splash">Loading…</div>}>{page}</Suspense>
    </div>
  );
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <AppProvider>
      <Shell />
      <Notices />
    </AppProvider>
  </StrictMode>,
);
