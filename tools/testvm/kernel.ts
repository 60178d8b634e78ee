// Which test kernel to boot: explicit option, $KVM_GMEM_TESTVM_KERNEL, the
// prebuilt image beside the repository, then the cached build. The option and
// the variable take a path or a release prefix (7.3, 6.1, 6.12.117), looked up
// among every image found (../shared/testvm, ../shared/testvm/matrix, the cache).
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { defaultCacheDir, findRepoRoot, sharedKernelDirs } from './paths.js';

export const KERNEL_ENV_VAR = 'KVM_GMEM_TESTVM_KERNEL';
export const BUILD_KERNEL_COMMAND = 'node dist/tools/testvm/cli.js build-kernel';
/** The release series `build-kernel --version` can build (its recipes are in build-kernel.ts, keyed by these). */
export const BUILDABLE_SERIES = ['6.1', '6.12', '7.3'] as const;
export type BuildableSeries = (typeof BUILDABLE_SERIES)[number];

export type KernelSource = 'option' | 'env' | 'shared' | 'cache';

export interface KernelLookupOptions {
  /**
   * A path (contains a `/` or names an existing file: used as is, must exist, no fallback), or a release prefix
   * (`7.3`, `6.1`, `6.12.117`: the newest image whose release starts with those dot-separated components).
   */
  kernel?: string;
  /** Environment to read KVM_GMEM_TESTVM_KERNEL, XDG_CACHE_HOME and HOME from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Repository root; default: found from this module's location. */
  repoRoot?: string;
  /** Prebuilt-image directories; default `<repoRoot>/../shared/testvm` and its `matrix/` (and their real-path twins). */
  sharedDirs?: string[];
  /** Build cache; default `$XDG_CACHE_HOME/kvm-gmem/testvm` or `~/.cache/kvm-gmem/testvm`. */
  cacheDir?: string;
}

export interface ResolvedKernel {
  path: string;
  source: KernelSource;
  /** Kernel release, from the name (`bzImage-<release>-<flavour>`), else from the image's header; '' when neither says. */
  release: string;
  /** `gmem` or `nogmem` (from the name); '' when the name has none. */
  flavour: string;
  /** One sentence: why this image was chosen. */
  reason: string;
  /** 'verified': matched its .sha256 file; 'no-checksum-file': there was none. */
  checksum: 'verified' | 'no-checksum-file';
  /** Every place consulted, in order, with what was found there. */
  looked: string[];
}

