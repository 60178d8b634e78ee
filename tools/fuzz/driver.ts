// The fuzz campaign's driver: forks child processes (child.ts), each making
// a seeded, bounded series of random and hostile calls over the public API,
// and counts what they report. A child that dies by a signal or a non-zero
// exit without its final report is a crash; one that reports nothing for
// `hangMs` is killed and counted as a hang. Both are recorded with the
// child's seed and its last call, and the child's remaining calls go to a
// fresh child (with a derived seed) so the campaign keeps going.
//
//   npm run fuzz                              100,000 calls: 20 children x 5,000, 2 at a time
//   npm run fuzz -- --seed 42 --children 4 --calls 4000     (--calls is the total)
//   npm run fuzz -- --replay --seed S --calls N [--hazards ...] [--nofile-headroom K] [--as BYTES]
//                                             one child, every call printed (what a finding's
//                                             "replay:" line says)
//   options: --calls-per-child N, --parallel N, --hazards all|none|a,b, --no-<hazard>, --hang-ms MS,
//            --time-limit-s S, --max-respawns N, --exclude-ops REGEX,
//            --findings FILE (markdown), --json FILE, --quiet
//
// Nothing here loads the package: the driver runs from the TypeScript
// sources under vitest (test/fuzz.test.ts) as well as from dist/.
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { allHazards, type HazardConfig, hazardList, HAZARDS, havePrlimit, parseHazards } from './hazards.js';
import { mix32, Rng } from './prng.js';

/** What a child runs (JSON in its argv). */
export interface ChildConfig {
  seed: number;
  calls: number;
  hazards: HazardConfig;
  /** RLIMIT_NOFILE = highest open fd + 1 + this, or null. */
  nofileHeadroom: number | null;
  /** RLIMIT_AS in bytes (the child is spawned under prlimit), or null. */
  asBytes: number | null;
  /** Stop making calls after this time (ms since the epoch), or null. */
  deadline: number | null;
  excludeOps: string | null;
}

export interface CampaignOptions {
  seed: number;
  children: number;
  /** Calls per child. */
  calls: number;
  parallel: number;
  hazards: HazardConfig;
  /** A child that reports nothing for this long is killed (a hang). */
  hangMs: number;
  /**
   * The same bound for a child's start-up (node, the modules, the baseline),
   * when longer than hangMs (default 60 s): a sanitized node, or any node
   * under QEMU TCG with another VM beside it, can take over 10 s to start.
   */
  startupMs?: number;
  /** Wall-clock bound of the whole campaign (children stop making calls), or null. */
  timeLimitMs: number | null;
  /** Fresh children started for a slot after crashes and hangs. */
  maxRespawns: number;
  /** One child with exactly `seed`, every call printed. */
  replay: boolean;
  /** Overrides of the rlimits drawn from each child's seed (undefined: drawn; null: none). */
  nofileHeadroom?: number | null;
  asBytes?: number | null;
  excludeOps: string | null;
  log: (line: string) => void;
  /** Print one line per child (false: only the summary). */
  verbose: boolean;
}

export type FindingKind =
  | 'crash'
  | 'hang'
  | 'undocumented'
  | 'leak'
  | 'divergence'
  | 'redirect'
  | 'wrong-result'
  | 'cloexec'
  | 'uncaught'
  | 'harness-error'
  /** V8 aborted for lack of address space under the harness's RLIMIT_AS: reported, not counted as a finding. */
  | 'v8-oom';

export interface Finding {
  kind: FindingKind;
  /** The child's seed and config: `replay` is the command that replays it. */
  seed: number;
  config: ChildConfig;
  /** Index of the call (-1: the end-of-child checks). */
  i: number;
  name: string;
  desc: string;
  detail: string;
  /** The worker thread's last call, when one was running. */
  workerCall?: string;
  stderr?: string;
  signature: string;
  replay: string;
}

