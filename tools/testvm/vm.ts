// Boots the private-memory test kernel under QEMU TCG with the host's root
// filesystem as the guest's (read-only, 9p) and runs one command inside it.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { chmod, copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { resolveKernel } from './kernel.js';
import { findExecutable, findRepoRoot, searchPath, toolSourceDir } from './paths.js';

export const DEFAULT_TIMEOUT_MS = 10 * 60 * 1000;
export const DEFAULT_MEMORY_MIB = 2048;
export const DEFAULT_CPUS = 2;
/** Where the init mounts the per-run work share inside the guest ($TESTVM_WORK). */
export const GUEST_WORK_DIR = '/run/testvm';
/** Where the host's /tmp stays visible (read-only) inside the guest. */
export const GUEST_HOST_TMP_DIR = '/run/host-tmp';
/** Paths the guest covers with its own mounts: a cwd under them would not be the host's. */
const GUEST_COVERED_DIRS = ['/tmp', '/run', '/proc', '/sys', '/dev'];
/** Directories the init script searches for busybox (it uses it for mount, poweroff, ...). */
const GUEST_BUSYBOX_DIRS = ['/usr/bin', '/bin', '/usr/sbin', '/sbin', '/usr/local/bin'];
const SIGTERM_GRACE_MS = 3000;
const CONSOLE_TAIL_CHARS = 64 * 1024;

// Files in the work share (see init.sh).
const F_INIT = 'init.sh';
const F_MARKER = 'testvm-marker';
const F_COMMAND = 'testvm-command.sh';
const F_WATCHDOG = 'testvm-watchdog';
const F_STATUS = 'testvm-exit-status';
const F_OVERLAYS = 'testvm-overlays';
/** Holds the pid of the host process that owns the run; removed when the work dir is kept on purpose. */
const F_OWNER = 'testvm-owner';
const WORK_DIR_PREFIX = 'kvm-gmem-testvm-';

export interface TestVmOptions {
  /** argv of the command; command[0] is looked up in the guest's PATH. */
  command: string[];
  /** Working directory inside the guest (default: the host's process.cwd()). Read-only: write to /tmp or $TESTVM_WORK. */
  cwd?: string;
  /** Extra environment; added to PATH (host's), HOME=/tmp, TMPDIR=/tmp, CI=true, TESTVM=1, TESTVM_WORK and overriding them. */
  env?: Record<string, string>;
  /** Wall-clock limit for the whole boot, default 10 min. */
  timeoutMs?: number;
  /** Kernel image; default: see resolveKernel(). */
  kernel?: string;
  memoryMiB?: number;
  cpus?: number;
  /**
   * NUMA nodes (default 1): the memory split evenly over that many nodes, the
   * CPUs on node 0, so that mbind()/move_pages() checks that need a second
   * node (the selftests' GM-12, GM-15) have one.
   */
  numaNodes?: number;
  /** Receives the command's console output as it arrives (boot noise and markers removed). */
  onOutput?: (chunk: string) => void;
  /** Aborting kills QEMU and rejects with the signal's reason. */
  signal?: AbortSignal;
  /**
   * Host directories to make writable in the guest with a copy-on-write
   * overlay (changes go to a tmpfs and are discarded at power-off), e.g. the
   * repository, for tools that write caches next to the sources.
   */
  overlay?: string[];
  /** Keep the per-run work share on the host (its path is returned as workDir); files the command wrote there survive. */
  keepWorkDir?: boolean;
  /** qemu-system-x86_64 binary (default: from PATH). */
  qemu?: string;
}

export interface TestVmResult {
  /** The command's exit status in the guest (128+N when killed by signal N, 127 when not found). */
  exitCode: number;
  /** QEMU start to QEMU exit (boot, command, power-off). */
  wallMs: number;
  /** QEMU start until the command started. */
  bootMs: number;
  /** Everything the command wrote to stdout/stderr (one stream: the serial console). */
  output: string;
  /** Host path of the work share if keepWorkDir was set. */
  workDir?: string;
}

export class TestVmToolMissingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TestVmToolMissingError';
  }
}

export class TestVmTimeoutError extends Error {
  constructor(
    readonly timeoutMs: number,
    readonly elapsedMs: number,
    readonly consoleTail: string,
    readonly qemuPid: number | undefined,
  ) {
    super(
      `test VM timed out: killed QEMU after it ran ${(elapsedMs / 1000).toFixed(1)} s (limit ${(timeoutMs / 1000).toFixed(1)} s)` +
        (consoleTail ? `; last console output:\n${consoleTail}` : ''),
    );
    this.name = 'TestVmTimeoutError';
  }
}

