// Recipes for the test kernels (the same steps that made the prebuilt
// ../shared/testvm/bzImage-6.12.117-gmem and matrix/bzImage-{6.1.192-nogmem,7.3.4-gmem}),
// one per release series (--version 6.1 | 6.12 | 7.3):
//   the source: apt-get install linux-source-6.1 / linux-source-6.12 (bookworm, bookworm-security);
//     linux-source-7.3 (trixie-backports only) is downloaded with its own apt sources file, lists and
//     cache dirs under the build cache (the host's apt state is untouched), and unpacked with dpkg-deb -x
//   apt-get install bc bison flex libelf-dev libssl-dev make gcc xz-utils
//   tar -xf linux-source-<series>.tar.xz
//   make x86_64_defconfig
//   scripts/kconfig/merge_config.sh -m .config tools/testvm/gmem.config
//   make olddefconfig; scripts/config -d WERROR -d KVM_WERROR; make olddefconfig
//   (check that every fragment setting stuck, and that KVM_WERROR is off; a setting the
//   recipe lists as absent in that series must be absent from the tree's Kconfig files too)
//   make -j$(nproc) bzImage
// and the image goes to $XDG_CACHE_HOME/kvm-gmem/testvm/bzImage-<release>-<flavour>
// (gmem; nogmem for 6.1, which has no guest_memfd) with a .sha256 beside it, where
// resolveKernel() finds it.
import { spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync, statfsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { BUILDABLE_SERIES, sha256File, type BuildableSeries } from './kernel.js';
import { defaultCacheDir, findRepoRoot, toolSourceDir } from './paths.js';

/** The build tools every series needs (the source package comes on top, see KernelRecipe.fetch). */
export const BUILD_TOOLS = ['bc', 'bison', 'flex', 'libelf-dev', 'libssl-dev', 'make', 'gcc', 'xz-utils'];

export const DEFAULT_VERSION: BuildableSeries = '6.12';

/** Where the source of one series comes from and what to expect of its configuration. */
export interface KernelRecipe {
  series: BuildableSeries;
  /** Debian's source package, e.g. linux-source-6.12. */
  sourcePackage: string;
  /** The tarball the package ships (its path once installed; its path inside the .deb when downloaded). */
  tarball: string;
  /** The package version the prebuilt image was made from (informational: apt's candidate is used). */
  knownVersion: string;
  /**
   * 'install': apt-get install from the host's own sources (the suites named in `suites`).
   * 'download': apt-get download from `sourcesLine` alone (separate sources file, lists and cache), no install.
   */
  fetch: { kind: 'install'; suites: string } | { kind: 'download'; suite: string; sourcesLine: string };
  /** The image's name suffix: gmem (guest_memfd and SW_PROTECTED VMs) or nogmem (a kernel without them). */
  flavour: 'gmem' | 'nogmem';
  /**
   * Fragment settings that cannot stick in this series because the symbol does not exist there, each with why.
   * The check accepts them only while absent from .config and from every Kconfig file of the tree.
   */
  expectedAbsent: Readonly<Record<string, string>>;
  /** Build packages beyond BUILD_TOOLS. */
  extraPackages: string[];
}

const DEBIAN_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

export const KERNEL_RECIPES: Readonly<Record<BuildableSeries, KernelRecipe>> = {
  '6.1': {
    series: '6.1',
    sourcePackage: 'linux-source-6.1',
    tarball: '/usr/src/linux-source-6.1.tar.xz',
    knownVersion: '6.1.192-3',
    fetch: { kind: 'install', suites: 'bookworm, bookworm-security' },
    flavour: 'nogmem',
    expectedAbsent: {
      CONFIG_KVM_SW_PROTECTED_VM: 'KVM_X86_SW_PROTECTED_VM, guest_memfd and memory attributes arrived in 6.8',
    },
    extraPackages: [],
  },
  '6.12': {
    series: '6.12',
    sourcePackage: 'linux-source-6.12',
    tarball: '/usr/src/linux-source-6.12.tar.xz',
    knownVersion: '6.12.117-1~deb12u1',
    fetch: { kind: 'install', suites: 'bookworm-security, bookworm-backports' },
    flavour: 'gmem',
    expectedAbsent: {},
    extraPackages: [],
  },
  '7.3': {
    series: '7.3',
    sourcePackage: 'linux-source-7.3',
    tarball: '/usr/src/linux-source-7.3.tar.xz',
    knownVersion: '7.3.4-1~bpo13+1',
    fetch: {
      kind: 'download',
      suite: 'trixie-backports',
      sourcesLine: `deb [signed-by=${DEBIAN_KEYRING}] http://deb.debian.org/debian trixie-backports main`,
    },
    flavour: 'gmem',
    expectedAbsent: {},
    extraPackages: [],
  },
};

/** The recipe of `version` (6.1, 6.12 or 7.3); throws naming the ones there are. */
export function kernelRecipe(version: string): KernelRecipe {
  if (!(BUILDABLE_SERIES as readonly string[]).includes(version)) {
    throw new Error(`no recipe for kernel version ${JSON.stringify(version)}; build-kernel --version takes one of ${BUILDABLE_SERIES.join(', ')}`);
  }
  return KERNEL_RECIPES[version as BuildableSeries];
}

/** The packages `apt-get install` needs for a recipe (the source package only when it is installed, not downloaded). */
export function recipePackages(recipe: KernelRecipe): string[] {
  return [...(recipe.fetch.kind === 'install' ? [recipe.sourcePackage] : []), ...BUILD_TOOLS, ...recipe.extraPackages];
}

/** The names the image and its config copy get in the cache. */
export function imageNames(release: string, flavour: string): { image: string; config: string } {
  return { image: `bzImage-${release}-${flavour}`, config: `config-${release}-${flavour}` };
}

export interface BuildKernelOptions {
  /** Release series: 6.1, 6.12 or 7.3 (default 6.12). */
  version?: string;
  /** Default: $XDG_CACHE_HOME/kvm-gmem/testvm (~/.cache/kvm-gmem/testvm). The build tree goes to <cacheDir>/build-<version>. */
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
  series: BuildableSeries;
  flavour: string;
  /** The Debian package version the source came from. */
  sourceVersion: string;
  /** Fragment settings absent as the recipe expects (symbol not in this series). */
  absentAsExpected: string[];
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

export interface RecipeConfigCheck {
  /** Settings that did not stick and are not excused: the build must stop. */
  bad: ConfigMismatch[];
  /** Settings the recipe expects absent that are absent (and that the tree does not define). */
  absentAsExpected: string[];
}

/**
 * The fragment check for one series: a mismatch is excused only when the recipe lists it in `expectedAbsent`, the
 * setting is simply not set, and `definedInTree` (the symbols the tree's Kconfig files define, of those listed) lacks
 * it. An excused symbol that the tree does define is reported as bad: the recipe's list is stale.
 */
export function checkConfigForRecipe(
  fragment: Map<string, string>,
  config: Map<string, string>,
  expectedAbsent: Readonly<Record<string, string>>,
  definedInTree: ReadonlySet<string>,
): RecipeConfigCheck {
  const bad: ConfigMismatch[] = [];
  const absentAsExpected: string[] = [];
  for (const m of checkConfigAgainstFragment(fragment, config)) {
    if (!Object.hasOwn(expectedAbsent, m.name) || m.got !== 'n (not set)') bad.push(m);
    else if (definedInTree.has(m.name)) {
      bad.push({ ...m, got: `${m.got}, though this tree's Kconfig defines it (the recipe expects it absent: update expectedAbsent or fix the dependency)` });
    } else absentAsExpected.push(m.name);
  }
  return { bad, absentAsExpected };
}

/** Which of `names` (CONFIG_X) some Kconfig file under `src` defines (`config X` / `menuconfig X`). */
export async function kconfigDefines(src: string, names: string[]): Promise<Set<string>> {
  const found = new Set<string>();
  if (names.length === 0) return found;
  const bare = new Map(names.map((n) => [n.replace(/^CONFIG_/, ''), n]));
  const re = /^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$/gm;
  const walk = async (dir: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== '.git') await walk(p);
      } else if (e.isFile() && e.name.startsWith('Kconfig')) {
        for (const m of (await readFile(p, 'utf8')).matchAll(re)) {
          const full = bare.get(m[1]!);
          if (full) found.add(full);
        }
      }
    }
  };
  await walk(src);
  return found;
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

