#!/usr/bin/env node
// The test-VM matrix (npm run test:vm): the whole vitest suite
// (vitest.vm.config.ts: every file `npm test` runs) inside each test kernel
// of the matrix (6.1, 6.12, 7.3), one VM per kernel, one after another, or
// --jobs N VMs side by side (each is one single-threaded TCG vCPU, so up to
// one per host CPU: what .ci/run does to stay well inside its time); per
// kernel the release, wall time and passed/failed/skipped counts, then a
// summary table. Exits 1 if any kernel failed (tests, skip guard, timeout,
// crash, or an image of the matrix missing), 2 on a usage error.
//
//   node dist/tools/testvm/matrix.js [--kernel 7.3]... [--jobs N] [--timeout S] [-- VITEST ARGS...]
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { BUILDABLE_SERIES, matrixKernels, type MatrixKernel, releaseMatches } from './kernel.js';
import { findRepoRoot } from './paths.js';
import { runInTestVm, TestVmCrashError, TestVmTimeoutError } from './vm.js';

const USAGE = `usage: matrix.js [--kernel SERIES]... [--jobs N] [--timeout S] [--cpus N] [-- VITEST ARGS...]
  Runs vitest (vitest.vm.config.ts) in the test VM once per kernel of the matrix
  (${BUILDABLE_SERIES.join(', ')}), or only those given with --kernel (a release prefix: 7.3, 6.1, 6.12.117).
  --jobs N      VMs side by side (default 1; at most one per host CPU makes sense,
                each VM being one TCG thread); with more than one, newest kernel
                first, and each output line starts with [release]
  --timeout S   limit per kernel, a guard against hangs (default 2400 s)
  --cpus N      guest CPUs (default 1: two crashed the guest under TCG, see README)
  Arguments after -- go to vitest (e.g. test/memslots.test.ts).`;

/** What the skip guard (test/support/vm-skip-guard.ts) writes into the work share. */
interface RunSummary {
  release: string;
  passed: number;
  failed: number;
  skipped: number;
  unjustified: string[];
  failedTests: string[];
  failedModules: string[];
}

export interface KernelResult {
  series: string;
  release: string;
  image: string;
  ok: boolean;
  wallMs: number;
  exitCode: number | undefined;
  summary: RunSummary | undefined;
  /** Why it failed, when it did. */
  problem: string | undefined;
}

export interface MatrixOptions {
  kernels?: string[];
  /** VMs side by side (default 1, one after another; never more than the kernels). */
  jobs?: number;
  timeoutMs?: number;
  cpus?: number;
  vitestArgs?: string[];
  repoRoot?: string;
  write?: (s: string) => void;
  /** Aborting kills the running VM and fails the kernels not yet run. */
  signal?: AbortSignal;
}

const secs = (ms: number): string => `${(ms / 1000).toFixed(0)} s`;

/**
 * A writer that prefixes every complete line with `[tag] ` (so the output of
 * VMs running side by side stays readable); flush() writes what is left.
 */
export function linePrefixer(tag: string, write: (s: string) => void): { write: (chunk: string) => void; flush: () => void } {
  let pending = '';
  return {
    write(chunk) {
      pending += chunk;
      const end = pending.lastIndexOf('\n');
      if (end < 0) return;
      write(
        pending
          .slice(0, end + 1)
          .split(/(?<=\n)/)
          .map((l) => `[${tag}] ${l}`)
          .join(''),
      );
      pending = pending.slice(end + 1);
    },
    flush() {
      if (pending) write(`[${tag}] ${pending}\n`);
      pending = '';
    },
  };
}

/**
 * The order the lanes take kernels in: newest first, because the newer
 * kernels run the most tests (private memory, two VM types) and take the
 * longest, so the short runs fill in behind them.
 */
