#!/usr/bin/env node
// Command line of the test VM tool; after `tsc -p tsconfig.json`:
//   node dist/tools/testvm/cli.js run [options] -- CMD ARGS...
//   node dist/tools/testvm/cli.js kernel [--kernel K]
//   node dist/tools/testvm/cli.js build-kernel [--version 6.1|6.12|7.3] [--config-only] [--jobs N] [--keep-build-tree]
import { buildKernel } from './build-kernel.js';
import path from 'node:path';
import { BUILDABLE_SERIES, KERNEL_ENV_VAR, kernelLookupDirs, listKernels, matrixKernels, resolveKernel, type KernelChecksumState } from './kernel.js';
import { defaultCacheDir } from './paths.js';
import { runInTestVm, findBusybox, findQemu, TestVmToolMissingError } from './vm.js';

const USAGE = `usage:
  cli.js run [--kernel K] [--timeout S] [--mem MiB] [--cpus N] [--numa N] [--cwd DIR]
             [--env NAME=VALUE]... [--overlay DIR]... [--keep-work-dir] [--quiet] -- CMD ARGS...
      Boots the test kernel under QEMU TCG and runs CMD in it (cwd default: the
      current directory). Exits with CMD's exit code; 2 on a tool error.
      The host's root filesystem is the guest's, read-only: write to /tmp or $TESTVM_WORK,
      or make DIR writable with --overlay DIR (copy-on-write; changes are discarded).
      --numa N splits the memory over N NUMA nodes (for mbind/move_pages checks).
  cli.js kernel [--kernel K]
      Lists every kernel image found (release, flavour, source, checksum; * marks the default)
      and says which one run would boot (with --kernel K: which one K picks) and why.
      Exits 0; 2 when no image is found.
  cli.js build-kernel [--version 6.1|6.12|7.3] [--config-only] [--jobs N] [--keep-build-tree] [--cache-dir DIR]
      Builds bzImage-<release>-<flavour> (gmem; nogmem for 6.1) from Debian's linux-source-<version>
      (default 6.12) into ${defaultCacheDir()}; 7.3 is downloaded from trixie-backports
      with its own apt sources file, nothing installed. --config-only stops after checking the .config.
K is a path or a release prefix: 7.3, 6.1 (not 6.12), 6.12.117; $${KERNEL_ENV_VAR} takes the same.`;

class UsageError extends Error {}

function toolError(e: unknown): never {
  const msg = (e instanceof Error ? e.message : String(e)).replace(/^testvm: /, '');
  const [first, ...rest] = msg.split('\n');
  process.stderr.write(`testvm: ${first}\n`);
  if (rest.length) process.stderr.write(`${rest.join('\n')}\n`);
  if (e instanceof UsageError) process.stderr.write(`${USAGE}\n`);
  process.exit(2);
}