/** apt's candidate version of `pkg` (`apt-cache policy`), or undefined when there is none. */
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

function notAvailableHelp(recipe: KernelRecipe): string {
  const where =
    recipe.fetch.kind === 'install'
      ? `from Debian's ${recipe.fetch.suites} (deb http://deb.debian.org/debian-security bookworm-security main); add that suite to apt's sources and run apt-get update`
      : `from Debian's ${recipe.fetch.suite} (${recipe.fetch.sourcesLine}), which this tool reads with its own apt sources file; check that deb.debian.org is reachable`;
  return (
    `${recipe.sourcePackage} is not available ${recipe.fetch.kind === 'install' ? 'from the configured apt sources' : `from ${recipe.fetch.suite}`}; ` +
    `it comes ${where}. Or unpack a Linux ${recipe.series} tree yourself, build it with tools/testvm/gmem.config, and point KVM_GMEM_TESTVM_KERNEL at its bzImage.`
  );
}

/**
 * apt-get options that make apt read only `dir`/sources.list and keep its lists and caches in `dir`: the host's
 * sources, lists and package cache stay as they are.
 */
export function isolatedAptOptions(dir: string): string[] {
  return [
    '-o',
    `Dir::Etc::sourcelist=${path.join(dir, 'sources.list')}`,
    '-o',
    'Dir::Etc::sourceparts=-',
    '-o',
    `Dir::State::Lists=${path.join(dir, 'lists')}`,
    '-o',
    `Dir::Cache=${path.join(dir, 'cache')}`,
  ];
}

