/* vstprobe: run inside a guest by the isolation tests (TESTING.md catalogue S1, S5, S9, S13 and
 * the limit tests). Built static by the tests so it needs nothing from the guest. Each
 * subcommand prints one line per attempt, "name ok" or "name errno=N", and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long result) {
    if (result < 0) printf("%s errno=%d\n", name, errno);
    else printf("%s ok\n", name);
    fflush(stdout);
}

static int syscalls(void) {
    struct perf_event_attr attr;
    union bpf_attr battr;
    memset(&attr, 0, sizeof attr);
    memset(&battr, 0, sizeof battr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_CPU_CLOCK;
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "x", 0));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, NULL, 0));
    report("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    report("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -2));
    report("bpf", syscall(SYS_bpf, BPF_PROG_LOAD, &battr, sizeof battr));
    report("perf_event_open", syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
    return 0;
}

/* The classic chroot escape: chroot into a subdirectory while keeping a descriptor (the cwd)
 * outside it, climb with "..", chroot to where we ended, then look for a host-only path. */
static int chroot_escape(const char *host_path) {
    mkdir("/tmp/vst-escape", 0700);
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    report("chroot", chroot("/tmp/vst-escape"));
    report("fchdir", fchdir(fd));
    for (int i = 0; i < 64; i++) chdir("..");
    report("chroot-dot", chroot("."));
    report("host-path", access(host_path, F_OK));
    return 0;
}

static int tiocsti(void) {
    char c = 'x';
    report("tiocsti", ioctl(0, TIOCSTI, &c));
    return 0;
}

static int mknod_block(void) {
    report("mknod-block", mknod("/tmp/vst-sda", S_IFBLK | 0600, makedev(8, 0)));
    report("mknod-char", mknod("/tmp/vst-mem", S_IFCHR | 0600, makedev(1, 1)));
    return 0;
}

static int open_path(const char *path) {
    report("open", open(path, O_RDONLY));
    return 0;
}

/* Allocate and touch N MiB, then report: with a memory limit below N the kernel kills us. */
static int alloc_mb(long mb) {
    for (long i = 0; i < mb; i++) {
        char *p = malloc(1 << 20);
        if (!p) { report("malloc", -1); return 1; }
        memset(p, 1, 1 << 20);
    }
    printf("allocated %ld\n", mb);
    return 0;
}

/* Allocate and touch N MiB, report, keep it for S seconds (the monitor's memory alert). */
static int hold_mb(long mb, int seconds) {
    if (alloc_mb(mb) != 0) return 1;
    fflush(stdout);
    sleep(seconds);
    return 0;
}

/* Fork N children that sleep; print how many forks succeeded. */
static int forks(int n) {
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) { sleep(5); _exit(0); }
        if (pid > 0) ok++;
    }
    printf("forked %d\n", ok);
    fflush(stdout);
    while (wait(NULL) > 0) {}
    return 0;
}

static int spin(int seconds) {
    time_t end = time(NULL) + seconds;
    volatile unsigned long x = 0;
    while (time(NULL) < end) x++;
    printf("spun %lu\n", (unsigned long)x);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "syscalls")) return syscalls();
    if (!strcmp(argv[1], "chroot-escape") && argc > 2) return chroot_escape(argv[2]);
    if (!strcmp(argv[1], "tiocsti")) return tiocsti();
    if (!strcmp(argv[1], "mknod")) return mknod_block();
    if (!strcmp(argv[1], "open") && argc > 2) return open_path(argv[2]);
    if (!strcmp(argv[1], "alloc") && argc > 2) return alloc_mb(atol(argv[2]));
    if (!strcmp(argv[1], "hold") && argc > 3) return hold_mb(atol(argv[2]), atoi(argv[3]));
    if (!strcmp(argv[1], "forks") && argc > 2) return forks(atoi(argv[2]));
    if (!strcmp(argv[1], "spin") && argc > 2) return spin(atoi(argv[2]));
    return 2;
}