/** The guest ended without writing an exit status: kernel panic, init failure, QEMU error. */
export class TestVmCrashError extends Error {
  constructor(
    readonly detail: string,
    readonly consoleTail: string,
    readonly qemuStderr: string,
  ) {
    super(
      `test VM ended without an exit status (${detail})` +
        (qemuStderr.trim() ? `\nQEMU stderr:\n${qemuStderr.trimEnd()}` : '') +
        `\nlast console output:\n${consoleTail || '(none)'}`,
    );
    this.name = 'TestVmCrashError';
  }
}

// ---------------------------------------------------------------------------
// Command script (written into the work share; never on the kernel command line)

/** POSIX-shell single quoting: the result is one word whose value is exactly `s`. */
export function shellQuote(s: string): string {
  if (s.includes('\0')) throw new Error(`cannot pass a NUL byte in ${JSON.stringify(s)}`);
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The environment the command gets: defaults, then `env` (which wins). */
export function guestEnvironment(env: Record<string, string> = {}, hostEnv: NodeJS.ProcessEnv = process.env): Record<string, string> {
  return {
    PATH: hostEnv.PATH || '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/tmp',
    TMPDIR: '/tmp',
    CI: 'true',
    TESTVM: '1',
    TESTVM_WORK: GUEST_WORK_DIR,
    ...env,
  };
}

/**
 * The script the init runs (with `env -i /bin/sh`): cd, export each variable,
 * exec the command. Every value is single-quoted, so nothing in it is expanded.
 */
export function buildCommandScript(command: string[], cwd: string, env: Record<string, string>): string {
  if (command.length === 0 || command[0] === '') throw new Error('testvm: the command is empty');
  const lines = ['# Generated by tools/testvm for one run; executed by init.sh as: env -i /bin/sh testvm-command.sh', `cd ${shellQuote(cwd)} || exit 125`];
  for (const [name, value] of Object.entries(env)) {
    if (!ENV_NAME.test(name)) throw new Error(`testvm: invalid environment variable name ${JSON.stringify(name)}`);
    lines.push(`${name}=${shellQuote(value)}; export ${name}`);
  }
  lines.push(`exec ${command.map(shellQuote).join(' ')}`);
  return lines.join('\n') + '\n';
}

// ---------------------------------------------------------------------------
// Console parsing: boot noise before the begin marker and the power-off after
// the end marker are dropped; the command's bytes in between are passed on.

export class ConsoleFilter {
  private state: 'boot' | 'command' | 'done' = 'boot';
  private pending = '';
  private tail = '';
  private readonly begin: string;
  private readonly end: string;
  output = '';
  commandStarted = false;

  constructor(
    marker: string,
    private readonly emit: (chunk: string) => void = () => {},
  ) {
    this.begin = `${marker}-BEGIN`;
    this.end = `${marker}-END`;
  }

  /** The last part of the raw console (with boot messages), for error reports. */
  consoleTail(lines = 40): string {
    // Terminal control sequences from the firmware (ESC c clears the screen) are not useful in a report.
    const clean = this.tail
      // eslint-disable-next-line no-control-regex -- the control characters are what it removes
      .replace(/\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[ -/]*[0-~])/g, '')
      // eslint-disable-next-line no-control-regex -- the control characters are what it removes
      .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '')
      .split(this.begin)
      .join('--- testvm: command starts ---')
      .split(this.end)
      .join('\n--- testvm: command ended ---');
    return clean.split('\n').slice(-lines).join('\n').trimEnd();
  }

  push(text: string): void {
    this.tail = (this.tail + text).slice(-CONSOLE_TAIL_CHARS);
    if (this.state === 'done') return;
    this.pending += text;
    if (this.state === 'boot') {
      const i = this.pending.indexOf(this.begin);
      if (i < 0) {
        // Keep only what could still be the start of the marker.
        this.pending = this.pending.slice(-this.begin.length);
        return;
      }
      let rest = this.pending.slice(i + this.begin.length);
      if (rest === '' || rest === '\r') return; // wait for the newline
      if (rest.startsWith('\r\n')) rest = rest.slice(2);
      else if (rest.startsWith('\n')) rest = rest.slice(1);
      this.state = 'command';
      this.commandStarted = true;
      this.pending = rest;
    }
    const j = this.pending.indexOf(this.end);
    if (j >= 0) {
      this.send(this.pending.slice(0, j));
      this.pending = '';
      this.state = 'done';
      return;
    }
    // Hold back a suffix that may be the start of the end marker.
    let keep = Math.min(this.end.length - 1, this.pending.length);
    while (keep > 0 && !this.end.startsWith(this.pending.slice(-keep))) keep--;
    this.send(this.pending.slice(0, this.pending.length - keep));
    this.pending = this.pending.slice(this.pending.length - keep);
  }

  /** Flushes held-back text (the VM ended without an end marker). */
  finish(): void {
    if (this.state === 'command') this.send(this.pending);
    this.pending = '';
    this.state = 'done';
  }

  private send(s: string): void {
    if (!s) return;
    this.output += s;
    this.emit(s);
  }
}