/** Downloads (not installs) the recipe's source package from its own suite and unpacks the .deb; returns the tarball. */
async function downloadSource(
  recipe: KernelRecipe & { fetch: { kind: 'download' } },
  fetchDir: string,
  ticking: <T>(what: string, fn: () => Promise<T>) => Promise<T>,
): Promise<{ tarball: string; version: string }> {
  await rm(fetchDir, { recursive: true, force: true });
  for (const d of ['lists/partial', 'cache/archives/partial', 'deb', 'unpacked']) await mkdir(path.join(fetchDir, d), { recursive: true });
  await writeFile(path.join(fetchDir, 'sources.list'), `${recipe.fetch.sourcesLine}\n`);
  const apt = isolatedAptOptions(fetchDir);
  try {
    await ticking('apt-get update', () => step('apt-get', [...apt, 'update'], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }));
  } catch (e) {
    throw new Error(
      `cannot read ${recipe.fetch.suite} (${recipe.fetch.sourcesLine}) with apt-get update: ${(e as Error).message}\n${notAvailableHelp(recipe)}`,
    );
  }
  const debDir = path.join(fetchDir, 'deb');
  try {
    await ticking('apt-get download', () => step('apt-get', [...apt, 'download', recipe.sourcePackage], { cwd: debDir }));
  } catch (e) {
    throw new Error(`apt-get download ${recipe.sourcePackage} failed: ${(e as Error).message}\n${notAvailableHelp(recipe)}`);
  }
  const debs = (await readdir(debDir)).filter((n) => n.startsWith(`${recipe.sourcePackage}_`) && n.endsWith('.deb'));
  if (debs.length !== 1) throw new Error(`expected one ${recipe.sourcePackage}_*.deb in ${debDir} after apt-get download, found: ${debs.join(', ') || 'none'}`);
  const deb = path.join(debDir, debs[0]!);
  const version = (await step('dpkg-deb', ['-f', deb, 'Version'])).trim();
  const unpacked = path.join(fetchDir, 'unpacked');
  await ticking('dpkg-deb -x', () => step('dpkg-deb', ['-x', deb, unpacked]));
  await rm(deb);
  const tarball = path.join(unpacked, recipe.tarball);
  if (!existsSync(tarball)) throw new Error(`${deb} does not contain ${recipe.tarball}; has Debian renamed the tarball? Look with dpkg-deb -c`);
  return { tarball, version };
}

