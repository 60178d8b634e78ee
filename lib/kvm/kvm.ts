// /dev/kvm: the system-level entry point. Opens the device, checks the API
// version, answers capability questions and creates VMs.
import { readFileSync } from 'node:fs';
import { CheckExtensionFd } from './capabilities.js';
import { KvmApiVersionError, MissingCapabilityError, retryOnEintr, withRequest } from '../errors.js';
import { argError, typeCode } from '../args.js';
import { native } from '../binding/native.js';
import { Cap, CapSince, errno, KVM_API_VERSION, TASK_SIZE_MAX_4LEVEL, TASK_SIZE_MAX_5LEVEL, VmType, type VmTypeName } from '../binding/uapi.js';
import { Vm, type VmParent } from './vm.js';
import { bindingOverlapErrno } from './kernel-behaviour.js';
import { defectPresent } from './defects.js';
import { type CpuidEntry, decodeCpuid } from './regs.js';

export interface CreateVmOptions {
  /** VM type; default 'default'. */
  type?: VmTypeName;
}

// The kernel clears the la57 cpu flag when it runs with 4-level paging, so
// the flag tells which user address space limit access_ok() applies.
function taskSizeMax(): bigint {
  try {
    return /^flags\s*:.*\bla57\b/m.test(readFileSync('/proc/cpuinfo', 'utf8')) ? TASK_SIZE_MAX_5LEVEL : TASK_SIZE_MAX_4LEVEL;
  } catch {
    return TASK_SIZE_MAX_4LEVEL;
  }
}

export class Kvm extends CheckExtensionFd {
  readonly path: string;
  readonly apiVersion: number;
  readonly taskSizeMax: bigint = taskSizeMax();
  #mmapSize: number | undefined;
  #cpuid: CpuidEntry[] | undefined;
  #vmParent: VmParent | undefined;

  private constructor(fd: number, path: string) {
    super(fd, 'Kvm');
    this.path = path;
    try {
      this.apiVersion = native.getApiVersion(fd);
    } catch (e) {
      this.close();
      throw e;
    }
    if (this.apiVersion !== KVM_API_VERSION) {
      this.close();
      throw new KvmApiVersionError(path, this.apiVersion, KVM_API_VERSION);
    }
  }

  /** Opens the KVM device (O_RDWR|O_CLOEXEC) and checks KVM_GET_API_VERSION is 12. */
  static open(path = '/dev/kvm'): Kvm {
    return new Kvm(
      withRequest({ path }, () => native.openDevice(path)),
      path,
    );
  }

  /** KVM_CREATE_VM. The VM's fd is close-on-exec and owned by the result. */
  createVm(options: CreateVmOptions = {}): Vm {
    const type = options?.type ?? 'default'; // read once, before the fd is taken
    const fd = this.use('create a VM');
    const bits = typeof type === 'string' && Object.hasOwn(VmType, type) ? VmType[type] : undefined;
    if (bits === undefined) throw argError(`createVm: unknown VM type '${String(type)}' (known: ${Object.keys(VmType).join(', ')})`, typeCode(type, 'string'));
    if (type !== 'default' && !this.capabilities().vmTypes.includes(type)) {
      throw new MissingCapabilityError('KVM_CAP_VM_TYPES', CapSince.VM_TYPES, `a '${type}' VM (this kernel offers: ${this.capabilities().vmTypes.join(', ')})`);
    }
    const parent = this.#parent();
    const vmFd = withRequest(
      { type: bits },
      () => retryOnEintr(() => native.createVm(fd, bits)),
      (n) => (n === errno.EINVAL ? ['the VM type is not supported by this host (CPU or kernel config)'] : []),
    );
    return new Vm(vmFd, type, parent);
  }

  // What a VM asks of /dev/kvm, asked once while this Kvm is open and
  // remembered: the kernel keeps a VM alive without its /dev/kvm fd, and so
  // must the package, so a VM keeps working after this Kvm is closed.
  #parent(): VmParent {
    if (this.#vmParent === undefined) {
      const guestMemfd = this.checkExtension(Cap.GUEST_MEMFD);
      const mmapSize = this.vcpuMmapSize();
      const cpuid = this.supportedCpuid();
      this.#vmParent = {
        taskSizeMax: this.taskSizeMax,
        vcpuMmapSize: () => mmapSize,
        supportedCpuid: () => cpuid.map((e) => ({ ...e })),
        systemCheck: (cap) => (cap === Cap.GUEST_MEMFD ? guestMemfd : this.checkExtension(cap)),
        // Probed on a scratch VM while this Kvm is open (kernel-behaviour.ts).
        bindingOverlapErrno: (type) => bindingOverlapErrno(this.closed ? null : this.fd, this.path, type).errno,
        defectPresent: (id) => defectPresent(this.path, id),
      };
    }
    return this.#vmParent;
  }

  /** KVM_GET_VCPU_MMAP_SIZE: size of each vCPU's kvm_run area (asked once). */
  vcpuMmapSize(): number {
    const fd = this.use('read the vCPU mmap size');
    this.#mmapSize ??= native.getVcpuMmapSize(fd);
    return this.#mmapSize;
  }

  /** KVM_GET_SUPPORTED_CPUID: the CPUID a vCPU can be given (asked once). */
  supportedCpuid(): CpuidEntry[] {
    const fd = this.use('read supported CPUID');
    this.#cpuid ??= decodeCpuid(native.getSupportedCpuid(fd));
    return this.#cpuid.map((e) => ({ ...e }));
  }
}
