// Recipe for the private-memory test kernel (the same steps that made the
// prebuilt ../shared/testvm/bzImage-6.12.117-gmem):
//   apt-get install linux-source-6.12 bc bison flex libelf-dev libssl-dev make gcc
//   tar -xf /usr/src/linux-source-6.12.tar.xz
//   make x86_64_defconfig
//   scripts/kconfig/merge_config.sh -m .config tools/testvm/gmem.config
//   make olddefconfig; scripts/config -d WERROR -d KVM_WERROR; make olddefconfig
//   (check that every fragment setting stuck, and that KVM_WERROR is off)
//   make -j$(nproc) bzImage
// and the image goes to $XDG_CACHE_HOME/kvm-gmem/testvm/bzImage-<release>-gmem
// with a .sha256 beside it, where resolveKernel() finds it.
import { spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync, statfsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { sha256File } from './kernel.js';
import { defaultCacheDir, findRepoRoot, toolSourceDir } from './paths.js';

export const SOURCE_PACKAGE = 'linux-source-6.12';
export const SOURCE_TARBALL = '/usr/src/linux-source-6.12.tar.xz';
export const BUILD_PACKAGES = [SOURCE_PACKAGE, 'bc', 'bison', 'flex', 'libelf-dev', 'libssl-dev', 'make', 'gcc', 'xz-utils'];

export interface BuildKernelOptions {
  /** Default: $XDG_CACHE_HOME/kvm-gmem/testvm (~/.cache/kvm-gmem/testvm). The build tree goes to <cacheDir>/build. */
  cacheDir?: string;
  /** Config fragment; default tools/testvm/gmem.config. */
  fragment?: string;
  /** make -j; default the number of CPUs. */
  jobs?: number;
  /** 'config' stops after the configuration is made and checked (no compile). Default 'image'. */
  stopAfter?: 'config' | 'image';
  /** Keep <cacheDir>/build after a successful build (default: removed, it is ~2 GB). */
  keepBuildTree?: boolean;
  /** apt-get install missing packages when running as root (default true). */
  installPackages?: boolean;
  /** Progress lines; default stderr. */
  log?: (line: string) => void;
  /** How often a long phase reports that it is still running (default 30 s). */
  progressIntervalMs?: number;
}

export interface BuildKernelResult {
  /** The cached image (absent with stopAfter 'config'). */
  image?: string;
  sha256?: string;
  /** The checked .config (in the build tree, or its copy in the cache after a full build). */
  config: string;
  release: string;
  buildDir: string;
  elapsedMs: number;
}

export interface ConfigMismatch {
  name: string;
  wanted: string;
  /** The value in .config, or 'n (not set)'. */
  got: string;
}

/** CONFIG_X=v lines and "# CONFIG_X is not set" (as 'n') of a fragment or .config. */
export function parseConfigFragment(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) {
      out.set(m[1]!, m[2]!);
      continue;
    }
    m = /^# (CONFIG_[A-Za-z0-9_]+) is not set$/.exec(line);
    if (m) out.set(m[1]!, 'n');
  }
  return out;
}

/** Settings of `fragment` that `config` does not have (wanted n is met by "not set" or absence). */
export function checkConfigAgainstFragment(fragment: Map<string, string>, config: Map<string, string>): ConfigMismatch[] {
  const bad: ConfigMismatch[] = [];
  for (const [name, wanted] of fragment) {
    const got = config.get(name);
    const ok = wanted === 'n' ? got === undefined || got === 'n' : got === wanted;
    if (!ok) bad.push({ name, wanted, got: got === undefined || got === 'n' ? 'n (not set)' : got });
  }
  return bad;
}

function fmtElapsed(ms: number): string {
  const s = Math.round(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
}

interface StepOptions {
  cwd?: string;
  /** Called with every output line (stdout and stderr). */
  onLine?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
}

class StepError extends Error {}

/** Runs a command; rejects with the last output lines when it fails. */
function step(cmd: string, args: string[], o: StepOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let all = '';
    const tail: string[] = [];
    const partial = { out: '', err: '' };
    const feed = (which: 'out' | 'err', buf: Buffer): void => {
      const text = partial[which] + buf.toString('utf8');
      const lines = text.split('\n');
      partial[which] = lines.pop()!;
      for (const l of lines) line(l);
    };
    const line = (l: string): void => {
      if (all.length < 1 << 20) all += l + '\n';
      tail.push(l);
      if (tail.length > 60) tail.shift();
      o.onLine?.(l);
    };
    child.stdout.on('data', (b: Buffer) => feed('out', b));
    child.stderr.on('data', (b: Buffer) => feed('err', b));
    child.on('error', (e) => reject(new StepError(`${cmd}: ${e.message}`)));
    child.on('close', (code, signal) => {
      if (partial.out) line(partial.out);
      if (partial.err) line(partial.err);
      if (code === 0) resolve(all);
      else {
        reject(
          new StepError(
            `\`${[cmd, ...args].join(' ')}\` failed (${signal ? `signal ${signal}` : `exit code ${code}`})${o.cwd ? ` in ${o.cwd}` : ''}; last output:\n` +
              tail.map((l) => `  ${l}`).join('\n'),
          ),
        );
      }
    });
  });
}