export async function buildKernel(opts: BuildKernelOptions = {}): Promise<BuildKernelResult> {
  const log = opts.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const recipe = kernelRecipe(opts.version ?? DEFAULT_VERSION);
  const started = Date.now();
  const stamp = (): string => `[${fmtElapsed(Date.now() - started)}]`;
  const phase = (n: number, what: string): void => log(`${stamp()} ${n}/7 ${what}`);
  const cacheDir = opts.cacheDir ?? defaultCacheDir();
  const buildRoot = path.join(cacheDir, `build-${recipe.series}`);
  const fetchDir = path.join(buildRoot, 'fetch');
  const treeRoot = path.join(buildRoot, 'tree');
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

  log(`${stamp()} Linux ${recipe.series} (${recipe.sourcePackage}, built ${recipe.knownVersion} for the prebuilt image), flavour ${recipe.flavour}`);
  if (!existsSync(fragment)) throw new Error(`config fragment ${fragment} not found; pass --fragment or run from a kvm-gmem checkout`);

  // 1. Packages.
  const packages = recipePackages(recipe);
  phase(1, `packages: ${packages.join(' ')}`);
  const missing = await missingPackages(packages);
  if (missing.length > 0) {
    if (missing.includes(recipe.sourcePackage) && !(await aptCandidate(recipe.sourcePackage))) throw new Error(notAvailableHelp(recipe));
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

  // 2. Fresh source tree.
  await mkdir(cacheDir, { recursive: true });
  try {
    const fs = statfsSync(cacheDir);
    const freeGiB = (fs.bavail * fs.bsize) / 2 ** 30;
    if (freeGiB < 4) log(`${stamp()}   warning: only ${freeGiB.toFixed(1)} GiB free in ${cacheDir}; the build needs about 3 GiB`);
  } catch {
    // statfs unsupported: carry on
  }
  await rm(buildRoot, { recursive: true, force: true });
  await mkdir(treeRoot, { recursive: true });
  let tarball = recipe.tarball;
  let sourceVersion: string;
  if (recipe.fetch.kind === 'download') {
    phase(2, `downloading ${recipe.sourcePackage} from ${recipe.fetch.suite} (own apt sources and lists in ${fetchDir}; nothing installed)`);
    const got = await downloadSource({ ...recipe, fetch: recipe.fetch }, fetchDir, ticking);
    tarball = got.tarball;
    sourceVersion = got.version;
  } else {
    phase(2, `source: ${recipe.sourcePackage}`);
    if (!existsSync(tarball))
      throw new Error(`${recipe.sourcePackage} is installed but ${tarball} is missing; reinstall it: apt-get install --reinstall ${recipe.sourcePackage}`);
    sourceVersion = (await step('dpkg-query', ['-W', '-f=${Version}', recipe.sourcePackage])).trim();
  }
  log(`${stamp()}   ${recipe.sourcePackage} ${sourceVersion}; unpacking into ${treeRoot}`);
  await ticking('tar', () => step('tar', ['-xf', tarball, '-C', treeRoot]));
  await rm(fetchDir, { recursive: true, force: true });
  const tops = await readdir(treeRoot);
  if (tops.length !== 1) throw new Error(`expected one directory in ${treeRoot} after unpacking ${tarball}, found: ${tops.join(', ') || 'nothing'}`);
  const src = path.join(treeRoot, tops[0]!);

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

  // 5. Check that every setting of the fragment survived olddefconfig (but those this series lacks).
  phase(5, 'checking .config against the fragment');
  const dotConfig = path.join(src, '.config');
  const wanted = parseConfigFragment(await readFile(fragment, 'utf8'));
  wanted.set('CONFIG_WERROR', 'n');
  wanted.set('CONFIG_KVM_WERROR', 'n');
  const got = parseConfigFragment(await readFile(dotConfig, 'utf8'));
  const defined = await kconfigDefines(src, Object.keys(recipe.expectedAbsent));
  const { bad, absentAsExpected } = checkConfigForRecipe(wanted, got, recipe.expectedAbsent, defined);
  if (bad.length > 0) {
    throw new Error(
      `${bad.length} setting(s) of ${fragment} did not stick in Linux ${recipe.series} after make olddefconfig (a dependency is missing or the name changed):\n` +
        bad.map((b) => `  ${b.name}: wanted ${b.wanted}, got ${b.got}`).join('\n') +
        `\nthe tree is left in ${src} for inspection (make menuconfig, search the symbol); remove ${buildRoot} when done.`,
    );
  }
  for (const name of Object.keys(recipe.expectedAbsent)) {
    if (!absentAsExpected.includes(name) && wanted.has(name)) {
      log(`${stamp()}   note: ${name} stuck although the recipe expects Linux ${recipe.series} to lack it; expectedAbsent in build-kernel.ts may be stale`);
    }
  }
  const release = (await step('make', ['-s', 'kernelrelease'], { cwd: src })).trim().split('\n').pop()!;
  log(
    `${stamp()}   ${wanted.size - absentAsExpected.length} of ${wanted.size} settings present` +
      (absentAsExpected.length
        ? `, absent as expected in ${recipe.series}: ${absentAsExpected.map((n) => `${n} (${recipe.expectedAbsent[n]})`).join(', ')}`
        : '') +
      `; kernel release ${release}`,
  );
  const base = { release, series: recipe.series, flavour: recipe.flavour, sourceVersion, absentAsExpected };
  if (opts.stopAfter === 'config') {
    log(`${stamp()} stopped after the configuration as asked; tree kept in ${src} (remove ${buildRoot} when done)`);
    return { ...base, config: dotConfig, buildDir: src, elapsedMs: Date.now() - started };
  }

  // 6. Compile.
  phase(6, `make -j${jobs} bzImage (12-20 min on 2 cores)`);
  let compiled = 0;
  let last = '';
  let lastReport = Date.now();
  const report = (): void => {
    lastReport = Date.now();
    log(`${stamp()}   ${compiled} files compiled${last ? ` (last: ${last})` : ''}`);
  };
  const quiet = setInterval(
    () => {
      if (Date.now() - lastReport >= interval) report();
    },
    Math.min(interval, 5000),
  );
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
  } catch (e) {
    throw new Error(`${(e as Error).message}\nthe tree is left in ${src}; fix the cause (often a missing build package) and rerun, or remove ${buildRoot}`);
  } finally {
    clearInterval(quiet);
  }
  log(`${stamp()}   done: ${compiled} files compiled`);

  // 7. Into the cache, with a checksum.
  const names = imageNames(release, recipe.flavour);
  const image = path.join(cacheDir, names.image);
  phase(7, `copying the image to ${image}`);
  await copyFile(path.join(src, 'arch/x86/boot/bzImage'), `${image}.tmp`);
  const sha256 = await sha256File(`${image}.tmp`);
  await writeFile(`${image}.sha256`, `${sha256}  ${names.image}\n`);
  await rename(`${image}.tmp`, image);
  const savedConfig = path.join(cacheDir, names.config);
  await copyFile(dotConfig, savedConfig);
  if (!opts.keepBuildTree) {
    await rm(buildRoot, { recursive: true, force: true });
    log(`${stamp()}   removed the build tree ${buildRoot}`);
  }
  log(`${stamp()} built ${image} (sha256 ${sha256}) in ${fmtElapsed(Date.now() - started)}`);
  return { ...base, image, sha256, config: savedConfig, buildDir: src, elapsedMs: Date.now() - started };
}
