#!/usr/bin/env node
// An independent verifier of audiencematch's audit log and proofs, written
// from docs/AUDITORS.md alone, in another language and with nothing but
// node's standard library (crypto, fs). The Go test suite runs it beside
// `audit verify` and `audit check-proof` on honest and tampered states and
// requires that they agree.
//
//   node scripts/verify-audit.mjs verify --state DIR --verifier KEY --delivery DIR
//        (DIR: the delivery root, or a local copy of an object store's:
//        this verifier reads local files only)
//        [--witness KEY]... [--min-witnesses N] [--now RFC3339]
//   node scripts/verify-audit.mjs check-proof FILE --verifier KEY [--witness KEY]...
//
// Exit 0 and "ok: ..." when everything it checks holds; exit 1 and
// "FAIL: <reason>" otherwise; 2 for a usage error. It does not read
// Parquet (node has no reader in its standard library), so it does not
// rebuild the identifier and evidence trees from the files: it checks
// every byte of the log, the checkpoint and its cosignatures, every
// record's canonical form and fields, the run ids and published paths, the
// manifests, every published file's SHA-256 and the exact set of files,
// the delivery chain's links, that nothing unrecorded is published, and,
// for proofs, every Merkle proof down to the identifier and evidence
// leaves (docs/AUDITORS.md, "What the second implementation checks").

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

class Fail extends Error {}
const fail = (msg) => { throw new Fail(msg); };
const sha256 = (...parts) => { const h = crypto.createHash("sha256"); for (const p of parts) h.update(p); return h.digest(); };
const hex = (b) => Buffer.from(b).toString("hex");

// ---- signed notes (C2SP signed-note, tlog-checkpoint, tlog-cosignature) ----

// parseVerifierKey: "<name>+<8 hex key hash>+<base64(type || 32-byte key)>",
// the key hash being SHA-256(name || "\n" || type || key)[:4].
function parseVerifierKey(vkey, wantType) {
  // Split at the first two "+": the base64 may hold more.
  const t = vkey.trim(), i = t.indexOf("+"), j = t.indexOf("+", i + 1);
  if (i <= 0 || j !== i + 9) fail(`malformed verifier key ${vkey}`);
  const [name, hash, b64] = [t.slice(0, i), t.slice(i + 1, j), t.slice(j + 1)];
  const key = Buffer.from(b64, "base64");
  if (key.length !== 33 || key[0] !== wantType || key.toString("base64") !== b64) fail(`verifier key ${name}: not a type 0x0${wantType} Ed25519 key`);
  if (hex(sha256(Buffer.from(name + "\n"), key).subarray(0, 4)) !== hash) fail(`verifier key ${name}: its hash does not match`);
  const pub = crypto.createPublicKey({ key: Buffer.concat([Buffer.from("302a300506032b6570032100", "hex"), key.subarray(1)]), format: "der", type: "spki" });
  return { name, hash: Buffer.from(hash, "hex"), pub };
}

// parseNote: text (ending in "\n"), a blank line, then lines "— <name> <base64>".
function parseNote(bytes) {
  const s = bytes.toString("utf8");
  const i = s.lastIndexOf("\n\n");
  if (i < 0 || !s.endsWith("\n")) fail("checkpoint: not a signed note");
  const text = s.slice(0, i + 1);
  const sigs = s.slice(i + 2, -1).split("\n").map((line) => {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) fail(`checkpoint: malformed signature line ${JSON.stringify(line)}`);
    const raw = Buffer.from(m[2], "base64");
    if (raw.toString("base64") !== m[2]) fail(`checkpoint: signature of ${m[1]} is not canonical base64`);
    return { name: m[1], raw };
  });
  return { text, sigs };
}

// checkCheckpoint: the log's signature over the text, and the text's three
// lines: origin (the key's name), size, root hash in base64.
function checkCheckpoint(bytes, logKey) {
  const note = parseNote(bytes);
  const sig = note.sigs.find((s) => s.name === logKey.name && s.raw.subarray(0, 4).equals(logKey.hash));
  if (!sig || sig.raw.length !== 68 || !crypto.verify(null, Buffer.from(note.text), logKey.pub, sig.raw.subarray(4))) fail("checkpoint: the log's signature does not verify");
  const lines = note.text.split("\n");
  if (lines.length !== 4 || lines[0] !== logKey.name || !/^(0|[1-9][0-9]*)$/.test(lines[1])) fail("checkpoint: malformed text");
  const root = Buffer.from(lines[2], "base64");
  if (root.length !== 32) fail("checkpoint: malformed root hash");
  return { note, size: Number(lines[1]), root };
}