export function scheduleOrder<T extends { release: string }>(kernels: readonly T[]): T[] {
  const key = (r: string): number[] => (r.match(/\d+/g) ?? []).slice(0, 3).map(Number);
  return [...kernels].sort((a, b) => {
    const x = key(a.release);
    const y = key(b.release);
    for (let i = 0; i < 3; i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (y[i] ?? 0) - (x[i] ?? 0);
    return 0;
  });
}

/** A kernel's result before (or instead of) a run: not ok, no counts. */
function notRun(series: string, release: string, image: string, problem: string | undefined): KernelResult {
  return { series, release, image, ok: false, wallMs: 0, exitCode: undefined, summary: undefined, problem };
}

async function runOne(
  k: MatrixKernel,
  o: Required<Omit<MatrixOptions, 'kernels' | 'signal' | 'jobs'>> & { signal: AbortSignal | undefined },
): Promise<KernelResult> {
  const res = notRun(k.series, k.release, k.path, undefined);
  const started = Date.now();
  let workDir: string | undefined;
  try {
    const r = await runInTestVm({
      kernel: k.path,
      cwd: o.repoRoot,
      overlay: [o.repoRoot],
      cpus: o.cpus,
      timeoutMs: o.timeoutMs,
      keepWorkDir: true,
      ...(o.signal && { signal: o.signal }),
      command: ['node', 'node_modules/vitest/vitest.mjs', 'run', '--config', 'vitest.vm.config.ts', ...o.vitestArgs],
      onOutput: (chunk) => o.write(chunk),
    });
    workDir = r.workDir;
    res.wallMs = r.wallMs;
    res.exitCode = r.exitCode;
    try {
      res.summary = JSON.parse(readFileSync(path.join(r.workDir ?? '', 'vitest-summary.json'), 'utf8')) as RunSummary;
    } catch {
      res.problem = 'vitest wrote no summary (it did not reach the end of its run)';
    }
    if (r.exitCode !== 0) res.problem ??= `vitest exited with ${r.exitCode}`;
    res.ok = r.exitCode === 0 && res.summary !== undefined;
  } catch (e) {
    res.wallMs = Date.now() - started;
    res.problem =
      e instanceof TestVmTimeoutError
        ? `timed out after ${secs(o.timeoutMs)}`
        : e instanceof TestVmCrashError
          ? `the VM crashed: ${e.message.split('\n')[0] ?? ''}`
          : `${(e as Error).message.split('\n')[0] ?? String(e)}`;
  } finally {
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  }
  return res;
}

function line(r: KernelResult): string {
  const s = r.summary;
  const counts = s ? `${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped` : 'no counts';
  return `${r.ok ? 'PASS' : 'FAIL'}  Linux ${r.release} (${path.basename(r.image)}): ${secs(r.wallMs)}, ${counts}${r.problem ? `; ${r.problem}` : ''}`;
}

function table(results: readonly KernelResult[]): string {
  const rows = [
    ['kernel', 'result', 'wall', 'passed', 'failed', 'skipped', 'bad skips'],
    ...results.map((r) => [
      r.release,
      r.ok ? 'pass' : 'FAIL',
      r.wallMs ? secs(r.wallMs) : '-',
      ...(r.summary ? [r.summary.passed, r.summary.failed, r.summary.skipped, r.summary.unjustified.length].map(String) : ['-', '-', '-', '-']),
    ]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows.map((row) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ')).join('\n');
}

/** Runs the matrix; resolves with one result per kernel (a missing series is a failed result). */
export async function runMatrix(opts: MatrixOptions = {}): Promise<KernelResult[]> {
  const o = {
    timeoutMs: opts.timeoutMs ?? 2_400_000,
    cpus: opts.cpus ?? 1,
    vitestArgs: opts.vitestArgs ?? [],
    repoRoot: opts.repoRoot ?? findRepoRoot(),
    write: opts.write ?? ((s: string) => void process.stdout.write(s)),
    signal: opts.signal,
  };
  const found = await matrixKernels();
  const wanted = opts.kernels?.length ? opts.kernels : [...BUILDABLE_SERIES];
  const results: KernelResult[] = [];
  const plan: MatrixKernel[] = [];
  for (const sel of wanted) {
    const k = found.filter((x) => releaseMatches(x.release, sel)).at(-1);
    if (!k) {
      const have = found.map((x) => x.release).join(', ') || 'none';
      results.push(notRun(sel, sel, '(none)', `no image for ${sel} (found: ${have})`));
    } else if (k.checksum === 'mismatch' || k.checksum === 'bad-checksum-file') {
      results.push(notRun(sel, k.release, k.path, `checksum: ${k.checksumDetail ?? k.checksum}`));
    } else if (!plan.includes(k)) plan.push(k);
  }
  const jobs = Math.max(1, Math.min(opts.jobs ?? 1, plan.length));
  const queue = scheduleOrder(plan);
  const done = new Map<MatrixKernel, KernelResult>();
  const lane = async (): Promise<void> => {
    for (let k = queue.shift(); k; k = queue.shift()) {
      if (o.signal?.aborted) {
        done.set(k, notRun(k.series, k.release, k.path, 'not run (interrupted)'));
        continue;
      }
      // One VM at a time streams as it is; side by side, each line says whose it is.
      const out = jobs > 1 ? linePrefixer(k.release, o.write) : { write: o.write, flush: () => {} };
      out.write(`\n==== test VM: Linux ${k.release} (${k.path}) ====\n`);
      const r = await runOne(k, { ...o, write: out.write });
      out.flush();
      done.set(k, r);
      const report = [`\n${line(r)}\n`];
      for (const t of r.summary?.failedTests ?? []) report.push(`  failed: ${t}\n`);
      for (const t of r.summary?.failedModules ?? []) report.push(`  failed file: ${t}\n`);
      for (const t of r.summary?.unjustified ?? []) report.push(`  bad skip: ${t}\n`);
      o.write(report.join(''));
    }
  };
  if (jobs > 1)
    o.write(
      `\ntest VM matrix: ${plan.length} kernels, ${jobs} VMs at a time (${scheduleOrder(plan)
        .map((k) => k.release)
        .join(', ')})\n`,
    );
  await Promise.all(Array.from({ length: jobs }, lane));
  // The table keeps the matrix's order (ascending), whatever order they finished in.
  for (const k of plan) results.push(done.get(k)!);
  o.write(`\n==== test VM matrix ====\n${table(results)}\n`);
  return results;
}

class UsageError extends Error {}

function parse(argv: string[]): MatrixOptions {
  const o: MatrixOptions = { kernels: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value`);
      return v;
    };
    if (a === '--') {
      o.vitestArgs = argv.slice(i + 1);
      break;
    } else if (a === '--kernel') o.kernels!.push(...value().split(','));
    else if (a === '--timeout' || a === '--cpus' || a === '--jobs') {
      const n = Number(value());
      if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${a} needs a positive integer`);
      if (a === '--timeout') o.timeoutMs = n * 1000;
      else if (a === '--jobs') o.jobs = n;
      else o.cpus = n;
    } else if (a === '-h' || a === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else throw new UsageError(`unknown option ${a}`);
  }
  return o;
}

// Run as a command (not when imported).
if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  let opts: MatrixOptions;
  try {
    opts = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`matrix: ${(e as Error).message}\n${USAGE}\n`);
    process.exit(2);
  }
  const ac = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => ac.abort(new Error(`interrupted by ${sig}`)));
  runMatrix({ ...opts, signal: ac.signal }).then(
    (results) => {
      process.exitCode = results.every((r) => r.ok) ? 0 : 1;
    },
    (e: unknown) => {
      process.stderr.write(`matrix: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 2;
    },
  );
}
