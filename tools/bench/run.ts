// npm run bench: every benchmark against its C twin (c/bench.c). Both sides
// are set up once per case, then run in short alternating batches (the C
// twin as a server fed batch sizes on stdin), so each JS batch is paired
// with a C batch measured milliseconds apart: on a shared, noisy machine
// that pairing is what keeps the ratio stable. Reports the median of the
// per-pair JS/C ratios with min and max, and the absolute medians, as a
// table and as JSON. The memslot scale curve is one long run per side.
//
//   node dist/tools/bench/run.js [--rounds N] [--cases a,b] [--json FILE] [--quick] [--no-pin]
//   node dist/tools/bench/run.js --testvm   (conversions, inside the test VM)
import { type ChildProcessWithoutNullStreams, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kvm } from './api.js';
import * as cases from './cases.js';
import { median } from './stats.js';

interface Case {
  name: string;
  /** Iterations per batch (each side), sized for tens of milliseconds. */
  iterations: number;
  /** C twin case name (and its extra argument). */
  c: [string, ...string[]];
  /** Opens the JS side once; the memslot scale case is a single run instead. */
  js: (() => cases.Session) | { oneShot: (n: number) => cases.CaseResult };
  target?: number;
  /** Capability the case needs; skipped (and said so) without it. */
  needs?: (kvm: Kvm) => string | null;
}

const ROOT = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!d.endsWith('/dist') && dirname(d) !== d) d = dirname(d);
  return d.endsWith('/dist') ? dirname(d) : resolve(dirname(fileURLToPath(import.meta.url)), '../..');
})();
const OUT = join(ROOT, 'build', 'bench');
const BIN = join(OUT, 'bench');
const IMAGE = join(OUT, 'guest.img');

const privateMemory = (kvm: Kvm): string | null =>
  kvm.capabilities().vmTypes.includes('sw-protected') ? null : 'needs KVM_X86_SW_PROTECTED_VM with KVM_CAP_MEMORY_ATTRIBUTES (run with --testvm)';

function allCases(quick: boolean, image: string): Case[] {
  const q = (n: number): number => (quick ? Math.max(10, Math.floor(n / 10)) : n);
  return [
    { name: 'check-extension', iterations: q(50_000), c: ['check-extension'], js: cases.checkExtension, target: 1.3 },
    // Reference, not a target: the same JS against a C twin that has a second
    // (idle) thread, as every Node process does (see bench.c).
    { name: 'check-extension-2thread-c', iterations: q(50_000), c: ['check-extension-mt'], js: cases.checkExtension },
    { name: 'check-extensions-batch32', iterations: q(50_000), c: ['check-extension'], js: cases.checkExtensionsBatch },
    { name: 'memslot-add-delete-2m', iterations: q(500), c: ['memslot-add-delete-2m'], js: cases.memslotAddDelete, target: 1.05 },
    { name: 'gmem-create-4k', iterations: q(2_000), c: ['gmem-create-4k'], js: cases.gmemCreate },
    { name: 'memslot-scale', iterations: quick ? 4096 : 32_764, c: ['memslot-scale'], js: { oneShot: cases.memslotScale } },
    { name: 'kvm-run-io', iterations: q(5_000), c: ['kvm-run-io', image], js: cases.kvmRunIo, target: 1.05 },
    { name: 'kvm-run-io-async', iterations: q(1_000), c: ['kvm-run-io', image], js: cases.kvmRunIoAsync },
    { name: 'convert-4k', iterations: q(1_000), c: ['convert-4k'], js: () => cases.convertCase(false), target: 1.15, needs: privateMemory },
    { name: 'convert-4k-discard', iterations: q(500), c: ['convert-4k-discard'], js: () => cases.convertCase(true), target: 1.15, needs: privateMemory },
    { name: 'punch-4k', iterations: q(10_000), c: ['punch-4k'], js: () => cases.fallocateCase(4096, true) },
    { name: 'allocate-4k', iterations: q(10_000), c: ['allocate-4k'], js: () => cases.fallocateCase(4096, false) },
    { name: 'punch-2m', iterations: q(200), c: ['punch-2m'], js: () => cases.fallocateCase(2 << 20, true) },
    { name: 'allocate-2m', iterations: q(100), c: ['allocate-2m'], js: () => cases.fallocateCase(2 << 20, false) },
  ];
}