// cosigners: witnesses (0x04 keys) whose cosignature/v1 verifies: the
// signature is 4-byte key hash, 8-byte big-endian time t, Ed25519 over
// "cosignature/v1\ntime <t>\n" + checkpoint text.
function cosigners(note, witnessKeys) {
  const ok = [];
  for (const w of witnessKeys) {
    const sig = note.sigs.find((s) => s.name === w.name && s.raw.subarray(0, 4).equals(w.hash));
    if (!sig || sig.raw.length !== 4 + 8 + 64) continue;
    const t = sig.raw.readBigUInt64BE(4);
    const msg = Buffer.from(`cosignature/v1\ntime ${t}\n${note.text}`);
    if (crypto.verify(null, msg, w.pub, sig.raw.subarray(12))) ok.push(w.name);
    else fail(`checkpoint: the cosignature of ${w.name} does not verify`);
  }
  return ok;
}

// ---- RFC 6962 / RFC 9162 Merkle trees ----

const leafHash = (data) => sha256(Buffer.from([0]), data);
const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);

function rootOf(hashes) {
  if (hashes.length === 0) return sha256(Buffer.alloc(0));
  if (hashes.length === 1) return hashes[0];
  let k = 1;
  while (k * 2 < hashes.length) k *= 2;
  return nodeHash(rootOf(hashes.slice(0, k)), rootOf(hashes.slice(k)));
}

// RFC 9162 section 2.1.3.2: verifying an inclusion proof.
function checkInclusion(index, size, leaf, proof, root) {
  if (!(index >= 0 && index < size)) return false;
  let fn = index, sn = size - 1, r = leaf;
  for (const p of proof) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      if (fn % 2 === 0) { while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); } }
    } else {
      r = nodeHash(r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && r.equals(root);
}

// ---- records: canonical JSON ----

// Field order of each object, as the record table gives it.
const FIELDS = {
  record: ["v", "type", "time", "run_id", "tool_version", "config_digest", "destination", "scheme", "key_id", "as_of", "purpose",
    "authorization", "policy", "inputs", "consent_snapshot_sha256", "counts", "published", "manifest", "files", "ids", "evidence",
    "previous_run_id", "adds", "removes", "removes_scheme", "removes_key_id", "backfill", "allow_drop", "elements", "request_sha256",
    "response_sha256", "reason", "pruned_runs",
    "pruned_failed", "retention_days", "extra"],
  authorization: ["registry_sha256", "organization", "relationship", "purposes", "lawful_basis", "retention_days"],
  policy: ["min_policy_version", "max_consent_age_seconds", "max_reject_rate"],
  input: ["table", "sha256", "rows", "parts"],
  part: ["name", "sha256"],
  file: ["path", "sha256", "rows"],
  counts: ["user_rows", "exported", "excluded", "event_rows", "events"],
  tree: ["size", "root"],
};
// Always written, even when empty; every other record field is omitted when empty.
const REQUIRED = new Set(["v", "type", "time", "tool_version", "destination"]);
// Members of objects are always written, but for these, omitted when empty.
const OPTIONAL = { input: new Set(["parts"]) };
const SUB = { authorization: "authorization", policy: "policy", counts: "counts", manifest: "file", ids: "tree", evidence: "tree" };
const LISTS = { inputs: "input", files: "file", adds: "file", removes: "file", parts: "part" };

function encString(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"' || ch === "\\") out += "\\" + ch;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (ch === "\b") out += "\\b";
    else if (ch === "\f") out += "\\f";
    else if (c < 0x20 || ch === "<" || ch === ">" || ch === "&" || c === 0x2028 || c === 0x2029) out += "\\u" + c.toString(16).padStart(4, "0");
    else out += ch;
  }
  return out + '"';
}

