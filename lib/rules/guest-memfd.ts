// The kernel's rules for a guest_memfd: KVM_CREATE_GUEST_MEMFD
// (kvm_gmem_create) and fallocate (vfs_fallocate -> kvm_gmem_fallocate ->
// kvm_gmem_allocate / kvm_gmem_punch_hole), in the order the kernel checks
// them, so the first rule broken here is the one the kernel would have hit
// and kernelErrno is its answer. Pure: nothing here touches an fd.
import { AlignmentError, GuestMemfdRuleError, hex, MissingCapabilityError } from '../errors.js';
import { CapSince, errno, Falloc, type GuestMemfdFlagName, guestMemfdFlagBits, guestMemfdFlagSince } from '../binding/uapi.js';

/** What the VM offers for KVM_CREATE_GUEST_MEMFD, read from its capabilities once. */
export interface GuestMemfdCreateLimits {
  /**
   * Whether the ioctl exists: KVM_CAP_GUEST_MEMFD on /dev/kvm. (On 6.12 a
   * default VM answers 0 on its own fd yet creates guest_memfds; it only
   * refuses to bind them.)
   */
  ioctl: boolean;
  /** KVM_CAP_GUEST_MEMFD_FLAGS on the VM fd (0 before 6.18). */
  supportedFlags: number;
  /** For messages: the VM type. */
  vmType: string;
}

export interface GuestMemfdCreateRequest {
  size: bigint;
  /** The kernel's u64 field (a number for the 32 bits the API takes today). */
  flags: number | bigint;
}

/** Judges one KVM_CREATE_GUEST_MEMFD request; throws the rule the kernel would break. */
export function judgeCreate(l: GuestMemfdCreateLimits, r: GuestMemfdCreateRequest): void {
  // No ioctl: ENOTTY before any field is read.
  if (!l.ioctl) throw new MissingCapabilityError('KVM_CAP_GUEST_MEMFD', CapSince.GUEST_MEMFD, 'KVM_CREATE_GUEST_MEMFD');
  // kvm_gmem_create(): flags first, then size as a loff_t.
  // Every one of the 64 bits counts: `flags & ~kvm_gmem_get_supported_flags()`.
  const refusedBits = BigInt(r.flags) & ~BigInt(l.supportedFlags) & 0xffff_ffff_ffff_ffffn;
  if (refusedBits !== 0n) {
    const refused = refusedBits <= 0xffffffffn ? Number(refusedBits) : refusedBits;
    const names = (Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]).filter((n) => (refusedBits & BigInt(guestMemfdFlagBits[n])) !== 0n);
    const since = names.map((n) => `'${n}' since ${guestMemfdFlagSince[n]}`).join(', ');
    throw new GuestMemfdRuleError(
      'guest-memfd-flags',
      `guest_memfd flags ${hex(refused)}${names.length ? ` (${names.join(', ')})` : ''} are not offered to this ${l.vmType} VM ` +
        `(KVM_CAP_GUEST_MEMFD_FLAGS = ${hex(l.supportedFlags)}${since ? `; ${since}` : ''})`,
      { flags: r.flags, supported: l.supportedFlags },
    );
  }
  if (r.size === 0n || r.size >= 1n << 63n) {
    throw new GuestMemfdRuleError('guest-memfd-size', `guest_memfd size ${hex(r.size)} must be non-zero and below 2^63`, { size: r.size });
  }
  if (r.size & 0xfffn) throw new AlignmentError('size', r.size, 'KVM_CREATE_GUEST_MEMFD');
}

/** The file a fallocate is judged against. */
export interface GuestMemfdFile {
  /** Bytes; a guest_memfd never grows or shrinks. */
  size: number;
  /** For messages. */
  label: string;
}

export interface FallocateRequest {
  /** fallocate mode bits (FALLOC_FL_*). */
  mode: number;
  offset: bigint;
  length: bigint;
}

