#!/usr/bin/env node
// Links an OpenRouter account through convocationsd, as a Convocations frontend would: find the daemon's
// socket, subscribe to the login's outcome, start (or join) a login, print the address to open, and wait
// for `openrouter-auth-complete`. Plain Node.js 18 or later, no npm packages; the protocol is
// docs/protocol.md.
//
//   node examples/node/login.mjs [--restart]
//
// Exit codes as convctl's: 0 linked, 1 the login failed, 3 the daemon cannot be reached.

import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const APP = "convocations";
const SOCKET_NAME = "convocationsd.sock";

// docs/protocol.md, "Finding the socket", step by step.
function socketPath(env = process.env) {
  if (env.CONVOCATIONS_SOCKET) return env.CONVOCATIONS_SOCKET;
  const configured = configuredSocket(readText(configPath(env)));
  if (configured) return configured;
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, APP, SOCKET_NAME);
  if (process.platform === "darwin") {
    return path.join(os.homedir(), "Library", "Caches", "TemporaryItems", APP, SOCKET_NAME);
  }
  const uid = process.geteuid();
  const runUser = { freebsd: "/var/run/user", netbsd: "/var/run/user", openbsd: "/tmp/run/user" }[process.platform];
  const base = path.join(runUser ?? "/run/user", String(uid));
  if (isPrivateDir(base, uid)) return path.join(base, APP, SOCKET_NAME);
  return path.join(tempRoot(env), `runtime-${uid}`, APP, SOCKET_NAME);
}

function configPath(env) {
  if (env.CONVOCATIONS_CONFIG) return env.CONVOCATIONS_CONFIG;
  const xdg = env.XDG_CONFIG_HOME;
  let base = path.join(os.homedir(), ".config");
  if (xdg && path.isAbsolute(xdg)) base = xdg;
  else if (process.platform === "darwin") base = path.join(os.homedir(), "Library", "Application Support");
  return path.join(base, APP, "config.toml");
}

function readText(file) {
  try {
    return fs.readFileSync(file, "utf8");
  } catch {
    return ""; // no config.toml (or none we may read): the step does not apply
  }
}

// config.toml's top-level `socket` in the simple form protocol.md asks of a client without a TOML parser: a
// line `socket = "..."` (JSON's escapes) or `socket = '...'` above the first [table]; a leading ~/ is the home
// directory. Anything else is not found here: a real app would use a TOML package.
function configuredSocket(text) {
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("[")) return null; // settings end where the first table begins
    const m = /^socket\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*')/.exec(line);
    if (!m) continue;
    let value;
    try {
      value = m[1].startsWith("'") ? m[1].slice(1, -1) : JSON.parse(m[1]);
    } catch {
      return null; // an escape JSON does not know (\U, \e): not the simple form
    }
    if (!value) return null; // as the daemon: an empty value is no value
    if (value === "~" || value.startsWith("~/")) return path.join(os.homedir(), value.slice(1));
    return value;
  }
  return null;
}

function isPrivateDir(dir, uid) {
  try {
    const st = fs.lstatSync(dir); // lstat: a symlink does not count
    return st.isDirectory() && st.uid === uid && (st.mode & 0o777) === 0o700;
  } catch {
    return false;
  }
}

function tempRoot(env) {
  const candidates = [env.TMPDIR, env.TEMP, env.TMP].filter((d) => d && path.isAbsolute(d));
  for (const dir of [...candidates, "/tmp", "/var/tmp", "/usr/tmp"]) {
    try {
      if (fs.statSync(dir).isDirectory()) {
        fs.accessSync(dir, fs.constants.W_OK);
        return dir;
      }
    } catch {
      // not there or not writable: the next one
    }
  }
  return "/tmp";
}

// A JSON-RPC 2.0 client over one connection: one JSON value per line, replies matched by id.
class Daemon {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 0;
    this.pending = new Map(); // id -> {resolve, reject}
    this.onEvent = () => {};
    this.onClose = () => {};
    let buffered = "";
    socket.setEncoding("utf8");
    socket.on("data", (chunk) => {
      buffered += chunk;
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (line.trim()) this.receive(JSON.parse(line));
      }
    });
    socket.on("close", () => {
      for (const { reject } of this.pending.values()) reject(new Error("the daemon closed the connection"));
      this.pending.clear();
      this.onClose();
    });
  }

  static connect(file) {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(file);
      socket.once("connect", () => resolve(new Daemon(socket)));
      socket.once("error", reject);
    });
  }

  receive(message) {
    if (message.method === "event") {
      this.onEvent(message.params); // {event, seq, data}
      return;
    }
    const waiting = this.pending.get(message.id);
    if (!waiting) return; // e.g. the refusal a client of another user gets, with "id": null
    this.pending.delete(message.id);
    if (message.error) {
      const err = new Error(message.error.message);
      err.hint = message.error.data?.hint ?? "";
      waiting.reject(err);
    } else {
      waiting.resolve(message.result);
    }
  }

  call(method, params) {
    const id = ++this.nextId;
    const request = { jsonrpc: "2.0", id, method };
    if (params) request.params = params;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.socket.write(JSON.stringify(request) + "\n");
    });
  }

  close() {
    this.socket.end();
  }
}

async function main() {
  const file = socketPath();
  let daemon;
  try {
    daemon = await Daemon.connect(file);
  } catch (err) {
    console.error(`The convocationsd daemon is not running (nothing listens on ${file}: ${err.code}).`);
    console.error("Start it with `convocationsd` (or `systemctl --user start convocationsd.socket`).");
    return 3;
  }
  const events = [];
  let wake = () => {};
  daemon.onEvent = (event) => {
    events.push(event);
    wake();
  };
  let closed = false;
  daemon.onClose = () => {
    closed = true;
    wake();
  };

  try {
    await daemon.call("subscribe", { events: ["openrouter-auth-complete"] });
    // Its reply comes before any event it causes, so the session id is known before its outcome arrives.
    const login = await daemon.call("oauth.start", { restart: process.argv.includes("--restart") });
    console.log(login.joined ? "Joined the login already in progress." : "Started a login.");
    console.log(`Open this address to link your OpenRouter account:\n\n  ${login.auth_url}\n`);
    console.log("Waiting for you to approve in the browser...");
    for (;;) {
      const done = events.find((e) => e.data.session_id === login.session_id);
      if (done) {
        const { success, backend, error } = done.data;
        if (success) {
          console.log(`Linked. Your OpenRouter key is stored in ${backend}.`);
          return 0;
        }
        console.error(`${error.message} ${error.hint}`);
        return 1;
      }
      if (closed) {
        console.error("The daemon closed the connection before the login ended; run this again.");
        return 3;
      }
      await new Promise((resolve) => (wake = resolve));
    }
  } catch (err) {
    console.error(`${err.message} ${err.hint ?? ""}`.trim());
    return 1;
  } finally {
    daemon.close();
  }
}

process.exitCode = await main();