export interface Summary {
  seed: number;
  children: number;
  respawns: number;
  calls: number;
  ok: number;
  typed: number;
  crashes: number;
  hangs: number;
  undocumented: number;
  leaks: number;
  divergences: number;
  redirects: number;
  wrongResults: number;
  cloexec: number;
  uncaught: number;
  /** Bugs of the harness itself (a child stopped with exit code 3): not the package's, but the run is not valid. */
  harnessErrors: number;
  /** Children V8 aborted for lack of address space under RLIMIT_AS (not findings). */
  v8Oom: number;
  workerCalls: number;
  elapsedMs: number;
  codes: Record<string, number>;
  /** Time spent per operation name (call, checks after it), to see where a campaign's time goes. */
  time: Record<string, { n: number; callMs: number; checkMs: number }>;
  findings: Finding[];
  notes: string[];
}

// ---- where things are --------------------------------------------------------------------

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'kvm-gmem') return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('fuzz driver: cannot find the kvm-gmem package root');
    dir = up;
  }
}

/** The compiled child script (children run the built library, dist/). */
export function childScript(): string {
  return join(packageRoot(), 'dist', 'tools', 'fuzz', 'child.js');
}

// ---- configs and replay commands ----------------------------------------------------------------

function configFor(seed: number, o: CampaignOptions, env: { prlimit: boolean; sanitized: boolean }, calls: number, deadline: number | null): ChildConfig {
  const r = new Rng(mix32(seed, 0xc0f1));
  const nofile = r.chance(0.25) ? r.range(4, 40) : null;
  const as = r.chance(0.2) ? (3 + r.int(3)) * 2 ** 30 : null;
  return {
    seed,
    calls,
    hazards: o.hazards,
    nofileHeadroom: o.nofileHeadroom !== undefined ? o.nofileHeadroom : o.hazards.nofile && env.prlimit ? nofile : null,
    asBytes: o.asBytes !== undefined ? o.asBytes : o.hazards.as && env.prlimit && !env.sanitized ? as : null,
    deadline,
    excludeOps: o.excludeOps,
  };
}

function replayCommand(cfg: ChildConfig, calls: number): string {
  return [
    'npm run fuzz -- --replay',
    `--seed ${cfg.seed}`,
    `--calls ${calls}`,
    `--hazards ${hazardList(cfg.hazards)}`,
    `--nofile-headroom ${cfg.nofileHeadroom ?? 'none'}`,
    `--as ${cfg.asBytes ?? 'none'}`,
    ...(cfg.excludeOps ? [`--exclude-ops '${cfg.excludeOps}'`] : []),
  ].join(' ');
}

/** Numbers, addresses and object names out, so one bug is one signature. */
function normalize(s: string): string {
  return s
    .replace(/0x[0-9a-f]+n?/gi, 'X')
    .replace(/#\d+/g, '#N')
    .replace(/\b\d+\b/g, 'N')
    .replace(/\s+/g, ' ')
    .slice(0, 240);
}

/** The line of a crashed child's stderr that says why (glibc, V8, a signal). */
function crashLine(stderr: string, signal: string | null): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const key = lines.find((l) =>
    /double free|free\(\)|corrupted|SIGBUS|SIGSEGV|Segmentation|FATAL|Fatal|Assertion|abort|napi|Check failed|AddressSanitizer|runtime error|terminate called/i.test(
      l,
    ),
  );
  // A SIGBUS or SIGSEGV prints nothing: the last line would be some warning.
  return key ?? (signal !== null ? '' : (lines[lines.length - 1] ?? ''));
}

/**
 * Under tools/asan/run.mjs sanitizer reports go to files (log_path=DIR/asan,
 * DIR/ubsan, + .<exe>.<pid>), not stderr: the first line of the dead
 * child's report, if there is one.
 */
function sanitizerLine(pid: number | undefined): string {
  if (pid === undefined) return '';
  for (const opts of [process.env.ASAN_OPTIONS, process.env.UBSAN_OPTIONS]) {
    const m = /(?:^|:)log_path=([^:]+)/.exec(opts ?? '');
    if (m === null) continue;
    const dir = dirname(m[1] as string);
    try {
      for (const f of readdirSync(dir).filter((n) => n.endsWith(`.${pid}`))) {
        const line = readFileSync(join(dir, f), 'utf8')
          .split('\n')
          .find((l) => /runtime error|ERROR: AddressSanitizer|ERROR: LeakSanitizer/.test(l));
        if (line !== undefined) return `sanitizer: ${line.trim()}`;
      }
    } catch {
      // no such directory
    }
  }
  return '';
}