/** Whether apt offers linux-source-6.12 (`apt-cache policy` has a candidate). */
export async function aptCandidate(pkg: string): Promise<string | undefined> {
  let out: string;
  try {
    out = await step('apt-cache', ['policy', pkg]);
  } catch {
    return undefined;
  }
  const m = /Candidate:\s*(\S+)/.exec(out);
  return m && m[1] !== '(none)' ? m[1] : undefined;
}

async function missingPackages(pkgs: string[]): Promise<string[]> {
  let out = '';
  try {
    out = await step('dpkg-query', ['-W', '-f=${Package} ${db:Status-Abbrev}\\n', ...pkgs]);
  } catch (e) {
    // dpkg-query fails when a package is unknown, but still prints the known ones.
    out = e instanceof Error ? e.message : '';
  }
  const installed = new Set<string>();
  for (const l of out.split('\n')) {
    const m = /^\s*(\S+) ii\b/.exec(l);
    if (m) installed.add(m[1]!.replace(/:.*$/, ''));
  }
  return pkgs.filter((p) => !installed.has(p));
}

const NOT_AVAILABLE_HELP =
  `${SOURCE_PACKAGE} is not available from the configured apt sources. On Debian 12 (bookworm) it comes from ` +
  `bookworm-security (deb http://deb.debian.org/debian-security bookworm-security main) or bookworm-backports ` +
  `(deb http://deb.debian.org/debian bookworm-backports main); add one of them and run apt-get update. ` +
  `Any 6.12+ kernel tree works too: unpack it and point KVM_GMEM_TESTVM_KERNEL at the bzImage you build with tools/testvm/gmem.config.`;