function encValue(v, kind) {
  if (v === null) return "null";
  if (typeof v === "string") return encString(v);
  if (typeof v === "number") return String(v);
  if (typeof v === "boolean") return String(v);
  if (Array.isArray(v)) return "[" + v.map((x) => encValue(x, kind)).join(",") + "]";
  if (kind) return encObject(v, FIELDS[kind], (f, x) => !(OPTIONAL[kind] || new Set()).has(f) || !empty(x));
  // A map (counts' excluded and events): keys sorted by their UTF-8 bytes.
  const keys = Object.keys(v).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return "{" + keys.map((k) => encString(k) + ":" + encValue(v[k])).join(",") + "}";
}

function encObject(o, fields, keep) {
  for (const k of Object.keys(o)) if (!fields.includes(k)) fail(`unknown field ${k}`);
  const parts = [];
  for (const f of fields) {
    if (!(f in o) || !keep(f, o[f])) continue;
    parts.push(encString(f) + ":" + encValue(o[f], SUB[f] || LISTS[f]));
  }
  return "{" + parts.join(",") + "}";
}

const empty = (v) => v === "" || v === 0 || v === false || v === null || (Array.isArray(v) && v.length === 0);
const isHex = (s, n) => typeof s === "string" && s.length === n && /^[0-9a-f]*$/.test(s);

// parseRecord: the line must be the canonical encoding of what it holds.
function parseRecord(line, i) {
  let r;
  try { r = JSON.parse(line); } catch (e) { fail(`record ${i}: not JSON`); }
  if (r === null || typeof r !== "object" || Array.isArray(r)) fail(`record ${i}: not an object`);
  const again = encObject(r, FIELDS.record, (f, v) => REQUIRED.has(f) || !empty(v));
  if (again !== line) fail(`record ${i}: not in canonical form`);
  if (r.v !== "audiencematch.audit/v1" && r.v !== "audiencematch.audit/v2") fail(`record ${i}: unknown version ${JSON.stringify(r.v)}`);
  const v1 = r.v === "audiencematch.audit/v1";
  if (!r.destination || !r.tool_version || !r.time) fail(`record ${i}: lacks destination, tool_version or time`);
  if (r.extra) fail(`record ${i}: extra fields`);
  switch (r.type) {
    case "run_committed": {
      for (const f of ["run_id", "scheme", "as_of", "purpose", "published", "policy", "counts", "manifest", "ids", "evidence"]) if (!r[f]) fail(`record ${i}: run_committed lacks ${f}`);
      if (!isHex(r.config_digest, 64) || !isHex(r.consent_snapshot_sha256, 64) || !isHex(r.manifest.sha256, 64) || !isHex(r.ids.root, 64) || !isHex(r.evidence.root, 64)) fail(`record ${i}: malformed digest`);
      for (const inp of r.inputs || []) checkParts(inp, i);
      if (!v1) {
        if (!r.authorization) fail(`record ${i}: run_committed lacks authorization`);
        if (r.published.startsWith("/") || r.published.split("/").some((e) => e === "" || e === "." || e === "..")) fail(`record ${i}: published is not relative`);
      }
      break;
    }
    case "run_failed": case "destination_refused":
      if (!r.reason) fail(`record ${i}: ${r.type} lacks a reason`);
      break;
    case "prune":
      if (v1 || !(r.pruned_runs || r.pruned_failed) || !r.retention_days) fail(`record ${i}: malformed prune record`);
      break;
    case "oprf_evaluated":
      if (v1 || r.scheme !== "oprf-ristretto255" || !isHex(r.key_id, 16) || !isHex(r.request_sha256, 64)) fail(`record ${i}: malformed oprf_evaluated record`);
      if (!r.reason && (!r.elements || !isHex(r.response_sha256, 64))) fail(`record ${i}: oprf_evaluated answer lacks its count or response digest`);
      if (r.reason && r.response_sha256) fail(`record ${i}: refused oprf_evaluated names a response`);
      break;
    default:
      fail(`record ${i}: unknown type ${JSON.stringify(r.type)}`);
  }
  if (v1 && (r.authorization || r.pruned_runs || r.pruned_failed || r.retention_days || r.elements || r.request_sha256 || r.response_sha256 ||
    (r.inputs || []).some((inp) => inp.parts))) fail(`record ${i}: v1 record with v2 fields`);
  return r;
}