/** The C twin in serve mode: one batch size in, ns per iteration out. */
class Twin {
  private readonly lines: string[] = [];
  private waiter: { res: (line: string) => void; rej: (e: Error) => void } | null = null;
  private exited: Error | null = null;
  private buf = '';
  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    child.on('exit', (code) => {
      this.exited = new Error(`bench twin exited (${code}) before answering`);
      this.waiter?.rej(this.exited);
      this.waiter = null;
    });
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      this.buf += d;
      for (let i = this.buf.indexOf('\n'); i >= 0; i = this.buf.indexOf('\n')) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiter;
        this.waiter = null;
        if (w) w.res(line);
        else this.lines.push(line);
      }
    });
    child.stderr.pipe(process.stderr);
  }

  static async start(args: string[]): Promise<Twin> {
    const t = new Twin(spawn(BIN, ['serve', ...args]));
    const first = await t.next();
    if (first !== 'ready') throw new Error(`bench twin ${args.join(' ')}: expected "ready", got "${first}"`);
    return t;
  }

  private next(): Promise<string> {
    const l = this.lines.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.exited) return Promise.reject(this.exited);
    return new Promise((res, rej) => {
      this.waiter = { res, rej };
    });
  }

  async run(n: number): Promise<number> {
    this.child.stdin.write(`${n}\n`);
    return Number(await this.next());
  }

  close(): void {
    this.child.stdin.end('0\n');
  }
}

function compileTwin(): void {
  mkdirSync(OUT, { recursive: true });
  const cc = process.env.CC ?? 'cc';
  execFileSync(cc, ['-O2', '-Wall', '-pthread', '-o', BIN, join(ROOT, 'tools', 'bench', 'c', 'bench.c')], { stdio: 'inherit' });
}

function runTwinOnce(c: Case): { nsPerOp: number; points: [number, number][] } {
  const out = execFileSync(BIN, [c.c[0], String(c.iterations), ...c.c.slice(1)], { encoding: 'utf8' });
  const j = JSON.parse(out.trim().split('\n').pop() as string) as { ns_per_op: number; points: [number, number][] };
  return { nsPerOp: j.ns_per_op, points: j.points };
}

interface Row {
  name: string;
  iterations: number;
  rounds: number;
  jsMedianNs: number;
  cMedianNs: number;
  ratio: { median: number; min: number; max: number };
  target?: number;
  met?: boolean;
  skipped?: string;
  curve?: { slots: number; jsNs: number; cNs: number; bookkeepingNs: number }[];
}

function summarize(c: Case, rounds: number, js: number[], cc: number[]): Row {
  const ratios = js.map((j, i) => j / (cc[i] as number));
  const row: Row = {
    name: c.name,
    iterations: c.iterations,
    rounds,
    jsMedianNs: median(js),
    cMedianNs: median(cc),
    ratio: { median: median(ratios), min: Math.min(...ratios), max: Math.max(...ratios) },
  };
  if (c.target !== undefined) {
    row.target = c.target;
    row.met = row.ratio.median <= c.target;
  }
  return row;
}

// Both sides set up once, a warm-up batch each, then `rounds` pairs of
// batches; which side goes first alternates, so neither always runs on a
// warmer machine.
async function measurePaired(c: Case, open: () => cases.Session, rounds: number): Promise<Row> {
  const session = open();
  const twin = await Twin.start(c.c);
  try {
    await session.run(Math.max(1, Math.floor(c.iterations / 2)));
    await twin.run(Math.max(1, Math.floor(c.iterations / 2)));
    const js: number[] = [];
    const cc: number[] = [];
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        cc.push(await twin.run(c.iterations));
        js.push(await session.run(c.iterations));
      } else {
        js.push(await session.run(c.iterations));
        cc.push(await twin.run(c.iterations));
      }
    }
    return summarize(c, rounds, js, cc);
  } finally {
    twin.close();
    session.close();
  }
}

// The scale curve: one full run per side per round (the table only grows).
function measureOneShot(c: Case, run: (n: number) => cases.CaseResult, rounds: number): Row {
  const js: number[] = [];
  const cc: number[] = [];
  let last: { js: cases.CaseResult; c: { points: [number, number][] } } | undefined;
  for (let r = 0; r < rounds; r++) {
    const first = r % 2 === 0 ? runTwinOnce(c) : undefined;
    const jr = run(c.iterations);
    const cr = first ?? runTwinOnce(c);
    js.push(jr.nsPerOp);
    cc.push(cr.nsPerOp);
    last = { js: jr, c: cr };
  }
  const row = summarize(c, rounds, js, cc);
  if (last?.js.points) {
    const bk = (last.js.extra?.bookkeeping ?? []) as [number, number][];
    const cp = last.c.points;
    row.curve = last.js.points.map(([slots, ns], i) => ({ slots, jsNs: ns, cNs: cp[i]?.[1] ?? NaN, bookkeepingNs: bk[i]?.[1] ?? NaN }));
  }
  return row;
}

function fmtNs(ns: number): string {
  return ns >= 1e6 ? `${(ns / 1e6).toFixed(2)} ms` : ns >= 1e3 ? `${(ns / 1e3).toFixed(2)} us` : `${ns.toFixed(0)} ns`;
}