// ---- one child ----------------------------------------------------------------------------------

interface ChildResult {
  /** Calls the child completed or died in. */
  calls: number;
  ok: number;
  typed: number;
  codes: Record<string, number>;
  time: Summary['time'];
  done: Record<string, unknown> | null;
  findings: Finding[];
  workerCalls: number;
  crashed: boolean;
}

type Line = Record<string, unknown> & { t: string };

function runChild(cfg: ChildConfig, o: CampaignOptions): Promise<ChildResult> {
  const script = childScript();
  const argv = [script, JSON.stringify(cfg)];
  const [cmd, args] = cfg.asBytes !== null ? ['prlimit', [`--as=${cfg.asBytes}`, process.execPath, ...argv]] : [process.execPath, argv];
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
  const findings: Finding[] = [];
  let res = 0;
  let ok = 0;
  let typed = 0;
  const codes: Record<string, number> = {};
  const time: Summary['time'] = {};
  let harness = false;
  let workerCalls = 0;
  let done: Record<string, unknown> | null = null;
  let last: { i: number; name: string; desc: string } = { i: -1, name: 'start', desc: 'child start-up (before the first call)' };
  let lastWorker: string | undefined;
  let stderr = '';
  let hung = false;
  let buf = '';

  const add = (kind: FindingKind, i: number, name: string, desc: string, detail: string, extra: Partial<Finding> = {}): void => {
    const f: Finding = {
      kind,
      seed: cfg.seed,
      config: cfg,
      i,
      name,
      desc,
      detail,
      signature: `${kind}|${name}|${normalize(detail)}`,
      replay: replayCommand(cfg, i >= 0 ? i + 1 : cfg.calls),
      ...extra,
    };
    findings.push(f);
    if (o.replay) o.log(`  !! ${kind}: ${detail}`);
  };

  let timer: NodeJS.Timeout;
  const arm = (ms = o.hangMs): void => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, ms);
  };
  // Until the child's baseline is taken ('ready'), the start-up bound.
  const startupMs = Math.max(o.hangMs, o.startupMs ?? 60_000);
  let ready = false;
  arm(startupMs);

  const onLine = (l: Line): void => {
    switch (l.t) {
      case 'call':
        last = { i: l.i as number, name: l.name as string, desc: l.desc as string };
        lastWorker = undefined;
        if (o.replay) o.log(`#${String(l.i)} ${String(l.desc)}`);
        break;
      case 'wcall':
        workerCalls++;
        lastWorker = `worker ${String(l.thread)} call ${String(l.i)}: ${String(l.desc)}`;
        if (o.replay) o.log(`    worker: ${String(l.desc)}`);
        break;
      case 'res': {
        res++;
        const tm = (time[last.name] ??= { n: 0, callMs: 0, checkMs: 0 });
        tm.n++;
        tm.callMs += Number(l.ms ?? 0);
        tm.checkMs += Number(l.checkMs ?? 0);
        if (l.ok) ok++;
        else if (l.documented) {
          typed++;
          const key = `${String(l.cls)}${l.code ? ` ${String(l.code)}` : ''}`;
          codes[key] = (codes[key] ?? 0) + 1;
        }
        if (o.replay) o.log(`    -> ${l.ok ? 'ok' : `${String(l.cls)}${l.code ? ` ${String(l.code)}` : ''}`}`);
        break;
      }
      case 'finding': {
        const kind = l.kind as FindingKind;
        const detail =
          kind === 'undocumented' || kind === 'uncaught'
            ? `${String(l.cls)}: ${String(l.message)}${l.why ? ` (${String(l.why)})` : ''}${l.during ? ` [during ${String(l.during)}]` : ''}${l.where ? ` [in ${String(l.where)}]` : ''}`
            : `${String(l.detail)}${l.where ? ` [in ${String(l.where)}]` : ''}`;
        const name = (l.name as string | undefined) ?? last.name;
        add(
          kind,
          (l.i as number | undefined) ?? last.i,
          l.where ? `${name} (${String(l.where)})` : name,
          (l.desc as string | undefined) ?? last.desc,
          detail,
          l.stack ? { stderr: String(l.stack) } : {},
        );
        break;
      }
      case 'harness-error':
        harness = true;
        add('harness-error', (l.i as number | undefined) ?? last.i, last.name, last.desc, String(l.message), { stderr: String(l.stack) });
        break;
      case 'trace':
        if (o.replay) o.log(`    fds/mappings: ${String(l.detail)}`);
        break;
      case 'ready':
        ready = true;
        if (o.replay)
          o.log(
            `child pid ${String(l.pid)}: ${String(l.fds)} fds open at the baseline, RLIMIT_NOFILE ${String(l.nofile ?? 'unchanged')}, RLIMIT_AS ${String(l.asBytes ?? 'unchanged')}`,
          );
        break;
      case 'done':
        done = l;
        break;
    }
  };

  const reports = child.stdio[3] as NodeJS.ReadableStream;
  reports.setEncoding('utf8');
  reports.on('data', (chunk: string | Buffer) => {
    arm(ready ? o.hangMs : startupMs);
    buf += String(chunk);
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        onLine(JSON.parse(text) as Line);
      } catch {
        // a torn line from a dying process
      }
    }
  });
  child.stdout?.on('data', (d: Buffer) => {
    if (o.replay) process.stdout.write(d);
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-8000);
    if (o.replay) process.stderr.write(d);
  });

  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const calls = res + (done === null && last.i >= res - 1 && last.i >= 0 ? 1 : 0);
      const ctx = { ...(lastWorker ? { workerCall: lastWorker } : {}), stderr: stderr.slice(-3000) };
      let crashed = false;
      if (harness) {
        crashed = true; // its remaining calls go to a fresh child, but this is the harness's fault, not a crash
      } else if (hung) {
        crashed = true;
        add(
          'hang',
          last.i,
          last.name,
          last.desc,
          done !== null
            ? `the process did not exit within ${o.hangMs} ms after its final report (something keeps the event loop alive)`
            : `no progress for ${ready ? o.hangMs : startupMs} ms during this call${lastWorker ? ` (worker: ${lastWorker})` : ''}`,
          ctx,
        );
      } else if (done === null) {
        crashed = true;
        if (code === 13) {
          add('hang', last.i, last.name, last.desc, 'exit code 13: the event loop ran dry while a promise never settled', ctx);
        } else {
          const why = signal !== null ? `killed by ${signal}` : `exit code ${String(code)}`;
          // V8 aborts the process when it cannot reserve address space: under
          // the harness's own RLIMIT_AS that is the limit's doing, not the package's.
          const v8oom =
            cfg.asBytes !== null && /Fatal process OOM|JavaScript heap out of memory|Fatal JavaScript (invalid size error|out of memory)/.test(stderr);
          add(
            v8oom ? 'v8-oom' : 'crash',
            last.i,
            last.name,
            last.desc,
            `${why}: ${crashLine(stderr, signal) || sanitizerLine(child.pid) || '(no message)'}`,
            ctx,
          );
        }
      } else if (code !== 0 || signal !== null) {
        crashed = true;
        add(
          'crash',
          -1,
          'exit',
          'after the final report',
          `exit code ${String(code)} / ${String(signal)} after the final report: ${crashLine(stderr, signal)}`,
          ctx,
        );
      }
      resolve({ calls: Math.min(calls, cfg.calls), ok, typed, codes, time, done, findings, workerCalls, crashed });
    });
  });
}