// checkParts: an input table read in parts names each part and its
// SHA-256, and its own SHA-256 is derived from theirs: one part's own, or
// SHA-256 of their hex digests, each followed by "\n", in order.
function checkParts(inp, i) {
  if (!isHex(inp.sha256, 64)) fail(`record ${i}: malformed input digest`);
  if (!inp.parts) return;
  for (const p of inp.parts) if (!p.name || !isHex(p.sha256, 64)) fail(`record ${i}: malformed part of input ${inp.table}`);
  const want = inp.parts.length === 1 ? inp.parts[0].sha256 : hex(sha256(inp.parts.map((p) => p.sha256 + "\n").join("")));
  if (inp.sha256 !== want) fail(`record ${i}: input ${inp.table}'s digest is not derived from its parts'`);
}

// The run id: the cutoff as YYYYMMDDTHHMMSSZ, "-", and the first 12 hex of
// SHA-256(config_digest || for each input: NUL table NUL sha256).
function runIdOf(r) {
  const h = crypto.createHash("sha256");
  h.update(r.config_digest);
  for (const inp of r.inputs || []) h.update("\0" + inp.table + "\0" + inp.sha256);
  const t = new Date(r.as_of).toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  return t + "-" + h.digest("hex").slice(0, 12);
}

// ---- verify ----

// listFiles: every file under dir, slash-separated and sorted, but for the
// run's commit marker, _SUCCESS, which must be empty when it is there.
function listFiles(dir) {
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p); else out.push(path.relative(dir, p).split(path.sep).join("/"));
    }
  };
  walk(dir);
  if (out.includes("_SUCCESS")) {
    if (fs.statSync(path.join(dir, "_SUCCESS")).size !== 0) fail(`${path.join(dir, "_SUCCESS")}: the marker is not empty`);
    out.splice(out.indexOf("_SUCCESS"), 1);
  }
  return out.sort();
}

