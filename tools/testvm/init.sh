#!/bin/sh
# PID 1 of the kvm-gmem test VM (see tools/testvm/README.md).
#
# This script runs INSIDE the guest. The guest's root filesystem is the host's
# own root, shared read-only over 9p, so /bin/sh, node and the project are the
# host's. The host tool copies this file into the per-run work directory and
# boots the kernel with init=<that copy>; the same directory is shared
# read-write with mount_tag "work" and mounted here at /run/testvm. It holds:
#   testvm-marker        one line: the per-run nonce used in the output markers
#   testvm-command.sh    the command (cd, environment, exec), quoted by the host
#   testvm-watchdog      seconds after which the guest powers itself off
#   testvm-overlays      optional: directories to make writable (one per line)
#   testvm-exit-status   written here: the command's exit status
# Everything runs with as few exec()s as possible: under TCG each exec of a
# dynamically linked program costs tenths of a second, so the mounts use the
# static busybox and the rest are shell builtins.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022
WORK=/run/testvm

bb=
for b in /usr/bin/busybox /bin/busybox /usr/sbin/busybox /sbin/busybox /usr/local/bin/busybox; do
  if [ -x "$b" ]; then bb=$b; break; fi
done

die() {
  echo "testvm-init: $*" >&2
  # No exit status file is written, so the host reports a guest failure.
  if [ -n "$bb" ]; then "$bb" sync; "$bb" poweroff -f; fi
  # Without busybox: PID 1 exits, the kernel panics, panic=-1 reboots and
  # QEMU (-no-reboot) exits.
  exit 1
}

[ -n "$bb" ] || die "busybox not found on the root filesystem (apt-get install busybox-static)"

is_mounted() {
  while read -r _dev _dir _rest; do
    [ "$_dir" = "$1" ] && return 0
  done < /proc/mounts
  return 1
}

mnt() {
  "$bb" mount "$@" || die "mount $* failed"
}

mnt -t proc -o nosuid,nodev,noexec proc /proc
mnt -t sysfs -o nosuid,nodev,noexec sysfs /sys
# CONFIG_DEVTMPFS_MOUNT has usually mounted /dev already.
is_mounted /dev || mnt -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mnt -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
"$bb" mkdir -p "$WORK" /run/host-tmp || die "mkdir in /run failed"
mnt -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work "$WORK"
# Keep the host's /tmp reachable (read-only) before a tmpfs covers it.
mnt -o bind /tmp /run/host-tmp
mnt -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
"$bb" mkdir -p /dev/shm /dev/pts
mnt -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
"$bb" mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts ||
  echo "testvm-init: warning: devpts not mounted" >&2
"$bb" ip link set lo up 2>/dev/null
# Pass the command's bytes through unchanged (no \n -> \r\n on the console).
"$bb" stty -onlcr 2>/dev/null

# Copy-on-write overlays: the directory looks writable, the changes live in
# /run (tmpfs) and vanish at power-off.
if [ -s "$WORK/testvm-overlays" ]; then
  n=0
  while IFS= read -r dir; do
    [ -n "$dir" ] || continue
    n=$((n + 1))
    "$bb" mkdir -p "/run/overlay/$n/upper" "/run/overlay/$n/work" || die "mkdir for overlay $dir failed"
    mnt -t overlay -o "lowerdir=$dir,upperdir=/run/overlay/$n/upper,workdir=/run/overlay/$n/work" overlay "$dir"
  done < "$WORK/testvm-overlays"
fi

marker=
read -r marker < "$WORK/testvm-marker" || die "cannot read $WORK/testvm-marker"
[ -n "$marker" ] || die "empty marker file"
[ -r "$WORK/testvm-command.sh" ] || die "cannot read $WORK/testvm-command.sh"

watchdog=
read -r watchdog < "$WORK/testvm-watchdog" 2>/dev/null
case $watchdog in
  ''|*[!0-9]*) ;;
  *)
    # Powers the guest off even if the host process that started QEMU died.
    ( "$bb" sleep "$watchdog"
      echo "testvm-init: watchdog: command still running after ${watchdog}s, powering off" >&2
      "$bb" poweroff -f ) &
    ;;
esac

cd / || die "cd / failed"
echo "$marker-BEGIN"
# A clean environment: testvm-command.sh exports exactly what the host asked for.
"$bb" env -i /bin/sh "$WORK/testvm-command.sh" < /dev/null
status=$?
echo "$status" > "$WORK/testvm-exit-status" || die "cannot write the exit status"
"$bb" sync
echo "$marker-END"
"$bb" poweroff -f
exit 0