// ---- the campaign ---------------------------------------------------------------------------------

export async function runCampaign(o: CampaignOptions): Promise<Summary> {
  const started = Date.now();
  const deadline = o.timeLimitMs === null ? null : started + o.timeLimitMs;
  const notes: string[] = [];
  const prlimit = havePrlimit();
  const sanitized = process.env.KVM_GMEM_ADDON !== undefined && process.env.KVM_GMEM_ADDON !== '';
  if (!prlimit && (o.hazards.nofile || o.hazards.as)) notes.push('prlimit (util-linux) is not installed: the nofile and as hazards are off');
  if (sanitized && o.hazards.as) notes.push(`KVM_GMEM_ADDON is set (a sanitized addon): the as hazard (RLIMIT_AS) is off, ASan needs its shadow memory`);
  const env = { prlimit, sanitized };
  const total: Summary = {
    seed: o.seed,
    children: 0,
    respawns: 0,
    calls: 0,
    ok: 0,
    typed: 0,
    crashes: 0,
    hangs: 0,
    undocumented: 0,
    leaks: 0,
    divergences: 0,
    redirects: 0,
    wrongResults: 0,
    cloexec: 0,
    uncaught: 0,
    harnessErrors: 0,
    v8Oom: 0,
    workerCalls: 0,
    elapsedMs: 0,
    codes: {},
    time: {},
    findings: [],
    notes,
  };

  const count = (r: ChildResult): void => {
    total.calls += r.calls;
    total.ok += r.ok;
    total.typed += r.typed;
    total.workerCalls += r.workerCalls;
    for (const [k, n] of Object.entries(r.codes)) total.codes[k] = (total.codes[k] ?? 0) + n;
    for (const [k, t] of Object.entries(r.time)) {
      const tt = (total.time[k] ??= { n: 0, callMs: 0, checkMs: 0 });
      tt.n += t.n;
      tt.callMs += t.callMs;
      tt.checkMs += t.checkMs;
    }
    for (const f of r.findings) {
      total.findings.push(f);
      const key = (
        {
          crash: 'crashes',
          hang: 'hangs',
          undocumented: 'undocumented',
          leak: 'leaks',
          divergence: 'divergences',
          redirect: 'redirects',
          'wrong-result': 'wrongResults',
          cloexec: 'cloexec',
          uncaught: 'uncaught',
          'harness-error': 'harnessErrors',
          'v8-oom': 'v8Oom',
        } as const
      )[f.kind];
      total[key]++;
    }
  };

  if (o.replay) {
    const cfg = configFor(o.seed, o, env, o.calls, deadline);
    o.log(
      `kvm-gmem fuzz replay: seed ${cfg.seed}, ${cfg.calls} calls, hazards ${hazardList(cfg.hazards)}, nofile headroom ${cfg.nofileHeadroom ?? 'none'}, RLIMIT_AS ${cfg.asBytes ?? 'none'}`,
    );
    total.children = 1;
    count(await runChild(cfg, o));
    total.elapsedMs = Date.now() - started;
    return total;
  }

  o.log(
    `kvm-gmem fuzz: seed ${o.seed} (--seed ${o.seed} replays the campaign), ${o.children} children x ${o.calls} calls, ${o.parallel} at a time, ` +
      `hazards ${hazardList(o.hazards)}, hang bound ${o.hangMs} ms${deadline ? `, time limit ${Math.round((o.timeLimitMs ?? 0) / 1000)} s` : ''}`,
  );
  for (const n of notes) o.log(`  note: ${n}`);

  let next = 0;
  const slot = async (): Promise<void> => {
    for (;;) {
      const index = next++;
      if (index >= o.children) return;
      const childSeed = mix32(o.seed, index);
      let left = o.calls;
      for (let attempt = 0; left > 0 && attempt <= o.maxRespawns; attempt++) {
        if (deadline !== null && Date.now() > deadline) break;
        const seed = attempt === 0 ? childSeed : mix32(childSeed, 1000 + attempt);
        const cfg = configFor(seed, o, env, left, deadline);
        total.children++;
        if (attempt > 0) total.respawns++;
        const t0 = Date.now();
        const r = await runChild(cfg, o);
        count(r);
        left -= r.calls;
        if (o.verbose) {
          const lim = `${cfg.nofileHeadroom !== null ? ` nofile+${cfg.nofileHeadroom}` : ''}${cfg.asBytes !== null ? ` as=${cfg.asBytes / 2 ** 30}G` : ''}`;
          const kinds = r.findings.map((f) => f.kind);
          const summary =
            kinds.length === 0
              ? 'no findings'
              : Object.entries(kinds.reduce<Record<string, number>>((m, k) => ((m[k] = (m[k] ?? 0) + 1), m), {}))
                  .map(([k, n]) => `${n} ${k}`)
                  .join(', ');
          const end = r.crashed
            ? ` -> ${r.findings.find((f) => f.kind === 'crash' || f.kind === 'hang')?.kind ?? 'died'} at call ${r.findings.find((f) => f.kind === 'crash' || f.kind === 'hang')?.i}`
            : '';
          o.log(
            `  child ${index}${attempt > 0 ? `.${attempt}` : ''} seed ${seed}${lim}: ${r.calls} calls in ${((Date.now() - t0) / 1000).toFixed(1)} s, ${summary}${end}`,
          );
        }
        if (!r.crashed) break;
        if (r.calls === 0 && r.done === null && attempt > 3) break; // cannot even start
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, o.parallel) }, slot));
  total.elapsedMs = Date.now() - started;
  return total;
}

