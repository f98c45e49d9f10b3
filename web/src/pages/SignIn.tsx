import { useEffect, useState, type FormEvent } from "react";
import { describeError, type auth } from "@llmesh/client";
import { api, session, toTokens } from "../api";
import { useApp } from "../app";

export function SignIn() {
  const { setMe, signedOutReason } = useApp();
  const [mode, setMode] = useState<"signin" | "register">("signin");
  const [info, setInfo] = useState<auth.GetSignUpInfoResponse>();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api.auth
      .getSignUpInfo({})
      .then((i) => {
        setInfo(i);
        if (i.firstUserBecomesAdmin && i.registrationOpen) setMode("register");
      })
      .catch((err) => setError(describeError(err)));
  }, []);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setError(undefined);
    if (mode === "register" && password.length < 10) {
      setError("Use a password of at least 10 characters.");
      return;
    }
    setBusy(true);
    try {
      if (mode === "register") {
        await api.auth.register({ email, password, displayName: name });
      }
      const res = await api.auth.login({ email, password });
      session.set(toTokens(res.tokens));
      setMe(res.user);
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  }

  const registering = mode === "register";
  return (
    <main className="auth-page">
      <form className="auth-card" onSubmit={submit} aria-label={registering ? "Create account" : "Sign in"}>
        <div className="brand big">
          <img src="/favicon.svg" alt="" width={36} height={36} /> llmesh
        </div>
        <h1>{registering ? "Create your account" : "Sign in"}</h1>
        {signedOutReason && !error && <p className="banner info">{signedOutReason}</p>}
        {registering && info?.firstUserBecomesAdmin && (
          <p className="banner info" data-testid="first-admin">
            You are the first person here: this account becomes the <strong>administrator</strong>. It can
            manage users, models, prices and credits.
          </p>
        )}
        {registering && info && !info.registrationOpen && (
          <p className="banner">Registration is closed on this server. Ask an administrator for an account.</p>
        )}
        <label>
          Email
          <input type="email" autoComplete="email" required maxLength={254} value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        {registering && (
          <label>
            Display name <span className="muted">(optional)</span>
            <input autoComplete="name" maxLength={100} value={name} onChange={(e) => setName(e.target.value)} />
          </label>
        )}
        <label>
          Password
          <input
            type="password"
            autoComplete={registering ? "new-password" : "current-password"}
            required
            minLength={registering ? 10 : undefined}
            maxLength={1024}
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          {registering && <span className="hint">At least 10 characters.</span>}
        </label>
        {error && (
          <p className="banner error" role="alert">
            {error}
          </p>
        )}
        <button className="primary" type="submit" disabled={busy}>
          {busy ? "Please wait…" : registering ? "Create account" : "Sign in"}
        </button>
        <p className="switch">
          {registering ? (
            <>
              Have an account?{" "}
              <button type="button" className="link" onClick={() => setMode("signin")}>
                Sign in
              </button>
            </>
          ) : (
            info?.registrationOpen !== false && (
              <>
                New here?{" "}
                <button type="button" className="link" onClick={() => setMode("register")}>
                  Create an account
                </button>
              </>
            )
          )}
        </p>
      </form>
    </main>
  );
}
