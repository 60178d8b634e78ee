// Shared facts of the C-selftest tools (build.ts, vm-run.ts, compare.ts): which
// kernel sources are built, which selftests, and where the results live.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { RunRecord } from './parse.js';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The repository root: nearest ancestor of this module with package.json and tools/selftests-c/. */
export function repoRoot(start: string = here): string {
  let dir = path.resolve(start);
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'tools', 'selftests-c'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the kvm-gmem repository root above ${start}`);
    dir = parent;
  }
}

/** `<repo>/.cache/selftests-c` (gitignored), or $KVM_GMEM_SELFTESTS_C_CACHE. */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.KVM_GMEM_SELFTESTS_C_CACHE ? path.resolve(env.KVM_GMEM_SELFTESTS_C_CACHE) : path.join(repoRoot(), '.cache', 'selftests-c');
}

export const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

/** The source series whose selftests are built. */
export type SourceSeries = '6.12' | '7.3';
export const SOURCE_SERIES: readonly SourceSeries[] = ['6.12', '7.3'];

export interface SourceRecipe {
  series: SourceSeries;
  sourcePackage: string;
  /** The tarball inside the .deb. */
  tarball: string;
  /** x86 selftest subdirectory: x86_64 in 6.12, x86 in 7.3. */
  x86Dir: string;
  /**
   * Where the package comes from: 'host' = the host's own apt sources (bookworm-security has linux-source-6.12),
   * with `fallbackLine` as a separate sources file when the host's lists lack it; 'isolated' = only `fallbackLine`.
   */
  fetch: 'host' | 'isolated';
  fallbackSuite: string;
  fallbackLine: string;
  /** Test names (the C file's base name) this series has. */
  tests: string[];
}

/** Every test the comparison knows, in table order. */
export const ALL_TESTS = [
  'guest_memfd_test',
  'set_memory_region_test',
  'pre_fault_memory_test',
  'private_mem_conversions_test',
  'private_mem_kvm_exits_test',
  'vm_types_test',
  'memslot_perf_test',
] as const;

/** `name` when it is one of ALL_TESTS, else an error for the option `option` that lists them. */
export function testName(name: string, option = '--test'): string {
  if (!(ALL_TESTS as readonly string[]).includes(name)) throw new Error(`${option} takes one of ${ALL_TESTS.join(', ')}, got ${name}`);
  return name;
}

export const SOURCE_RECIPES: Readonly<Record<SourceSeries, SourceRecipe>> = {
  '6.12': {
    series: '6.12',
    sourcePackage: 'linux-source-6.12',
    tarball: 'usr/src/linux-source-6.12.tar.xz',
    x86Dir: 'x86_64',
    fetch: 'host',
    fallbackSuite: 'bookworm-security',
    fallbackLine: `deb [signed-by=${DEBIAN_KEYRING}] http://deb.debian.org/debian-security bookworm-security main`,
    // vm_types_test is new in 7.3.
    tests: ALL_TESTS.filter((t) => t !== 'vm_types_test'),
  },
  '7.3': {
    series: '7.3',
    sourcePackage: 'linux-source-7.3',
    tarball: 'usr/src/linux-source-7.3.tar.xz',
    x86Dir: 'x86',
    fetch: 'isolated',
    fallbackSuite: 'trixie-backports',
    fallbackLine: `deb [signed-by=${DEBIAN_KEYRING}] http://deb.debian.org/debian trixie-backports main`,
    tests: [...ALL_TESTS],
  },
};

/** Tests whose source is in the x86 subdirectory. */
export const X86_TESTS = new Set(['private_mem_conversions_test', 'private_mem_kvm_exits_test']);

/** Arguments given to a C test (and its port) so that it ends in reasonable time under TCG. */
export const TEST_ARGS: Readonly<Record<string, string[]>> = {
  // 6 tests x 5 s by default, over KVM_CAP_NR_MEMSLOTS (32764) slots: under TCG that takes many minutes.
  // 1 s per test and at most 1024 slots keep the reference numbers and bound the run.
  memslot_perf_test: ['-l', '1', '-s', '1024'],
};

/** The make target (relative to tools/testing/selftests/kvm) of a test in a series. */
export function makeTarget(recipe: SourceRecipe, test: string): string {
  return X86_TESTS.has(test) ? `${recipe.x86Dir}/${test}` : test;
}