// ---- reporting ------------------------------------------------------------------------------------

export function summaryLine(s: Summary): string {
  return (
    `calls ${s.calls}, ok ${s.ok}, typed errors ${s.typed}, crashes ${s.crashes}, hangs ${s.hangs}, undocumented errors ${s.undocumented}, ` +
    `leaks ${s.leaks}, table divergences ${s.divergences}, redirects ${s.redirects}, wrong results ${s.wrongResults}, cloexec ${s.cloexec}, uncaught ${s.uncaught}` +
    (s.harnessErrors > 0 ? `, HARNESS ERRORS ${s.harnessErrors}` : '') +
    (s.v8Oom > 0 ? `, V8 out of address space under RLIMIT_AS ${s.v8Oom} (not counted)` : '') +
    ` (worker-thread calls ${s.workerCalls}; children ${s.children}, respawned ${s.respawns}; ${(s.elapsedMs / 1000).toFixed(1)} s)`
  );
}

const ORDER: FindingKind[] = [
  'crash',
  'hang',
  'undocumented',
  'divergence',
  'redirect',
  'leak',
  'wrong-result',
  'cloexec',
  'uncaught',
  'harness-error',
  'v8-oom',
];

/** The findings that count (fail the run): all but V8's own aborts under RLIMIT_AS. */
export function counted(s: Summary): Finding[] {
  return s.findings.filter((f) => f.kind !== 'v8-oom');
}