function verify(opts) {
  const logKey = parseVerifierKey(opts.verifier, 1);
  const auditDir = path.join(opts.state, "audit");
  const cp = checkCheckpoint(fs.readFileSync(path.join(auditDir, "checkpoint")), logKey);
  const witnesses = opts.witness.map((k) => parseVerifierKey(k, 4));
  const cosigned = cosigners(cp.note, witnesses);
  const min = opts.minWitnesses ?? witnesses.length;
  if (cosigned.length < min) fail(`cosigned by ${cosigned.length} of the required witnesses, fewer than ${min}`);
  const raw = fs.readFileSync(path.join(auditDir, "records.jsonl"));
  if (raw.length && raw[raw.length - 1] !== 0x0a) fail("records.jsonl: the last record is not terminated");
  const lines = raw.length ? raw.subarray(0, raw.length - 1).toString("utf8").split("\n") : [];
  if (lines.length !== cp.size) fail(`records.jsonl holds ${lines.length} records, the checkpoint covers ${cp.size}`);
  const root = rootOf(lines.map((l) => leafHash(Buffer.from(l, "utf8"))));
  if (!root.equals(cp.root)) fail("the records' Merkle root differs from the signed checkpoint's");
  const recs = lines.map(parseRecord);
  const now = opts.now ? new Date(opts.now) : new Date();
  const prunedBy = new Map();
  recs.forEach((r, i) => { if (r.type === "prune") for (const id of r.pruned_runs || []) prunedBy.set(id, i); });
  const heads = new Map(), committed = new Set(), dests = new Set();
  let runs = 0, pruned = 0;
  recs.forEach((r, i) => {
    if (r.type !== "run_committed") return;
    runs++;
    const where = `record ${i}, run ${r.run_id}`;
    if (runIdOf(r) !== r.run_id) fail(`${where}: the run id is not derived from its cutoff, config digest and inputs`);
    const rel = r.v === "audiencematch.audit/v1" ? r.published.split("/").slice(-3).join("/") : r.published;
    const date = new Date(r.as_of).toISOString().slice(0, 10);
    if (rel !== `${r.destination}/dt=${date}/run=${r.run_id}`) fail(`${where}: published is not <destination>/dt=<date>/run=<run id>`);
    const dir = path.join(opts.delivery, ...rel.split("/"));
    committed.add(r.run_id); dests.add(r.destination);
    if (!fs.existsSync(dir)) {
      const days = r.authorization ? r.authorization.retention_days : 0;
      const until = new Date(new Date(r.as_of).getTime() + days * 86400e3);
      if (!((prunedBy.get(r.run_id) ?? -1) > i) && !(days > 0 && now >= until)) fail(`${where}: the published directory ${dir} is missing, within its retention`);
      pruned++;
    } else {
      const want = [r.manifest.path, ...[...(r.files || []), ...(r.adds || []), ...(r.removes || [])].map((f) => f.path)].sort();
      const have = listFiles(dir);
      if (JSON.stringify(have) !== JSON.stringify(want)) fail(`${where}: ${dir} holds ${have}, the record lists ${want}`);
      for (const f of [r.manifest, ...(r.files || []), ...(r.adds || []), ...(r.removes || [])]) {
        const p = path.join(dir, ...f.path.split("/"));
        if (hex(sha256(fs.readFileSync(p))) !== f.sha256) fail(`${where}: ${p}: SHA-256 differs from the record's`);
      }
      const m = JSON.parse(fs.readFileSync(path.join(dir, r.manifest.path), "utf8"));
      if (m.version !== "audiencematch.manifest/v1") fail(`${where}: manifest version ${m.version}`);
      for (const [a, b] of [["run_id", "run_id"], ["destination", "destination"], ["scheme", "scheme"], ["config_digest", "config_digest"], ["as_of", "as_of"], ["purpose", "purpose"]]) {
        if (m[a] !== r[b]) fail(`${where}: the manifest's ${a} differs from the record's`);
      }
      if ((m.key_id || "") !== (r.key_id || "")) fail(`${where}: the manifest's key_id differs from the record's`);
      if (m.users.rows !== r.counts.user_rows || m.users.exported !== r.counts.exported || m.consent_events.rows !== r.counts.event_rows) fail(`${where}: the manifest's counts differ from the record's`);
      if (r.counts.exported !== r.ids.size) fail(`${where}: ${r.counts.exported} exported but ${r.ids.size} identifiers committed`);
      const rows = (r.files || []).reduce((n, f) => n + f.rows, 0);
      if (rows !== r.ids.size) fail(`${where}: the files hold ${rows} rows, the identifier tree ${r.ids.size}`);
    }
    // The delivery chain's link.
    const head = heads.get(r.destination);
    if (r.backfill) {
      if (!head || !(new Date(r.as_of) < new Date(head.as_of))) fail(`${where}: a backfill not behind the chain head`);
      return;
    }
    if (!head) {
      if (r.previous_run_id || r.adds || r.removes) fail(`${where}: a first run with a previous run or deltas`);
    } else {
      if (r.previous_run_id !== head.run_id) fail(`${where}: previous_run_id is ${r.previous_run_id}, the chain head is ${head.run_id}: a run is missing from the delivery chain`);
      if (r.removes_scheme !== head.scheme || (r.removes_key_id || "") !== (head.key_id || "")) fail(`${where}: removes under another scheme or key than the previous run's`);
    }
    heads.set(r.destination, r);
  });
  for (const d of dests) {
    const base = path.join(opts.delivery, d);
    if (!fs.existsSync(base)) continue;
    for (const dt of fs.readdirSync(base).filter((n) => n.startsWith("dt="))) {
      for (const run of fs.readdirSync(path.join(base, dt)).filter((n) => n.startsWith("run="))) {
        if (!committed.has(run.slice(4))) fail(`${path.join(base, dt, run)} is published but the log does not record it`);
      }
    }
  }
  return `ok: ${recs.length} records, ${runs} committed runs (${pruned} pruned), cosigned by ${cosigned.length} witness(es)`;
}

// ---- check-proof ----