// ---------------------------------------------------------------------------
// Host checks

export function findQemu(hostEnv: NodeJS.ProcessEnv = process.env): string {
  const qemu = findExecutable('qemu-system-x86_64', searchPath(hostEnv));
  if (!qemu) {
    throw new TestVmToolMissingError('qemu-system-x86_64 not found in PATH; install it: apt-get install qemu-system-x86');
  }
  return qemu;
}

/** The busybox the guest's init will use (same search as init.sh). */
export function findBusybox(): string {
  const bb = findExecutable('busybox', GUEST_BUSYBOX_DIRS);
  if (!bb) {
    throw new TestVmToolMissingError(
      `busybox not found in ${GUEST_BUSYBOX_DIRS.join(', ')} (the guest init needs it for mount and poweroff); install it: apt-get install busybox-static`,
    );
  }
  return bb;
}

const CMDLINE_SAFE = /^[A-Za-z0-9._/+-]+$/;

function checkCwd(cwd: string): void {
  let st;
  try {
    st = statSync(cwd);
  } catch {
    throw new Error(`testvm: cwd ${cwd} does not exist on the host (the guest sees the host's root filesystem)`);
  }
  if (!st.isDirectory()) throw new Error(`testvm: cwd ${cwd} is not a directory`);
  for (const d of GUEST_COVERED_DIRS) {
    if (cwd === d || cwd.startsWith(`${d}/`)) {
      throw new Error(
        `testvm: cwd ${cwd} is under ${d}, which the guest covers with its own mount` +
          (d === '/tmp' ? ` (the host's /tmp is visible read-only at ${GUEST_HOST_TMP_DIR} in the guest)` : ''),
      );
    }
  }
}

/** Absolute, existing directories usable as overlayfs lowerdir (no , : \\ or newline). */
export function checkOverlayDirs(dirs: string[]): string[] {
  return dirs.map((d) => {
    const abs = path.resolve(d);
    if (/[,:\\\n]/.test(abs)) throw new Error(`testvm: overlay directory ${JSON.stringify(abs)} contains , : \\ or a newline`);
    let st;
    try {
      st = statSync(abs);
    } catch {
      throw new Error(`testvm: overlay directory ${abs} does not exist on the host`);
    }
    if (!st.isDirectory()) throw new Error(`testvm: overlay ${abs} is not a directory`);
    if (abs === '/') throw new Error('testvm: cannot overlay / (use /tmp or $TESTVM_WORK for scratch files)');
    for (const c of GUEST_COVERED_DIRS) {
      if (abs === c || abs.startsWith(`${c}/`)) throw new Error(`testvm: overlay ${abs} is under ${c}, which the guest mounts itself`);
    }
    return abs;
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes work dirs left behind by runs whose host process was killed (owner pid gone). */
async function removeStaleWorkDirs(base: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(base);
  } catch {
    return;
  }
  for (const n of names) {
    if (!n.startsWith(WORK_DIR_PREFIX)) continue;
    const dir = path.join(base, n);
    try {
      const pid = Number((await readFile(path.join(dir, F_OWNER), 'utf8')).trim());
      if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) await rm(dir, { recursive: true, force: true });
    } catch {
      // no owner file (kept on purpose, or not ours): leave it
    }
  }
}

async function makeWorkDir(): Promise<string> {
  for (const base of [tmpdir(), '/tmp', '/var/tmp']) {
    if (!CMDLINE_SAFE.test(base) || !existsSync(base)) continue;
    await removeStaleWorkDirs(base);
    const dir = await mkdtemp(path.join(base, WORK_DIR_PREFIX));
    await writeFile(path.join(dir, F_OWNER), `${process.pid}\n`);
    // mkdtemp's random part is [A-Za-z0-9]: still safe for init= on the kernel command line.
    return dir;
  }
  throw new Error(`testvm: no temporary directory with a path usable on the kernel command line (TMPDIR=${tmpdir()})`);
}

// QEMU processes still running; killed if this process exits first.
const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  live.add(child);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const c of live) c.kill('SIGKILL');
    });
  }
}

