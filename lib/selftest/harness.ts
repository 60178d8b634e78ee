// The KTAP harness of kvm-gmem/selftest. A selftest file registers tests
// with test(); they run in order once the file has loaded (or when it calls
// run()), and the process prints what the kernel's kselftest.h prints, so a
// file runs under tools/testing/selftests/kselftest/runner.sh and LKFT's
// parser unchanged:
//
//   TAP version 13
//   1..3
//   ok 1 create a guest_memfd
//   # GM-1: expected the kernel to fail with EINVAL, but the call succeeded
//   not ok 2 non-page-aligned sizes
//   ok 3 private memory # SKIP Requirement not met: vm-type:sw-protected (...)
//   # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0
//
// and exits KSFT_FAIL (1) if a test failed, KSFT_SKIP (4) if every test
// skipped (or the whole file, as `1..0 # SKIP reason`), else KSFT_PASS (0).
// Output goes straight to fd 1 with writeSync, so nothing is lost when the
// process exits. Timeouts: a test's own (an async test that runs past it
// fails as `# TIMEOUT`), and a watchdog thread for what JavaScript timers
// cannot end (a synchronous call blocked in the kernel) and for the file.
import { writeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { KvmGmemError } from '../errors.js';
import { SelftestAssertionError } from './assert.js';
import { type Need, unmet } from './requirements.js';

export const KSFT_PASS = 0;
export const KSFT_FAIL = 1;
export const KSFT_SKIP = 4;

/** Thrown by skip() and requires() inside a test: the test ends as `ok N name # SKIP reason`. */
export class SelftestSkip extends KvmGmemError {
  override name = 'SelftestSkip';
  readonly code = 'ERR_KVM_SELFTEST_SKIP';
  constructor(readonly reason: string) {
    super(reason);
  }
}

/** Misuse of the harness (a test registered while the run goes on, a bad timeout). */
export class SelftestUsageError extends KvmGmemError {
  override name = 'SelftestUsageError';
  readonly code = 'ERR_KVM_SELFTEST_USAGE';
}

export interface TestOptions {
  /** This test's limit in ms (default: the file's test timeout, 120 s; 0: none). */
  timeoutMs?: number;
}

/**
 * How a harness prints and ends. 'file' (a selftest run as a program):
 * straight to fd 1, tests start by themselves once the file has loaded, the
 * process exits with the kselftest status. 'collected' (the suite runner
 * imports several files into one process): output goes to `write`, nothing
 * starts by itself, a top-level skip throws SelftestSkip out of the import,
 * and runTests() returns the counts instead of exiting.
 */
export interface HarnessMode {
  collected: boolean;
  write: (text: string) => void;
  /** Print each test's wall time as a diagnostic before its result line. */
  times: boolean;
}

export interface HarnessOptions {
  /** Default per-test limit in ms (120,000; 0: none). */
  testTimeoutMs?: number;
  /** Limit for the whole file in ms (0: none, the default; KVM_GMEM_SELFTEST_TIMEOUT_S sets it in seconds). */
  fileTimeoutMs?: number;
}

interface Entry {
  name: string;
  fn: () => unknown;
  timeoutMs: number | undefined;
}

export interface Counts {
  pass: number;
  fail: number;
  skip: number;
}

const DEFAULT_TEST_TIMEOUT_MS = 120_000;
// How much longer than a test's limit the watchdog waits before it decides
// the main thread is blocked (the main thread reports async timeouts itself).
const WATCHDOG_GRACE_MS = 2_000;

function out(text: string): void {
  let buf = Buffer.from(text);
  while (buf.length > 0) {
    try {
      buf = buf.subarray(writeSync(1, buf));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
    }
  }
}

/** Prefixes every line with '# ' (a KTAP diagnostic). */
function diagLines(text: string): string {
  return text
    .split('\n')
    .map((l) => `# ${l}`.trimEnd())
    .join('\n');
}

const totalsLine = (c: Counts): string => `# Totals: pass:${c.pass} fail:${c.fail} xfail:0 xpass:0 skip:${c.skip} error:0`;
const directiveSafe = (s: string): string => s.replace(/\s*\n\s*/g, ' ');

/** Where in the selftest file an error was thrown (the first frame outside this package's selftest module). */
function origin(e: Error): string | undefined {
  const frames = (e.stack ?? '').split('\n').slice(1);
  const frame = frames.find((f) => !/[/\\]selftest[/\\](assert|harness|requirements)\.[jt]s/.test(f) && !f.includes('node:'));
  return frame?.trim().replace(/^at /, '');
}

function describeFailure(name: string, e: unknown): string {
  if (e instanceof SelftestAssertionError) {
    const lines = [`${name}: ${e.message}`];
    const at = origin(e);
    if (at) lines.push(`  at ${at}`);
    for (const d of e.details) lines.push(`  ${d}`);
    return lines.join('\n');
  }
  if (e instanceof Error) return `${name}: ${e.stack ?? `${e.name}: ${e.message}`}`;
  return `${name}: a thrown ${String(e)}`;
}

// The watchdog thread: told each test's deadline, it prints a Bail out! and
// kills the process when the main thread has not moved past it (blocked in
// a synchronous call), or when the file's deadline passes.
const WATCHDOG = `
const { parentPort, workerData } = require('node:worker_threads');
const { writeSync } = require('node:fs');
let current = null;
parentPort.on('message', (m) => { current = m; });
const bail = (why) => {
  const c = current ? current.counts : { pass: 0, fail: 0, skip: 0 };
  writeSync(1, '# ' + why + '\\nBail out! ' + why + '\\n# Totals: pass:' + c.pass + ' fail:' + (c.fail + 1) + ' xfail:0 xpass:0 skip:' + c.skip + ' error:0\\n');
  process.kill(process.pid, 'SIGKILL');
};
setInterval(() => {
  const now = Date.now();
  if (workerData.fileDeadline && now > workerData.fileDeadline) bail('timeout: the file ran past its ' + workerData.fileTimeoutMs + ' ms');
  if (current && current.deadline && now > current.deadline) bail('timeout: test ' + current.n + ' (' + current.name + ') blocked past its ' + current.timeoutMs + ' ms');
}, 50);
`;

/** kselftest's status for a file's counts: 1 if a test failed, 4 if every test skipped, else 0. */
export function ksftStatus(c: Counts): number {
  return c.fail > 0 ? KSFT_FAIL : c.pass === 0 && c.skip > 0 ? KSFT_SKIP : KSFT_PASS;
}

export class Harness {
  readonly #tests: Entry[] = [];
  #state: 'idle' | 'scheduled' | 'running' | 'done' = 'idle';
  #current: Entry | undefined;
  #options: Required<HarnessOptions>;
  readonly #mode: HarnessMode;
  readonly #early: string[] = [];

  constructor(options: HarnessOptions = {}, mode: HarnessMode = { collected: false, write: out, times: process.env.KVM_GMEM_SELFTEST_TIMES === '1' }) {
    this.#mode = mode;
    const env = process.env.KVM_GMEM_SELFTEST_TIMEOUT_S;
    this.#options = {
      testTimeoutMs: DEFAULT_TEST_TIMEOUT_MS,
      fileTimeoutMs: env !== undefined && env !== '' ? Number(env) * 1000 : 0,
    };
    this.configure(options);
  }

  /** Sets the default test timeout and the file timeout (before the run). */
  configure(options: HarnessOptions): void {
    for (const [k, v] of Object.entries(options) as [keyof HarnessOptions, unknown][]) {
      if (v === undefined) continue;
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
        throw new SelftestUsageError(`${k} must be an integer number of ms >= 0, got ${String(v)}`);
      this.#options[k] = v;
    }
  }

  test(name: string, fn: () => unknown, options: TestOptions = {}): void {
    if (typeof name !== 'string' || name === '') throw new SelftestUsageError('test() needs a name');
    if (typeof fn !== 'function') throw new SelftestUsageError(`test('${name}') needs a function`);
    const timeoutMs = options.timeoutMs;
    if (timeoutMs !== undefined && (!Number.isSafeInteger(timeoutMs) || timeoutMs < 0))
      throw new SelftestUsageError(`test('${name}'): timeoutMs must be an integer >= 0`);
    if (this.#state === 'running' || this.#state === 'done') {
      this.#bail(
        `test('${name}') was registered after the run started: register every test first (a file that awaits at the top level calls run() at its end)`,
      );
    }
    this.#tests.push({ name: directiveSafe(name), fn, timeoutMs });
    if (this.#state === 'idle' && !this.#mode.collected) {
      this.#state = 'scheduled';
      // After the registering module has finished loading.
      setImmediate(() => {
        if (this.#state === 'scheduled') void this.run();
      });
    }
  }

  /** Ends the current test as skipped, or (outside a test, before the run) the whole file: `1..0 # SKIP reason`, exit 4. */
  skip(reason: string): never {
    if (this.#current !== undefined) throw new SelftestSkip(reason);
    if (this.#state === 'running' || this.#state === 'done') throw new SelftestUsageError('skip() outside a test once the run has started');
    if (this.#mode.collected) throw new SelftestSkip(reason);
    out(`TAP version 13\n1..0 # SKIP ${directiveSafe(reason)}\n`);
    process.exit(KSFT_SKIP);
  }

  /** TEST_REQUIRE: skips the test (or the whole file at the top level) unless every requirement holds. */
  requires(...needs: Need[]): void {
    for (const need of needs) {
      const why = unmet(need);
      if (why !== undefined) this.skip(why);
    }
  }

  /** A diagnostic line (or lines), `# ...`. */
  diag(...parts: unknown[]): void {
    const text = `${diagLines(parts.map((p) => (typeof p === 'string' ? p : String(p))).join(' '))}\n`;
    // Before the run (a file's top level): after the version line and the plan, where KTAP puts them.
    if (this.#state === 'idle' || this.#state === 'scheduled') this.#early.push(text);
    else this.#mode.write(text);
  }

  /**
   * Runs the registered tests, prints the totals and exits with the
   * kselftest status (called by itself after the file has loaded).
   */
  async run(): Promise<never> {
    if (this.#mode.collected) throw new SelftestUsageError('run() in a collected file: the suite runner runs its tests');
    const counts = await this.runTests();
    process.exit(ksftStatus(counts));
  }

  /** Runs the registered tests and prints their lines and the totals; returns the counts (the suite's form of run()). */
  async runTests(): Promise<Counts> {
    if (this.#state === 'running' || this.#state === 'done') throw new SelftestUsageError('run() called twice');
    this.#state = 'running';
    const write = this.#mode.write;
    const { testTimeoutMs, fileTimeoutMs } = this.#options;
    const watchdog = new Worker(WATCHDOG, {
      eval: true,
      workerData: { fileTimeoutMs, fileDeadline: fileTimeoutMs > 0 ? Date.now() + fileTimeoutMs : 0 },
      stdout: false,
      stderr: false,
    });
    watchdog.unref();
    const counts: Counts = { pass: 0, fail: 0, skip: 0 };
    write(`TAP version 13\n1..${this.#tests.length}\n${this.#early.join('')}`);
    for (const [i, t] of this.#tests.entries()) {
      const n = i + 1;
      const limit = t.timeoutMs ?? testTimeoutMs;
      watchdog.postMessage({ n, name: t.name, timeoutMs: limit, deadline: limit > 0 ? Date.now() + limit + WATCHDOG_GRACE_MS : 0, counts: { ...counts } });
      this.#current = t;
      const started = performance.now();
      const result = await this.#runOne(t, limit);
      this.#current = undefined;
      if (this.#mode.times) write(`# time: ${((performance.now() - started) / 1000).toFixed(3)} s\n`);
      if (result.kind === 'pass') {
        counts.pass++;
        write(`ok ${n} ${t.name}\n`);
      } else if (result.kind === 'skip') {
        counts.skip++;
        write(`ok ${n} ${t.name} # SKIP ${directiveSafe(result.reason)}\n`);
      } else {
        counts.fail++;
        write(`${diagLines(result.diagnostic)}\nnot ok ${n} ${t.name}${result.timeout ? ` # TIMEOUT ${limit} ms` : ''}\n`);
      }
    }
    watchdog.postMessage(null);
    this.#state = 'done';
    write(`${totalsLine(counts)}\n`);
    await watchdog.terminate();
    return counts;
  }

  async #runOne(
    t: Entry,
    limit: number,
  ): Promise<{ kind: 'pass' } | { kind: 'skip'; reason: string } | { kind: 'fail'; diagnostic: string; timeout: boolean }> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = Symbol('timeout');
    try {
      const value = t.fn();
      if (value instanceof Promise) {
        const pending = value as Promise<unknown>;
        const deadline = new Promise<typeof timedOut>((resolve) => {
          if (limit > 0) timer = setTimeout(() => resolve(timedOut), limit);
        });
        const settled: unknown = await Promise.race([pending, deadline]);
        if (settled === timedOut) {
          // The promise may still settle; nothing waits for it.
          pending.catch(() => {});
          return { kind: 'fail', diagnostic: `${t.name}: timed out after ${limit} ms`, timeout: true };
        }
      }
      return { kind: 'pass' };
    } catch (e) {
      if (e instanceof SelftestSkip) return { kind: 'skip', reason: e.reason };
      return { kind: 'fail', diagnostic: describeFailure(t.name, e), timeout: false };
    } finally {
      clearTimeout(timer);
    }
  }

  #bail(why: string): never {
    if (this.#mode.collected) throw new SelftestUsageError(why);
    out(`Bail out! ${directiveSafe(why)}\n`);
    process.exit(KSFT_FAIL);
  }
}
