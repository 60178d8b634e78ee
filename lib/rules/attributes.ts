// The kernel's rules for KVM_SET_MEMORY_ATTRIBUTES
// (kvm_vm_ioctl_set_mem_attributes), in the kernel's order, and the change
// an accepted request makes to the shadow attribute map. Pure.
import { AlignmentError, AttributeRuleError, hex, MissingCapabilityError, RangeWrapError } from '../errors.js';
import type { AttributeMap } from '../model/attributes.js';
import { CapSince, U64_MAX } from '../binding/uapi.js';

export interface AttributeLimits {
  /**
   * Whether the ioctl exists: KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm is
   * non-zero (the kernel has CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES; without
   * it the ioctl is ENOTTY).
   */
  ioctl: boolean;
  /** KVM_CAP_MEMORY_ATTRIBUTES on the VM fd: the bits this VM takes (0 on a default VM). */
  supported: number;
  /** For messages: the VM type. */
  vmType: string;
}

export interface AttributeRequest {
  gpa: bigint;
  size: bigint;
  attributes: bigint;
  flags: bigint;
}

/** An accepted request: the gfn range and the attributes it now has. */
export interface AttributeChange {
  startGfn: number;
  endGfn: number;
  attributes: number;
}

/**
 * Whether a request given as numbers passes every rule: attributes the VM
 * takes, a non-empty page-aligned range below 2^53. Conversions take this
 * path without making a bigint.
 */
export function passesAttributes(l: AttributeLimits, gpa: unknown, size: unknown, attributes: number): gpa is number {
  if (typeof gpa !== 'number' || typeof size !== 'number' || !l.ioctl || (attributes & ~l.supported) !== 0) return false;
  return (
    Number.isSafeInteger(gpa) &&
    Number.isSafeInteger(size) &&
    gpa >= 0 &&
    size > 0 &&
    gpa % 4096 === 0 &&
    size % 4096 === 0 &&
    gpa + size <= Number.MAX_SAFE_INTEGER
  );
}

/** Judges one request; returns the change, or throws the rule the kernel would break. */
export function judgeAttributes(l: AttributeLimits, r: AttributeRequest): AttributeChange {
  if (!l.ioctl) throw new MissingCapabilityError('KVM_CAP_MEMORY_ATTRIBUTES', CapSince.MEMORY_ATTRIBUTES, 'KVM_SET_MEMORY_ATTRIBUTES');
  if (r.flags !== 0n) throw new AttributeRuleError('attribute-flags', `KVM_SET_MEMORY_ATTRIBUTES: flags ${hex(r.flags)} must be 0`, { flags: r.flags });
  const unsupported = r.attributes & ~BigInt(l.supported);
  if (unsupported) {
    throw new AttributeRuleError(
      'memory-attributes-unsupported',
      `attributes ${hex(r.attributes)}: bits ${hex(unsupported)} are not supported by this ${l.vmType} VM (KVM_CAP_MEMORY_ATTRIBUTES = ${hex(l.supported)})`,
      { attributes: asNumber(r.attributes), supported: l.supported },
    );
  }
  if (r.size === 0n)
    throw new AttributeRuleError('attribute-range-empty', `attribute range at gpa ${hex(r.gpa)} is empty (size 0)`, { gpa: r.gpa, size: r.size });
  if (r.gpa + r.size > U64_MAX) throw new RangeWrapError('gpa', r.gpa, r.size, 'KVM_SET_MEMORY_ATTRIBUTES');
  if (r.gpa & 0xfffn) throw new AlignmentError('address', r.gpa, 'KVM_SET_MEMORY_ATTRIBUTES');
  if (r.size & 0xfffn) throw new AlignmentError('size', r.size, 'KVM_SET_MEMORY_ATTRIBUTES');
  // Page aligned and below 2^64: gfns have at most 52 bits, exact as numbers.
  return { startGfn: Number(r.gpa >> 12n), endGfn: Number((r.gpa + r.size) >> 12n), attributes: Number(r.attributes) };
}

/** Records a change the kernel accepted: the range's attributes are overwritten. */
export function applyAttributes(map: AttributeMap, c: AttributeChange): void {
  map.set(c.startGfn, c.endGfn, c.attributes);
}

// Details show attributes as the number the caller gave (the API takes a
// u32); only a raw request's bits past 2^53 stay a bigint.
function asNumber(v: bigint): number | bigint {
  return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}