function printTable(rows: Row[]): void {
  const head = ['benchmark', 'JS median', 'C median', 'JS/C median', 'min', 'max', 'target'];
  const lines = rows.map((r) =>
    r.skipped
      ? [r.name, '-', '-', 'skipped', '', '', r.skipped]
      : [
          r.name,
          fmtNs(r.jsMedianNs),
          fmtNs(r.cMedianNs),
          r.ratio.median.toFixed(3),
          r.ratio.min.toFixed(3),
          r.ratio.max.toFixed(3),
          r.target === undefined ? '' : `<= ${r.target} ${r.met ? 'met' : 'MISSED'}`,
        ],
  );
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)));
  const fmt = (l: string[]): string => l.map((x, i) => x.padEnd(widths[i] as number)).join('  ');
  console.log(fmt(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const l of lines) console.log(fmt(l));
  for (const r of rows) {
    if (!r.curve) continue;
    console.log(`\n${r.name}: per-slot cost by table size (mean over each window of 1024 slots)`);
    console.log('slots   JS/slot     C/slot      bookkeeping/slot  bookkeeping share');
    for (const p of r.curve) {
      if (p.slots % 4096 !== 0 && p.slots !== 1024 && p.slots !== r.iterations) continue;
      console.log(
        `${String(p.slots).padEnd(7)} ${fmtNs(p.jsNs).padEnd(11)} ${fmtNs(p.cNs).padEnd(11)} ${fmtNs(p.bookkeepingNs).padEnd(17)} ${((100 * p.bookkeepingNs) / p.jsNs).toFixed(2)}%`,
      );
    }
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  if (args.includes('--testvm')) {
    const { runInTestVm } = await import('../testvm/index.js');
    compileTwin();
    const r = await runInTestVm({
      command: [
        'node',
        join(ROOT, 'dist/tools/bench/run.js'),
        '--cases',
        'convert-4k,convert-4k-discard',
        '--json',
        '/run/testvm/bench.json',
        ...(args.includes('--quick') ? ['--quick'] : []),
      ],
      cwd: ROOT,
      // One CPU: two under TCG crashed the guest kernel (see tools/testvm).
      cpus: 1,
      onOutput: (chunk: string) => process.stdout.write(chunk),
    });
    process.exitCode = r.exitCode;
    return;
  }
  // Both sides on one CPU (the twin inherits the affinity): unpinned, this
  // shared host moved either side between CPUs at random and the kernel's
  // cost of the same memslot ioctl wandered 2x with it.
  if (!args.includes('--no-pin') && process.env.KVM_GMEM_BENCH_PINNED !== '1' && cpus().length > 1) {
    const cpu = String(cpus().length - 1);
    const r = spawnSync('taskset', ['-c', cpu, process.execPath, ...process.execArgv, fileURLToPath(import.meta.url), ...args], {
      stdio: 'inherit',
      env: { ...process.env, KVM_GMEM_BENCH_PINNED: '1' },
    });
    if (!r.error) {
      process.exitCode = r.status ?? 1;
      return;
    }
    console.error(`bench: not pinned to a CPU (taskset: ${r.error.message}); ratios will be noisier`);
  }
  const rounds = Number(opt('--rounds') ?? 31);
  const only = opt('--cases')?.split(',');
  const quick = args.includes('--quick');
  // Inside the test VM the project is read-only: the host compiled the twin
  // before booting, and results go to the run's writable share.
  const inVm = process.env.TESTVM === '1';
  if (!inVm) compileTwin();
  const image = inVm ? join(process.env.TMPDIR ?? '/tmp', 'guest.img') : IMAGE;
  if (!only || only.some((c) => c.startsWith('kvm-run-io'))) cases.writeGuestImage(image);
  using kvm = Kvm.open();
  const rows: Row[] = [];
  for (const c of allCases(quick, image)) {
    if (only && !only.includes(c.name)) continue;
    const missing = c.needs?.(kvm) ?? null;
    if (missing) {
      rows.push({
        name: c.name,
        iterations: c.iterations,
        rounds: 0,
        jsMedianNs: NaN,
        cMedianNs: NaN,
        ratio: { median: NaN, min: NaN, max: NaN },
        skipped: missing,
      });
      continue;
    }
    const n = typeof c.js === 'function' ? rounds : Math.min(rounds, 3);
    process.stderr.write(`${c.name} (${n} x ${c.iterations} per side)...\n`);
    rows.push(typeof c.js === 'function' ? await measurePaired(c, c.js, n) : measureOneShot(c, c.js.oneShot, n));
  }
  const machine = { kernel: release(), cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version, date: new Date().toISOString() };
  console.log(`\nkvm-gmem benchmarks: Linux ${machine.kernel}, ${machine.cpu} (${machine.cores} cores), Node ${machine.node}\n`);
  printTable(rows);
  const json = JSON.stringify({ machine, rows }, null, 2);
  const jsonPath = opt('--json') ?? join(OUT, 'results.json');
  writeFileSync(jsonPath, json);
  console.log(`\nJSON: ${jsonPath}`);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