/** The QEMU argv (without the binary). */
export function qemuArgs(o: { kernel: string; init: string; workDir: string; memoryMiB: number; cpus: number; numaNodes?: number }): string[] {
  const append = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    'root=root',
    'rootfstype=9p',
    // cache=loose: the read-only root is cached in the guest; node starts ~2.5x faster than with the default cache=none.
    'rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose',
    'ro',
    `init=${o.init}`,
  ].join(' ');
  return [
    '-machine',
    'q35',
    '-accel',
    'tcg',
    '-cpu',
    'max',
    '-m',
    String(o.memoryMiB),
    '-smp',
    String(o.cpus),
    ...numaArgs(o.numaNodes ?? 1, o.memoryMiB, o.cpus),
    '-nographic',
    '-no-reboot',
    // No network card: the guest needs none, and its iPXE option ROM only slows the firmware down.
    '-nic',
    'none',
    '-kernel',
    o.kernel,
    '-append',
    append,
    '-fsdev',
    'local,id=root,path=/,security_model=none,readonly=on,multidevs=remap',
    '-device',
    'virtio-9p-pci,fsdev=root,mount_tag=root',
    '-fsdev',
    `local,id=work,path=${o.workDir.replace(/,/g, ',,')},security_model=none`,
    '-device',
    'virtio-9p-pci,fsdev=work,mount_tag=work',
  ];
}

/** -numa options: N RAM backends of memoryMiB / N, every CPU on node 0 (none for one node). */
function numaArgs(nodes: number, memoryMiB: number, cpus: number): string[] {
  if (nodes <= 1) return [];
  const each = Math.floor(memoryMiB / nodes);
  const args: string[] = [];
  for (let n = 0; n < nodes; n++) {
    // The last node takes the remainder, so that the sizes add up to -m.
    const size = n === nodes - 1 ? memoryMiB - each * (nodes - 1) : each;
    args.push('-object', `memory-backend-ram,id=numa${n},size=${size}M`);
    args.push('-numa', `node,nodeid=${n},memdev=numa${n}${n === 0 ? `,cpus=0-${cpus - 1}` : ''}`);
  }
  return args;
}

// ---------------------------------------------------------------------------

/**
 * Boots the test kernel and runs `command` as a child of the guest's init.
 * Resolves with the command's exit code (non-zero is not an error); rejects
 * with TestVmTimeoutError, TestVmCrashError, TestVmToolMissingError,
 * KernelNotFoundError / KernelChecksumError, or the abort reason.
 */
export async function runInTestVm(options: TestVmOptions): Promise<TestVmResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const memoryMiB = options.memoryMiB ?? DEFAULT_MEMORY_MIB;
  const cpus = options.cpus ?? DEFAULT_CPUS;
  if (!(timeoutMs > 0)) throw new Error(`testvm: timeoutMs must be positive, got ${timeoutMs}`);
  if (!Number.isInteger(memoryMiB) || memoryMiB < 256) throw new Error(`testvm: memoryMiB must be an integer >= 256, got ${memoryMiB}`);
  if (!Number.isInteger(cpus) || cpus < 1) throw new Error(`testvm: cpus must be a positive integer, got ${cpus}`);
  const numaNodes = options.numaNodes ?? 1;
  if (!Number.isInteger(numaNodes) || numaNodes < 1 || numaNodes > 8 || memoryMiB / numaNodes < 128)
    throw new Error(`testvm: numaNodes must be an integer 1..8 with at least 128 MiB each, got ${numaNodes}`);
  options.signal?.throwIfAborted();

  const qemu = options.qemu ?? findQemu();
  findBusybox();
  const kernel = (await resolveKernel(options.kernel ? { kernel: options.kernel } : {})).path;
  const cwd = path.resolve(options.cwd ?? process.cwd());
  checkCwd(cwd);
  const script = buildCommandScript(options.command, cwd, guestEnvironment(options.env));
  const overlays = checkOverlayDirs(options.overlay ?? []);
  const initSource = path.join(toolSourceDir(findRepoRoot()), 'init.sh');

  const workDir = await makeWorkDir();
  const keep = options.keepWorkDir === true;
  try {
    const marker = `TESTVM-${randomBytes(12).toString('hex')}`;
    const init = path.join(workDir, F_INIT);
    await copyFile(initSource, init);
    await chmod(init, 0o755);
    await writeFile(path.join(workDir, F_MARKER), `${marker}\n`);
    await writeFile(path.join(workDir, F_COMMAND), script);
    // The guest's own limit, in case this process dies and cannot kill QEMU.
    await writeFile(path.join(workDir, F_WATCHDOG), `${Math.ceil(timeoutMs / 1000) + 30}\n`);
    if (overlays.length > 0) await writeFile(path.join(workDir, F_OVERLAYS), overlays.map((d) => `${d}\n`).join(''));

    const args = qemuArgs({ kernel, init, workDir, memoryMiB, cpus, numaNodes });
    const run = await runQemu(qemu, args, marker, timeoutMs, options);

    let statusText: string | undefined;
    try {
      statusText = await readFile(path.join(workDir, F_STATUS), 'utf8');
    } catch {
      statusText = undefined;
    }
    const exitCode = statusText !== undefined && /^\s*\d+\s*$/.test(statusText) ? Number(statusText.trim()) : undefined;
    if (exitCode === undefined) {
      const firstErr = run.stderr.split('\n').find((l) => l.trim()) ?? '';
      const how = (run.signal ? `QEMU killed by ${run.signal}` : `QEMU exit code ${run.code}`) + (run.code !== 0 && firstErr ? `: ${firstErr.trim()}` : '');
      const status = statusText === undefined ? 'no exit status file' : `unreadable exit status ${JSON.stringify(statusText)}`;
      const kept = keep ? `; work dir kept: ${workDir}` : '';
      throw new TestVmCrashError(`${status}; ${how} after ${(run.wallMs / 1000).toFixed(1)} s${kept}`, run.consoleTail, run.stderr);
    }
    return { exitCode, wallMs: run.wallMs, bootMs: run.bootMs, output: run.output, ...(keep ? { workDir } : {}) };
  } finally {
    if (keep) await rm(path.join(workDir, F_OWNER), { force: true });
    else await rm(workDir, { recursive: true, force: true });
  }
}