const SCHEMES = {
  // scheme: [identifier bytes length, leaf from the proof's "id" hex, evidence id from the leaf]
  "hmac-sha256": { valid: (b) => b.length === 32, evidenceId: (b) => hex(b) },
  "oprf-ristretto255": { valid: (b) => b.length === 64, evidenceId: (b) => hex(b) },
  "sha256-digits": { valid: (b) => /^[0-9a-f]{64}$/.test(b.toString("latin1")), evidenceId: (b) => b.toString("latin1") },
  "sha256-e164": { valid: (b) => /^[0-9a-f]{64}$/.test(b.toString("latin1")), evidenceId: (b) => b.toString("latin1") },
  "uid2": { valid: (b) => /^[A-Za-z0-9+/]{43}=$/.test(b.toString("latin1")), evidenceId: (b) => b.toString("latin1") },
};

function checkProof(file, opts) {
  const p = JSON.parse(fs.readFileSync(file, "utf8"));
  if (p.v !== "audiencematch.proof/v1") fail(`proof version ${JSON.stringify(p.v)}`);
  const logKey = parseVerifierKey(opts.verifier, 1);
  const cp = checkCheckpoint(Buffer.from(p.checkpoint, "utf8"), logKey);
  const witnesses = opts.witness.map((k) => parseVerifierKey(k, 4));
  const cosigned = cosigners(cp.note, witnesses);
  if (cosigned.length < (opts.minWitnesses ?? witnesses.length)) fail("not cosigned by the required witnesses");
  if (p.records.length !== cp.size || p.log_size !== cp.size) fail("the proof's records are not the checkpoint's size");
  if (!rootOf(p.records.map((l) => leafHash(Buffer.from(l, "utf8")))).equals(cp.root)) fail("the proof's records do not rebuild the checkpoint's root");
  const recs = p.records.map(parseRecord);
  const committed = recs.map((r, i) => (r.type === "run_committed" ? i : -1)).filter((i) => i >= 0);
  if (p.runs.length !== committed.length || p.runs.some((r, k) => r.record_index !== committed[k])) fail("the committed runs are not all answered, in log order");
  const b64 = (s) => Buffer.from(s, "base64");
  const prunedBy = new Map();
  recs.forEach((r, i) => { if (r.type === "prune") for (const id of r.pruned_runs || []) prunedBy.set(id, i); });
  const now = new Date();
  const sameKey = new Map(); // destination, scheme, key_id -> the identifier answered for
  for (const sr of p.runs) {
    const rec = recs[sr.record_index];
    const where = `record ${sr.record_index}`;
    if (sr.status === "unknown") {
      // Only a pruned run (a later prune record, or past its retention) may
      // be answered without a proof.
      const days = rec.authorization ? rec.authorization.retention_days : 0;
      const until = new Date(new Date(rec.as_of).getTime() + days * 86400e3);
      if (!((prunedBy.get(rec.run_id) ?? -1) > sr.record_index) && !(days > 0 && now >= until)) fail(`${where}: answered unknown, but the log does not show the run pruned`);
    } else {
      const group = `${rec.destination}\0${rec.scheme}\0${rec.key_id || ""}`;
      const first = sameKey.get(group);
      if (first !== undefined && first !== String(sr.id).toLowerCase()) fail(`${where}: answers for another identifier than an earlier run of the same destination and key`);
      sameKey.set(group, String(sr.id).toLowerCase());
    }
    if (!checkInclusion(sr.record_index, cp.size, leafHash(Buffer.from(p.records[sr.record_index], "utf8")), sr.record_proof.map(b64), cp.root)) fail(`${where}: the record's inclusion proof`);
    if (sr.run_id !== rec.run_id || sr.destination !== rec.destination || sr.as_of !== rec.as_of || sr.scheme !== rec.scheme || (sr.key_id || "") !== (rec.key_id || "")) fail(`${where}: the answer names another run`);
    if (sr.status === "unknown") { if (sr.membership || sr.evidence) fail(`${where}: unknown with proofs`); continue; }
    if (sr.status !== "exported" && sr.status !== "not_exported") fail(`${where}: status ${sr.status}`);
    const scheme = SCHEMES[rec.scheme] || fail(`${where}: unknown scheme`);
    const x = Buffer.from(sr.id, "hex");
    if (!scheme.valid(x)) fail(`${where}: id is not an identifier of ${rec.scheme}`);
    const m = sr.membership || fail(`${where}: no membership proof`);
    const idRoot = Buffer.from(rec.ids.root, "hex"), n = rec.ids.size;
    if (m.present !== (sr.status === "exported")) fail(`${where}: status and membership disagree`);
    if (m.present) {
      if (!checkInclusion(m.index ?? 0, n, leafHash(x), (m.proof || []).map(b64), idRoot)) fail(`${where}: membership proof`);
      if (!sr.evidence || sr.evidence.length === 0) fail(`${where}: exported without evidence`);
      const evRoot = Buffer.from(rec.evidence.root, "hex");
      const seenRows = new Set();
      for (const e of sr.evidence) {
        if (seenRows.has(e.index)) fail(`${where}: evidence row ${e.index} given twice`);
        seenRows.add(e.index);
        const leaf = Buffer.concat([Buffer.from(scheme.evidenceId(x)), Buffer.from([0]), Buffer.from(e.user_id), Buffer.from([0]), Buffer.from(e.consent_event_id), Buffer.from([0]), Buffer.from(e.primary ? "1" : "0")]);
        if (!checkInclusion(e.index, rec.evidence.size, leafHash(leaf), e.proof.map(b64), evRoot)) fail(`${where}: evidence row ${e.index}`);
      }
    } else {
      if (sr.evidence && sr.evidence.length) fail(`${where}: evidence for an absent identifier`);
      const l = m.left, r = m.right;
      if (n === 0) { if (!idRoot.equals(sha256(Buffer.alloc(0)))) fail(`${where}: absence in an empty tree with a non-empty root`); continue; }
      if (!l && !r) fail(`${where}: absence without neighbours`);
      if (!l && (r.index !== 0 || Buffer.compare(x, b64(r.leaf)) >= 0)) fail(`${where}: not before the first leaf`);
      if (!r && (l.index !== n - 1 || Buffer.compare(b64(l.leaf), x) >= 0)) fail(`${where}: not after the last leaf`);
      if (l && r && (r.index !== l.index + 1 || Buffer.compare(b64(l.leaf), x) >= 0 || Buffer.compare(x, b64(r.leaf)) >= 0)) fail(`${where}: neighbours not adjacent around the value`);
      for (const nb of [l, r]) if (nb && !checkInclusion(nb.index, n, leafHash(b64(nb.leaf)), nb.proof.map(b64), idRoot)) fail(`${where}: neighbour ${nb.index}`);
    }
  }
  return `ok: proof of ${p.runs.length} runs against a checkpoint of ${cp.size} records`;
}