const LOFF_MAX = (1n << 63n) - 1n;
// vfs_fallocate() refuses these outright (FALLOC_FL_SUPPORTED_MASK).
const VFS_MODES = Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE | Falloc.COLLAPSE_RANGE | Falloc.ZERO_RANGE | Falloc.INSERT_RANGE | Falloc.UNSHARE_RANGE;

/** fallocate's name for its mode, for messages. */
export function fallocateOp(mode: number): string {
  return mode === Falloc.KEEP_SIZE ? 'allocate' : mode === (Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE) ? 'punchHole' : `fallocate(mode ${hex(mode)})`;
}

/**
 * Whether a request made by allocate()/punchHole() with numbers passes every
 * rule below: page-aligned, non-empty, below 2^53, and for allocate inside
 * the file. The common case is judged without making a bigint.
 */
export function passesFallocate(f: GuestMemfdFile, mode: number, offset: unknown, length: unknown): offset is number {
  if (typeof offset !== 'number' || typeof length !== 'number') return false;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0) return false;
  if (offset % 4096 !== 0 || length % 4096 !== 0 || offset + length > Number.MAX_SAFE_INTEGER) return false;
  return mode === (Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE) || (mode === Falloc.KEEP_SIZE && offset + length <= f.size);
}

/** Judges one fallocate on a guest_memfd; throws the rule the kernel would break. */
export function judgeFallocate(f: GuestMemfdFile, r: FallocateRequest): void {
  const { mode, offset: o, length: l } = r;
  const ctx = `${f.label} ${fallocateOp(mode)}`;
  const fields = { offset: o, length: l, mode };
  // vfs_fallocate(): the range as loff_t, then the mode, then the size limit.
  if (l === 0n) throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: length is 0 (fallocate refuses an empty range)`, fields);
  if (o >= 1n << 63n || l >= 1n << 63n) {
    throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: offset ${hex(o)} or length ${hex(l)} is negative as a loff_t (2^63 or more)`, fields);
  }
  if (mode & ~VFS_MODES) {
    throw new GuestMemfdRuleError('fallocate-mode', `${ctx}: mode bits ${hex(mode & ~VFS_MODES)} are unknown to fallocate`, fields, errno.EOPNOTSUPP);
  }
  if (mode & Falloc.PUNCH_HOLE && !(mode & Falloc.KEEP_SIZE)) {
    throw new GuestMemfdRuleError('fallocate-mode', `${ctx}: FALLOC_FL_PUNCH_HOLE needs FALLOC_FL_KEEP_SIZE`, fields, errno.EOPNOTSUPP);
  }
  if (o + l > LOFF_MAX)
    throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: offset ${hex(o)} + length ${hex(l)} passes the largest file offset`, fields, errno.EFBIG);
  // kvm_gmem_fallocate(): only KEEP_SIZE, alone or with PUNCH_HOLE.
  if (!(mode & Falloc.KEEP_SIZE) || mode & ~(Falloc.KEEP_SIZE | Falloc.PUNCH_HOLE)) {
    throw new GuestMemfdRuleError(
      'fallocate-mode',
      `${ctx}: a guest_memfd takes only FALLOC_FL_KEEP_SIZE, alone (allocate) or with FALLOC_FL_PUNCH_HOLE`,
      fields,
      errno.EOPNOTSUPP,
    );
  }
  if (o & 0xfffn) throw new AlignmentError('offset', o, ctx);
  if (l & 0xfffn) throw new AlignmentError('length', l, ctx);
  // kvm_gmem_allocate(): "dedicated guest is immutable"; punching past the end is fine.
  if (!(mode & Falloc.PUNCH_HOLE) && o + l > BigInt(f.size)) {
    throw new GuestMemfdRuleError(
      'guest-memfd-range',
      `${ctx}: [${hex(o)}, ${hex(o + l)}) extends past the end of the file (size ${hex(f.size)}); guest_memfd never grows`,
      { ...fields, size: f.size },
    );
  }
}