export class KernelNotFoundError extends Error {
  readonly looked: string[];
  /** For a release that matched nothing: the releases that were found. */
  readonly available: string[];
  constructor(looked: string[], detail?: string, opts: { available?: string[]; buildHint?: string } = {}) {
    super(
      `no test VM kernel found${detail ? ` (${detail})` : ''}; ${opts.buildHint ?? `build one with \`${BUILD_KERNEL_COMMAND}\``}\n` +
        `Looked at, in order:\n` +
        looked.map((l) => `  - ${l}`).join('\n') +
        `\nThe build (about 15 min on 2 cores, root for apt-get) puts bzImage-<release>-<flavour> into $XDG_CACHE_HOME/kvm-gmem/testvm (default ~/.cache/kvm-gmem/testvm);` +
        ` or point ${KERNEL_ENV_VAR} at a bzImage built from tools/testvm/gmem.config.`,
    );
    this.name = 'KernelNotFoundError';
    this.looked = looked;
    this.available = opts.available ?? [];
  }
}

export class KernelChecksumError extends Error {
  constructor(
    readonly image: string,
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`kernel image ${image} does not match ${image}.sha256 (expected ${expected}, got ${actual}); the copy is damaged or the checksum file is stale`);
    this.name = 'KernelChecksumError';
  }
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

// Checksums already verified in this process, keyed by path + size + mtime.
const verified = new Map<string, string>();

/**
 * Checks `image` against `image.sha256` (sha256sum format: "<hex>  <name>")
 * when that file exists. Throws KernelChecksumError on a mismatch.
 */
export async function verifyChecksum(image: string): Promise<'verified' | 'no-checksum-file'> {
  let text: string;
  try {
    text = await readFile(`${image}.sha256`, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'no-checksum-file';
    throw e;
  }
  const expected = /^\s*([0-9a-fA-F]{64})\b/.exec(text)?.[1]?.toLowerCase();
  if (!expected) throw new Error(`${image}.sha256 does not start with a sha256 hex digest`);
  const st = await stat(image);
  const key = `${image}\0${st.size}\0${st.mtimeMs}`;
  const actual = verified.get(key) ?? (await sha256File(image));
  if (actual !== expected) throw new KernelChecksumError(image, expected, actual);
  verified.set(key, actual);
  return 'verified';
}

async function isFile(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isFile();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------
// Releases

/** `bzImage-<release>-<flavour>` (release starts with a digit; flavour is letters, e.g. gmem, nogmem). */
export function parseKernelImageName(name: string): { release: string; flavour: string } | undefined {
  const m = /^bzImage-(\d[^\s/]*?)(?:-([A-Za-z][A-Za-z_]*))?$/.exec(path.basename(name));
  return m ? { release: m[1]!, flavour: m[2] ?? '' } : undefined;
}

/** A release prefix as `--kernel` takes it: dot-separated numbers (`7`, `6.1`, `6.12.117`). */
export function isReleaseSelector(value: string): boolean {
  return /^\d+(\.\d+)*$/.test(value);
}

/**
 * Whether `release` starts with the dot-separated components of `prefix`: 6.1 matches 6.1.192, not 6.12.117. The
 * release's last component may carry a suffix (6.12.117-rc1 matches 6.12.117).
 */
export function releaseMatches(release: string, prefix: string): boolean {
  const r = release.split('.');
  const p = prefix.split('.');
  if (p.length > r.length) return false;
  return p.every((pc, i) => r[i] === pc || (i === r.length - 1 && r[i]!.startsWith(pc) && /^[^0-9]/.test(r[i]!.slice(pc.length))));
}

/** Orders releases by their numeric components (6.1.192 < 6.12.9 < 6.12.117 < 7.3.4); '' sorts first. */
export function compareReleases(a: string, b: string): number {
  const pa = a.split(/[.-]/);
  const pb = b.split(/[.-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined || y === undefined) return x === undefined ? (y === undefined ? 0 : -1) : 1;
    const nx = /^\d+$/.test(x) ? Number(x) : NaN;
    const ny = /^\d+$/.test(y) ? Number(y) : NaN;
    const c = Number.isNaN(nx) || Number.isNaN(ny) ? x.localeCompare(y, 'en', { numeric: true }) : nx - ny;
    if (c !== 0) return c < 0 ? -1 : 1;
  }
  return 0;
}

/** The major.minor of a release: the matrix series it belongs to (6.1.192 -> 6.1). */
export function releaseSeries(release: string): string {
  return /^(\d+\.\d+)/.exec(release)?.[1] ?? release;
}

/**
 * The release in a bzImage's own header (the setup header's kernel_version string, "6.12.117 (user@host) #1 ..."),
 * or '' when the file is not a bzImage or has none.
 */
export async function readImageRelease(file: string): Promise<string> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch {
    return '';
  }
  try {
    const buf = Buffer.alloc(64 * 1024);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead < 0x210 || buf.toString('latin1', 0x202, 0x206) !== 'HdrS') return '';
    const at = buf.readUInt16LE(0x20e) + 0x200;
    if (at <= 0x200 || at >= bytesRead) return '';
    const end = buf.indexOf(0, at);
    const text = buf.toString('latin1', at, end < 0 ? bytesRead : end);
    return /^(\d[^\s]*)/.exec(text)?.[1] ?? '';
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// Listing

/** `bzImage-*` files in `dir` (not their .sha256), newest version first. */
export async function listImages(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return [];
  }
  const images: string[] = [];
  for (const n of names) {
    if (!n.startsWith('bzImage-') || n.endsWith('.sha256') || n.endsWith('.tmp')) continue;
    if (await isFile(path.join(dir, n))) images.push(n);
  }
  images.sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  return images.map((n) => path.join(dir, n));
}

/**
 * What `listKernels` found out about an image's checksum: 'verified' (matches its .sha256), 'no-checksum-file',
 * 'mismatch' (resolveKernel refuses it), 'bad-checksum-file' (unreadable or not a digest), 'not-checked' (verify: false).
 */
export type KernelChecksumState = 'verified' | 'no-checksum-file' | 'mismatch' | 'bad-checksum-file' | 'not-checked';

export interface KernelInfo {
  /** e.g. 6.12.117; from the name, else the image's header; '' when neither says. */
  release: string;
  /** e.g. gmem, nogmem; '' when the name has none. */
  flavour: string;
  path: string;
  source: 'shared' | 'cache';
  /** The directory it was found in. */
  dir: string;
  checksum: KernelChecksumState;
  /** For 'mismatch' and 'bad-checksum-file': what is wrong. */
  checksumDetail?: string;
  /** The image resolveKernel() picks when neither --kernel nor $KVM_GMEM_TESTVM_KERNEL is given. */
  default: boolean;
}

export interface ListKernelsOptions extends Omit<KernelLookupOptions, 'kernel'> {
  /** Hash every image against its .sha256 (default true; about 30 ms per 10 MB image). */
  verify?: boolean;
}

export interface KernelLookupDirs {
  /** Prebuilt-image directories, in lookup order. */
  sharedDirs: string[];
  cacheDir: string;
}

/** The directories resolveKernel() and listKernels() look in, for these options. */
export function kernelLookupDirs(opts: Omit<KernelLookupOptions, 'kernel'> = {}): KernelLookupDirs {
  let sharedDirs = opts.sharedDirs;
  if (!sharedDirs) {
    let root = opts.repoRoot;
    if (!root) {
      try {
        root = findRepoRoot();
      } catch {
        root = undefined;
      }
    }
    sharedDirs = root ? sharedKernelDirs(root) : [];
  }
  return { sharedDirs, cacheDir: opts.cacheDir ?? defaultCacheDir(opts.env ?? process.env) };
}

interface Found {
  path: string;
  dir: string;
  source: 'shared' | 'cache';
  release: string;
  flavour: string;
}

/** Every image in the shared dirs then the cache, each dir newest first; the same file seen twice (a real-path twin) once. */
async function findAll(dirs: KernelLookupDirs): Promise<{ found: Found[]; perDir: Map<string, string[]> }> {
  const found: Found[] = [];
  const perDir = new Map<string, string[]>();
  const seen = new Set<string>();
  const places: [string, 'shared' | 'cache'][] = [...dirs.sharedDirs.map((d): [string, 'shared'] => [d, 'shared']), [dirs.cacheDir, 'cache']];
  for (const [dir, source] of places) {
    const images = await listImages(dir);
    perDir.set(dir, images);
    for (const image of images) {
      const real = await realpath(image).catch(() => image);
      if (seen.has(real)) continue;
      seen.add(real);
      const parsed = parseKernelImageName(image);
      const release = parsed?.release ?? (await readImageRelease(image));
      found.push({ path: image, dir, source, release, flavour: parsed?.flavour ?? '' });
    }
  }
  return { found, perDir };
}

/** The default: the first image of the first shared dir that has one, else the first of the cache (as before releases). */
function pickDefault(found: Found[], dirs: KernelLookupDirs): Found | undefined {
  for (const dir of [...dirs.sharedDirs, dirs.cacheDir]) {
    const first = found.find((f) => f.dir === dir);
    if (first) return first;
  }
  return undefined;
}

/** The newest image whose release starts with `prefix`; between equal releases the earlier place (shared before cache). */
function pickRelease(found: Found[], prefix: string): Found | undefined {
  const matching = found.filter((f) => f.release !== '' && releaseMatches(f.release, prefix));
  // Stable sort: equal releases keep the order of the places.
  return matching.sort((a, b) => compareReleases(b.release, a.release))[0];
}

async function checksumState(image: string): Promise<{ checksum: KernelChecksumState; checksumDetail?: string }> {
  try {
    return { checksum: await verifyChecksum(image) };
  } catch (e) {
    if (e instanceof KernelChecksumError) return { checksum: 'mismatch', checksumDetail: e.message };
    return { checksum: 'bad-checksum-file', checksumDetail: (e as Error).message };
  }
}

/**
 * Every image found: the shared dirs (`../shared/testvm`, `../shared/testvm/matrix`) in order, then the cache; within a
 * dir newest first. Does not throw for a bad checksum: it says so in `checksum`.
 */
export async function listKernels(opts: ListKernelsOptions = {}): Promise<KernelInfo[]> {
  const dirs = kernelLookupDirs(opts);
  const { found } = await findAll(dirs);
  const def = pickDefault(found, dirs);
  const out: KernelInfo[] = [];
  for (const f of found) {
    const state: { checksum: KernelChecksumState; checksumDetail?: string } = opts.verify === false ? { checksum: 'not-checked' } : await checksumState(f.path);
    out.push({ release: f.release, flavour: f.flavour, path: f.path, source: f.source, dir: f.dir, ...state, default: f === def });
  }
  return out;
}

export interface MatrixKernel extends KernelInfo {
  /** major.minor, e.g. 6.1: what to pass as `kernel` to resolveKernel() to get this image. */
  series: string;
}

/**
 * One image per release series found (6.1, 6.12, 7.3), ascending: the one resolveKernel({ kernel: series }) picks.
 * Images whose release is unknown are left out.
 */
export async function matrixKernels(opts: ListKernelsOptions = {}): Promise<MatrixKernel[]> {
  const all = await listKernels(opts);
  const bySeries = new Map<string, MatrixKernel>();
  for (const k of all) {
    if (k.release === '') continue;
    const series = releaseSeries(k.release);
    const have = bySeries.get(series);
    if (!have || compareReleases(k.release, have.release) > 0) bySeries.set(series, { ...k, series });
  }
  return [...bySeries.values()].sort((a, b) => compareReleases(a.series, b.series));
}

/** The distinct release series found, ascending: ['6.1', '6.12', '7.3'] with the shared matrix present. */
export async function matrixReleases(opts: Omit<ListKernelsOptions, 'verify'> = {}): Promise<string[]> {
  return (await matrixKernels({ ...opts, verify: false })).map((k) => k.series);
}

// ---------------------------------------------------------------------------
// Choosing

/** Picks the kernel to boot; throws KernelNotFoundError naming every place looked at. */
export async function resolveKernel(opts: KernelLookupOptions = {}): Promise<ResolvedKernel> {
  const env = opts.env ?? process.env;
  const looked: string[] = [];
  const dirs = kernelLookupDirs(opts);

  const describeImage = async (p: string): Promise<{ release: string; flavour: string }> => {
    const parsed = parseKernelImageName(p);
    return { release: parsed?.release ?? (await readImageRelease(p)), flavour: parsed?.flavour ?? '' };
  };

  const byRelease = async (prefix: string, source: 'option' | 'env', what: string): Promise<ResolvedKernel> => {
    const { found, perDir } = await findAll(dirs);
    for (const [dir, images] of perDir) {
      looked.push(`${path.join(dir, 'bzImage-*')}: ${images.length ? images.map((i) => path.basename(i)).join(', ') : 'none'}`);
    }
    const hit = pickRelease(found, prefix);
    if (!hit) {
      const available = [...new Set(found.map((f) => f.release).filter(Boolean))].sort(compareReleases);
      throw new KernelNotFoundError(
        looked,
        `${what} asks for release ${prefix}, and no image found has it; available: ${available.length ? available.join(', ') : 'none'}` +
          `; pick one of those or pass a path`,
        {
          available,
          buildHint: (BUILDABLE_SERIES as readonly string[]).includes(releaseSeries(prefix))
            ? `build it with \`${BUILD_KERNEL_COMMAND} --version ${releaseSeries(prefix)}\``
            : `build-kernel knows only ${BUILDABLE_SERIES.join(', ')} (\`${BUILD_KERNEL_COMMAND} --version 7.3\`); for another release build a tree with tools/testvm/gmem.config yourself and pass the bzImage's path`,
        },
      );
    }
    const checksum = await verifyChecksum(hit.path);
    looked.push(`release ${prefix} from ${what}: ${hit.path} (used)`);
    const where = hit.source === 'shared' ? `prebuilt beside the repository (${hit.dir})` : `cached build (${hit.dir})`;
    return {
      path: hit.path,
      source,
      release: hit.release,
      flavour: hit.flavour,
      reason: `${what} asks for release ${prefix}: the newest matching image is ${hit.release}${hit.flavour ? ` (${hit.flavour})` : ''}, ${where}`,
      checksum,
      looked,
    };
  };

  const explicit = async (value: string, source: 'option' | 'env', what: string): Promise<ResolvedKernel> => {
    const abs = path.resolve(value);
    // A path when it looks like one or names a file; otherwise a release prefix.
    if (!value.includes('/') && !(await isFile(abs)) && isReleaseSelector(value)) return byRelease(value, source, what);
    if (!(await isFile(abs))) {
      looked.push(`${what}: ${abs} (missing)`);
      throw new KernelNotFoundError(
        looked,
        `${what} names a file that does not exist: ${abs}; give an existing bzImage, or a release such as 6.12 or 7.3.4 (digits and dots)`,
      );
    }
    const checksum = await verifyChecksum(abs);
    looked.push(`${what}: ${abs} (used)`);
    return { path: abs, source, ...(await describeImage(abs)), reason: `given by ${what}`, checksum, looked };
  };

  if (opts.kernel) return explicit(opts.kernel, 'option', 'the kernel option (--kernel)');
  looked.push('the kernel option (--kernel): not given');

  const fromEnv = env[KERNEL_ENV_VAR];
  if (fromEnv) return explicit(fromEnv, 'env', `$${KERNEL_ENV_VAR}`);
  looked.push(`$${KERNEL_ENV_VAR}: not set`);

  for (const dir of dirs.sharedDirs) {
    const images = await listImages(dir);
    if (images.length === 0) {
      looked.push(`${path.join(dir, 'bzImage-*')}: none`);
      continue;
    }
    const image = images[0]!;
    const checksum = await verifyChecksum(image);
    looked.push(`${path.join(dir, 'bzImage-*')}: ${image} (used)`);
    return { path: image, source: 'shared', ...(await describeImage(image)), reason: `prebuilt image beside the repository (${dir})`, checksum, looked };
  }

  const cached = await listImages(dirs.cacheDir);
  if (cached.length > 0) {
    const image = cached[0]!;
    const checksum = await verifyChecksum(image);
    looked.push(`${path.join(dirs.cacheDir, 'bzImage-*')}: ${image} (used)`);
    return { path: image, source: 'cache', ...(await describeImage(image)), reason: `cached build in ${dirs.cacheDir}`, checksum, looked };
  }
  looked.push(`${path.join(dirs.cacheDir, 'bzImage-*')}: none`);
  throw new KernelNotFoundError(looked);
}