/** Per-series directories in the cache. */
export function seriesDirs(series: SourceSeries, root: string = cacheRoot()) {
  const base = path.join(root, series);
  return {
    base,
    fetch: path.join(base, 'fetch'),
    tree: path.join(base, 'tree'),
    bin: path.join(base, 'bin'),
    /** Build facts (package version, times), written after a successful build. */
    info: path.join(base, 'build-info.json'),
  };
}

export interface BuildInfo {
  series: SourceSeries;
  sourcePackage: string;
  version: string;
  builtAt: string;
  tests: string[];
}

export function fmtSeconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

export interface StepResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

/** Runs a command, collecting stdout+stderr (the last 1 MiB); never rejects on a non-zero exit. */
export function runCommand(cmd: string, args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv; echo?: boolean } = {}): Promise<StepResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const take = (b: Buffer): void => {
      if (o.echo) process.stderr.write(b);
      out = (out + b.toString('utf8')).slice(-(1 << 20));
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, output: out }));
  });
}

/** Like runCommand, but rejects with the command line and its last output lines unless it exits 0. */
export async function mustRun(cmd: string, args: string[], o: { cwd?: string; env?: NodeJS.ProcessEnv; echo?: boolean } = {}): Promise<string> {
  const r = await runCommand(cmd, args, o);
  if (r.code === 0) return r.output;
  const tail = r.output.trimEnd().split('\n').slice(-40).join('\n  ');
  throw new Error(
    `\`${[cmd, ...args].join(' ')}\` failed (${r.signal ? `signal ${r.signal}` : `exit code ${r.code}`})${o.cwd ? ` in ${o.cwd}` : ''}:\n  ${tail}`,
  );
}

// ---------------------------------------------------------------------------
// Running one selftest (vm-run.ts, compare.ts)

export interface KernelRunFile {
  kernelRelease: string;
  devKvm: boolean;
  startedAt: string;
  finishedAt?: string;
  timeoutS: number;
  /** Per source series: the package version its binaries were built from. */
  builds: Record<string, string>;
  /** c[test][series] */
  c: Record<string, Record<string, RunRecord>>;
  /** port[test]; absent: no port in dist/selftests. */
  port: Record<string, RunRecord>;
  /** Tests whose port file does not exist. */
  noPort: string[];
}

const OUTPUT_KEEP = 48 * 1024;

/** Keeps the start and the end of a long output (the failure block is at the end, the plan at the start). */
function clip(s: string): string {
  if (s.length <= 2 * OUTPUT_KEEP) return s;
  return `${s.slice(0, OUTPUT_KEEP)}\n[... ${s.length - 2 * OUTPUT_KEEP} characters cut ...]\n${s.slice(-OUTPUT_KEEP)}`;
}

/**
 * Runs argv in its own process group with stdout and stderr in one pipe; on timeout SIGKILLs the group and waits
 * up to 10 s more for it to go (a task spinning in the kernel may not).
 */
export function runWithTimeout(argv: string[], timeoutS: number, cwd: string): Promise<RunRecord> {
  return new Promise((resolve) => {
    const started = performance.now();
    // exec 2>&1: one stream, in the order the process wrote it.
    const child = spawn('/bin/sh', ['-c', 'exec "$@" 2>&1', 'sh', ...argv], { cwd, detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    let timedOut = false;
    let done = false;
    child.stdout.on('data', (b: Buffer) => {
      output += b.toString('utf8');
      if (output.length > 8 * OUTPUT_KEEP) output = clip(output);
    });
    const finish = (exitCode: number | null, signal: string | null, unkillable = false): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve({ exitCode, signal, timedOut, timeoutS, ...(unkillable && { unkillable }), wallMs: performance.now() - started, output: clip(output) });
    };
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
      setTimeout(() => {
        child.stdout.destroy();
        finish(null, 'SIGKILL', true);
      }, 10_000).unref();
    }, timeoutS * 1000);
    child.on('error', (e) => {
      output += `\n[runner: cannot start ${argv[0]}: ${e.message}]\n`;
      finish(127, null);
    });
    child.on('close', (code, signal) => finish(code, signal));
  });
}