/** Findings grouped by category and signature, with the seeds and the first reproducer of each. */
export function report(s: Summary, markdown = false): string {
  const out: string[] = [];
  for (const kind of ORDER) {
    const fs = s.findings.filter((f) => f.kind === kind);
    if (fs.length === 0) continue;
    const groups = new Map<string, Finding[]>();
    for (const f of fs) groups.set(f.signature, [...(groups.get(f.signature) ?? []), f]);
    out.push(markdown ? `\n## ${kind} (${fs.length}, ${groups.size} distinct)\n` : `\n${kind}: ${fs.length} (${groups.size} distinct)`);
    for (const [, g] of [...groups].sort((a, b) => b[1].length - a[1].length)) {
      const f = g[0] as Finding;
      const seeds = [...new Set(g.map((x) => x.seed))];
      if (markdown) {
        out.push(`- **${g.length}x** \`${f.name}\`: ${f.detail}`);
        out.push(`  - first: seed ${f.seed}, call ${f.i}: \`${f.desc}\``);
        if (f.workerCall) out.push(`  - worker: ${f.workerCall}`);
        out.push(`  - replay: \`${f.replay}\``);
        if (seeds.length > 1) out.push(`  - seeds: ${seeds.slice(0, 10).join(', ')}${seeds.length > 10 ? ', ...' : ''}`);
      } else {
        out.push(`  [${g.length}x] ${f.name}: ${f.detail}`);
        out.push(`      first: seed ${f.seed} call ${f.i}: ${f.desc}`);
        if (f.workerCall) out.push(`      worker: ${f.workerCall}`);
        out.push(`      replay: ${f.replay}`);
        if (seeds.length > 1) out.push(`      seeds: ${seeds.slice(0, 10).join(', ')}${seeds.length > 10 ? ', ...' : ''}`);
      }
    }
  }
  return out.join('\n');
}

// ---- command line -------------------------------------------------------------------------------------