// ---- command line ----

function parseArgs(argv) {
  const o = { witness: [], args: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => { if (i + 1 >= argv.length) usage(); return argv[++i]; };
    if (a === "--state") o.state = val();
    else if (a === "--verifier") o.verifier = val();
    else if (a === "--delivery") o.delivery = val();
    else if (a === "--witness") o.witness.push(val());
    else if (a === "--min-witnesses") o.minWitnesses = Number(val());
    else if (a === "--now") o.now = val();
    else if (a.startsWith("--")) usage();
    else o.args.push(a);
  }
  return o;
}

function usage() {
  console.error("usage: verify-audit.mjs verify --state DIR --verifier KEY --delivery DIR [--witness KEY]... [--min-witnesses N]\n       verify-audit.mjs check-proof FILE --verifier KEY [--witness KEY]...");
  process.exit(2);
}

const [cmd, ...rest] = process.argv.slice(2);
const o = parseArgs(rest);
if (o.verifier && fs.existsSync(o.verifier)) o.verifier = fs.readFileSync(o.verifier, "utf8").trim();
try {
  if (cmd === "verify" && o.state && o.verifier && o.delivery) console.log(verify(o));
  else if (cmd === "check-proof" && o.args.length === 1 && o.verifier) console.log(checkProof(o.args[0], o));
  else usage();
} catch (e) {
  if (!(e instanceof Fail) && !(e instanceof SyntaxError) && !(e instanceof TypeError) && e.code !== "ENOENT") throw e;
  console.log("FAIL: " + e.message);
  process.exit(1);
}