export async function buildKernel(opts: BuildKernelOptions = {}): Promise<BuildKernelResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const started = Date.now();
  const stamp = (): string => `[${fmtElapsed(Date.now() - started)}]`;
  const phase = (n: number, what: string): void => log(`${stamp()} ${n}/7 ${what}`);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const buildRoot = path.join(cacheDir, 'build');
  const fragment = path.resolve(opts.fragment ?? path.join(toolSourceDir(findRepoRoot()), 'gmem.config'));
  const jobs = opts.jobs ?? availableParallelism();
  const interval = opts.progressIntervalMs ?? 30_000;

  /** Runs `fn` while printing a "still running" line every `interval`. */
  const ticking = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const t = setInterval(() => log(`${stamp()}   ... ${what} still running`), interval);
    try {
      return await fn();
    } finally {
      clearInterval(t);
    }
  };

  // 1. Packages.
  phase(1, `packages: ${BUILD_PACKAGES.join(' ')}`);
  const missing = await missingPackages(BUILD_PACKAGES);
  if (missing.length > 0) {
    if (missing.includes(SOURCE_PACKAGE) && !(await aptCandidate(SOURCE_PACKAGE))) throw new Error(NOT_AVAILABLE_HELP);
    const install = `apt-get install -y --no-install-recommends ${missing.join(' ')}`;
    if (opts.installPackages === false) throw new Error(`missing packages; install them with: ${install}`);
    if (process.getuid?.() !== 0) throw new Error(`missing packages (${missing.join(' ')}); as root run: ${install}`);
    log(`${stamp()}   installing: ${missing.join(' ')}`);
    await ticking('apt-get install', () =>
      step('apt-get', ['install', '-y', '--no-install-recommends', ...missing], {
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      }),
    );
  } else {
    log(`${stamp()}   all installed`);
  }
  if (!existsSync(SOURCE_TARBALL)) throw new Error(`${SOURCE_PACKAGE} is installed but ${SOURCE_TARBALL} is missing`);
  if (!existsSync(fragment)) throw new Error(`config fragment ${fragment} not found`);

  // 2. Fresh source tree.
  await mkdir(cacheDir, { recursive: true });
  try {
    const fs = statfsSync(cacheDir);
    const freeGiB = (fs.bavail * fs.bsize) / 2 ** 30;
    if (freeGiB < 4) log(`${stamp()}   warning: only ${freeGiB.toFixed(1)} GiB free in ${cacheDir}; the build needs about 3 GiB`);
  } catch {
    // statfs unsupported: carry on
  }
  phase(2, `unpacking ${SOURCE_TARBALL} into ${buildRoot}`);
  await rm(buildRoot, { recursive: true, force: true });
  await mkdir(buildRoot, { recursive: true });
  await ticking('tar', () => step('tar', ['-xf', SOURCE_TARBALL, '-C', buildRoot]));
  const tops = await readdir(buildRoot);
  if (tops.length !== 1) throw new Error(`expected one directory in ${buildRoot} after unpacking, found: ${tops.join(', ')}`);
  const src = path.join(buildRoot, tops[0]!);

  // 3. Configuration.
  phase(3, `make x86_64_defconfig, merge ${fragment}`);
  await step('make', ['x86_64_defconfig'], { cwd: src });
  await step('scripts/kconfig/merge_config.sh', ['-m', '.config', fragment], { cwd: src });
  phase(4, 'make olddefconfig, scripts/config -d WERROR -d KVM_WERROR');
  await step('make', ['olddefconfig'], { cwd: src });
  // x86_64_defconfig sets WERROR=y, and `config KVM` has `select KVM_WERROR if
  // WERROR`: disabling KVM_WERROR alone does not stick (olddefconfig turns it
  // back on), so the kernel-wide -Werror goes too. Only compiler flags change.
  await step('scripts/config', ['-d', 'WERROR', '-d', 'KVM_WERROR'], { cwd: src });
  await step('make', ['olddefconfig'], { cwd: src });

  // 5. Check that every setting of the fragment survived olddefconfig.
  phase(5, 'checking .config against the fragment');
  const dotConfig = path.join(src, '.config');
  const wanted = parseConfigFragment(await readFile(fragment, 'utf8'));
  wanted.set('CONFIG_WERROR', 'n');
  wanted.set('CONFIG_KVM_WERROR', 'n');
  const got = parseConfigFragment(await readFile(dotConfig, 'utf8'));
  const bad = checkConfigAgainstFragment(wanted, got);
  if (bad.length > 0) {
    throw new Error(
      `${bad.length} setting(s) of ${fragment} did not stick after make olddefconfig (a dependency is missing or the name changed):\n` +
        bad.map((b) => `  ${b.name}: wanted ${b.wanted}, got ${b.got}`).join('\n') +
        `\nthe tree is left in ${src} for inspection (make menuconfig, search the symbol).`,
    );
  }
  const release = (await step('make', ['-s', 'kernelrelease'], { cwd: src })).trim().split('\n').pop()!;
  log(`${stamp()}   all ${wanted.size} settings present; kernel release ${release}`);
  if (opts.stopAfter === 'config') {
    log(`${stamp()} stopped after the configuration as asked; tree kept in ${src}`);
    return { config: dotConfig, release, buildDir: src, elapsedMs: Date.now() - started };
  }

  // 6. Compile.
  phase(6, `make -j${jobs} bzImage (about 12 min on 2 cores)`);
  let compiled = 0;
  let last = '';
  let lastReport = Date.now();
  const report = (): void => {
    lastReport = Date.now();
    log(`${stamp()}   ${compiled} files compiled${last ? ` (last: ${last})` : ''}`);
  };
  const quiet = setInterval(() => {
    if (Date.now() - lastReport >= interval) report();
  }, Math.min(interval, 5000));
  try {
    await step('make', [`-j${jobs}`, 'bzImage'], {
      cwd: src,
      onLine: (l) => {
        const m = /^\s+([A-Z][A-Z0-9_]*)\s+(\S+)/.exec(l);
        if (m) {
          last = `${m[1]} ${m[2]}`;
          if (m[1] === 'CC' || m[1] === 'AS') compiled++;
          if (compiled > 0 && compiled % 500 === 0 && (m[1] === 'CC' || m[1] === 'AS')) report();
        } else if (/\berror\b/i.test(l) && !/^\s+[A-Z]+\s/.test(l)) {
          log(`${stamp()}   ${l}`);
        }
      },
    });
  } finally {
    clearInterval(quiet);
  }
  log(`${stamp()}   done: ${compiled} files compiled`);

  // 7. Into the cache, with a checksum.
  const name = `bzImage-${release}-gmem`;
  const image = path.join(cacheDir, name);
  phase(7, `copying the image to ${image}`);
  await copyFile(path.join(src, 'arch/x86/boot/bzImage'), `${image}.tmp`);
  const sha256 = await sha256File(`${image}.tmp`);
  await writeFile(`${image}.sha256`, `${sha256}  ${name}\n`);
  await rename(`${image}.tmp`, image);
  const savedConfig = path.join(cacheDir, `config-${release}-gmem`);
  await copyFile(dotConfig, savedConfig);
  if (!opts.keepBuildTree) {
    await rm(buildRoot, { recursive: true, force: true });
    log(`${stamp()}   removed the build tree ${buildRoot}`);
  }
  log(`${stamp()} built ${image} (sha256 ${sha256})`);
  return { image, sha256, config: savedConfig, release, buildDir: src, elapsedMs: Date.now() - started };
}