function parseArgs(argv: string[]): { o: CampaignOptions; findingsFile: string | null; jsonFile: string | null } {
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const num = (name: string, dflt: number): number => {
    const v = get(name);
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} wants a number, got '${v}'`);
    return n;
  };
  const limit = (name: string): number | null | undefined => {
    const v = get(name);
    return v === undefined || v === 'auto' ? undefined : v === 'none' ? null : Number(v);
  };
  let hazards = get('--hazards') !== undefined ? parseHazards(get('--hazards') as string) : allHazards(true);
  for (const h of HAZARDS) if (argv.includes(`--no-${h}`)) hazards = { ...hazards, [h]: false };
  const seedArg = get('--seed');
  const seed = seedArg === undefined ? randomInt(2 ** 32 - 1) : Number(seedArg);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) throw new Error(`--seed wants a u32, got '${seedArg}'`);
  const replay = argv.includes('--replay');
  const timeLimit = get('--time-limit-s');
  // --calls is the campaign's total (split over the children), or the one
  // child's calls with --replay; --calls-per-child sets the split directly.
  const children = replay ? 1 : Math.max(1, num('--children', 20));
  const perChild = get('--calls-per-child') !== undefined ? num('--calls-per-child', 0) : Math.ceil(num('--calls', replay ? 1000 : 100_000) / children);
  return {
    o: {
      seed,
      replay,
      hazards,
      children,
      calls: perChild,
      parallel: num('--parallel', 2),
      hangMs: num('--hang-ms', 10_000),
      startupMs: num('--startup-ms', 60_000),
      timeLimitMs: timeLimit === undefined ? null : Number(timeLimit) * 1000,
      maxRespawns: num('--max-respawns', 200),
      nofileHeadroom: limit('--nofile-headroom'),
      asBytes: limit('--as'),
      excludeOps: get('--exclude-ops') ?? null,
      log: (l) => console.log(l),
      verbose: !argv.includes('--quiet'),
    },
    findingsFile: get('--findings') ?? null,
    jsonFile: get('--json') ?? null,
  };
}

async function cli(): Promise<number> {
  const { o, findingsFile, jsonFile } = parseArgs(process.argv.slice(2));
  if (!existsSync(childScript())) {
    console.error(`fuzz: ${childScript()} is missing: build first (npx tsc -p tsconfig.json)`);
    return 2;
  }
  // The campaign's checks ask the kernel (tables, fds): without a device every
  // KVM call would only be ENOENT, and the run would say nothing.
  try {
    closeSync(openSync('/dev/kvm', 'r+'));
  } catch (e) {
    console.error(
      `fuzz: /dev/kvm cannot be opened (${(e as NodeJS.ErrnoException).code}): the campaign needs a KVM; ` +
        'run it inside a test VM: node dist/tools/testvm/cli.js run --overlay . --cpus 1 -- node dist/tools/fuzz/driver.js ARGS',
    );
    return 2;
  }
  const s = await runCampaign(o);
  console.log(`\nsummary: ${summaryLine(s)}`);
  const codes = Object.entries(s.codes).sort((a, b) => b[1] - a[1]);
  if (codes.length > 0)
    console.log(
      `typed errors by class: ${codes
        .slice(0, 30)
        .map(([k, n]) => `${k} ${n}`)
        .join(', ')}`,
    );
  const time = Object.entries(s.time).sort((a, b) => b[1].callMs + b[1].checkMs - a[1].callMs - a[1].checkMs);
  if (time.length > 0 && o.verbose) {
    console.log(
      `time by operation (calls: call ms + check ms): ${time
        .slice(0, 12)
        .map(([k, t]) => `${k} ${t.n}: ${Math.round(t.callMs)}+${Math.round(t.checkMs)}`)
        .join(', ')}`,
    );
  }
  if (s.findings.length > 0) console.log(report(s));
  if (findingsFile !== null) {
    writeFileSync(findingsFile, `# kvm-gmem fuzz findings\n\nseed ${s.seed}: ${summaryLine(s)}\n${report(s, true)}\n`);
    console.log(`\nfindings written to ${findingsFile}`);
  }
  if (jsonFile !== null) writeFileSync(jsonFile, JSON.stringify(s, null, 2));
  const n = counted(s).length;
  console.log(n === 0 ? '\nno findings' : `\n${n} findings (seed ${s.seed})`);
  return n === 0 ? 0 : 1;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await cli();
}