interface QemuRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  wallMs: number;
  bootMs: number;
  output: string;
  consoleTail: string;
  stderr: string;
}

function runQemu(qemu: string, args: string[], marker: string, timeoutMs: number, options: TestVmOptions): Promise<QemuRun> {
  return new Promise<QemuRun>((resolve, reject) => {
    const started = performance.now();
    let bootMs = -1;
    const filter = new ConsoleFilter(marker, (chunk) => {
      options.onOutput?.(chunk);
    });
    let stderr = '';
    let failure: Error | undefined;
    let killTimer: NodeJS.Timeout | undefined;

    // With util-linux's setpriv, QEMU gets SIGKILL when this process dies in
    // any way (even SIGKILL), so no emulator is left burning CPU. setpriv
    // execs QEMU: child.pid is QEMU's pid either way.
    const setpriv = findExecutable('setpriv', searchPath());
    const child = setpriv
      ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', qemu, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(qemu, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);

    const kill = (why: Error): void => {
      if (failure) return;
      failure = why;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), SIGTERM_GRACE_MS);
    };

    const timer = setTimeout(() => {
      // Filled in with the final numbers when QEMU is gone.
      kill(new TestVmTimeoutError(timeoutMs, 0, '', child.pid));
    }, timeoutMs);
    const onAbort = (): void => {
      const reason: unknown = options.signal?.reason;
      kill(reason instanceof Error ? reason : new Error(String(reason ?? 'aborted')));
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });

    const decoder = new StringDecoder('utf8');
    child.stdout!.on('data', (buf: Buffer) => {
      filter.push(decoder.write(buf));
      if (bootMs < 0 && filter.commandStarted) bootMs = performance.now() - started;
    });
    child.stderr!.on('data', (buf: Buffer) => {
      stderr = (stderr + buf.toString('utf8')).slice(-16 * 1024);
    });

    child.on('error', (err: NodeJS.ErrnoException) => {
      // spawn failure (ENOENT, EACCES); 'close' follows.
      if (!failure) {
        failure =
          err.code === 'ENOENT'
            ? new TestVmToolMissingError(`${qemu} not found; install it: apt-get install qemu-system-x86`)
            : new Error(`testvm: cannot run ${qemu}: ${err.message}`);
      }
    });

    child.on('close', (code, signal) => {
      const wallMs = performance.now() - started;
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      options.signal?.removeEventListener('abort', onAbort);
      live.delete(child);
      filter.push(decoder.end());
      filter.finish();
      if (failure instanceof TestVmTimeoutError) {
        reject(new TestVmTimeoutError(timeoutMs, wallMs, filter.consoleTail(), child.pid));
      } else if (failure) {
        reject(failure);
      } else {
        resolve({
          code,
          signal,
          wallMs,
          bootMs: bootMs < 0 ? wallMs : bootMs,
          output: filter.output,
          consoleTail: filter.consoleTail(),
          stderr,
        });
      }
    });
  });
}