function positiveNumber(flag: string, v: string | undefined): number {
  const n = Number(v);
  if (v === undefined || !Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} needs a positive number, got ${v ?? 'nothing'}`);
  return n;
}

function positiveInt(flag: string, v: string | undefined): number {
  const n = positiveNumber(flag, v);
  if (!Number.isInteger(n)) throw new UsageError(`${flag} needs an integer, got ${v}`);
  return n;
}

async function cmdRun(argv: string[]): Promise<void> {
  let kernel: string | undefined;
  let timeoutMs: number | undefined;
  let memoryMiB: number | undefined;
  let cpus: number | undefined;
  let numaNodes: number | undefined;
  let cwd: string | undefined;
  let keepWorkDir = false;
  const overlay: string[] = [];
  let quiet = false;
  const env: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-')) break;
    const next = (): string | undefined => argv[++i];
    switch (a) {
      case '--kernel':
        kernel = next();
        if (!kernel) throw new UsageError('--kernel needs a path or a release (6.1, 6.12, 7.3)');
        break;
      case '--timeout':
        timeoutMs = positiveNumber('--timeout', next()) * 1000;
        break;
      case '--mem':
        memoryMiB = positiveInt('--mem', next());
        break;
      case '--cpus':
        cpus = positiveInt('--cpus', next());
        break;
      case '--numa':
        numaNodes = positiveInt('--numa', next());
        break;
      case '--cwd':
        cwd = next();
        if (!cwd) throw new UsageError('--cwd needs a directory');
        break;
      case '--env': {
        const kv = next() ?? '';
        const eq = kv.indexOf('=');
        if (eq <= 0) throw new UsageError(`--env needs NAME=VALUE, got ${kv || 'nothing'}`);
        env[kv.slice(0, eq)] = kv.slice(eq + 1);
        break;
      }
      case '--overlay': {
        const d = next();
        if (!d) throw new UsageError('--overlay needs a directory');
        overlay.push(d);
        break;
      }
      case '--keep-work-dir':
        keepWorkDir = true;
        break;
      case '-q':
      case '--quiet':
        quiet = true;
        break;
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  const command = argv.slice(i);
  if (command.length === 0) throw new UsageError('run needs a command after --');

  const ac = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => ac.abort(new Error(`interrupted by ${sig}`));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('SIGHUP', onSignal);
  try {
    const res = await runInTestVm({
      command,
      env,
      keepWorkDir,
      overlay,
      signal: ac.signal,
      onOutput: (chunk) => process.stdout.write(chunk),
      ...(kernel !== undefined && { kernel }),
      ...(timeoutMs !== undefined && { timeoutMs }),
      ...(memoryMiB !== undefined && { memoryMiB }),
      ...(cpus !== undefined && { cpus }),
      ...(numaNodes !== undefined && { numaNodes }),
      ...(cwd !== undefined && { cwd }),
    });
    if (!quiet) {
      process.stderr.write(
        `testvm: exit code ${res.exitCode}; ${(res.wallMs / 1000).toFixed(1)} s from QEMU start to power-off ` +
          `(boot ${(res.bootMs / 1000).toFixed(1)} s)${res.workDir ? `; work dir kept: ${res.workDir}` : ''}\n`,
      );
    }
    process.exitCode = res.exitCode;
  } catch (e) {
    if (ac.signal.aborted) {
      process.stderr.write(`testvm: ${(e as Error).message}; QEMU killed\n`);
      process.exit(130);
    }
    throw e;
  }
}

const CHECKSUM_TEXT: Record<KernelChecksumState, string> = {
  verified: 'checksum ok',
  'no-checksum-file': 'no .sha256',
  mismatch: 'CHECKSUM MISMATCH',
  'bad-checksum-file': 'bad .sha256',
  'not-checked': 'not checked',
};

async function cmdKernel(argv: string[]): Promise<void> {
  let kernel: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--kernel') {
      kernel = argv[++i];
      if (!kernel) throw new UsageError('--kernel needs a path or a release (6.1, 6.12, 7.3, 7.3.4)');
    } else throw new UsageError(`unknown option ${a}`);
  }
  const dirs = kernelLookupDirs();
  const all = await listKernels();
  const out: string[] = [];
  if (all.length > 0) {
    out.push('Test VM kernels found (* = the default, used when neither --kernel nor $' + KERNEL_ENV_VAR + ' is given):');
    const cols = all.map((k) => [k.default ? '*' : ' ', k.release || '?', k.flavour || '-', k.source, CHECKSUM_TEXT[k.checksum], k.path]);
    const widths = [0, 1, 2, 3, 4].map((c) => Math.max(...cols.map((r) => r[c]!.length)));
    for (const r of cols) out.push(`  ${r.map((v, c) => (c < 5 ? v.padEnd(widths[c]!) : v)).join('  ')}`);
    for (const k of all) if (k.checksumDetail) out.push(`    ${path.basename(k.path)}: ${k.checksumDetail}`);
    const matrix = await matrixKernels({ verify: false });
    out.push(`  matrix (one per series, as --kernel SERIES picks): ${matrix.map((m) => `${m.series} -> ${m.release}`).join(', ')}`);
  }
  out.push(`  looked in: ${[...dirs.sharedDirs, dirs.cacheDir].join(', ')}`);
  // With none found, resolveKernel throws KernelNotFoundError (every place looked at, how to build one): exit 2.
  if (all.length > 0) process.stdout.write(`${out.join('\n')}\n\n`);

  const k = await resolveKernel(kernel !== undefined ? { kernel } : {});
  const by = kernel !== undefined ? `--kernel ${kernel}` : process.env[KERNEL_ENV_VAR] ? `$${KERNEL_ENV_VAR}=${process.env[KERNEL_ENV_VAR]}` : 'default';
  process.stdout.write(
    `${by} picks ${k.path}\n  release ${k.release || 'unknown'}, flavour ${k.flavour || 'none'}\n  why: ${k.reason}\n` +
      `  checksum: ${k.checksum === 'verified' ? 'matches its .sha256' : 'no .sha256 file beside it'}\n` +
      `  lookup order (option, $${KERNEL_ENV_VAR}, prebuilt beside the repo, cache; a release looks at all of them):\n` +
      k.looked.map((l) => `    ${l}`).join('\n') +
      '\n',
  );
  for (const check of [findQemu, findBusybox]) {
    try {
      process.stdout.write(`  ${check === findQemu ? 'qemu' : 'busybox'}: ${check()}\n`);
    } catch (e) {
      if (e instanceof TestVmToolMissingError) process.stdout.write(`  missing: ${e.message}\n`);
      else throw e;
    }
  }
}

async function cmdBuildKernel(argv: string[]): Promise<void> {
  let jobs: number | undefined;
  let cacheDir: string | undefined;
  let version: string | undefined;
  let configOnly = false;
  let keepBuildTree = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    switch (a) {
      case '--version':
        version = argv[++i];
        if (!version || !(BUILDABLE_SERIES as readonly string[]).includes(version)) {
          throw new UsageError(`--version needs one of ${BUILDABLE_SERIES.join(', ')}, got ${version ?? 'nothing'}`);
        }
        break;
      case '--jobs':
      case '-j':
        jobs = positiveInt(a, argv[++i]);
        break;
      case '--cache-dir':
        cacheDir = argv[++i];
        if (!cacheDir) throw new UsageError('--cache-dir needs a directory');
        break;
      case '--config-only':
        configOnly = true;
        break;
      case '--keep-build-tree':
        keepBuildTree = true;
        break;
      default:
        throw new UsageError(`unknown option ${a}`);
    }
  }
  const res = await buildKernel({
    stopAfter: configOnly ? 'config' : 'image',
    keepBuildTree,
    ...(version !== undefined && { version }),
    ...(jobs !== undefined && { jobs }),
    ...(cacheDir !== undefined && { cacheDir }),
  });
  process.stdout.write(`${res.image ?? res.config}\n`);
}

async function main(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'run':
      return cmdRun(rest);
    case 'kernel':
      return cmdKernel(rest);
    case 'build-kernel':
      return cmdBuildKernel(rest);
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      throw new UsageError(sub ? `unknown command ${sub}` : 'no command given');
  }
}

main(process.argv.slice(2)).catch(toolError);
